"""The participant simulator (server/simulate.py) against a live server, on SQLite and on
PostgreSQL: it walks the whole flow, and what the server acknowledged is what the store
holds, exactly once (server/audit.py); plus its loopback-only rule and its command lines
(``python -m server.simulate``, and ``python -m experiment.simulate`` with ``--rater``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from server_world import make_design, serving, store_url, study_app
from sqlalchemy import func, select

from experiment.simulate import load_rater
from server.audit import check_store
from server.simulate import (
    NotLoopback,
    check_loopback,
    main,
    percentile,
    random_rater,
    run_simulation,
)
from server.store import Store, participants, responses

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"conv5": 3, "fc6": 9, "fc8": 6}   # 3 lists of 6 panels, 6 practice panels


@pytest.fixture(scope="module")
def design_file(tmp_path_factory):
    # 18 places for the 20 simulated participants: the last ones meet "study full"
    return make_design(tmp_path_factory.mktemp("design"), LAYERS, n_lists=3, participants=18)


@pytest.fixture(params=["sqlite", "postgresql"])
def live(request, tmp_path, design_file):
    """A live server on a free loopback port; yields (base URL, app)."""
    with store_url(request.param, tmp_path) as url:
        app = study_app(url, tmp_path / "instance", design_file, "SIM123")
        with serving(app) as base:
            yield base, app


def test_every_acknowledged_answer_is_stored_exactly_once(live):
    url, app = live
    seen = []

    def rater(panel, image, rng):
        seen.append((panel["index"], image[:8] if image else None))
        return (True, rng.choice(["dog", "cat"])) if panel["index"] % 3 == 0 else (False, None)

    result = run_simulation(url, 20, 5, seed=3, think_ms=2, reload_rate=0.3,
                            abandon_rate=0.2, rater=rater, fetch_images=True)
    assert result.failed == 0, result.errors
    assert result.started == 20
    assert result.completed + result.abandoned + result.full == 20, result.outcomes
    assert result.full >= 2 and result.abandoned >= 1 and result.reloads >= 1
    assert result.resume_mismatches == 0 and result.conflicts == 0
    assert set(result.completion_codes.values()) == {"SIM123"}
    assert set(result.completion_codes) == {p for p, o in result.outcomes.items()
                                            if o == "completed"}
    assert result.duplicates == 0 and not result.unconfirmed
    assert len(result.acknowledged) == result.stored_new
    # The rater saw every answered trial with its PNG image.
    assert seen and all(head == b"\x89PNG\r\n\x1a\n" for _, head in seen)
    # Every request of the flow was timed under its label.
    for label in ("entry", "consent", "instructions", "device", "state", "response",
                  "debrief", "complete", "image"):
        assert result.latencies[label], label
    assert result.statuses["response"] == {201: len(result.acknowledged)}

    check = check_store(app.extensions["store"], result.acknowledged, result.unconfirmed)
    assert check.ok, check.problems
    assert check.stored == len(result.acknowledged)
    assert check.completed == result.completed
    with app.extensions["store"].read() as conn:
        # the people who met "study full" never got a session; reloads made none
        assert conn.execute(select(func.count()).select_from(participants)).scalar() == 18
        rows = conn.execute(select(participants.c.prolific_pid, participants.c.status,
                                   participants.c.n_answered)).all()
    status = {pid: (s, n) for pid, s, n in rows}
    for pid, outcome in result.outcomes.items():
        if outcome == "completed":
            assert status[pid] == ("completed", 12)
        elif outcome == "abandoned":
            assert status[pid][0] == "active" and status[pid][1] < 12
        else:
            assert pid not in status
    # A participant who reloaded resumed where the store said: nobody restarted a trial.
    assert all(0 <= index <= 12 for index in result.resumed_at.values())

    # The same PIDs again: everyone resumes; the unfinished finish, nobody is new.
    again = run_simulation(url, 0, 5, pids=list(status), think_ms=0, reload_rate=0,
                           abandon_rate=0)
    assert again.failed == 0 and again.completed == 18, again.outcomes
    assert {pid: again.resumed_at[pid] for pid in status if status[pid][0] == "active"} == \
        {pid: n for pid, (s, n) in status.items() if s == "active"}
    check = check_store(app.extensions["store"], result.acknowledged | again.acknowledged)
    assert check.ok and check.completed == 18, check.problems


def test_max_seconds_bounds_a_run(live):
    url, app = live
    result = run_simulation(url, 40, 4, seed=1, think_ms=150, max_seconds=1.0)
    assert result.stopped_early
    assert result.elapsed_s < 6
    assert result.started < 40 and result.count("stopped") >= 1
    check = check_store(app.extensions["store"], result.acknowledged, result.unconfirmed)
    assert not check.missing and not check.extra and not check.duplicate_rows


@pytest.mark.parametrize("url", ["http://example.com", "http://10.0.0.8:8000/",
                                 "https://192.168.1.2", "http://8.8.8.8", "ftp://127.0.0.1/",
                                 "127.0.0.1:8000", "http://app.prolific.com/"])
def test_only_loopback_servers_are_driven(url, capsys):
    with pytest.raises(NotLoopback):
        check_loopback(url)
    with pytest.raises(NotLoopback):
        run_simulation(url, 1, 1)
    assert main(["--url", url, "--participants", "1"]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("url, base", [("http://127.0.0.1:8000", "http://127.0.0.1:8000/"),
                                       ("http://[::1]:5000/", "http://[::1]:5000/"),
                                       ("http://localhost/study", "http://localhost/study/"),
                                       ("http://127.0.0.2:80", "http://127.0.0.2:80/")])
def test_loopback_urls_are_accepted(url, base):
    assert check_loopback(url) == base


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == \
        (50, 99, 100)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) != percentile([], 50)   # NaN


def test_command_line_help_and_a_small_run(tmp_path, design_file):
    helped = subprocess.run([sys.executable, "-m", "server.simulate", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0
    for option in ("--url", "--participants", "--concurrency", "--think-ms", "--reload-rate",
                   "--abandon-rate", "--max-seconds", "--fetch-images", "--json", "loopback"):
        assert option in helped.stdout, option
    refused = subprocess.run([sys.executable, "-m", "server.simulate", "--url",
                              "http://example.org", "--participants", "1"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "loopback" in refused.stderr

    with store_url("sqlite", tmp_path) as db:
        app = study_app(db, tmp_path / "instance", design_file, "CLI42")
        with serving(app) as base:
            out = tmp_path / "report.json"
            ran = subprocess.run(
                [sys.executable, "-m", "server.simulate", "--url",
                 base.replace("127.0.0.1", "localhost"), "--participants", "3",
                 "--concurrency", "2", "--think-ms", "0", "--reload-rate", "0",
                 "--abandon-rate", "0", "--json", str(out), "--quiet"],
                cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "response" in ran.stdout and "answers acknowledged: 36" in ran.stdout
        report = json.loads(out.read_text())
        assert report["outcomes"]["completed"] == 3
        assert set(report["completion_codes"].values()) == {"CLI42"}
        assert len(report["acknowledged"]) == 36
        assert report["latency_ms"]["response"]["n"] == 36
        acknowledged = {(pid, index) for pid, index in report["acknowledged"]}
        check = check_store(app.extensions["store"], acknowledged)
        assert check.ok and check.stored == 36, check.problems
        app.extensions["store"].dispose()


def test_command_line_rater_and_store_check(tmp_path, design_file):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    with store_url("sqlite", tmp_path) as db:
        app = study_app(db, tmp_path / "instance", design_file, "CLI43")
        with serving(app) as base:
            args = [sys.executable, "-m", "experiment.simulate", "--url", base, "--participants",
                    "2", "--concurrency", "2", "--think-ms", "0", "--reload-rate", "0",
                    "--abandon-rate", "0", "--rater", "server_world:png_rater", "--quiet"]
            ran = subprocess.run([*args, "--check-store", db], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=120)
            assert ran.returncode == 0, ran.stdout + ran.stderr
            assert "store check: 24 acknowledged answers, each stored once" in ran.stdout
            with app.extensions["store"].read() as conn:
                answers = conn.execute(select(responses.c.answer_yes,
                                              responses.c.object_text)).all()
            assert len(answers) == 24 and set(answers) == {(True, "dog")}

            # checked against another (empty) store, the answers are missing: exit 1
            empty = f"sqlite:///{tmp_path / 'empty.db'}"
            blank = Store(empty)
            blank.migrate()
            blank.dispose()
            ran = subprocess.run([*args, "--seed", "9", "--check-store", empty], cwd=ROOT,
                                 env=env, capture_output=True, text=True, timeout=120)
            assert ran.returncode == 1 and "store check FAILED" in ran.stdout
            assert "acknowledged answers are not stored" in ran.stdout
        app.extensions["store"].dispose()

    bad = subprocess.run([*args[:4], "http://127.0.0.1:9", "--participants", "1", "--rater",
                          "server.simulate:no_such_rater"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no_such_rater" in bad.stderr


def test_load_rater_takes_a_rater_or_builds_one():
    assert load_rater("server.simulate:random_rater") is random_rater
    assert callable(load_rater("server_world:png_rater"))  # a factory, called
    for spec in ("server.simulate", ":x", "no.such.module:x"):
        with pytest.raises(ValueError, match="--rater"):
            load_rater(spec)


def test_only_the_experiment_layer_loads_a_named_rater(capsys):
    # server.simulate answers at random and takes no --rater: loading a module named on the
    # command line (a torch classifier) is experiment.simulate's job.
    with pytest.raises(SystemExit) as exit_:
        main(["--url", "http://127.0.0.1:9", "--participants", "1", "--rater", "x:y"])
    assert exit_.value.code == 2 and "--rater" in capsys.readouterr().err
    helped = subprocess.run([sys.executable, "-m", "experiment.simulate", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "python -m experiment.simulate" in helped.stdout
    for option in ("--url", "--participants", "--concurrency", "--think-ms", "--check-store",
                   "--json", "--rater", "MODULE:NAME", "loopback"):
        assert option in helped.stdout, option
    # the URL is checked before a rater is built
    from experiment.simulate import main as experiment_main

    assert experiment_main(["--url", "http://example.org", "--participants", "1",
                            "--rater", "no.such.module:x"]) == 2
    assert "loopback" in capsys.readouterr().err
