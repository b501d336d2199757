"""Simulated participants whose answers come from a rater you name:
``python -m server.simulate`` with ``--rater MODULE:NAME``.

    python -m experiment.simulate --url http://127.0.0.1:8000 --participants 20 \\
        --rater generator.rater:demo_rater

Every other option, the report and the exit status are those of :mod:`server.simulate`
(0 done, 1 some participants failed or the store check failed, 2 bad arguments, a
non-loopback URL or a rater that cannot be loaded). The rater is imported here, at the
top of the project, because it may be anything (``generator.rater:demo_rater`` looks at
each panel with a torch classifier) and the server never imports what sits above it.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Sequence

from server.simulate import Rater, build_parser, prepare_cli, run_cli

__all__ = ["PROG", "load_rater", "main"]

PROG = "python -m experiment.simulate"


def load_rater(spec: str) -> Rater:
    """``MODULE:NAME`` -> a rater: NAME is the rater itself, or a function of no arguments
    that builds one (a class or factory whose call takes no arguments)."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ValueError(f"--rater {spec!r}: give MODULE:NAME, e.g. generator.rater:demo_rater")
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"--rater {spec!r}: {exc}") from None
    try:
        takes_none = not [p for p in inspect.signature(obj).parameters.values()
                          if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL,
                                                                      p.VAR_KEYWORD)]
    except (TypeError, ValueError):
        takes_none = False
    return obj() if takes_none else obj


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """The command line (``prog``: the program name in help and errors); the exit status."""
    parser = build_parser(prog or PROG)
    parser.add_argument("--rater", metavar="MODULE:NAME",
                        help="who decides the answers: a rater, or a function that builds "
                             "one, importable as MODULE:NAME (e.g. generator.rater:demo_rater, "
                             "which looks at each panel with a classifier; implies "
                             "--fetch-images). Default: random answers")
    args = parser.parse_args(argv)
    try:
        prepare_cli(args)  # logging, and the URL checked before a rater is built
        rater = load_rater(args.rater) if args.rater else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run_cli(args, rater)


if __name__ == "__main__":
    sys.exit(main())
