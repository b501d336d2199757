"""Entry to the study: who may take a place, for how long, and from where; on SQLite and
on PostgreSQL (docs/study-design.md, "Entry").

The attacks these tests reproduce:

- mass entry: GETs of the entry link with random PROLIFIC_PIDs took every place, each held
  for the whole lease, so genuine arrivals met "study full";
- a PROLIFIC_PID alone opened that participant's session from any link: another person
  entering with it (and another SESSION_ID) saw and answered the session;
- a link with another study's STUDY_ID.

Each test builds its own world (a small design, a fresh store, an app); times come from a
controllable clock where the test needs them.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from server_world import Participant, count, make_design, new_pid, participant_row, store_of
from sqlalchemy import inspect, select

import server.assignment
import server.participant
import server.store
from server.assignment import prolific_max_minutes
from server.store import SCHEMA_VERSION, Store, meta, metadata, participants, responses
from server.study import install_study

LEASE_S = prolific_max_minutes(30) * 60      # the default lease: 43 minutes


def log_rows(app, outcome: str | None = None):
    entry_log = server.store.entry_log
    with store_of(app).read() as conn:
        query = select(entry_log).order_by(entry_log.c.id)
        if outcome is not None:
            query = query.where(entry_log.c.outcome == outcome)
        return conn.execute(query).all()


def arrive(app, address: str, pid: str | None = None, **headers: str) -> Participant:
    """A new browser at ``address`` (its REMOTE_ADDR) with its own Prolific ids."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    person = Participant(client, pid)
    person.headers = headers
    return person


def enter(person: Participant, **params: str):
    query = {"PROLIFIC_PID": person.pid, "STUDY_ID": person.study_id,
             "SESSION_ID": person.session_id, **params}
    return person.client.get("/", query_string=query,
                             headers=getattr(person, "headers", {}))


class Clock:
    """The server's clock (``server.store.now`` and its imports), moved by the test."""

    def __init__(self, t: float = 1.8e9):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, minutes: float) -> None:
        self.t += minutes * 60


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    for module in (server.store, server.assignment, server.participant):
        monkeypatch.setattr(module, "now", fake)
    return fake


@pytest.fixture
def big_design(tmp_path):
    """50 places over 5 lists (3 panels a list), 6 practice panels."""
    return make_design(tmp_path / "big", {"conv5": 5, "fc6": 5, "fc8": 5}, n_lists=5,
                       participants=50)


# --- finding 1: mass entry ---------------------------------------------------------------

def test_mass_entry_from_one_address_is_refused_beyond_the_limit(make_app, big_design):
    """The attack: 45 entries with random PIDs from one address. By default 40 new places
    an address an hour (a lab of 30 behind one NAT gets in); the rest are refused, while
    another address still enters and a participant who has a place always resumes."""
    app = make_app(big_design)
    replies = [enter(arrive(app, "203.0.113.7")) for _ in range(45)]
    statuses = Counter(r.status_code for r in replies)
    assert statuses == {302: 40, 429: 5}
    refused = replies[-1]
    assert b"Too many people have started this study from your network" in refused.data
    assert refused.headers["Retry-After"].isdigit()
    assert count(app, participants) == 40
    # another address still enters
    other = arrive(app, "198.51.100.9")
    assert enter(other).location == "/study"
    assert count(app, participants) == 41
    # one refusal is recorded for the experimenter (repeats from the address are not)
    limited = log_rows(app, "rate_limited")
    assert len(limited) == 1 and limited[0].source and "203.0.113.7" not in limited[0].source
    assert len(log_rows(app, "entered")) == 41


def test_the_limit_counts_new_places_never_a_returning_participants_resume(make_app):
    app = make_app(ENTRY_MAX_PER_ADDRESS=2)
    first = arrive(app, "203.0.113.7")
    first.ready()
    assert first.answer(0).status_code == 201
    assert enter(arrive(app, "203.0.113.7")).location == "/study"
    assert enter(arrive(app, "203.0.113.7")).status_code == 429
    # the first participant reloads, opens another browser at the same address, or comes
    # back from another network: always their own session, never refused
    assert enter(first).location == "/study"
    again = arrive(app, "203.0.113.7", pid=first.pid)
    assert enter(again).location == "/study" and again.state()["next_index"] == 1
    away = arrive(app, "192.0.2.50", pid=first.pid)
    assert enter(away).location == "/study" and away.state()["next_index"] == 1
    assert count(app, participants) == 2


def test_concurrent_entries_from_one_address_never_pass_the_limit(make_app, big_design):
    """The limit is counted in the store, under the assignment's lock: gunicorn workers and
    threads racing on it never let more than the limit in."""
    app = make_app(big_design, ENTRY_MAX_PER_ADDRESS=4)
    barrier = threading.Barrier(16)
    statuses = []

    def go():
        person = arrive(app, "203.0.113.7")
        barrier.wait()
        statuses.append(enter(person).status_code)

    threads = [threading.Thread(target=go) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(statuses) == {302: 4, 429: 12}
    assert count(app, participants) == 4


def test_the_limit_window_passes(make_app, clock):
    app = make_app(ENTRY_MAX_PER_ADDRESS=2, ENTRY_WINDOW_MINUTES=30)
    for _ in range(2):
        assert enter(arrive(app, "203.0.113.7")).location == "/study"
    assert enter(arrive(app, "203.0.113.7")).status_code == 429
    clock.advance(29)
    assert enter(arrive(app, "203.0.113.7")).status_code == 429
    clock.advance(2)
    assert enter(arrive(app, "203.0.113.7")).location == "/study"


def test_the_limit_can_be_turned_off(make_app, big_design):
    app = make_app(big_design, ENTRY_MAX_PER_ADDRESS=None)
    assert all(enter(arrive(app, "127.0.0.1")).location == "/study" for _ in range(45))


def test_behind_trusted_proxies_the_forwarded_address_counts(make_app):
    app = make_app(ENTRY_MAX_PER_ADDRESS=2, TRUSTED_PROXIES=1)
    for _ in range(2):
        person = arrive(app, "127.0.0.1", **{"X-Forwarded-For": "203.0.113.7"})
        assert enter(person).location == "/study"
    assert enter(arrive(app, "127.0.0.1",
                        **{"X-Forwarded-For": "203.0.113.7"})).status_code == 429
    assert enter(arrive(app, "127.0.0.1",
                        **{"X-Forwarded-For": "198.51.100.9"})).location == "/study"


def test_without_trusted_proxies_a_forged_forwarded_header_changes_nothing(make_app):
    app = make_app(ENTRY_MAX_PER_ADDRESS=2)
    for n in range(2):
        person = arrive(app, "203.0.113.7", **{"X-Forwarded-For": f"198.51.100.{n}"})
        assert enter(person).location == "/study"
    forged = arrive(app, "203.0.113.7", **{"X-Forwarded-For": "198.51.100.77"})
    assert enter(forged).status_code == 429


def test_an_ipv6_network_counts_as_one_address(make_app):
    """One IPv6 subscriber holds a whole /64: its addresses share one limit."""
    app = make_app(ENTRY_MAX_PER_ADDRESS=1)
    assert enter(arrive(app, "2001:db8:1:2::1")).location == "/study"
    assert enter(arrive(app, "2001:db8:1:2:ffff::9")).status_code == 429
    assert enter(arrive(app, "2001:db8:1:3::1")).location == "/study"


# --- finding 1: the short hold before the first answer ------------------------------------

def test_a_place_is_held_briefly_until_the_first_answer(make_app, clock):
    """5 places. Arrivals who never answer hold their place for ENTRY_HOLD_MINUTES (5);
    the first stored answer (a practice trial counts) holds it for the whole lease."""
    app = make_app()
    worker = arrive(app, "192.0.2.1")
    worker.ready()
    assert worker.answer(0).status_code == 201
    idle = [arrive(app, f"203.0.113.{n}") for n in range(4)]
    for person in idle:
        assert enter(person).location == "/study"
    late = arrive(app, "198.51.100.1")
    assert b"This study is full" in enter(late).data
    clock.advance(4.9)
    assert b"This study is full" in enter(late).data
    clock.advance(0.2)                           # 5.1 minutes: the idle holds have passed
    newcomers = [arrive(app, f"198.51.100.{n}") for n in range(10, 14)]
    for person in newcomers:
        assert enter(person).location == "/study"
    assert b"This study is full" in enter(arrive(app, "198.51.100.99")).data
    # the one who answered still holds a place for the lease counted from entry
    row = participant_row(app, worker.pid)
    assert row.lease_expires_at == pytest.approx(row.created_at + LEASE_S, abs=1e-3)
    assert worker.answer(1).status_code == 201
    # an idle one coming back finds its place taken
    page = idle[0].client.get("/study")
    assert b"time for this study has run out" in page.data


def test_each_step_before_the_trials_restarts_the_hold(make_app, clock):
    app = make_app()
    p = arrive(app, "192.0.2.1")
    enter(p)
    entered = participant_row(app, p.pid)
    assert entered.lease_expires_at == pytest.approx(entered.created_at + 300, abs=1e-3)
    clock.advance(4)
    assert p.consent().location == "/study"
    clock.advance(4)
    assert p.instructions().location == "/study"
    clock.advance(4)
    assert p.device().location == "/study"
    clock.advance(4)                              # 16 minutes after entry, 4 after a step
    assert participant_row(app, p.pid).lease_expires_at == pytest.approx(clock.t + 60, abs=1e-3)
    assert p.answer(0).status_code == 201
    row = participant_row(app, p.pid)
    assert row.lease_expires_at == pytest.approx(row.created_at + LEASE_S, abs=1e-3)


def test_a_lapsed_hold_comes_back_only_as_a_hold(make_app, clock):
    """An arrival whose hold passed while the list still had room gets it back, but only
    for another short hold: visiting pages never turns it into the whole lease."""
    app = make_app(ENTRY_HOLD_MINUTES=3)
    p = arrive(app, "192.0.2.1")
    enter(p)
    clock.advance(10)
    assert p.client.get("/study").location == "/consent"
    assert participant_row(app, p.pid).lease_expires_at == pytest.approx(clock.t + 180, abs=1e-3)


def test_the_hold_never_outlasts_the_lease(make_app):
    app = make_app(LEASE_MINUTES=2)
    p = arrive(app, "192.0.2.1")
    enter(p)
    row = participant_row(app, p.pid)
    assert row.lease_expires_at == pytest.approx(row.created_at + 120, abs=1e-3)


def test_without_a_hold_an_arrival_holds_the_whole_lease(make_app):
    app = make_app(ENTRY_HOLD_MINUTES=None)
    p = arrive(app, "192.0.2.1")
    enter(p)
    row = participant_row(app, p.pid)
    assert row.lease_expires_at == pytest.approx(row.created_at + LEASE_S, abs=1e-3)


# --- finding 2: a PID is bound to its first SESSION_ID ----------------------------------

def test_a_foreign_session_id_for_a_known_pid_is_refused_and_recorded(app):
    """The attack: entering with another participant's PROLIFIC_PID (and another STUDY_ID
    and SESSION_ID) returned their session; an answer stored that way made the real
    participant's answer a duplicate."""
    victim = arrive(app, "192.0.2.1")
    victim.ready()
    for index in range(2):
        assert victim.answer(index).status_code == 201
    intruder = arrive(app, "203.0.113.66", pid=victim.pid)
    intruder.study_id = "e" * 24
    intruder.session_id = "f" * 24
    page = enter(intruder)
    assert page.status_code == 403
    html = page.get_data(as_text=True)
    assert "already taking part" in html and "another Prolific session" in html
    assert victim.pid not in html
    # nothing of the session reaches the intruder's browser ...
    with intruder.client.session_transaction() as sess:
        assert "token" not in sess
    assert intruder.client.get("/api/state").status_code == 403
    assert intruder.client.get("/study").location == "/"
    panel = victim.state()["trials"][2]["panel_id"]
    assert intruder.answer(2, panel_id=panel).status_code == 403
    # ... and nothing changes in it: the victim's next answer is stored, not a duplicate
    reply = victim.answer(2)
    assert reply.status_code == 201 and reply.get_json()["duplicate"] is False
    assert count(app, responses) == 3 and count(app, participants) == 1
    row = participant_row(app, victim.pid)
    assert (row.session_param, row.study_param) == (victim.session_id, victim.study_id)
    # recorded for the experimenter, once however often the link is opened
    enter(intruder)
    [logged] = log_rows(app, "other_session")
    assert (logged.prolific_pid, logged.session_param, logged.study_param) == \
        (victim.pid, "f" * 24, "e" * 24)
    # and shown by the entry-log command
    result = app.test_cli_runner().invoke(args=["entry-log"])
    assert result.exit_code == 0, result.output
    assert "other_session" in result.output and "f" * 24 in result.output


def test_the_same_pid_and_session_id_resume_in_another_browser(app):
    p = arrive(app, "192.0.2.1")
    p.ready()
    assert p.answer(0).status_code == 201
    other = arrive(app, "192.0.2.2", pid=p.pid)
    other.session_id = p.session_id
    other.study_id = p.study_id
    assert enter(other).location == "/study"
    assert other.state()["next_index"] == 1
    assert count(app, participants) == 1 and not log_rows(app, "other_session")


def test_a_refused_link_leaves_the_browsers_own_session_alone(app):
    mine = arrive(app, "192.0.2.1")
    mine.ready()
    victim = arrive(app, "192.0.2.2")
    victim.ready()
    # the same browser opens a link with the other participant's PID: refused, and it
    # keeps its own session
    assert enter(mine, PROLIFIC_PID=victim.pid).status_code == 403
    assert mine.client.get("/study").location == "/trials"
    assert mine.answer(0).status_code == 201
    assert participant_row(app, victim.pid).n_answered == 0


# --- finding 3: STUDY_ID ----------------------------------------------------------------

def test_a_wrong_study_id_is_refused_when_the_study_has_a_prolific_id(app, design_file):
    with app.app_context():
        install_study(store_of(app), design_file, app.config["IMAGE_DIR"], "DONE123",
                      prolific_study_id="b" * 24, discard_data=True)
    stranger = arrive(app, "192.0.2.1")
    page = enter(stranger)
    assert page.status_code == 400
    assert b"This link belongs to another study" in page.data
    assert count(app, participants) == 0
    [logged] = log_rows(app, "wrong_study")
    assert logged.study_param == "a" * 24
    ok = arrive(app, "192.0.2.2")
    ok.study_id = "b" * 24
    assert enter(ok).location == "/study"
    # a participant with a place, following a link with another STUDY_ID, is refused too
    again = arrive(app, "192.0.2.3", pid=ok.pid)
    again.session_id = ok.session_id
    assert enter(again).status_code == 400
    with again.client.session_transaction() as sess:
        assert "token" not in sess


def test_any_study_id_is_taken_when_the_study_has_no_prolific_id(app):
    p = arrive(app, "192.0.2.1")
    p.study_id = "9" * 24
    assert enter(p).location == "/study"


# --- the store -----------------------------------------------------------------------------

def test_an_existing_store_is_migrated(db_url, tmp_path, design_file):
    """A store made before entries were logged (schema version 2) gains the entry log on
    start, and its participants carry on."""
    old = Store(db_url)
    before = [name for name in server.store._VERSION_1 + server.store._VERSION_2]
    with old.write() as conn:
        metadata.create_all(conn, tables=[metadata.tables[name] for name in before])
        conn.execute(meta.insert().values(key="schema_version", value="2"))
    assert not inspect(old.engine).has_table("entry_log")
    assert old.migrate() == 2
    assert inspect(old.engine).has_table("entry_log")
    with old.read() as conn:
        assert conn.execute(select(meta.c.value)).scalar() == str(SCHEMA_VERSION)
    old.dispose()


def test_the_entry_log_names_no_address(make_app):
    app = make_app(ENTRY_MAX_PER_ADDRESS=1)
    enter(arrive(app, "203.0.113.7"))
    enter(arrive(app, "203.0.113.7"))
    enter(arrive(app, "203.0.113.8"))
    rows = log_rows(app)
    assert [r.outcome for r in rows] == ["entered", "rate_limited", "entered"]
    assert rows[0].source == rows[1].source != rows[2].source
    assert all("203.0.113" not in r.source for r in rows)
    assert new_pid() not in {r.prolific_pid for r in rows}
