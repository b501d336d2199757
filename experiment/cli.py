"""``selectivity``: one command for every stage of the study (the console script).

``selectivity STAGE [OPTIONS]`` runs exactly the code of the stage's module form,
``python -m MODULE [OPTIONS]`` (the table below): the same options, defaults, outputs and
exit status; only the program name in ``--help`` and error messages differs. Each stage's
module is imported only when it runs, so ``selectivity --help`` and the server's commands
never load torch.

The top of the import graph (docs/architecture.md): it may import every package; no
package imports it.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["COMMANDS", "Command", "main", "run"]

PROG = "selectivity"


@dataclass(frozen=True)
class Command:
    """A stage: the module that runs it and one line saying what it does."""

    name: str
    module: str  # ``python -m MODULE`` runs the same code
    summary: str
    group: str
    server: bool = False  # one of the server's commands (``python -m server NAME``)

    @property
    def module_form(self) -> str:
        if self.server:
            return f"python -m server {self.name}"
        if self.module == "analysis.table2":
            return "python analysis/table2.py"
        return f"python -m {self.module}"


COMMANDS: tuple[Command, ...] = (
    Command("record", "generator.record",
            "a network's activations over an image set (HDF5)", "measure the units"),
    Command("measure", "analysis.selectivity",
            "every selectivity measure of every unit (CSV)", "measure the units"),
    Command("tables", "analysis.tables", "the paper's selectivity tables",
            "measure the units"),
    Command("figures", "analysis.figures", "the paper's selectivity figures",
            "measure the units"),
    Command("am", "generator.am", "activation-maximization panels (--method ppgn, fourier, natural)",
            "make the panels"),
    Command("panels", "generator.panels", "practice panels from labelled photos",
            "make the panels"),
    Command("design", "experiment.design", "the panels dealt into lists: study.json",
            "run the rating study"),
    Command("load-study", "server.study", "a study file into the server's store",
            "run the rating study", server=True),
    Command("create-admin", "server.auth", "an experimenter's dashboard account",
            "run the rating study", server=True),
    Command("serve", "server.serve", "serve the study with gunicorn",
            "run the rating study", server=True),
    Command("simulate", "experiment.simulate", "simulated participants take the study",
            "run the rating study"),
    Command("export", "server.export", "the responses and participants (CSV, JSON)",
            "run the rating study", server=True),
    Command("prolific-files", "server.prolific_files", "Prolific's approvals and bonus files",
            "run the rating study", server=True),
    Command("entry-log", "server.participant", "refused entries, for the experimenter",
            "run the rating study", server=True),
    Command("coding", "analysis.coding", "free-text answers as WordNet synsets",
            "analyse the ratings"),
    Command("table2", "analysis.table2", "Table 2 of the paper from the responses",
            "analyse the ratings"),
    Command("demo", "experiment.demo", "every stage on the embedded digits network",
            "all at once"),
)

_BY_NAME = {c.name: c for c in COMMANDS}


def usage() -> str:
    """The text of ``selectivity --help``: every stage, grouped in pipeline order."""
    lines = [f"usage: {PROG} STAGE [OPTIONS]   ({PROG} STAGE --help: that stage's options)",
             "",
             "Unit selectivity of a neural network, end to end: record activations, measure",
             "selectivity, make activation-maximization panels, run the rating study with",
             "participants, and produce the paper's tables (docs/README.md).",
             ""]
    width = max(len(c.name) for c in COMMANDS)
    summary = max(len(c.summary) for c in COMMANDS)
    group = None
    for command in COMMANDS:
        if command.group != group:
            group = command.group
            lines.append(f"{group}:")
        lines.append(f"  {command.name:<{width}}  {command.summary:<{summary}}  "
                     f"{command.module_form}")
    lines += ["",
              "Each stage runs the code of the command beside it, with the same options.",
              "",
              f"example: {PROG} demo --no-serve    (the demo study, without serving it)"]
    return "\n".join(lines) + "\n"


def run(command: Command, argv: Sequence[str]) -> int:
    """Run one stage with its arguments; its exit status."""
    prog = f"{PROG} {command.name}"
    if command.server:
        from server.__main__ import cli

        try:
            cli.main(args=[command.name, *argv], prog_name=PROG, standalone_mode=True)
        except SystemExit as exc:
            return _status(exc)
        return 0
    module = importlib.import_module(command.module)
    try:
        return int(module.main(list(argv), prog=prog) or 0)
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        return _status(exc)


def _status(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        sys.stderr.write(usage())
        return 2
    if argv[0] in ("-h", "--help", "help"):
        if len(argv) > 1 and argv[0] == "help" and argv[1] in _BY_NAME:
            return run(_BY_NAME[argv[1]], ["--help"])
        sys.stdout.write(usage())
        return 0
    name, rest = argv[0], argv[1:]
    command = _BY_NAME.get(name)
    if command is None:
        close = difflib.get_close_matches(name, list(_BY_NAME), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"{PROG}: no stage {name!r}{hint} ({PROG} --help lists them: "
              f"{', '.join(_BY_NAME)})", file=sys.stderr)
        return 2
    return run(command, rest)


if __name__ == "__main__":
    raise SystemExit(main())
