"""The console script ``selectivity`` (experiment/cli.py): every stage, each the code of
its module form, with one --help style."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiment import cli

ROOT = Path(__file__).resolve().parents[1]
SELECTIVITY = str(Path(sys.executable).parent / "selectivity")

#: The stages the study has (the issue that introduced the command lists them).
STAGES = {"record", "measure", "tables", "figures", "am", "panels", "design", "serve",
          "load-study", "export", "simulate", "table2", "demo"}


def test_the_installed_command_lists_every_stage_with_its_module_form():
    out = subprocess.run([SELECTIVITY, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    listed = {line.split()[0]: line for line in out.stdout.splitlines()
              if line.startswith("  ")}
    assert STAGES <= set(listed)
    for command in cli.COMMANDS:
        assert listed[command.name].rstrip().endswith(command.module_form)
    # the listing loaded no stage (no torch to say what the stages are)
    probe = subprocess.run([sys.executable, "-c", "import sys; from experiment import cli; "
                            "cli.usage(); print('torch' in sys.modules)"],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert probe.stdout.strip() == "False"


@pytest.mark.parametrize("command", cli.COMMANDS, ids=lambda c: c.name)
def test_each_stage_helps_under_its_own_name(command, capsys):
    assert cli.main([command.name, "--help"]) == 0
    text = capsys.readouterr().out
    usage = text.lstrip().splitlines()[0].lower()
    assert usage.startswith(f"usage: selectivity {command.name}"), usage
    assert len(text.splitlines()) > 3  # options explained, not only the usage line


@pytest.mark.parametrize("command", [c for c in cli.COMMANDS if not c.server],
                         ids=lambda c: c.name)
def test_each_stage_runs_its_modules_main_with_the_arguments(command, monkeypatch):
    module = importlib.import_module(command.module)
    calls = []
    monkeypatch.setattr(module, "main", lambda argv, prog=None: calls.append((argv, prog)) or 7)
    assert cli.main([command.name, "--out", "x y", "-v"]) == 7
    assert calls == [(["--out", "x y", "-v"], f"selectivity {command.name}")]


@pytest.mark.parametrize("name, module", [("tables", "analysis.tables"),
                                          ("design", "experiment.design")])
def test_a_stage_and_its_module_form_answer_alike(name, module, tmp_path):
    # The same bad input through both doors: the same exit status and message.
    missing = str(tmp_path / "missing.csv")
    args = {"tables": [missing, "--out", str(tmp_path / "t")],
            "design": ["--panels", missing, "--practice", missing, "--lists", "2",
                       "--participants", "4", "--out", str(tmp_path / "s.json")]}[name]
    by_module = subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                               text=True, cwd=ROOT, timeout=120)
    by_script = subprocess.run([SELECTIVITY, name, *args], capture_output=True, text=True,
                               cwd=ROOT, timeout=120)
    assert by_module.returncode == by_script.returncode == 2
    assert missing in by_script.stderr
    assert by_module.stderr.splitlines()[-1] == by_script.stderr.splitlines()[-1]


def test_a_server_stage_takes_its_options(tmp_path):
    out = subprocess.run([SELECTIVITY, "serve", "--port", "0"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60,
                         env={**os.environ,
                              "FLASK_INSTANCE_PATH": str(tmp_path / "instance")})
    assert out.returncode == 2 and "port 0" in out.stderr


def test_an_unknown_stage_is_named_with_the_closest_one(capsys):
    assert cli.main(["tabels"]) == 2
    err = capsys.readouterr().err
    assert "no stage 'tabels'" in err and "did you mean 'tables'" in err


def test_no_stage_prints_the_listing_and_fails(capsys):
    assert cli.main([]) == 2
    assert "usage: selectivity STAGE" in capsys.readouterr().err
