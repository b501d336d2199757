"""Pre-registered exclusion rules: the rules themselves (analysis/exclusion.py), applied by
the server when a participant finishes and at export (server/exclusion.py), a list
reopened for an excluded participant (replace_excluded), practice scored, and Table 2
leaving the excluded out (analysis/table2.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from server_world import Participant, count, participant_row, store_of, study_app
from sqlalchemy import select

from analysis.exclusion import (
    RuleError,
    Rules,
    Trial,
    evaluate,
    normalise_text,
    parse_rules,
    practice_score,
    read_rules,
)
from analysis.table2 import drop_excluded
from analysis.table2 import main as table2_main
from experiment.design import build_design
from experiment.design import main as design_main
from server.assignment import StudyFull, start
from server.exclusion import evaluate_all, set_manual
from server.export import write_exports
from server.store import admin_actions, panels, participants
from server.study_file import read_study, write_study

RULES_TOML = """\
format = "selectivity-exclusion/1"
replace_excluded = false
[rules.catch]
max_failed = 0
[rules.fast]
min_median_ms = 500
[rules.practice]
min_correct = 1
"""


def main_trial(yes: bool, rt: float = 2000, text: str | None = None, **kw) -> Trial:
    return Trial(practice=False, answer_yes=yes, rt_answer_ms=rt,
                 object_text=text if yes else None, **kw)


# -- the rules, pure ------------------------------------------------------------------------

def test_each_rule_on_hand_made_trials():
    rules = parse_rules({"rules": {"catch": {"max_failed": 1}, "fast": {"min_median_ms": 800},
                                   "same_answer": {}, "pasted": {"max_panels": 1},
                                   "repeated_text": {"max_panels": 2},
                                   "practice": {"min_correct": 2}}})
    attentive = [
        Trial(practice=True, answer_yes=True, rt_answer_ms=3000, expected="yes"),
        Trial(practice=True, answer_yes=False, rt_answer_ms=3000, expected="no"),
        Trial(practice=True, answer_yes=True, rt_answer_ms=3000, expected=None),  # unscored
        main_trial(True, 900, "Dog."), main_trial(False, 700), main_trial(True, 1200, "dog"),
        main_trial(True, 1000, "cat", pasted=True),
        main_trial(True, 1500, "seven", catch=True, catch_expected="yes"),
        main_trial(True, 1500, "seven", catch=True, catch_expected="no"),     # one failed
    ]
    verdict = evaluate(rules, attentive)
    # median of 900, 700, 1200, 1000, 1500, 1500 = (1000 + 1200) / 2
    assert (verdict.catch_passed, verdict.catch_total) == (1, 2)
    assert (verdict.practice_correct, verdict.practice_scored) == (2, 2)
    assert verdict.median_rt_ms == 1100
    assert not verdict.excluded and verdict.reason_names == ""

    careless = [
        Trial(practice=True, answer_yes=False, rt_answer_ms=300, expected="yes"),
        Trial(practice=True, answer_yes=True, rt_answer_ms=300, expected="yes"),
        *[main_trial(True, 300, " DOG ", pasted=i < 2) for i in range(3)],
        main_trial(True, 300, "dog", catch=True, catch_expected="no"),
        main_trial(True, 300, "dog", catch=True, catch_expected="no"),
    ]
    verdict = evaluate(rules, careless)
    assert list(verdict.reasons) == ["catch", "fast", "same_answer", "pasted",
                                     "repeated_text", "practice"]
    assert verdict.reasons["catch"] == "failed 2 of 2 catch trials"
    assert verdict.reasons["repeated_text"] == "'dog' on 5 panels"
    assert verdict.reason_names == "catch;fast;same_answer;pasted;repeated_text;practice"
    assert practice_score(careless) == (1, 2)


def test_rules_at_their_boundaries():
    rules = parse_rules({"rules": {"catch": {"max_failed": 1}, "fast": {"min_median_ms": 800}}})
    fails = [main_trial(False, 800, catch=True, catch_expected="yes")] * 2
    assert evaluate(rules, fails[:1]).reasons == {}                      # 1 failed: allowed
    assert set(evaluate(rules, fails).reasons) == {"catch"}              # 2: more than 1
    assert evaluate(rules, [main_trial(False, 799.5)]).reason_names == "fast"
    # no rules: nobody is excluded, whatever they did
    assert not evaluate(Rules(), fails + [main_trial(False, 1)]).excluded
    # same answer needs two trials; practice trials never count for it or for speed
    same = parse_rules({"rules": {"same_answer": {}}})
    assert not evaluate(same, [main_trial(True)]).excluded
    assert evaluate(same, [main_trial(True), main_trial(True)]).excluded
    assert not evaluate(same, [Trial(True, False, 10), main_trial(True)]).excluded


def test_normalised_text():
    assert normalise_text("  A  Dog!! ") == "a dog"
    assert normalise_text("...") == normalise_text(None) == ""


@pytest.mark.parametrize("data, needle", [
    ({"rules": {"catchy": {}}}, "unknown rule 'catchy'"),
    ({"rules": {"catch": {}}}, "[rules.catch] needs max_failed"),
    ({"rules": {"catch": {"max_failed": 1.5}}}, "must be a whole number"),
    ({"rules": {"catch": {"max_failed": -1}}}, "of 0 or more"),
    ({"rules": {"fast": {"min_median_ms": True}}}, "must be a number"),
    ({"rules": {"same_answer": {"x": 1}}}, "it takes none"),
    ({"replace_excluded": "yes"}, "replace_excluded must be true or false"),
    ({"format": "other/1"}, "expected 'selectivity-exclusion/1'"),
    ({"reject_for": ["fastest"]}, "reject_for names unknown rule(s) fastest"),
    ({"rule": {}}, "unknown key(s) rule"),
])
def test_bad_rules_are_refused_with_what_to_fix(data, needle):
    with pytest.raises(RuleError) as caught:
        parse_rules(data, "rules.toml")
    assert needle in str(caught.value) and str(caught.value).startswith("rules.toml: ")


def test_rules_files(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text(RULES_TOML)
    rules = read_rules(path)
    assert rules.rules == {"catch": {"max_failed": 0}, "fast": {"min_median_ms": 500.0},
                           "practice": {"min_correct": 1}}
    assert parse_rules(json.loads(json.dumps(rules.to_json()))) == rules   # JSON round trip
    (tmp_path / "bad.toml").write_text("[rules.catch\n")
    with pytest.raises(RuleError, match="not valid TOML"):
        read_rules(tmp_path / "bad.toml")
    with pytest.raises(RuleError, match="no such rules file"):
        read_rules(tmp_path / "none.toml")


# -- the server: evaluated at the end and at export -------------------------------------------

def rules_design(root: Path, rules: dict | None, n_lists: int = 3, participants: int = 3
                 ) -> Path:
    """``n_lists`` lists of 2 fc8 panels and 2 catch trials (a yes, a no); 2 practice
    panels expecting yes and no."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)

    def png(name: str) -> str:
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            root / "img" / f"{name}.png")
        return str(root / "img" / f"{name}.png")

    am = pd.DataFrame([(f"fc8_{u}", "fc8", u, png(f"fc8_{u}")) for u in range(2 * n_lists)],
                      columns=["panel_id", "layer", "unit", "path"])
    practice = pd.DataFrame([("practice_0", png("practice_0"), "dog", "yes"),
                             ("practice_1", png("practice_1"), None, "no")],
                            columns=["panel_id", "path", "label", "expected"])
    catch = pd.DataFrame([("catch_dog_1", png("catch_dog"), "yes", "dog"),
                          ("catch_mixed_1", png("catch_mixed"), "no", None)],
                         columns=["panel_id", "path", "expected", "label"])
    study = build_design(am, practice, n_lists, participants, practice_trials=2, catch=catch,
                         catch_trials=2)
    if rules is not None:
        study["exclusion_rules"] = rules
    return write_study(study, root / "study.json")


def kinds(app) -> dict[str, tuple[bool, str | None, str | None]]:
    """panel id -> (practice, its expected answer, a catch's expected answer)."""
    with store_of(app).read() as conn:
        return {r.id: (r.practice, r.expected, r.catch_expected)
                for r in conn.execute(select(panels))}


def take_part(app, careful: bool, pid: str | None = None) -> Participant:
    """A participant who answers every trial: ``careful`` gets the practice and the catch
    trials right and takes 2 s a panel; otherwise always yes, in 200 ms."""
    known = kinds(app)
    person = Participant(app.test_client(), pid)
    state = person.ready()
    for trial in state["trials"]:
        practice, expected, catch = known[trial["panel_id"]]
        right = (expected or catch or "yes") == "yes"
        yes = right if careful else True
        response = person.answer(trial["index"], yes, "dog" if yes else None,
                                 trial["panel_id"], rt_answer_ms=2000 if careful else 200)
        assert response.status_code == 201, response.get_json()
    return person


@pytest.fixture
def rules_app(db_url, tmp_path):
    rules = parse_rules({"rules": {"catch": {"max_failed": 0}, "fast": {"min_median_ms": 500},
                                   "practice": {"min_correct": 2}}}).to_json()
    app = study_app(db_url, tmp_path / "instance", rules_design(tmp_path / "d", rules),
                    "DONE1", TESTING=True)
    yield app
    store_of(app).dispose()


def test_a_participant_is_evaluated_when_they_finish(rules_app):
    careful = take_part(rules_app, careful=True)
    careless = take_part(rules_app, careful=False)
    row = participant_row(rules_app, careful.pid)
    assert (row.status, row.excluded, row.exclusion_reasons) == ("completed", False, "")
    assert (row.catch_passed, row.catch_total, row.practice_correct, row.practice_scored,
            row.median_rt_ms) == (2, 2, 2, 2, 2000)
    row = participant_row(rules_app, careless.pid)
    assert (row.excluded, row.exclusion_reasons) == (True, "catch;fast;practice")
    assert (row.catch_passed, row.practice_correct, row.median_rt_ms) == (1, 1, 200)
    # someone still in the middle is not evaluated
    person = Participant(rules_app.test_client())
    person.ready()
    person.answer(0, True, "dog")
    row = participant_row(rules_app, person.pid)
    assert row.excluded is None
    # excluded by hand, then back to the rules: still not evaluated
    with store_of(rules_app).write() as conn:
        assert set_manual(conn, row.id, "exclude", "bot", "alice")["excluded"] is True
        assert set_manual(conn, row.id, None, "", "alice")["excluded"] is None
    assert participant_row(rules_app, person.pid).excluded is None


def test_the_export_carries_the_verdicts_and_a_manual_decision_overrides_the_rules(
        rules_app, tmp_path):
    careful = take_part(rules_app, careful=True)
    careless = take_part(rules_app, careful=False)
    store = store_of(rules_app)
    with store.write() as conn:
        careful_id = participant_row(rules_app, careful.pid).id
        careless_id = participant_row(rules_app, careless.pid).id
        set_manual(conn, careful_id, "exclude", "said they guessed", "alice")
        set_manual(conn, careless_id, "reinstate", "a slow connection", "alice")
    assert evaluate_all(store) == 2                       # the export evaluates again ...
    write_exports(store, tmp_path / "out")
    with open(tmp_path / "out" / "participants.csv", newline="") as fh:
        rows = {r["prolific_pid"]: r for r in csv.DictReader(fh)}
    # ... and keeps the decisions made by hand
    assert (rows[careful.pid]["excluded"], rows[careful.pid]["exclusion_reasons"],
            rows[careful.pid]["manual_reason"]) == ("true", "manual", "said they guessed")
    assert (rows[careless.pid]["excluded"], rows[careless.pid]["exclusion_reasons"]) == \
        ("false", "")
    assert (rows[careless.pid]["catch_passed"], rows[careless.pid]["catch_total"],
            rows[careless.pid]["practice_correct"], rows[careless.pid]["practice_scored"],
            rows[careless.pid]["median_rt_ms"]) == ("1", "2", "1", "2", "200.0")
    with store.read() as conn:
        done = conn.execute(select(admin_actions.c.action, admin_actions.c.target,
                                   admin_actions.c.detail)
                            .order_by(admin_actions.c.id)).all()
    assert [tuple(r) for r in done] == [("exclude", str(careful_id), "said they guessed"),
                                        ("reinstate", str(careless_id), "a slow connection")]
    # back to the rules: the careless participant is excluded again
    with store.write() as conn:
        set_manual(conn, careless_id, None, "", "alice")
    write_exports(store, tmp_path / "out")
    with open(tmp_path / "out" / "participants.csv", newline="") as fh:
        rows = {r["prolific_pid"]: r for r in csv.DictReader(fh)}
    assert (rows[careless.pid]["excluded"], rows[careless.pid]["exclusion_reasons"]) == \
        ("true", "catch;fast;practice")
    with store.write() as conn, pytest.raises(LookupError):
        set_manual(conn, 999, "exclude", "x", "alice")


@pytest.mark.parametrize("replace", [False, True])
def test_replace_excluded_reopens_the_place_of_an_excluded_participant(
        db_url, tmp_path, replace):
    rules = {"replace_excluded": replace, "rules": {"fast": {"min_median_ms": 500}}}
    app = study_app(db_url, tmp_path / "instance",
                    rules_design(tmp_path / "d", rules, n_lists=1, participants=1),
                    "DONE1", TESTING=True)
    try:
        take_part(app, careful=False)                   # the one place, excluded
        store = store_of(app)
        if replace:
            row, created = start(store, "P" * 24, "a" * 24, "s" * 24, 600)
            assert created and row.list_id == 1
        else:
            with pytest.raises(StudyFull):
                start(store, "P" * 24, "a" * 24, "s" * 24, 600)
        # excluded by hand counts the same way
        assert count(app, participants, participants.c.excluded.is_(True)) == 1
    finally:
        store_of(app).dispose()


def test_rules_in_the_design_and_at_load(tmp_path, capsys, db_url):
    rules_path = tmp_path / "rules.toml"
    rules_path.write_text(RULES_TOML)
    design = rules_design(tmp_path / "d", None)
    study = read_study(design)
    assert "exclusion_rules" not in study
    # experiment.design --exclusion-rules writes them into study.json
    root = tmp_path / "d"
    pd.DataFrame([(p, e["layer"], e["unit"], e["path"]) for p, e in study["panels"].items()],
                 columns=["panel_id", "layer", "unit", "path"]).to_csv(root / "am.csv",
                                                                         index=False)
    pd.DataFrame([(p, study["practice_panels"][p]["path"], "x", e) for p, e in
                  zip(study["practice"], ["yes", "no"], strict=True)],
                 columns=["panel_id", "path", "label", "expected"]).to_csv(
        root / "practice.csv", index=False)
    args = ["--panels", str(root / "am.csv"), "--practice", str(root / "practice.csv"),
            "--lists", "3", "--participants", "3", "--practice-trials", "2",
            "--out", str(tmp_path / "s" / "study.json"), "--exclusion-rules", str(rules_path)]
    assert design_main(args) == 0
    written = read_study(tmp_path / "s" / "study.json")
    assert parse_rules(written["exclusion_rules"]) == read_rules(rules_path)
    assert "exclusion rule" in capsys.readouterr().out
    (tmp_path / "bad.toml").write_text("[rules.catch]\nmax_failed = -2\n")
    args[-1] = str(tmp_path / "bad.toml")
    assert design_main(args) == 2
    assert "max_failed = -2: must be a whole number of 0 or more" in capsys.readouterr().err
    # load-study --exclusion-rules puts them in place of the file's (here: none)
    app = study_app(db_url, tmp_path / "instance", None, "X")
    try:
        result = app.test_cli_runner().invoke(args=["load-study", str(design),
                                                    "--exclusion-rules", str(rules_path)])
        assert result.exit_code == 0, result.output
        assert "3 exclusion rules" in result.output
        take_part(app, careful=False)
        with store_of(app).read() as conn:
            row = conn.execute(select(participants.c.exclusion_reasons)).one()
        assert row.exclusion_reasons == "catch;fast"      # 1 practice right: min_correct 1
    finally:
        store_of(app).dispose()


# -- Table 2 leaves the excluded out ------------------------------------------------------------

def test_table2_drops_the_excluded_and_says_why(tmp_path, capsys):
    judgments = pd.DataFrame({
        "participant_id": ["1", "1", "2", "2", "3", "3"],
        "layer": ["fc8"] * 6, "unit": [0, 1] * 3, "answer_yes": [True] * 4 + [False] * 2})
    people = pd.DataFrame({"participant_id": ["1", "2", "3"],
                           "status": ["completed"] * 3,
                           "excluded": ["false", "true", "true"],
                           "exclusion_reasons": ["", "catch;fast", "manual"]})
    kept, report = drop_excluded(judgments, people)
    assert list(kept["participant_id"]) == ["1", "1"]
    assert report.to_dict("records") == [
        {"reason": "catch", "participants": 1, "judgments": 2},
        {"reason": "fast", "participants": 1, "judgments": 2},
        {"reason": "manual", "participants": 1, "judgments": 2}]
    kept, _ = drop_excluded(judgments, people, keep=True)
    assert len(kept) == 6
    # an export from before exclusions: nothing is dropped
    kept, report = drop_excluded(judgments, people.drop(columns=["excluded"]))
    assert len(kept) == 6 and report.empty

    # the command line: participants.csv beside responses.csv is read by itself
    rows = []
    for pid, yes in (("1", True), ("2", False)):
        for unit in (0, 1):
            rows.append({"participant_id": pid, "trial_index": unit, "practice": "false",
                         "panel_id": f"fc8_{unit}", "layer": "fc8", "unit": unit,
                         "answer_yes": "true" if yes else "false",
                         "object_text": "seven" if yes else ""})
    out = tmp_path / "export"
    out.mkdir()
    pd.DataFrame(rows).to_csv(out / "responses.csv", index=False)
    people.iloc[:2].to_csv(out / "participants.csv", index=False)
    pd.DataFrame({"layer": ["fc8"] * 2, "unit": [0, 1], "top_class": [7, 7],
                  "ccmas_class": [7, 7]}).to_csv(tmp_path / "sel.csv", index=False)
    common = ["--responses", str(out / "responses.csv"), "--selectivity",
              str(tmp_path / "sel.csv"), "--classes", "digits", "--no-extras"]
    assert table2_main([*common, "--out", str(tmp_path / "t")]) == 0
    table = pd.read_csv(tmp_path / "t" / "table2.csv")
    assert table.loc[0, "n_judgments"] == 2 and table.loc[0, "pct_yes"] == 100
    assert "Left out" in (tmp_path / "t" / "table2.md").read_text()
    assert pd.read_csv(tmp_path / "t" / "exclusions.csv").to_dict("records") == [
        {"reason": "catch", "participants": 1, "judgments": 2},
        {"reason": "fast", "participants": 1, "judgments": 2}]
    assert table2_main([*common, "--keep-excluded", "--out", str(tmp_path / "k")]) == 0
    table = pd.read_csv(tmp_path / "k" / "table2.csv")
    assert table.loc[0, "n_judgments"] == 4 and table.loc[0, "pct_yes"] == 50
    capsys.readouterr()


def test_a_store_from_schema_version_6_gains_the_exclusion_columns(db_url):
    """A version-6 store (no exclusion columns, no prolific_files) is migrated on start;
    its participants are not evaluated yet (excluded NULL)."""
    from sqlalchemy import inspect as inspect_db

    from server.store import (
        ADMIN_ACTION_COLUMNS,
        PANEL_EXPECTED_COLUMNS,
        PARTICIPANT_EXCLUSION_COLUMNS,
        SCHEMA_VERSION,
        STUDY_EXCLUSION_COLUMNS,
        Store,
        meta,
        metadata,
    )

    store = Store(db_url)
    dropped = {"study": STUDY_EXCLUSION_COLUMNS, "panels": PANEL_EXPECTED_COLUMNS,
               "participants": PARTICIPANT_EXCLUSION_COLUMNS,
               "admin_actions": ADMIN_ACTION_COLUMNS}
    with store.write() as conn:
        metadata.create_all(conn)
        conn.exec_driver_sql("DROP TABLE prolific_files")
        for table, columns in dropped.items():
            for column in columns:
                conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.execute(meta.insert().values(key="schema_version", value="6"))
    assert store.migrate() == 6
    found = inspect_db(store.engine)
    for table, columns in dropped.items():
        assert set(columns) <= {c["name"] for c in found.get_columns(table)}, table
    assert found.has_table("prolific_files")
    with store.read() as conn:
        assert conn.execute(select(meta.c.value)).scalar() == str(SCHEMA_VERSION)
    assert store.migrate() == SCHEMA_VERSION
    store.dispose()


@pytest.mark.parametrize("catch, rules, says", [
    (False, None, "no checks"),
    (True, None, "checks"),
    (True, {"rules": {"catch": {"max_failed": 0}}}, "checks, rejection"),
    (True, {"reject_for": [], "rules": {"catch": {"max_failed": 0}}}, "checks"),
])
def test_consent_and_instructions_say_what_the_study_checks(tmp_path, catch, rules, says):
    """The pages speak of attention checks only where the study has catch trials, and of
    rejection only where failing them rejects a submission (reject_for)."""
    if catch:
        design = rules_design(tmp_path / "d", rules)
    else:
        from server_world import make_design
        design = make_design(tmp_path / "d", {"fc8": 3}, 1, 1)
    app = study_app(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "instance", design, "D1",
                    TESTING=True)
    try:
        person = Participant(app.test_client())
        person.enter()
        consent = person.client.get("/consent").get_data(as_text=True)
        person.consent()
        instructions = person.client.get("/instructions").get_data(as_text=True)
    finally:
        store_of(app).dispose()
    assert ("paying attention" in consent) == catch
    assert ("rejected" in consent) == ("rejection" in says)
    assert ("real pictures" in instructions) == catch
    assert ("There are no right or wrong answers" in instructions) == (not catch)
