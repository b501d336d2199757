"""The experimenter side: accounts, login limits, sessions, CSRF, the dashboard, actions,
downloads and Prolific's webhook, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import time

import pytest
from server_world import Participant, count, new_pid, study_app
from sqlalchemy import event, func, select

from server import create_app
from server.prolific import sign
from server.store import (
    SCHEMA_VERSION,
    Store,
    admin_actions,
    admin_sessions,
    admins,
    meta,
    metadata,
    participants,
    responses,
    webhook_events,
)

PASSWORD = "correct horse battery"


@pytest.fixture
def app(db_url, tmp_path, design_file):
    app = study_app(db_url, tmp_path / "instance", design_file, "DONE123", TESTING=True,
                    PROLIFIC_WEBHOOK_SECRET="hook-secret")
    runner = app.test_cli_runner()
    result = runner.invoke(args=["create-admin", "alice", "--password-stdin"],
                           input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    yield app
    app.extensions["store"].dispose()


class Experimenter:
    """An experimenter's browser."""

    def __init__(self, client):
        self.client = client

    def csrf(self) -> str:
        page = self.client.get("/admin/login").get_data(as_text=True)
        found = re.search(r'name="csrf_token" value="([^"]+)"', page)
        if found:
            return found.group(1)
        with self.client.session_transaction() as sess:
            return sess["csrf"]

    def login(self, username="alice", password=PASSWORD, **kwargs):
        return self.client.post("/admin/login", data={"username": username,
                                                      "password": password,
                                                      "csrf_token": self.csrf()}, **kwargs)

    def post(self, path, **form):
        with self.client.session_transaction() as sess:
            token = sess.get("csrf")
        if token is None:                 # a browser has loaded a page with the form first
            page = self.client.get("/admin/").get_data(as_text=True)
            token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        return self.client.post(path, data={"csrf_token": token, **form})

    def dashboard(self, **query) -> str:
        response = self.client.get("/admin/", query_string=query)
        assert response.status_code == 200, response.status_code
        return response.get_data(as_text=True)


@pytest.fixture
def experimenter(app):
    person = Experimenter(app.test_client())
    assert person.login().location == "/admin/"
    return person


# --- accounts and login -------------------------------------------------------------------

def test_accounts_are_made_on_the_command_line_with_hashed_passwords(app):
    runner = app.test_cli_runner()
    short = runner.invoke(args=["create-admin", "bob", "--password-stdin"], input="short\n")
    assert short.exit_code != 0 and "at least 10 characters" in short.output
    again = runner.invoke(args=["create-admin", "alice", "--password-stdin"],
                          input=PASSWORD + "\n")
    assert again.exit_code != 0 and "exists already" in again.output
    replaced = runner.invoke(args=["create-admin", "alice", "--password-stdin", "--replace"],
                             input="a brand new password\n")
    assert replaced.exit_code == 0, replaced.output
    with app.extensions["store"].read() as conn:
        stored = conn.execute(select(admins.c.password_hash)).scalar()
    assert "brand new" not in stored and stored.startswith(("scrypt:", "pbkdf2:"))
    assert Experimenter(app.test_client()).login(password=PASSWORD).status_code == 401
    assert Experimenter(app.test_client()).login(password="a brand new password") \
        .location == "/admin/"


def test_login_attempts_are_rate_limited(app):
    person = Experimenter(app.test_client())
    for _ in range(5):
        wrong = person.login(password="not the password")
        assert wrong.status_code == 401 and b"wrong user name or password" in wrong.data
    blocked = person.login()                       # even the right password, for a while
    assert blocked.status_code == 429 and b"too many failed logins" in blocked.data
    # Another name from the address is still checked: the address has its own, higher
    # limit (LOGIN_MAX_FAILURES_PER_ADDRESS; tests/test_admin_sessions.py).
    other_name = person.login(username="mallory")
    assert other_name.status_code == 401


def test_nothing_under_admin_is_reachable_without_login(app):
    client = app.test_client()
    rules = [r for r in app.url_map.iter_rules() if r.endpoint.startswith("admin.")
             and r.endpoint != "admin.login" and r.endpoint != "admin.static"]
    assert len(rules) >= 6
    anonymous = Experimenter(client)
    token = anonymous.csrf()
    for rule in rules:
        path = re.sub(r"<[^>]*participant_id>", "1", rule.rule).replace("<name>",
                                                                         "responses.csv")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            response = client.open(path, method=method, data={"csrf_token": token,
                                                               "status": "closed"})
            assert response.status_code == 302, (method, path, response.status_code)
            assert response.location.startswith("/admin/login"), (method, path)
    assert count(app, admin_actions) == 0


def test_sessions_expire(app, experimenter):
    """Sessions live in the store (tests/test_admin_sessions.py has the attacks)."""
    store = app.extensions["store"]
    assert experimenter.client.get("/admin/").status_code == 200
    with store.write() as conn:                                        # idle an hour
        conn.execute(admin_sessions.update().values(last_seen_at=time.time() - 61 * 60))
    assert experimenter.client.get("/admin/").location.startswith("/admin/login")
    experimenter.login()
    with store.write() as conn:                                        # past 8 hours
        conn.execute(admin_sessions.update().values(created_at=time.time() - 9 * 3600))
    assert experimenter.client.get("/admin/").location.startswith("/admin/login")


def test_every_form_needs_the_csrf_token(app, experimenter):
    forged = experimenter.client.post("/admin/study/status", data={"status": "closed"})
    assert forged.status_code == 400
    wrong = experimenter.client.post("/admin/study/status",
                                     data={"status": "closed", "csrf_token": "guess"})
    assert wrong.status_code == 400
    login = Experimenter(app.test_client()).client.post(
        "/admin/login", data={"username": "alice", "password": PASSWORD})
    assert login.status_code == 400
    assert 'id="study-status">open' in experimenter.dashboard()


def test_login_redirects_only_within_the_admin_side(app):
    person = Experimenter(app.test_client())
    away = person.login(query_string={"next": "https://evil.example/admin/"})
    assert away.location == "/admin/"
    person = Experimenter(app.test_client())
    assert person.login(query_string={"next": "/admin/?status=active"}).location \
        == "/admin/?status=active"


# --- the dashboard ------------------------------------------------------------------------

def test_dashboard_counts_lists_participants_and_highlights_stale_sessions(app, experimenter):
    done = Participant(app.test_client())
    done.ready()
    done.answer_all()
    working = Participant(app.test_client())
    working.ready()
    working.answer(0, True, "dog")
    declined = Participant(app.test_client())
    declined.enter()
    declined.consent("decline")
    stale = Participant(app.test_client())
    stale.enter()
    with app.extensions["store"].write() as conn:   # idle for an hour
        conn.execute(participants.update().where(participants.c.prolific_pid == stale.pid)
                     .values(created_at=time.time() - 3600))
    page = experimenter.dashboard()
    totals = re.search(r'<tr id="totals">(.*?)</tr>', page, re.S).group(1)
    assert re.findall(r"<td>([^<]*)</td>", totals)[:6] == ["5", "1", "2", "0", "0", "1"]
    stale_id = count(app, participants)  # the newest
    assert re.search(rf'<tr class="stale" id="p{stale_id}">', page)
    assert not re.search(r'<tr class="stale" id="p2">', page)
    assert "12 / 12" in page and "1 / 12" in page and "declined" in page
    assert 'href="/preview?list=1"' in page
    only_active = experimenter.dashboard(status="active")
    assert "(2)" in only_active and "12 / 12" not in only_active
    assert experimenter.client.get("/admin/?status=bogus").status_code == 400
    assert experimenter.client.get("/admin/?page=0").status_code == 400


def test_dashboard_stays_fast_with_ten_thousand_participants(app, experimenter):
    """Paged and aggregated in SQL: the same handful of statements for 10,000 participants
    as for a few, and one page of rows."""
    store = app.extensions["store"]
    statements = []

    def counting(conn, cursor, statement, *args):
        statements.append(statement)

    now = time.time()
    rows = [dict(token=f"t{i}", prolific_pid=f"{i:024x}", study_param="s",
                 session_param="t", list_id=1 + i % 3,
                 status=("completed", "active", "returned", "declined")[i % 4],
                 trial_order="[]", order_seed=0, n_trials=12, n_answered=i % 13,
                 created_at=now - 600 - 2 * i, completed_at=now - i if i % 4 == 0 else None,
                 lease_expires_at=now + (3600 if i % 8 == 1 else -10))
            for i in range(10_000)]
    with store.write() as conn:
        conn.execute(participants.insert(), rows[:8])
    event.listen(store.engine, "before_cursor_execute", counting)
    try:
        experimenter.dashboard()
        few = len(statements)
        with store.write() as conn:
            conn.execute(participants.insert(), rows[8:])
        statements.clear()
        page = experimenter.dashboard()
        assert len(statements) == few
    finally:
        event.remove(store.engine, "before_cursor_execute", counting)
    assert page.count('<tr class="stale"') + page.count('<tr class="" id="p') == 50
    assert "page 1 of 200" in page
    totals = re.search(r'<tr id="totals">(.*?)</tr>', page, re.S).group(1)
    assert re.findall(r"<td>([^<]*)</td>", totals)[1:6] == ["2500", "1250", "1250", "2500",
                                                             "2500"]
    assert "page 200 of 200" in experimenter.dashboard(page=200)
    # completed durations 600 + i s for i = 0, 4, ..., 9996: median (5596 + 5600) / 2 s
    assert "1.6 h" in page


def test_marking_a_participant_returned_frees_the_slot(app, experimenter):
    people = [Participant(app.test_client()) for _ in range(5)]
    for p in people:
        p.ready()
    assert b"This study is full" in Participant(app.test_client()).enter(follow=True).data
    gone = count(app, participants, participants.c.prolific_pid == people[0].pid)
    assert gone == 1
    first = experimenter.dashboard()
    pid = int(re.search(r'id="p(\d+)"', first[first.index("Participants"):]).group(1))
    response = experimenter.post(f"/admin/participants/{pid}/status", status="returned")
    assert response.status_code == 302
    assert "marked returned" in experimenter.dashboard()
    late = Participant(app.test_client())
    assert late.enter().location == "/study"
    assert count(app, participants, participants.c.status == "returned") == 1
    assert experimenter.post(f"/admin/participants/{pid}/status",
                             status="completed").status_code == 400
    assert experimenter.post("/admin/participants/9999/status",
                             status="returned").status_code == 404
    with app.extensions["store"].read() as conn:
        action = conn.execute(select(admin_actions)).one()
    assert (action.admin, action.action, action.target) == ("alice", "mark returned", str(pid))


def test_closing_and_reopening_the_study(app, experimenter):
    inside = Participant(app.test_client())
    inside.ready()
    assert experimenter.post("/admin/study/status", status="closed").status_code == 302
    assert 'id="study-status">closed' in experimenter.dashboard()
    assert b"This study is closed" in Participant(app.test_client()).enter(follow=True).data
    assert inside.answer(0, False).status_code == 201        # those inside carry on
    experimenter.post("/admin/study/status", status="open")
    assert Participant(app.test_client()).enter().location == "/study"


def test_preview_from_the_dashboard_writes_nothing_and_keeps_the_login(app, experimenter):
    client = experimenter.client
    assert client.get("/preview?list=3").location == "/study"
    visitor = Participant(client, pid="preview")
    for step in (visitor.consent, visitor.instructions, visitor.device):
        assert step().status_code == 302
    visitor.answer_all()
    assert count(app, participants) == 0 and count(app, responses) == 0
    assert client.get("/admin/").status_code == 200


def test_design_download(app, experimenter, design_file):
    response = experimenter.client.get("/admin/design.json")
    assert response.status_code == 200
    assert "attachment" in response.headers["Content-Disposition"]
    got = json.loads(response.data)
    assert got["lists"] == json.loads(design_file.read_text())["lists"]


# --- Prolific's webhook -------------------------------------------------------------------

def deliver(client, payload, secret="hook-secret", timestamp=None, signature=None):
    body = json.dumps(payload).encode()
    timestamp = timestamp or str(int(time.time()))
    headers = {"X-Prolific-Request-Timestamp": timestamp,
               "X-Prolific-Request-Signature": signature or sign(secret, timestamp, body),
               "Content-Type": "application/json"}
    return client.post("/api/prolific/webhook", data=body, headers=headers)


def test_a_returned_submission_frees_its_slot_once(app):
    people = [Participant(app.test_client()) for _ in range(5)]
    for p in people:
        p.ready()
    client = app.test_client()
    payload = {"resource_id": people[2].session_id, "event_type": "submission.status.change",
               "participant_id": people[2].pid, "status": "RETURNED"}
    first = deliver(client, payload)
    assert first.status_code == 200 and first.get_json()["duplicate"] is False
    assert "active -> returned" in first.get_json()["outcome"]
    again = deliver(client, payload)
    assert again.status_code == 200 and again.get_json()["duplicate"] is True
    assert count(app, webhook_events) == 1
    assert Participant(app.test_client()).enter().location == "/study"
    assert people[2].client.get("/study").location == "/ended"
    refused = people[2].answer(0, False, panel_id="practice_0")
    assert refused.status_code == 409
    # A rejection of a completed submission frees its place too.
    done = Participant(app.test_client())
    with app.extensions["store"].write() as conn:
        conn.execute(participants.update().where(participants.c.prolific_pid == people[0].pid)
                     .values(status="completed"))
    rejected = deliver(client, {**payload, "participant_id": people[0].pid,
                                "resource_id": people[0].session_id, "status": "REJECTED"})
    assert "completed -> rejected" in rejected.get_json()["outcome"]
    assert done.enter().location == "/study"


@pytest.mark.parametrize("change, status, message", [
    ({"signature": "bm9wZQ=="}, 401, "bad signature"),
    ({"secret": "another secret"}, 401, "bad signature"),
    ({"timestamp": "yesterday"}, 401, "not a UNIX time"),
])
def test_unsigned_or_forged_deliveries_are_refused(app, change, status, message):
    Participant(app.test_client()).ready()
    response = deliver(app.test_client(), {"resource_id": "x" * 24,
                                           "event_type": "submission.status.change",
                                           "participant_id": "y" * 24, "status": "RETURNED"},
                       **change)
    assert response.status_code == status and message in response.get_json()["error"]
    assert count(app, webhook_events) == 0
    bare = app.test_client().post("/api/prolific/webhook", json={"status": "RETURNED"})
    assert bare.status_code == 401


def test_webhook_odd_deliveries(app):
    client = app.test_client()
    unknown = deliver(client, {"resource_id": "r" * 24, "event_type": "submission.status.change",
                               "participant_id": new_pid(), "status": "TIMED-OUT"})
    assert unknown.get_json()["outcome"] == "no change: unknown participant"
    other = deliver(client, {"resource_id": "s", "event_type": "study.status.change",
                             "status": "COMPLETED"})
    assert other.status_code == 200 and "ignored" in other.get_json()["outcome"]
    timestamp = str(int(time.time()))
    broken = client.post("/api/prolific/webhook", data=b"{not json",
                         headers={"X-Prolific-Request-Timestamp": timestamp,
                                  "X-Prolific-Request-Signature":
                                      sign("hook-secret", timestamp, b"{not json")})
    assert broken.status_code == 400 and "not JSON" in broken.get_json()["error"]
    missing = deliver(client, {"event_type": "submission.status.change", "status": "RETURNED"})
    assert missing.status_code == 400 and "resource_id" in missing.get_json()["error"]
    app.config["PROLIFIC_WEBHOOK_SECRET"] = None
    assert deliver(client, {"event_type": "x"}).status_code == 404


# --- isolation and markup -----------------------------------------------------------------

def test_a_participant_sees_and_changes_only_their_own_data(app):
    alice, bob = Participant(app.test_client()), Participant(app.test_client())
    alice_state, bob_state = alice.ready(), bob.ready()
    alice.answer(0, True, "alice's dog")
    assert bob.state()["next_index"] == 0
    # Bob posts Alice's trial with his own session: it lands in his data, not hers.
    response = bob.answer(0, False, panel_id=alice_state["trials"][0]["panel_id"])
    assert response.status_code in (201, 409)
    with app.extensions["store"].read() as conn:
        alice_rows = conn.execute(select(responses).join(participants).where(
            participants.c.prolific_pid == alice.pid)).all()
    assert [(r.trial_index, r.object_text) for r in alice_rows] == [(0, "alice's dog")]
    # A forged or tampered session cookie is no session at all.
    forged = app.test_client()
    forged.set_cookie("study_session", "eyJ0b2tlbiI6ImFiYyJ9.forged.signature")
    assert forged.get("/api/state").status_code == 403
    assert forged.get("/study").location == "/"
    assert bob.client.get("/admin/").location.startswith("/admin/login")
    assert bob_state["trials"] != []


def test_markup_is_never_executed_on_the_dashboard(app):
    runner = app.test_cli_runner()
    runner.invoke(args=["create-admin", "<script>alert(1)</script>", "--password-stdin"],
                  input=PASSWORD + "\n")
    person = Experimenter(app.test_client())
    person.login(username="<script>alert(1)</script>")
    page = person.dashboard()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page


def test_schema_version_1_is_migrated(db_url):
    store = Store(db_url)
    with store.write() as conn:
        metadata.create_all(conn, tables=[metadata.tables[name] for name in
                                          ("meta", "study", "panels", "lists", "list_panels",
                                           "participants", "responses")])
        conn.execute(meta.insert().values(key="schema_version", value="1"))
    assert store.migrate() == 1
    with store.read() as conn:
        assert conn.execute(select(meta.c.value)).scalar() == str(SCHEMA_VERSION)
        assert conn.execute(select(func.count()).select_from(admins)).scalar() == 0
    store.dispose()


def test_login_limits_use_the_forwarded_address_behind_a_trusted_proxy(db_url, tmp_path):
    app = create_app({"TESTING": True, "SECRET_KEY": "test", "DATABASE_URL": db_url,
                      "TRUSTED_PROXIES": 1, "LOGIN_MAX_FAILURES_PER_ADDRESS": 5},
                     instance_path=tmp_path / "proxied")
    app.test_cli_runner().invoke(args=["create-admin", "alice", "--password-stdin"],
                                 input=PASSWORD + "\n")
    for i in range(5):
        Experimenter(app.test_client()).login(username=f"user{i}", password="wrong password!",
                                              headers={"X-Forwarded-For": "203.0.113.7"})
    blocked = Experimenter(app.test_client()).login(
        headers={"X-Forwarded-For": "203.0.113.7"})
    assert blocked.status_code == 429
    elsewhere = Experimenter(app.test_client()).login(
        headers={"X-Forwarded-For": "198.51.100.2"})
    assert elsewhere.location == "/admin/"
    app.extensions["store"].dispose()
