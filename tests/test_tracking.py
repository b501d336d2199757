"""What the trial page records while a panel is shown (issue 17; docs/study-design.md,
"What the trial page records"): ``hidden_ms``, ``focus_losses``, ``pasted`` and
``answer_input``. Their validation (server/api.py, ``parse_answer``), their storage and
export on SQLite and on PostgreSQL, the migration of a store from before them (schema
version 4), arbitrary values never answering 5xx (Hypothesis), the simulator sending them
and the consent page naming them. The browser's side: tests/test_browser.py."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_world import (
    Participant,
    count,
    make_design,
    participant_row,
    serving,
    store_of,
    store_url,
    study_app,
)
from sqlalchemy import inspect, select

from server import validate
from server.api import ANSWER_INPUTS, MAX_FOCUS_LOSSES, MAX_RT_MS, parse_answer
from server.assignment import TrialError
from server.export import RESPONSE_COLUMNS, write_exports
from server.simulate import run_simulation, tracking_fields
from server.store import SCHEMA_VERSION, TRACKING_COLUMNS, Store, meta, responses

FIELDS = ("hidden_ms", "focus_losses", "pasted", "answer_input")
BASE = {"trial_index": 0, "panel_id": "fc8_0000", "answer_yes": True, "object_text": "a cat",
        "rt_answer_ms": 900, "rt_text_ms": 1500, "shown_at": 1.7e12,
        "client_answered_at": 1.7e12 + 2400}
TRACKED = {"hidden_ms": 1234, "focus_losses": 2, "pasted": True, "answer_input": "mouse"}


def parse(**fields):
    return parse_answer({**BASE, **fields}, 100)


def tracked(answer) -> dict:
    return {name: getattr(answer, name) for name in FIELDS}


# --- validation ---------------------------------------------------------------------------

def test_the_fields_are_parsed():
    assert tracked(parse(**TRACKED)) == TRACKED
    for how in ANSWER_INPUTS:
        assert parse(answer_input=how).answer_input == how
    assert parse(hidden_ms=0, focus_losses=0, pasted=False).hidden_ms == 0
    assert parse(hidden_ms=MAX_RT_MS).hidden_ms == MAX_RT_MS
    assert parse(focus_losses=MAX_FOCUS_LOSSES).focus_losses == MAX_FOCUS_LOSSES
    assert parse(hidden_ms=250.6).hidden_ms == 251          # a number, rounded like the rts


@pytest.mark.parametrize("fields", [{}, dict.fromkeys(FIELDS)], ids=["absent", "null"])
def test_the_fields_are_optional(fields):
    """An older page or client sends none of them (or nulls): nothing is recorded."""
    assert tracked(parse(**fields)) == dict.fromkeys(FIELDS)


def test_pasted_is_false_for_a_no():
    """A no has no text box to paste into: whatever a client says, nothing was pasted."""
    no = {"answer_yes": False, "object_text": None, "rt_text_ms": None}
    assert parse(**no, pasted=True).pasted is False
    assert parse(**no, pasted=False).pasted is False
    assert parse(**no).pasted is None
    assert parse(**no, **{k: v for k, v in TRACKED.items() if k != "pasted"}).hidden_ms == 1234


@pytest.mark.parametrize("name,value,words", [
    ("hidden_ms", -1, "between 0 and"),
    ("hidden_ms", MAX_RT_MS + 1, "between 0 and"),
    ("hidden_ms", -0.6, "between 0 and"),
    ("hidden_ms", "5", "must be int/float"),
    ("hidden_ms", True, "must be int/float"),
    ("hidden_ms", [5], "must be int/float"),
    ("hidden_ms", float("nan"), "out of range"),
    ("hidden_ms", 2**60, "out of range"),
    ("focus_losses", -1, "from 0 to"),
    ("focus_losses", MAX_FOCUS_LOSSES + 1, "from 0 to"),
    ("focus_losses", 1.5, "must be int, not float"),
    ("focus_losses", 2.0, "must be int, not float"),
    ("focus_losses", False, "must be int, not bool"),
    ("focus_losses", "1", "must be int, not str"),
    ("pasted", 1, "must be bool, not int"),
    ("pasted", "true", "must be bool, not str"),
    ("pasted", {}, "must be bool, not dict"),
    ("answer_input", "keyboard", "one of key, mouse, touch, pen"),
    ("answer_input", "KEY", "one of key, mouse, touch, pen"),
    ("answer_input", "", "one of"),
    ("answer_input", "key\x00", "NUL"),
    ("answer_input", "k" * 10_000, "one of"),
    ("answer_input", 1, "must be str, not int"),
    ("answer_input", ["key"], "must be str, not list"),
])
def test_bad_values_are_refused_naming_the_field(name, value, words):
    with pytest.raises(TrialError, match=words) as caught:
        parse(**{name: value})
    assert caught.value.status == 400 and name in str(caught.value)
    assert len(str(caught.value)) < 200                      # a long value is not echoed


# --- storage and export, on both stores ----------------------------------------------------

def stored(app, pid: str) -> list[dict]:
    person = participant_row(app, pid)
    with store_of(app).read() as conn:
        rows = conn.execute(select(responses).where(responses.c.participant_id == person.id)
                            .order_by(responses.c.trial_index)).all()
    return [{name: getattr(r, name) for name in FIELDS} for r in rows]


def test_the_fields_are_stored_and_a_repeat_changes_nothing(app):
    person = Participant(app.test_client())
    person.ready()
    assert person.answer(0, True, "a cat", **TRACKED).status_code == 201
    assert person.answer(1, False, **TRACKED).status_code == 201        # pasted: false
    assert person.answer(2, False).status_code == 201                   # an older page
    assert person.answer(3, True, "a dog", hidden_ms=0, focus_losses=0, pasted=False,
                         answer_input="key").status_code == 201
    # a repeat of trial 0 with other values returns the stored answer, changes nothing
    again = person.answer(0, True, "a cat", hidden_ms=1, focus_losses=0, pasted=False,
                          answer_input="touch")
    assert again.status_code == 200 and again.get_json()["duplicate"] is True
    assert stored(app, person.pid) == [
        TRACKED, {**TRACKED, "pasted": False}, dict.fromkeys(FIELDS),
        {"hidden_ms": 0, "focus_losses": 0, "pasted": False, "answer_input": "key"}]


@pytest.mark.parametrize("name,value", [("hidden_ms", -5), ("focus_losses", 1.5),
                                        ("pasted", "yes"), ("answer_input", "voice"),
                                        ("focus_losses", 10**6)])
def test_a_bad_value_is_a_400_and_stores_nothing(app, name, value):
    person = Participant(app.test_client())
    person.ready()
    reply = person.answer(0, True, "a cat", **{**TRACKED, name: value})
    assert reply.status_code == 400
    assert name in reply.get_json()["error"]
    assert count(app, responses) == 0
    assert person.answer(0, True, "a cat", **TRACKED).status_code == 201   # it goes on


def test_the_preview_takes_the_fields_and_stores_nothing(app):
    from server.auth import create_admin

    create_admin(store_of(app), "alice", "correct horse battery")
    client = app.test_client()
    page = client.get("/admin/login").get_data(as_text=True)
    token = page.split('name="csrf_token" value="')[1].split('"')[0]
    assert client.post("/admin/login", data={"username": "alice",
                                             "password": "correct horse battery",
                                             "csrf_token": token}).status_code == 302
    assert client.get("/preview?list=1").location == "/study"
    person = Participant(client, pid="preview")
    for step in (person.consent, person.instructions, person.device):
        assert step().status_code == 302
    reply = person.answer(0, True, "a cat", **TRACKED)
    assert reply.status_code == 200 and reply.get_json()["preview"] is True
    assert person.answer(1, True, "a cat", **{**TRACKED, "answer_input": "x"}) \
        .status_code == 400
    assert count(app, responses) == 0


def test_the_export_has_the_fields(app, tmp_path):
    person = Participant(app.test_client())
    person.ready()
    person.answer(0, True, "a cat", **TRACKED)
    person.answer(1, False, hidden_ms=0, focus_losses=0, pasted=False, answer_input="key")
    person.answer(2, False)
    write_exports(store_of(app), tmp_path)
    assert set(FIELDS) <= set(RESPONSE_COLUMNS)
    import csv

    with open(tmp_path / "responses.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [{k: r[k] for k in FIELDS} for r in rows] == [
        {"hidden_ms": "1234", "focus_losses": "2", "pasted": "true", "answer_input": "mouse"},
        {"hidden_ms": "0", "focus_losses": "0", "pasted": "false", "answer_input": "key"},
        {"hidden_ms": "", "focus_losses": "", "pasted": "", "answer_input": ""}]
    objects = json.loads((tmp_path / "responses.json").read_text(encoding="utf-8"))
    assert [{k: o[k] for k in FIELDS} for o in objects] == [
        TRACKED, {"hidden_ms": 0, "focus_losses": 0, "pasted": False, "answer_input": "key"},
        dict.fromkeys(FIELDS)]
    assert list(objects[0]) == list(RESPONSE_COLUMNS)


# --- an existing store ---------------------------------------------------------------------

def test_a_store_from_before_the_fields_is_upgraded(make_app, db_url, tmp_path):
    """A running study's store (schema version 4, answers stored) gains the four columns on
    start; its answers keep their values and read as not recorded; new answers record."""
    app = make_app()
    early = Participant(app.test_client())
    early.ready()
    assert early.answer(0, True, "a cat").status_code == 201
    store_of(app).dispose()
    old = Store(db_url)
    with old.write() as conn:                    # back to version 4's responses table
        for name in TRACKING_COLUMNS:
            conn.exec_driver_sql(f"ALTER TABLE responses DROP COLUMN {name}")
        conn.execute(meta.update().where(meta.c.key == "schema_version").values(value="4"))
    assert not set(TRACKING_COLUMNS) & {c["name"] for c in
                                        inspect(old.engine).get_columns("responses")}
    assert old.migrate() == 4
    assert set(TRACKING_COLUMNS) <= {c["name"] for c in
                                     inspect(old.engine).get_columns("responses")}
    with old.read() as conn:
        assert conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")) \
            .scalar() == str(SCHEMA_VERSION)
    assert old.migrate() == SCHEMA_VERSION                   # again: nothing to do
    old.dispose()

    upgraded = make_app(design=None)                          # the server starts again
    later = Participant(upgraded.test_client())
    later.ready()
    assert later.answer(0, True, "a dog", **TRACKED).status_code == 201
    assert stored(upgraded, early.pid) == [dict.fromkeys(FIELDS)]
    assert stored(upgraded, later.pid) == [TRACKED]
    with store_of(upgraded).read() as conn:
        kept = conn.execute(select(responses.c.object_text, responses.c.rt_answer_ms)
                            .order_by(responses.c.id)).all()
    assert [tuple(r) for r in kept] == [("a cat", 900), ("a dog", 900)]


# --- arbitrary values: never a 5xx ----------------------------------------------------------

@pytest.fixture(scope="module", params=["sqlite", pytest.param(
    "postgresql", marks=pytest.mark.needs_system("postgresql"))])
def world(request, tmp_path_factory):
    """One app per store for the property test (many participants, one address)."""
    root = tmp_path_factory.mktemp(f"tracking_{request.param}")
    design = make_design(root / "design", {"fc8": 6}, n_lists=2, participants=400)
    with store_url(request.param, root) as url:
        app = study_app(url, root / "instance", design, "TRACK1", TESTING=True,
                        ENTRY_MAX_PER_ADDRESS=None)
        yield app
        app.extensions["store"].dispose()


json_values = st.one_of(
    st.none(), st.booleans(),
    st.integers(-10, 10), st.integers(MAX_FOCUS_LOSSES - 2, MAX_FOCUS_LOSSES + 2),
    st.integers(MAX_RT_MS - 2, MAX_RT_MS + 2), st.integers(-(2**63), 2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(ANSWER_INPUTS + ("KEY", "", "keyboard", "key\x00", "\ud800", "touch ")),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.none(),
                                                         max_size=2))
bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4)


def expected(fields: dict, yes: bool) -> dict | None:
    """What parse_answer makes of ``fields`` (None: refused)."""
    try:
        answer = parse_answer({**BASE, "answer_yes": yes, "object_text": "a cat" if yes
                               else None, **fields}, 100)
    except TrialError:
        return None
    return tracked(answer)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(fields=bodies, yes=st.booleans())
def test_arbitrary_values_are_stored_as_parsed_or_refused_never_a_5xx(world, fields, yes):
    person = getattr(world, "person", None)
    state = person.state() if person is not None else None
    if state is None or state["next_index"] >= state["n_trials"]:
        person = world.person = Participant(world.test_client())
        state = person.ready()
    index = state["next_index"]
    panel = state["trials"][index]["panel_id"]
    body = {**BASE, "trial_index": index, "panel_id": panel, "answer_yes": yes,
            "object_text": "a cat" if yes else None, **fields}
    text = json.dumps(body)                   # NaN, Infinity and lone surrogates included
    try:
        want = expected(validate.loads(text), yes)
    except validate.Invalid:                  # refused before the fields are looked at
        want = None
    reply = person.client.post("/api/responses", data=text, content_type="application/json",
                               headers={"X-CSRF-Token": person.csrf()})
    assert reply.status_code < 500, (fields, reply.status_code, reply.data[:300])
    if reply.status_code == 201:
        assert want is not None, fields
        assert stored(world, person.pid)[index] == want
    else:
        assert reply.status_code == 400, (fields, reply.status_code)
        assert want is None, (fields, reply.get_json())
        assert isinstance(reply.get_json()["error"], str)


# --- the simulator and the consent page -------------------------------------------------------

def test_simulated_participants_send_the_fields(tmp_path):
    design = make_design(tmp_path / "design", {"fc8": 6}, n_lists=2, participants=8)
    app = study_app(f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "instance", design,
                    "SIMTRACK")
    with serving(app) as base:
        result = run_simulation(base, 8, 4, seed=5, think_ms=0, reload_rate=0,
                                abandon_rate=0)
    assert result.completed == 8, result.errors
    with store_of(app).read() as conn:
        rows = conn.execute(select(responses)).all()
    assert len(rows) == 8 * 9                      # 6 practice trials and 3 panels each
    assert {r.answer_input for r in rows} <= set(ANSWER_INPUTS) and \
        {r.answer_input for r in rows} >= {"key", "mouse"}
    assert all(r.hidden_ms is not None and r.hidden_ms >= 0 and r.focus_losses in (0, 1)
               for r in rows)
    assert all(r.pasted is False for r in rows if not r.answer_yes)


def test_tracking_fields_are_plausible():
    rng = random.Random(0)
    draws = [tracking_fields(rng, keys, yes, 20_000.0)
             for keys in (True, False) for yes in (True, False) for _ in range(2000)]
    keyed = [d["answer_input"] for d in draws[:4000]]
    assert 0.85 < keyed.count("key") / len(keyed) < 0.95
    switched = [d for d in draws if d["hidden_ms"]]
    assert 0.02 < len(switched) / len(draws) < 0.06
    assert all(2000 <= d["hidden_ms"] <= 16_000 and d["focus_losses"] == 1 for d in switched)
    assert 0.05 < sum(d["focus_losses"] for d in draws) / len(draws) < 0.09
    assert not any(d["pasted"] for d in draws[2000:4000])          # no yes, nothing pasted
    assert any(d["pasted"] for d in draws[:2000])
    for d in draws:
        assert expected(d, True) == d                                # the server takes them


def test_the_consent_page_says_what_is_recorded(app):
    person = Participant(app.test_client())
    person.enter()
    page = person.client.get("/consent").get_data(as_text=True)
    assert "keyboard or by clicking or tapping" in page
    assert "another tab or window" in page and "this page is hidden" in page
    assert "pasted into the answer box (not what was pasted)" in page
