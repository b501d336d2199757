"""The data export (server/export.py), on SQLite and on PostgreSQL: participants walk the
flow through the HTTP interface, then responses.csv/json and participants.csv/json are
checked cell by cell; the CLI; atomic replacement; CSV-injection escaping; streaming in
bounded memory (SQLite, tracemalloc) and through a server-side cursor (PostgreSQL)."""

from __future__ import annotations

import csv
import json
import os
import re
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pytest
from server_world import LAYERS, Participant, store_of
from sqlalchemy import event, select

from analysis.table2 import read_participants, read_responses, select_judgments
from server import export
from server.export import (
    EXPORTS,
    PARTICIPANT_COLUMNS,
    RESPONSE_COLUMNS,
    iter_export,
    write_exports,
)
from server.store import Store, list_panels, lists, panels, participants, responses

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def read_json(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def as_csv(value, escape: bool = True) -> str:
    """A JSON value as the CSV export writes it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value if escape and value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
    return repr(value) if isinstance(value, float) else str(value)


def walk(app) -> dict[str, Participant]:
    """Three participants: one completes, one stops after the practice and one main trial,
    one declines consent."""
    done = Participant(app.test_client())
    done.ready()
    done.answer_all()
    assert done.post("/debrief").location == "/study"
    partial = Participant(app.test_client())
    partial.ready()
    for i in range(7):
        assert partial.answer(i, yes=i == 0, text="=1+1" if i == 0 else None).status_code == 201
    declined = Participant(app.test_client())
    declined.enter()
    declined.consent("decline")
    return {"done": done, "partial": partial, "declined": declined}


# --- content ------------------------------------------------------------------------------

def test_exported_responses_and_participants_after_the_flow(app, tmp_path):
    before = time.time()
    people = walk(app)
    after = time.time()
    out = tmp_path / "out"
    counts = write_exports(store_of(app), out)
    assert counts == {"responses.csv": 19, "participants.csv": 3, "responses.json": 19,
                      "participants.json": 3}
    assert sorted(os.listdir(out)) == sorted(EXPORTS)

    columns, rows = read_csv(out / "responses.csv")
    assert tuple(columns) == RESPONSE_COLUMNS
    assert len(rows) == 19
    with store_of(app).read() as conn:
        ids = dict(conn.execute(select(participants.c.prolific_pid, participants.c.id)).all())
        lists_of = dict(conn.execute(select(participants.c.id, participants.c.list_id)).all())
        info = {r.id: r for r in conn.execute(select(panels))}
    done, partial = people["done"], people["partial"]
    assert [r["participant_id"] for r in rows] == [str(ids[done.pid])] * 12 + \
        [str(ids[partial.pid])] * 7
    assert ids[done.pid] < ids[partial.pid]
    assert [r["trial_index"] for r in rows] == [str(i) for i in range(12)] + \
        [str(i) for i in range(7)]
    assert [r["practice"] for r in rows] == \
        ["true"] * 6 + ["false"] * 6 + ["true"] * 6 + ["false"]
    order = [t["panel_id"] for t in done.state()["trials"]]
    assert [r["panel_id"] for r in rows[:12]] == order
    for r in rows:
        pid = int(r["participant_id"])
        person = done if pid == ids[done.pid] else partial
        assert r["prolific_pid"] == person.pid
        assert r["study_id"] == person.study_id and r["session_id"] == person.session_id
        assert r["list_id"] == str(lists_of[pid])
        assert r["participant_status"] == ("completed" if person is done else "active")
        panel = info[r["panel_id"]]
        if r["practice"] == "true":
            assert panel.practice and r["layer"] == "" and r["unit"] == ""
        else:
            assert not panel.practice
            assert (r["layer"], r["unit"]) == (panel.layer, str(panel.unit))
            assert r["layer"] in LAYERS and r["panel_id"] == f"{r['layer']}_{int(r['unit']):04d}"
        index = int(r["trial_index"])
        assert r["rt_answer_ms"] == str(900 + index)
        for column in ("shown_at", "client_answered_at", "answered_at"):
            assert ISO.match(r[column]), (column, r[column])
        assert r["shown_at"] == "2023-11-14T22:13:20.000Z"            # 1.7e12 ms, browser
        assert r["client_answered_at"] == "2023-11-14T22:13:22.400Z"
        answered = datetime.fromisoformat(r["answered_at"]).timestamp()
        assert before - 0.001 <= answered <= after + 0.001
    # done answered yes (with "a dog") on even trials; partial answered "=1+1" on trial 0
    for r in rows[:12]:
        yes = int(r["trial_index"]) % 2 == 0
        assert r["answer_yes"] == ("true" if yes else "false")
        assert r["object_text"] == ("a dog" if yes else "")
        assert r["rt_text_ms"] == ("1500" if yes else "")            # null -> empty cell
    assert [r["answer_yes"] for r in rows[12:]] == ["true"] + ["false"] * 6
    assert [r["object_text"] for r in rows[12:]] == ["'=1+1"] + [""] * 6   # escaped in CSV
    # what the trial page records (tests/test_tracking.py): these answers sent none of it
    tracking = ("hidden_ms", "focus_losses", "pasted", "answer_input")
    assert set(tracking) <= set(columns)
    assert {r[name] for r in rows for name in tracking} == {""}

    columns, people_rows = read_csv(out / "participants.csv")
    assert tuple(columns) == PARTICIPANT_COLUMNS
    by_pid = {r["prolific_pid"]: r for r in people_rows}
    assert [r["prolific_pid"] for r in people_rows] == [done.pid, partial.pid,
                                                        people["declined"].pid]
    d, p, x = by_pid[done.pid], by_pid[partial.pid], by_pid[people["declined"].pid]
    assert (d["status"], d["n_trials"], d["n_answered"], d["n_practice_answered"]) == \
        ("completed", "12", "12", "6")
    assert (p["status"], p["n_trials"], p["n_answered"], p["n_practice_answered"]) == \
        ("active", "12", "7", "6")
    assert (x["status"], x["n_answered"], x["n_practice_answered"]) == ("declined", "0", "0")
    for column in ("created_at", "consented_at", "device_ok_at", "completed_at",
                   "debriefed_at", "lease_expires_at"):
        assert ISO.match(d[column]), (column, d[column])
    assert d["ended_at"] == ""
    duration = float(d["duration_s"])
    created = datetime.fromisoformat(d["created_at"]).timestamp()
    completed = datetime.fromisoformat(d["completed_at"]).timestamp()
    assert duration == pytest.approx(completed - created, abs=0.002) and 0 <= duration < 60
    assert p["completed_at"] == p["debriefed_at"] == p["duration_s"] == p["ended_at"] == ""
    assert ISO.match(x["ended_at"]) and x["consented_at"] == x["device_ok_at"] == ""
    assert (d["window_width"], d["window_height"]) == ("1280", "800")
    assert (x["window_width"], x["window_height"]) == ("", "")
    with store_of(app).read() as conn:
        agent = conn.execute(select(participants.c.user_agent)
                             .where(participants.c.prolific_pid == done.pid)).scalar()
    assert agent and d["user_agent"] == agent
    assert d["study_id"] == done.study_id and d["session_id"] == done.session_id
    assert d["list_id"] == str(lists_of[ids[done.pid]])


def test_json_holds_the_csv_content_with_native_types(app, tmp_path):
    walk(app)
    out = tmp_path / "out"
    write_exports(store_of(app), out)
    for stem, columns in (("responses", RESPONSE_COLUMNS),
                          ("participants", PARTICIPANT_COLUMNS)):
        header, csv_rows = read_csv(out / f"{stem}.csv")
        objects = read_json(out / f"{stem}.json")
        assert tuple(header) == columns
        assert [tuple(o) for o in objects] == [columns] * len(csv_rows)   # keys, in order
        assert [{k: as_csv(v) for k, v in o.items()} for o in objects] == csv_rows
    objects = read_json(out / "responses.json")
    first = objects[0]
    assert isinstance(first["participant_id"], int) and isinstance(first["trial_index"], int)
    assert first["practice"] is True and first["layer"] is None and first["unit"] is None
    assert first["shown_at"] == "2023-11-14T22:13:20.000Z"
    main = [o for o in objects if not o["practice"]]
    assert all(isinstance(o["unit"], int) and isinstance(o["layer"], str) for o in main)
    assert [o["object_text"] for o in objects if o["answer_yes"] is False][0] is None
    assert objects[12]["object_text"] == "=1+1"                              # raw in JSON
    people = read_json(out / "participants.json")
    assert isinstance(people[0]["duration_s"], float) and people[1]["duration_s"] is None
    assert people[0]["window_width"] == 1280 and people[2]["completed_at"] is None


def export_with_texts(app, tmp_path, texts: list[str], **participant) -> Path:
    """The finished participant's first answers' object_text set to ``texts`` and their
    row updated with ``participant``; the exports written; their folder."""
    people = walk(app)
    store = store_of(app)
    with store.write() as conn:
        pid = conn.execute(select(participants.c.id)
                           .where(participants.c.prolific_pid == people["done"].pid)).scalar()
        for i, text in enumerate(texts):
            conn.execute(responses.update()
                         .where(responses.c.participant_id == pid,
                                responses.c.trial_index == i)
                         .values(object_text=text))
        conn.execute(participants.update().where(participants.c.id == pid)
                     .values(**participant))
    out = tmp_path / "out"
    write_exports(store, out)
    return out


def test_csv_injection_is_escaped_in_csv_only(app, tmp_path):
    texts = ["=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "\tx", "\ry", "'quoted",
             "a = b", "", "plain"]
    out = export_with_texts(app, tmp_path, texts, user_agent="=cmd|' /C calc'!A0",
                            session_param="-5")
    _, rows = read_csv(out / "responses.csv")
    assert [r["object_text"] for r in rows[:len(texts)]] == [
        "'=HYPERLINK(\"http://x\")", "'+1", "'-2", "'@SUM(A1)", "'\tx", "'\ry", "'quoted",
        "a = b", "", "plain"]
    assert rows[0]["session_id"] == "'-5"
    # numbers are never altered: a negative number stays a number
    assert all(re.fullmatch(r"\d+", r["rt_answer_ms"]) for r in rows)
    _, people_rows = read_csv(out / "participants.csv")
    assert people_rows[0]["user_agent"] == "'=cmd|' /C calc'!A0"
    objects = read_json(out / "responses.json")
    assert [o["object_text"] for o in objects[:len(texts)]] == texts
    assert read_json(out / "participants.json")[0]["user_agent"] == "=cmd|' /C calc'!A0"


LOOK_ALIKES = {   # stored text -> its CSV cell
    "\uff1d1+1": "'\uff1d1+1",              # fullwidth equals sign: NFKC "="
    "\u200b=1+1": "'\u200b=1+1",            # zero width space (Cf) before "="
    "\u202e=1+1": "'\u202e=1+1",            # right-to-left override (Cf) before "="
    "\ufeff\u2060+1": "'\ufeff\u2060+1",    # BOM and word joiner (Cf) before "+"
    "\uff0d2": "'\uff0d2",                  # fullwidth hyphen-minus
    "\uff20SUM(A1)": "'\uff20SUM(A1)",      # fullwidth commercial at
    "\ufe661": "'\ufe661",                  # small equals sign
    "\u00a0\u3000=1": "'\u00a0\u3000=1",    # no-break and ideographic spaces before "="
    "\u202ecat": "\u202ecat",               # an override before a word: kept as it is
    "cat \uff1d dog": "cat \uff1d dog",     # a look-alike inside the text: kept
    "\u00fc=1": "\u00fc=1",
    "=\u0338": "'=\u0338",                  # "=" and a combining overlay (NFKC: U+2260)
}


@pytest.mark.parametrize("text,cell", list(LOOK_ALIKES.items()))
def test_csv_text_rule(text, cell):
    assert export.csv_text(text) == cell


def test_formula_look_alikes_are_escaped_after_normalisation(app, tmp_path):
    texts = list(LOOK_ALIKES)
    out = export_with_texts(app, tmp_path, texts, user_agent="\u200b\uff1dcmd|' /C calc'!A0")
    _, rows = read_csv(out / "responses.csv")
    assert [r["object_text"] for r in rows[:len(texts)]] == list(LOOK_ALIKES.values())
    _, people_rows = read_csv(out / "participants.csv")
    assert people_rows[0]["user_agent"] == "'\u200b\uff1dcmd|' /C calc'!A0"
    # the JSON keeps every text exactly as stored
    assert [o["object_text"] for o in read_json(out / "responses.json")[:len(texts)]] == texts


def test_analysis_reads_the_exported_files(app, tmp_path):
    people = walk(app)
    out = tmp_path / "out"
    write_exports(store_of(app), out, names=["responses.csv", "participants.csv"])
    assert sorted(os.listdir(out)) == ["participants.csv", "responses.csv"]
    df = read_responses(out / "responses.csv")
    assert len(df) == 19 and df["practice"].sum() == 12 and df["answer_yes"].dtype == bool
    assert df.loc[~df["practice"], "unit"].notna().all()
    assert set(df.loc[~df["practice"], "layer"]) <= set(LAYERS)
    assert list(df["object_text"][12:14]) == ["'=1+1", ""]
    people_df = read_participants(out / "participants.csv")
    main = select_judgments(df, people_df)
    assert len(main) == 6 and set(main["prolific_pid"]) == {people["done"].pid}
    # without participants.csv, the participant_status column decides
    assert len(select_judgments(df)) == 6
    assert len(select_judgments(df, people_df, include_incomplete=True)) == 7


# --- empty stores, streaming, the command -----------------------------------------------

@pytest.mark.parametrize("loaded", [False, True], ids=["no-study", "no-participants"])
def test_an_empty_store_exports_headers_only(make_app, tmp_path, loaded):
    app = make_app() if loaded else make_app(design=None)
    out = tmp_path / "out"
    assert write_exports(store_of(app), out) == dict.fromkeys(EXPORTS, 0)
    assert (out / "responses.csv").read_bytes() == ",".join(RESPONSE_COLUMNS).encode() + b"\r\n"
    assert (out / "participants.csv").read_bytes() == \
        ",".join(PARTICIPANT_COLUMNS).encode() + b"\r\n"
    assert (out / "responses.json").read_bytes() == b"[]\n"
    assert json.loads((out / "participants.json").read_text()) == []
    assert "".join(iter_export(store_of(app), "responses.json")) == "[]\n"
    assert read_csv(out / "responses.csv")[1] == []


def test_iter_export_streams_the_same_text_and_releases_its_connection(app, tmp_path):
    walk(app)
    store = store_of(app)
    out = tmp_path / "out"
    write_exports(store, out)
    for name in EXPORTS:
        assert "".join(iter_export(store, name)).encode() == (out / name).read_bytes()
    with pytest.raises(ValueError, match="unknown export"):
        iter_export(store, "secrets.csv")                  # at once, not on iteration
    with pytest.raises(ValueError, match="unknown export"):
        write_exports(store, out, names=["responses.tsv"])
    pool = store.engine.pool
    chunks = iter_export(store, "responses.csv")
    assert pool.checkedout() == 0                          # nothing opened until consumed
    assert next(chunks).startswith("participant_id,")
    assert pool.checkedout() == 1
    chunks.close()                                         # a download cut short
    assert pool.checkedout() == 0


def test_exports_read_through_a_streaming_cursor(app):
    walk(app)
    store = store_of(app)
    seen = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def record(conn, cursor, statement, parameters, context, executemany):
        # every read of rows (the study's one row of exclusion rules aside) streams
        if statement.lstrip().upper().startswith("SELECT") and \
                "study.exclusion_rules" not in statement:
            seen.append((context.execution_options.get("yield_per"),
                         context.execution_options.get("stream_results"),
                         type(cursor).__name__))

    try:
        for name in EXPORTS:
            seen.clear()
            assert sum(1 for _ in iter_export(store, name)) >= 2
            assert seen, name
            assert all(s[:2] == (export.YIELD_PER, True) for s in seen), (name, seen)
            if store.dialect == "postgresql":         # a named (server-side) cursor
                assert all(s[2] == "ServerCursor" for s in seen), (name, seen)
    finally:
        event.remove(store.engine, "before_cursor_execute", record)


def test_write_exports_replaces_files_atomically(app, tmp_path):
    walk(app)
    store = store_of(app)
    out = tmp_path / "out"
    out.mkdir()
    for name in EXPORTS:
        (out / name).write_text("old\n")

    def fail(name, rows):
        if name == "responses.json":
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_exports(store, out, progress=fail)
    assert sorted(os.listdir(out)) == sorted(EXPORTS)            # no temporary files left
    assert all((out / name).read_text() == "old\n" for name in EXPORTS)   # none replaced

    calls = []
    counts = write_exports(store, out, progress=lambda name, n: calls.append((name, n)))
    assert sorted(os.listdir(out)) == sorted(EXPORTS)
    assert counts["responses.csv"] == 19 and counts["participants.json"] == 3
    assert calls[-1] == ("participants.json", 3) and ("responses.csv", 19) in calls
    assert read_csv(out / "responses.csv")[1][0]["trial_index"] == "0"


def test_export_command_writes_the_files(app, tmp_path):
    walk(app)
    export.init_app(app)
    runner = app.test_cli_runner()
    out = tmp_path / "both"
    result = runner.invoke(args=["export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{out / 'responses.csv'}: 19 rows" in result.output
    assert f"{out / 'participants.json'}: 3 rows" in result.output
    assert sorted(os.listdir(out)) == sorted(EXPORTS)
    assert len(read_json(out / "responses.json")) == 19

    result = runner.invoke(args=["export", "--out", str(tmp_path / "csv"), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / "csv")) == ["participants.csv", "responses.csv"]
    result = runner.invoke(args=["export", "--out", str(tmp_path / "json"), "--format",
                                 "json"])
    assert sorted(os.listdir(tmp_path / "json")) == ["participants.json", "responses.json"]

    result = runner.invoke(args=["export"])
    assert result.exit_code != 0 and "--out" in result.output
    result = runner.invoke(args=["export", "--out", str(out), "--format", "xml"])
    assert result.exit_code != 0


def test_times_are_iso_utc_milliseconds():
    assert export.iso_time(None) is None
    assert export.iso_time(0) == "1970-01-01T00:00:00.000Z"
    assert export.iso_time(1.7e9 + 0.4564) == "2023-11-14T22:13:20.456Z"
    assert export.iso_time(1.7e9 + 0.9996) == "2023-11-14T22:13:21.000Z"   # rounds, carries
    moment = datetime(2026, 11, 26, 1, 2, 3, 456000, tzinfo=UTC).timestamp()
    assert export.iso_time(moment) == "2026-11-26T01:02:03.456Z"


# --- bounded memory ---------------------------------------------------------------------------

def fill(store: Store, first: int, n_participants: int, n_trials: int) -> None:
    """Synthetic participants ``first..`` with ``n_trials`` responses each (bulk inserts);
    the panels and the list are created with the first call."""
    t0 = 1.75e9
    with store.write() as conn:
        if first == 1:
            conn.execute(panels.insert(), [
                dict(id=f"practice_{i}", practice=True, layer=None, unit=None,
                     label=f"class {i}", image=f"{i:064x}.png", position=i)
                for i in range(6)] + [
                dict(id=f"fc6_{u:04d}", practice=False, layer="fc6", unit=u, label=None,
                     image=f"{u + 6:064x}.png", position=u) for u in range(100)])
            conn.execute(lists.insert(), [dict(id=1, target=10**6)])
            conn.execute(list_panels.insert(), [dict(list_id=1, position=u,
                                                     panel_id=f"fc6_{u:04d}")
                                                for u in range(100)])
        ids = range(first, first + n_participants)
        conn.execute(participants.insert(), [
            dict(id=i, token=f"tok{i}", prolific_pid=f"{i:024x}", study_param="a" * 24,
                 session_param=f"{i:024x}", list_id=1, status="completed",
                 trial_order="[]", order_seed=i, n_trials=n_trials, n_answered=n_trials,
                 created_at=t0 + i, lease_expires_at=t0 + i + 3600, completed_at=t0 + i + 600,
                 device=json.dumps({"width": 1280, "height": 800}), user_agent="Mozilla/5.0")
            for i in ids])
        for i in ids:
            conn.execute(responses.insert(), [
                dict(participant_id=i, trial_index=k, practice=k < 6,
                     panel_id=f"practice_{k}" if k < 6 else f"fc6_{k % 100:04d}",
                     answer_yes=k % 3 == 0, object_text="a dog" if k % 3 == 0 else None,
                     rt_answer_ms=900 + k, rt_text_ms=1500 if k % 3 == 0 else None,
                     shown_at=t0 + i + k, client_answered_at=t0 + i + k + 2.4,
                     answered_at=t0 + i + k + 2.5)
                for k in range(n_trials)])


def peak_bytes(store: Store, name: str) -> tuple[int, int]:
    """(peak traced bytes, characters) while consuming export ``name``."""
    tracemalloc.start()
    try:
        size = sum(len(chunk) for chunk in iter_export(store, name))
        return tracemalloc.get_traced_memory()[1], size
    finally:
        tracemalloc.stop()


def test_memory_is_bounded_by_the_batch_not_the_rows(tmp_path):
    """Peak traced memory while exporting 100,000 responses (CSV; 30,000 for the JSON, to
    keep the test short) is that of exporting 10,000: the batches (YIELD_PER 5,000 rows),
    not the rows."""
    store = Store(f"sqlite:///{tmp_path / 'big.db'}")
    try:
        store.migrate()
        fill(store, 1, 10, 1000)                                  # 10,000 responses
        for name in ("responses.csv", "responses.json"):          # warm caches, untraced
            assert sum(1 for _ in iter_export(store, name)) > 2
        small = {name: peak_bytes(store, name) for name in ("responses.csv", "responses.json")}
        fill(store, 11, 20, 1000)                                 # 30,000
        big = {"responses.json": peak_bytes(store, "responses.json")}
        fill(store, 31, 70, 1000)                                 # 100,000
        big["responses.csv"] = peak_bytes(store, "responses.csv")
        for name, factor in (("responses.csv", 10), ("responses.json", 3)):
            (peak_small, size_small), (peak_big, size_big) = small[name], big[name]
            assert size_big > 0.99 * factor * size_small
            assert peak_big < 1.5 * peak_small + 1_000_000, (name, peak_small, peak_big)
            # never the whole file (its rows as Python objects would take several times
            # its size; the peak is the batches plus a fixed ~10 MB of the store's own)
            assert peak_big < size_big, (name, peak_big, size_big)
        counts = write_exports(store, tmp_path / "out", names=["responses.csv"])
        assert counts == {"responses.csv": 100_000}
        assert (tmp_path / "out" / "responses.csv").stat().st_size == big["responses.csv"][1]
    finally:
        store.dispose()
