"""Prolific's approvals and bonus files (server/prolific_files.py), on SQLite and on
PostgreSQL: hand-built participants with known verdicts give exact rows; each participant
goes into each kind of file once, however often or concurrently the files are asked for;
rejections only for the study's reject_for rules; bonuses only for the approved; bad
amounts refused; a file exists if and only if its rows were recorded; the dashboard's
downloads (login and CSRF) and the command line."""

from __future__ import annotations

import csv
import io
import json
import re
import secrets
import stat
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
from server_world import Participant, count, new_pid, store_of
from sqlalchemy import event, select

from server import prolific_files as pf
from server.prolific_files import AmountError, parse_amount, write_approvals, write_bonuses
from server.store import (
    Store,
    admin_actions,
    panels,
    participants,
    prolific_files,
    responses,
)
from server.store import study as study_table

PASSWORD = "correct horse battery"
AT = 1_790_000_000.0
STAMP = "20260921T141320Z"                  # AT in UTC
NAME = re.compile(r"^(approvals|bonuses)-\d{8}T\d{6}Z(-\d+)?\.csv$")
CATCH = "conv5_0000"                         # made a catch panel expecting "no"
OTHER = "fc6_0000"

RULES = {"format": "selectivity-exclusion/1", "reject_for": ["catch"],
         "rules": {"catch": {"max_failed": 0}, "fast": {"min_median_ms": 500}}}


# --- a hand-built world -------------------------------------------------------------------

def set_rules(app, rules: dict | None = RULES) -> None:
    with store_of(app).write() as conn:
        conn.execute(study_table.update().values(
            exclusion_rules=None if rules is None else json.dumps(rules)))
        conn.execute(panels.update().where(panels.c.id == CATCH)
                     .values(catch=True, catch_expected="no"))


def add(app, *, catch_yes: bool = False, rt: int = 900, status: str = "completed",
        manual: str | None = None, store: Store | None = None) -> str:
    """A participant with two answered trials (the catch panel and another), stored
    directly; their Prolific PID. ``catch_yes`` fails the catch trial; ``rt`` under 500
    fails the speed rule; ``manual``: an experimenter's exclude or reinstate."""
    pid, t = new_pid(), time.time()
    with (store or store_of(app)).write() as conn:
        person = conn.execute(participants.insert().values(
            token=secrets.token_hex(16), prolific_pid=pid, study_param="a" * 24,
            session_param=secrets.token_hex(12), list_id=1, status=status,
            trial_order=json.dumps([CATCH, OTHER]), order_seed=0, n_trials=2, n_answered=2,
            created_at=t - 600, lease_expires_at=t + 3600,
            completed_at=t if status == "completed" else None,
            manual_exclusion=manual, manual_reason="by hand" if manual else None,
        )).inserted_primary_key[0]
        for index, (panel, yes) in enumerate(((CATCH, catch_yes), (OTHER, True))):
            conn.execute(responses.insert().values(
                participant_id=person, trial_index=index, practice=False, panel_id=panel,
                answer_yes=yes, object_text="dog" if yes else None, rt_answer_ms=rt,
                answered_at=t))
    return pid


def rows_of(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def recorded(app, kind: str | None = None) -> list[tuple]:
    """(PID, kind, decision, reason, amount, batch) of every row of prolific_files."""
    f, p = prolific_files.c, participants.c
    query = (select(p.prolific_pid, f.kind, f.decision, f.reason, f.amount, f.batch)
             .join_from(prolific_files, participants, f.participant_id == p.id)
             .order_by(f.id))
    if kind:
        query = query.where(f.kind == kind)
    with store_of(app).read() as conn:
        return [tuple(r) for r in conn.execute(query)]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def out(tmp_path) -> Path:
    """The folder for the files (tmp_path also holds the store and instance folder)."""
    return tmp_path / "out"


@pytest.fixture
def world(app):
    set_rules(app)
    return app


# --- approvals ----------------------------------------------------------------------------

def test_approvals_follow_the_verdicts_and_reject_only_for_reject_for(world, tmp_path):
    app = world
    good = add(app)
    caught = add(app, catch_yes=True)                    # failed the catch: reject
    fast = add(app, rt=100)                              # excluded for speed: approved
    both = add(app, catch_yes=True, rt=100)              # reject, for the catch only
    by_hand = add(app, manual="exclude")                 # excluded by hand: not grounds
    reinstated = add(app, catch_yes=True, manual="reinstate")
    add(app, status="active")                            # not finished: in no file
    add(app, status="returned", catch_yes=True)

    out = tmp_path / "files"
    path, counts = write_approvals(store_of(app), out, at=AT)

    assert path == out / f"approvals-{STAMP}.csv"
    assert counts == {"approve": 4, "reject": 2}
    assert rows_of(path) == [
        ["participant_id", "decision", "reason"],
        [good, "approve", ""],
        [caught, "reject", "catch"],
        [fast, "approve", ""],
        [both, "reject", "catch"],
        [by_hand, "approve", ""],
        [reinstated, "approve", ""],
    ]
    assert path.read_bytes().startswith(b"participant_id,decision,reason\r\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600        # it holds Prolific ids
    assert leftovers(out) == []
    # the store's verdicts were brought up to date first, and the rows recorded
    with store_of(app).read() as conn:
        verdicts = dict(conn.execute(select(participants.c.prolific_pid,
                                            participants.c.exclusion_reasons)).all())
    assert verdicts[both] == "catch;fast" and verdicts[fast] == "fast"
    assert recorded(app) == [
        (good, "approval", "approve", None, None, path.name),
        (caught, "approval", "reject", "catch", None, path.name),
        (fast, "approval", "approve", None, None, path.name),
        (both, "approval", "reject", "catch", None, path.name),
        (by_hand, "approval", "approve", None, None, path.name),
        (reinstated, "approval", "approve", None, None, path.name),
    ]


def test_reject_for_may_name_other_rules_and_manual(app, out):
    set_rules(app, {**RULES, "reject_for": ["fast", "manual"]})
    caught = add(app, catch_yes=True)                    # excluded, but not grounds now
    fast = add(app, rt=100)
    by_hand = add(app, manual="exclude")
    both = add(app, catch_yes=True, rt=100, manual="exclude")
    path, counts = write_approvals(store_of(app), out, at=AT)
    assert counts == {"approve": 1, "reject": 3}
    assert rows_of(path)[1:] == [[caught, "approve", ""], [fast, "reject", "fast"],
                                 [by_hand, "reject", "manual"],
                                 [both, "reject", "fast;manual"]]


def test_without_rules_everyone_who_finished_is_approved(app, out):
    set_rules(app, None)
    pids = [add(app, catch_yes=True, rt=10), add(app, manual="exclude")]
    path, counts = write_approvals(store_of(app), out, at=AT)
    assert counts == {"approve": 2, "reject": 0}
    assert rows_of(path)[1:] == [[pid, "approve", ""] for pid in pids]


def test_a_second_request_writes_only_participants_not_yet_written(world, out):
    app, store = world, store_of(world)
    first = [add(app), add(app, catch_yes=True)]
    path1, counts1 = write_approvals(store, out, at=AT)
    assert counts1 == {"approve": 1, "reject": 1}

    latecomer = add(app)
    path2, counts2 = write_approvals(store, out, at=AT)      # the same second
    assert path2 == out / f"approvals-{STAMP}-2.csv"
    assert counts2 == {"approve": 1, "reject": 0}
    assert rows_of(path2)[1:] == [[latecomer, "approve", ""]]
    assert [r[0] for r in rows_of(path1)[1:]] == first             # left as it was

    assert write_approvals(store, out, at=AT + 60) == (None, {"approve": 0, "reject": 0})
    assert {p.name for p in out.iterdir()} == {path1.name, path2.name}
    pids = [r[0] for r in recorded(app, "approval")]
    assert sorted(pids) == sorted([*first, latecomer]) and len(set(pids)) == len(pids)
    assert [r[5] for r in recorded(app)] == [path1.name, path1.name, path2.name]


def test_a_verdict_written_is_not_written_again_when_it_changes(world, out):
    """Prolific has acted on the file: a later change of mind is the experimenter's to make
    on Prolific, not a second row."""
    app, store = world, store_of(world)
    pid = add(app, catch_yes=True)
    write_approvals(store, out, at=AT)
    with store.write() as conn:
        conn.execute(participants.update().values(manual_exclusion="reinstate"))
    assert write_approvals(store, out, at=AT + 1)[0] is None
    assert recorded(app) == [(pid, "approval", "reject", "catch", None,
                              f"approvals-{STAMP}.csv")]


# --- bonuses ------------------------------------------------------------------------------

def test_bonuses_go_to_approved_participants_once(world, out):
    app, store = world, store_of(world)
    good, caught = add(app), add(app, catch_yes=True)
    fast = add(app, rt=100)
    add(app, status="active")
    assert write_bonuses(store, out, "0.5", at=AT) == (None, {"bonus": 0})  # none approved
    assert list(out.iterdir()) == []

    write_approvals(store, out, at=AT)
    path, counts = write_bonuses(store, out, "0.5", at=AT)
    assert path == out / f"bonuses-{STAMP}.csv" and counts == {"bonus": 2}
    # Prolific's bulk bonus format: "<participant_id>,<amount>" a line, no header
    assert path.read_text() == f"{good},0.50\n{fast},0.50\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert caught not in path.read_text()

    assert write_bonuses(store, out, "2", at=AT + 5) == (None, {"bonus": 0})
    latecomer = add(app)
    assert write_bonuses(store, out, "2", at=AT + 5)[0] is None   # not approved yet
    write_approvals(store, out, at=AT + 5)
    path2, counts2 = write_bonuses(store, out, "2", at=AT + 10)
    assert counts2 == {"bonus": 1} and path2.read_text() == f"{latecomer},2.00\n"
    assert [(r[0], r[4]) for r in recorded(app, "bonus")] == \
        [(good, "0.50"), (fast, "0.50"), (latecomer, "2.00")]
    assert leftovers(out) == []


@pytest.mark.parametrize("value, written", [
    ("0.5", "0.50"), ("2", "2.00"), (" 1.25 ", "1.25"), ("100", "100.00"), ("0.01", "0.01"),
    ("007.10", "7.10"), (Decimal("3.1"), "3.10"), (4, "4.00")])
def test_good_amounts_are_written_with_two_decimals(value, written):
    assert parse_amount(value) == written


@pytest.mark.parametrize("value, message", [
    ("", "write a number"), (None, "nothing"), ("0", "more than 0"),
    ("0.00", "more than 0"), ("-1", "write a number"), ("1.234", "at most 2 decimals"),
    ("1,50", "no comma"), ("£1", "no currency sign"), ("1e2", "write a number"),
    ("NaN", "write a number"), ("inf", "write a number"), ("100.01", "more than 100.00"),
    ("30000", "Prolific pays exactly"), ("\u0661", "write a number"), (True, "write a number"),
    (".5", "write a number"), ("1.", "write a number")])
def test_bad_amounts_are_refused_with_what_to_write(value, message):
    with pytest.raises(AmountError, match=re.escape(message)):
        parse_amount(value)


def test_a_bad_amount_writes_nothing(world, tmp_path):
    app = world
    add(app)
    write_approvals(store_of(app), tmp_path / "a", at=AT)
    with pytest.raises(AmountError):
        write_bonuses(store_of(app), tmp_path / "b", "0,50")
    assert not (tmp_path / "b").exists() and recorded(app, "bonus") == []


# --- the file exists if and only if its rows were recorded -----------------------------------

def test_a_failed_commit_leaves_no_file_and_no_rows(world, out):
    app, store = world, store_of(world)
    add(app)
    inserting = []

    def saw(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT INTO PROLIFIC_FILES"):
            inserting.append(conn)

    def refuse(conn):
        if inserting:
            raise RuntimeError("disk full (test)")

    event.listen(store.engine, "after_cursor_execute", saw)
    event.listen(store.engine, "commit", refuse)
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            write_approvals(store, out, at=AT)
    finally:
        event.remove(store.engine, "commit", refuse)
        event.remove(store.engine, "after_cursor_execute", saw)
    assert inserting and list(out.iterdir()) == [] and recorded(app) == []
    path, counts = write_approvals(store, out, at=AT)       # and then it works
    assert counts["approve"] == 1 and [p.name for p in out.iterdir()] == [path.name]


def test_a_file_that_cannot_be_placed_keeps_its_rows_in_the_named_temporary(world, out,
                                                                           monkeypatch):
    app = world
    pid = add(app)

    def refuse(src, dst):
        raise PermissionError("read-only (test)")

    monkeypatch.setattr(pf.os, "replace", refuse)
    with pytest.raises(pf.PlacementError, match="recorded 1 participants") as caught:
        write_approvals(store_of(app), out, at=AT)
    kept = leftovers(out)
    assert len(kept) == 1 and kept[0] in str(caught.value)
    assert pid in (out / kept[0]).read_text() and len(recorded(app)) == 1


# --- concurrency --------------------------------------------------------------------------

def test_concurrent_requests_never_write_a_participant_twice(world, db_url, out):
    app = world
    pids = [add(app, catch_yes=i % 5 == 0) for i in range(24)]
    other = Store(db_url)                     # another worker's connections
    try:
        for kind in ("approvals", "bonuses"):
            start = threading.Barrier(2)
            results: list = []
            errors: list = []

            def request(store: Store, kind=kind, start=start, results=results,
                        errors=errors) -> None:
                try:
                    start.wait(10)
                    if kind == "approvals":
                        results.append(write_approvals(store, out, at=AT)[0])
                    else:
                        results.append(write_bonuses(store, out, "1", at=AT)[0])
                except Exception as exc:        # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=request, args=(s,))
                       for s in (store_of(app), other)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert errors == []
            files = [p for p in results if p is not None]
            assert files, results
            written = [row[0] for p in files for row in rows_of(p)
                       if row[0] != "participant_id"]
            expected = pids if kind == "approvals" else \
                [p for i, p in enumerate(pids) if i % 5]
            assert sorted(written) == sorted(expected)              # each once
            assert len({p.name for p in files}) == len(files)       # no file replaced
        assert len(recorded(app, "approval")) == 24 and len(recorded(app, "bonus")) == 19
        assert leftovers(out) == []
    finally:
        other.dispose()


# --- the dashboard ------------------------------------------------------------------------

def logged_in(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["create-admin", "alice", "--password-stdin"],
                           input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    client = app.test_client()
    page = client.get("/admin/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    response = client.post("/admin/login", data={"username": "alice", "password": PASSWORD,
                                                 "csrf_token": token})
    assert response.location == "/admin/", response.status_code
    page = client.get("/admin/").get_data(as_text=True)   # a new token after the login
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    return client, token


def test_the_dashboard_hands_out_each_file_once(world, tmp_path):
    app = world
    good, caught = add(app), add(app, catch_yes=True)
    client, token = logged_in(app)

    response = client.post("/admin/prolific/approvals.csv", data={"csrf_token": token})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/csv"
    disposition = response.headers["Content-Disposition"]
    name = re.fullmatch(r'attachment; filename="([^"]+)"', disposition).group(1)
    assert NAME.match(name) and name.startswith("approvals-")
    assert response.headers["Cache-Control"] == "no-store"
    assert list(csv.reader(io.StringIO(response.get_data(as_text=True)))) == [
        ["participant_id", "decision", "reason"], [good, "approve", ""],
        [caught, "reject", "catch"]]
    kept = Path(app.instance_path) / "prolific" / name      # kept, to fetch again
    assert kept.read_bytes() == response.data
    again = client.get(f"/admin/prolific/files/{name}")
    assert again.status_code == 200 and again.data == response.data
    assert client.get("/admin/prolific/files/secret_key").status_code == 404
    assert client.get("/admin/prolific/files/approvals-20260101T000000Z.csv") \
        .status_code == 404

    nothing = client.post("/admin/prolific/approvals.csv", data={"csrf_token": token},
                          follow_redirects=True)
    assert nothing.status_code == 200 and "nothing new to write" in nothing.get_data(as_text=True)

    bonus = client.post("/admin/prolific/bonuses.csv", data={"csrf_token": token,
                                                             "amount": "0.5"})
    assert bonus.status_code == 200 and bonus.get_data(as_text=True) == f"{good},0.50\n"
    assert 'filename="bonuses-' in bonus.headers["Content-Disposition"]
    for amount in ("", "1,5", "1000", "-2"):
        bad = client.post("/admin/prolific/bonuses.csv",
                          data={"csrf_token": token, "amount": amount})
        assert bad.status_code == 400 and "bonus amount" in bad.get_data(as_text=True)
    assert client.post("/admin/prolific/bonuses.csv",
                       data={"csrf_token": token}).status_code == 400   # no amount
    paid = client.post("/admin/prolific/bonuses.csv", data={"csrf_token": token, "amount": "1"},
                       follow_redirects=True)
    assert paid.request.path == "/admin/" and \
        "Bonuses: nothing new to write" in paid.get_data(as_text=True)
    assert len(recorded(app, "bonus")) == 1
    with store_of(app).read() as conn:
        actions = [tuple(r) for r in conn.execute(
            select(admin_actions.c.admin, admin_actions.c.action).order_by(admin_actions.c.id))]
    assert actions == [("alice", "prolific approvals"), ("alice", "prolific bonuses")]


def test_the_dashboard_refuses_without_csrf_or_login(world):
    app = world
    add(app)
    client, token = logged_in(app)
    for path, form in (("/admin/prolific/approvals.csv", {}),
                       ("/admin/prolific/bonuses.csv", {"amount": "1"})):
        assert client.post(path, data=form).status_code == 400
        assert client.post(path, data={**form, "csrf_token": "guess"}).status_code == 400
        stranger = app.test_client()
        with stranger.session_transaction() as sess:
            sess["csrf"] = "their own token"
        refused = stranger.post(path, data={**form, "csrf_token": "their own token"})
        assert refused.status_code == 302 and refused.location.startswith("/admin/login")
    assert recorded(app) == [] and count(app, admin_actions) == 0
    assert not (Path(app.instance_path) / "prolific").exists() or \
        list((Path(app.instance_path) / "prolific").iterdir()) == []


# --- the command line ---------------------------------------------------------------------

def test_the_command_line_writes_both_files_once(world, tmp_path):
    app = world
    walker = Participant(app.test_client())                  # through the real flow
    for trial in walker.ready()["trials"]:                   # attentive: no to the catch
        yes = trial["panel_id"] != CATCH
        response = walker.answer(trial["index"], yes, "a dog" if yes else None,
                                 trial["panel_id"])
        assert response.status_code == 201, response.get_json()
    caught = add(app, catch_yes=True)
    out = tmp_path / "prolific"
    runner = app.test_cli_runner()

    result = runner.invoke(args=["prolific-files", "--out", str(out), "--bonus", "0.75"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    approvals = next(out.glob("approvals-*.csv"))
    bonuses = next(out.glob("bonuses-*.csv"))
    assert lines == [f"{approvals}: 1 approve, 1 reject", f"{bonuses}: 1 bonus of 0.75"]
    assert rows_of(approvals)[1:] == [[walker.pid, "approve", ""], [caught, "reject", "catch"]]
    assert bonuses.read_text() == f"{walker.pid},0.75\n"

    again = runner.invoke(args=["prolific-files", "--out", str(out), "--bonus", "0.75"])
    assert again.exit_code == 0, again.output
    assert again.output.splitlines() == ["approvals: nothing new to write",
                                         "bonuses: nothing new to write"]
    only = runner.invoke(args=["prolific-files", "--out", str(out)])
    assert only.output.splitlines() == ["approvals: nothing new to write"]

    bad = runner.invoke(args=["prolific-files", "--out", str(tmp_path / "x"), "--bonus", "1.234"])
    assert bad.exit_code == 2 and "at most 2 decimals" in bad.output
    assert not (tmp_path / "x").exists()
    assert len(list(out.iterdir())) == 2
