#!/bin/sh
# Install the project into a Python environment: the CPU build of PyTorch first, named
# explicitly (an unpinned torch requirement would pull a multi-GB CUDA build), then the
# project. One recipe for the Makefile (developers, CI) and the Dockerfile.
#
#   sh scripts/install.sh PYTHON PIP-ARGUMENTS...
#   sh scripts/install.sh .venv/bin/python -e ".[dev]"      # make install
#   sh scripts/install.sh python .                          # the container image
#   sh scripts/install.sh --system PACKAGE...               # Debian packages (make install)
#
# TORCH (default torch==2.13.0) and TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu,
# where the default index holds only CUDA builds for Linux) configure the torch step.
#
# --system installs Debian packages with apt-get, as root, waiting up to APT_LOCK_TIMEOUT
# seconds (default 600) for Debian's package lock when another install holds it, and reading
# the package lists again if the first try fails. Where it cannot, it says so on stderr and
# exits 1: the tests that need the package skip, or fail under CI=true / make test STRICT=1.
set -eu

apt_get() {
    apt-get -o DPkg::Lock::Timeout="$wait_s" -qq "$@" >/dev/null 2>>"$errors"
}

system_packages() {
    fix="apt-get install $*"
    consequence="The tests that need it will skip, and fail under CI=true or \`make test STRICT=1\`."
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "MISSING: $* (and this user cannot install Debian packages). $consequence" \
             "Fix, as root: $fix" >&2
        return 1
    fi
    wait_s="${APT_LOCK_TIMEOUT:-600}"
    deadline=$(($(date +%s) + wait_s))
    errors=$(mktemp)
    trap 'rm -f "$errors"' EXIT
    export DEBIAN_FRONTEND=noninteractive
    echo "installing $* (apt-get; waits up to $wait_s s for Debian's package locks)"
    # apt-get waits for the dpkg lock itself (DPkg::Lock::Timeout), not for the lock of the
    # package lists or the archives: while another apt-get holds one of those, try again.
    lock_taken="Could not get lock|Unable to acquire the dpkg frontend lock|Unable to lock"
    while :; do
        : >"$errors"
        if apt_get install -y "$@" || { apt_get update && apt_get install -y "$@"; }; then
            return 0
        fi
        grep -Eq "$lock_taken" "$errors" && [ "$(date +%s)" -lt "$deadline" ] || break
        sleep 3
    done
    cat "$errors" >&2
    echo "COULD NOT INSTALL $* (apt-get failed: its message is above). $consequence" \
         "Fix, as root: $fix" >&2
    return 1
}

if [ "${1:-}" = "--system" ]; then
    shift
    if [ "$#" -lt 1 ]; then
        echo "usage: sh scripts/install.sh --system PACKAGE..." >&2
        exit 2
    fi
    system_packages "$@"
    exit
fi
if [ "$#" -lt 2 ]; then
    echo "usage: sh scripts/install.sh PYTHON PIP-ARGUMENTS..." >&2
    exit 2
fi
python="$1"
shift
"$python" -m pip install --no-cache-dir --quiet "${TORCH:-torch==2.13.0}" \
    ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
"$python" -m pip install --no-cache-dir --quiet "$@"
