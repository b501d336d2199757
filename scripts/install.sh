#!/bin/sh
# Install the project into a Python environment: the CPU build of PyTorch first, named
# explicitly (an unpinned torch requirement would pull a multi-GB CUDA build), then the
# project. One recipe for the Makefile (developers, CI) and the Dockerfile.
#
#   sh scripts/install.sh PYTHON PIP-ARGUMENTS...
#   sh scripts/install.sh .venv/bin/python -e ".[dev]"      # make install
#   sh scripts/install.sh python .                          # the container image
#
# TORCH (default torch==2.13.0) and TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu,
# where the default index holds only CUDA builds for Linux) configure the torch step.
set -eu
if [ "$#" -lt 2 ]; then
    echo "usage: sh scripts/install.sh PYTHON PIP-ARGUMENTS..." >&2
    exit 2
fi
python="$1"
shift
"$python" -m pip install --no-cache-dir --quiet "${TORCH:-torch==2.13.0}" \
    ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
"$python" -m pip install --no-cache-dir --quiet "$@"
