"""Inattentive simulated participants (server/simulate.py, ``--inattentive``) and what the
demo's pre-registered exclusion rules (experiment/exclusion_rules.toml) make of them.

The simulator: the inattentive share is exact and drawn with the seed, the truth file
says who was inattentive, their answers are fast and yes about half the time, and the
attentive ones report human reaction times. End to end on a tiny study with catch trials
and the demo's rules: the rules exclude the inattentive and keep the attentive. And the
demo's report (experiment/demo.py): the confusion table and Table 2 three ways, from
files."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from server_world import make_design, serving, study_app
from sqlalchemy import select

from analysis.exclusion import read_rules
from experiment.demo import DEFAULT_RULES, attentive_responses, exclusion_report, read_truth
from experiment.design import build_design
from server.export import write_exports
from server.simulate import (
    INATTENTIVE_RT_MS,
    attentive_times,
    inattentive_pids,
    run_simulation,
    write_truth,
)
from server.store import participants, responses
from server.study_file import write_study

ROOT = Path(__file__).resolve().parents[1]


# -- the simulator -----------------------------------------------------------------------------

def test_the_inattentive_share_is_exact_and_drawn_with_the_seed():
    pids = [f"{i:024x}" for i in range(60)]
    chosen = inattentive_pids(pids, 0.2, seed=0)
    assert len(chosen) == 12 and chosen <= set(pids)
    assert inattentive_pids(pids, 0.2, seed=0) == chosen            # reproducible
    assert inattentive_pids(pids, 0.2, seed=1) != chosen            # drawn with the seed
    assert [len(inattentive_pids(pids[:n], 0.25, 0)) for n in (0, 1, 3, 7, 10)] == \
        [round(0.25 * n) for n in (0, 1, 3, 7, 10)]
    assert inattentive_pids(pids, 0, 0) == set() and inattentive_pids(pids, 1, 0) == set(pids)
    with pytest.raises(ValueError, match="between 0 and 1"):
        inattentive_pids(pids, 1.5, 0)


def test_attentive_times_are_human():
    medians = []
    for i in range(200):
        times = attentive_times(f"pid {i}")
        draws = [times(i % 2 == 0) for _ in range(15)]
        medians.append(statistics.median(a for a, _ in draws))
        assert all(a >= 400 for a, _ in draws)
        assert all((t is None) == (i % 2 == 1) for _, t in draws)
    # a typical participant takes 2-3 s to the yes or no; nobody's median is under 1 s
    # (the demo's rules exclude under 1 s)
    assert 2000 < statistics.median(medians) < 3000
    assert min(medians) > 1000
    # the same PID reports the same times in every run
    assert attentive_times("x")(True) == attentive_times("x")(True)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """20 simulated participants, 10 of them inattentive, on a 2-list study of 6 fc8
    panels (and 6 practice panels) served in-process; (result, the stored answers)."""
    root = tmp_path_factory.mktemp("inattentive")
    design = make_design(root / "design", {"fc8": 12}, n_lists=2, participants=20)
    app = study_app(f"sqlite:///{root / 'study.db'}", root / "instance", design, "INATT1")

    def rater(panel, image, rng):       # attentive: yes to every other panel
        return (panel["index"] % 2 == 0), "seven"

    with serving(app) as base:
        result = run_simulation(base, 20, 5, seed=4, think_ms=0, reload_rate=0,
                                abandon_rate=0, rater=rater, inattentive=0.5)
        with app.extensions["store"].read() as conn:
            rows = conn.execute(select(participants.c.prolific_pid, responses.c.answer_yes,
                                       responses.c.object_text, responses.c.rt_answer_ms,
                                       responses.c.rt_text_ms, responses.c.pasted,
                                       responses.c.practice)
                                .join_from(responses, participants,
                                           responses.c.participant_id == participants.c.id)
                                ).all()
    return result, pd.DataFrame([r._asdict() for r in rows])


def test_inattentive_participants_answer_at_random_and_fast(simulated, tmp_path):
    result, answers = simulated
    assert result.completed == 20, result.errors
    assert len(result.inattentive) == 10 and result.inattentive <= set(result.pids)
    assert result.inattentive == inattentive_pids(result.pids, 0.5, seed=4)
    summary = result.summary()["attentiveness"]
    assert (summary["attentive"], summary["inattentive"]) == (10, 10)
    assert summary["inattentive_outcomes"] == {"completed": 10}
    assert "inattentive (random, fast answers): 10 of 20" in result.report()

    careless = answers[answers["prolific_pid"].isin(result.inattentive)]
    attentive = answers[~answers["prolific_pid"].isin(result.inattentive)]
    assert len(careless) == len(attentive) == 10 * 12
    # fast: every answer in 250-700 ms, practice included
    low, high = INATTENTIVE_RT_MS
    assert careless["rt_answer_ms"].between(low, high).all()
    # about half yes (120 answers, seed fixed: 0.5 +- 3.3 SE)
    assert 0.35 < careless["answer_yes"].mean() < 0.65
    # the rater is never asked: their yes answers do not follow it
    assert set(careless.loc[careless["answer_yes"], "object_text"]) != {"seven"}
    # a yes brings a word, sometimes the participant's one pasted text again
    yes = careless[careless["answer_yes"]]
    assert yes["object_text"].str.len().between(1, 20).all()
    assert yes["pasted"].any() and not careless.loc[~careless["answer_yes"], "pasted"].any()
    for _, own in yes[yes["pasted"]].groupby("prolific_pid"):
        assert own["object_text"].nunique() == 1
    # the attentive answer as their rater says, at human speed
    assert (attentive["object_text"].dropna() == "seven").all()
    per_person = attentive.groupby("prolific_pid")["rt_answer_ms"].median()
    assert per_person.min() > 1000 and attentive["rt_answer_ms"].median() > 1500
    assert (attentive.loc[attentive["answer_yes"], "rt_text_ms"] >= 500).all()

    # the truth file: every simulated participant, true for the inattentive
    truth = write_truth(tmp_path / "truth.csv", result.pids, result.inattentive)
    rows = list(csv.DictReader(truth.open()))
    assert [r["prolific_pid"] for r in rows] == result.pids
    assert {r["prolific_pid"] for r in rows if r["inattentive"] == "true"} == result.inattentive
    assert {r["inattentive"] for r in rows} == {"true", "false"}
    assert read_truth(truth) == {pid: pid in result.inattentive for pid in result.pids}


def test_the_command_line_writes_the_truth_and_counts(tmp_path):
    design = make_design(tmp_path / "design", {"fc8": 4}, n_lists=1, participants=4)
    app = study_app(f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "instance", design,
                    "INATT2")
    with serving(app) as base:
        ran = subprocess.run(
            [sys.executable, "-m", "server.simulate", "--url", base, "--participants", "4",
             "--concurrency", "4", "--think-ms", "0", "--reload-rate", "0",
             "--abandon-rate", "0", "--inattentive", "0.5", "--truth",
             str(tmp_path / "truth.csv"), "--json", str(tmp_path / "report.json"),
             "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    truth = read_truth(tmp_path / "truth.csv")
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(truth) == 4 and sum(truth.values()) == 2
    assert set(truth) == set(report["participants"])
    assert report["attentiveness"]["attentive"] == 2
    assert report["attentiveness"]["inattentive"] == 2
    bad = subprocess.run([sys.executable, "-m", "server.simulate", "--url", base,
                          "--participants", "1", "--inattentive", "2"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--inattentive" in bad.stderr


# -- end to end: the demo's rules on a study with catch trials ---------------------------------

def catch_design(root: Path, seed: int = 0) -> tuple[Path, dict[str, str]]:
    """A study of 24 fc8 and conv5 panels over 2 lists, 4 catch trials a list and the
    demo's rules; returns the study file and each catch trial's expected answer."""
    rng = np.random.default_rng(seed)
    (root / "panels").mkdir(parents=True)

    def png(name: str) -> str:
        path = root / "panels" / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
        return str(path)

    panels = pd.DataFrame([{"panel_id": f"{layer}_{u}", "layer": layer, "unit": u,
                            "path": png(f"{layer}_{u}")}
                           for layer in ("conv5", "fc8") for u in range(12)])
    practice = pd.DataFrame([{"panel_id": f"practice_{i}", "path": png(f"practice_{i}"),
                              "label": f"class {i}"} for i in range(6)])
    catch = pd.DataFrame([{"panel_id": f"catch_{k}_{i}", "path": png(f"catch_{k}_{i}"),
                           "expected": k, "label": "7" if k == "yes" else None}
                          for k in ("yes", "no") for i in range(2)])
    study = build_design(panels, practice, n_lists=2, participants=24, seed=seed,
                         catch=catch, catch_trials=4)
    study["exclusion_rules"] = read_rules(DEFAULT_RULES).to_json()
    path = write_study(study, root / "study.json")
    expected = {pid: entry["catch_expected"] for pid, entry in study["catch_panels"].items()}
    return path, expected


def test_the_demo_rules_exclude_the_inattentive_and_keep_the_attentive(tmp_path):
    design, expected = catch_design(tmp_path / "design")
    assert len(expected) == 8   # 4 a list, each catch trial its own id
    app = study_app(f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "instance", design,
                    "INATT3")

    def rater(panel, image, rng):
        """Attentive and deterministic: catch panels answered as expected (the test knows
        them by id; the participant's browser does not), yes to fc8, no to conv5."""
        if panel["panel_id"] in expected:
            yes = expected[panel["panel_id"]] == "yes"
        else:
            yes = panel["panel_id"].startswith("fc8")
        return yes, "seven" if yes else None

    with serving(app) as base:
        result = run_simulation(base, 24, 6, seed=2, think_ms=0, reload_rate=0,
                                abandon_rate=0, rater=rater, inattentive=0.25)
        assert result.completed == 24, result.errors
        write_exports(app.extensions["store"], tmp_path / "export")
    write_truth(tmp_path / "truth.csv", result.pids, result.inattentive)
    rows = list(csv.DictReader((tmp_path / "export" / "participants.csv").open()))
    verdict = {r["prolific_pid"]: r for r in rows}
    assert len(verdict) == 24 and len(result.inattentive) == 6
    for pid, row in verdict.items():
        if pid in result.inattentive:
            assert row["excluded"] == "true", row
            assert "fast" in row["exclusion_reasons"].split(";"), row
        else:
            assert row["excluded"] == "false", row
            assert row["catch_passed"] == row["catch_total"] == "4", row
            assert float(row["median_rt_ms"]) > 1000, row

    # the demo's report of it: the confusion table
    tables = {}
    for way, yes in (("all", 40.0), ("after", 50.0), ("truth", 50.0)):
        tables[way] = tmp_path / f"table2_{way}.csv"
        tables[way].write_text(f"layer,pct_yes,pct_units_yes80\nconv5,{yes - 40},0.0\n"
                               f"fc8,{yes + 40},100.0\n")
    report = exclusion_report(tmp_path / "export" / "participants.csv",
                              tmp_path / "truth.csv", tables, rules=DEFAULT_RULES,
                              inattentive=0.25, seed=2)
    assert report.confusion == {"inattentive": {"excluded": 6, "kept": 0},
                                "attentive": {"excluded": 0, "kept": 18}}
    assert report.rate("inattentive") == 1.0 and report.rate("attentive") == 0.0
    assert report.fired["fast"] == {"inattentive": 6}
    text = report.markdown()
    assert "| inattentive | 6 | 0 | 6 | 100.0 |" in text
    assert "| attentive | 0 | 18 | 18 | 0.0 |" in text
    assert "median answer time under 1000 ms" in text


def test_the_report_compares_table2_three_ways(tmp_path):
    truth = write_truth(tmp_path / "truth.csv", ["a", "b", "c", "d"], {"a"})
    (tmp_path / "participants.csv").write_text(
        "participant_id,prolific_pid,status,excluded,exclusion_reasons\r\n"
        "1,a,completed,true,catch;fast\r\n2,b,completed,false,\r\n"
        "3,c,completed,true,catch\r\n4,d,active,,\r\n")
    tables = {}
    for way, rows in (("all", [("conv5", 40, 10), ("fc8", 80, 50)]),
                      ("after", [("conv5", 32, 5), ("fc8", 96, 100)]),
                      ("truth", [("conv5", 30, 0), ("fc8", 100, 100)])):
        tables[way] = tmp_path / f"table2_{way}.csv"
        tables[way].write_text("layer,n_judgments,pct_yes,pct_units_yes80\n" + "".join(
            f"{layer},10,{yes},{units}\n" for layer, yes, units in rows))
    report = exclusion_report(tmp_path / "participants.csv", truth, tables)
    assert report.confusion == {"inattentive": {"excluded": 1, "kept": 0},
                                "attentive": {"excluded": 1, "kept": 1}}
    assert report.unfinished == {"inattentive": 0, "attentive": 1}
    assert report.fired == {"catch": {"inattentive": 1, "attentive": 1},
                            "fast": {"inattentive": 1}}
    assert report.distance("all") == pytest.approx(15.0)      # (10 + 20) / 2
    assert report.distance("after") == pytest.approx(3.0)     # (2 + 4) / 2
    assert report.distance("all", "pct_units_yes80") == pytest.approx(30.0)
    text = report.markdown()
    yes, units = text.split("| % yes (of judgments) |")[1].split("| % units with ≥80% yes |")
    assert "| conv5 | 40.0 | 32.0 | 30.0 |" in yes and "| fc8 | 80.0 | 96.0 | 100.0 |" in yes
    assert "| distance from the truth | 15.0 | 3.0 | – |" in yes
    assert "| conv5 | 10.0 | 5.0 | 0.0 |" in units
    assert "| distance from the truth | 30.0 | 2.5 | – |" in units

    # a participant the truth does not know: files of different runs
    write_truth(tmp_path / "other.csv", ["a", "b"], set())
    with pytest.raises(ValueError, match="different runs"):
        exclusion_report(tmp_path / "participants.csv", tmp_path / "other.csv", tables)


def test_attentive_responses_keep_every_cell_of_the_attentive(tmp_path):
    source = tmp_path / "responses.csv"
    source.write_bytes(b"participant_id,prolific_pid,object_text,answer_yes\r\n"
                       b"1,a,\"a, b\",true\r\n2,b,'=1+1,true\r\n1,a,,false\r\n3,c,x,true\r\n")
    truth = write_truth(tmp_path / "truth.csv", ["a", "b", "c"], {"b"})
    out = attentive_responses(source, truth, tmp_path / "kept" / "responses.csv")
    assert out.read_bytes() == (b"participant_id,prolific_pid,object_text,answer_yes\r\n"
                                b"1,a,\"a, b\",true\r\n1,a,,false\r\n3,c,x,true\r\n")
