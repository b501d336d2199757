"""The experimenter's sessions and login limits under attack, on SQLite and PostgreSQL.

- A session is a row in the store; the signed cookie carries only its id. Logging out
  (or a new password) deletes the row, so a cookie copied before then opens nothing.
- Login failures are counted per user name (LOGIN_MAX_FAILURES) and, with a higher limit,
  per address (LOGIN_MAX_FAILURES_PER_ADDRESS), and an attempt is counted before its
  password is checked, so concurrent guesses cannot outrun the limit; one address's
  failures for one account do not lock other accounts out.
"""

from __future__ import annotations

import http.cookiejar
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from server_world import count, serving, study_app
from sqlalchemy import func, select

import server.auth
from server.store import admin_actions, login_attempts
from server.store import study as study_table

PASSWORD = "correct horse battery"
BOB_PASSWORD = "bobs own long password"
COOKIE = "study_session"


@pytest.fixture
def app(db_url, tmp_path, design_file):
    app = study_app(db_url, tmp_path / "instance", design_file, "DONE123", TESTING=True)
    runner = app.test_cli_runner()
    for name, password in (("alice", PASSWORD), ("bob", BOB_PASSWORD)):
        result = runner.invoke(args=["create-admin", name, "--password-stdin"],
                               input=password + "\n")
        assert result.exit_code == 0, result.output
    yield app
    app.extensions["store"].dispose()


def csrf_of(client) -> str:
    page = client.get("/admin/login").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def login(client, username="alice", password=PASSWORD, address="127.0.0.1"):
    return client.post("/admin/login", data={"username": username, "password": password,
                                             "csrf_token": csrf_of(client)},
                       environ_base={"REMOTE_ADDR": address})


def logged_in(app, username="alice", password=PASSWORD):
    client = app.test_client()
    reply = login(client, username, password)
    assert reply.status_code == 302 and reply.location == "/admin/", reply.status_code
    return client


def session_token(client) -> str:
    """The CSRF token of this browser's session, from the dashboard's forms."""
    page = client.get("/admin/").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def study_status(app) -> str:
    with app.extensions["store"].read() as conn:
        return conn.execute(select(study_table.c.status)).scalar()


def refused(reply) -> bool:
    return reply.status_code == 302 and reply.location.startswith("/admin/login")


# --- sessions -----------------------------------------------------------------------------

def test_a_cookie_copied_before_logout_opens_nothing_after_it(app):
    client = logged_in(app)
    token = session_token(client)                   # the cookie now holds the CSRF token
    copied = client.get_cookie(COOKIE).value
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    assert refused(client.get("/admin/"))
    thief = app.test_client()
    thief.set_cookie(COOKIE, copied)
    assert refused(thief.get("/admin/"))
    assert refused(thief.get("/admin/export/responses.csv"))
    assert refused(thief.get("/admin/design.json"))
    closing = thief.post("/admin/study/status", data={"status": "closed", "csrf_token": token})
    assert refused(closing)
    assert study_status(app) == "open" and count(app, admin_actions) == 0


def test_logging_out_ends_only_that_session(app):
    laptop, desktop = logged_in(app), logged_in(app)
    laptop.post("/admin/logout", data={"csrf_token": session_token(laptop)})
    assert refused(laptop.get("/admin/"))
    assert desktop.get("/admin/").status_code == 200


def test_a_new_password_ends_every_session_of_that_account(app):
    alice_1, alice_2, bob = logged_in(app), logged_in(app), logged_in(app, "bob", BOB_PASSWORD)
    copied = alice_1.get_cookie(COOKIE).value
    result = app.test_cli_runner().invoke(
        args=["create-admin", "alice", "--password-stdin", "--replace"],
        input="a brand new password\n")
    assert result.exit_code == 0, result.output
    for client in (alice_1, alice_2):
        assert refused(client.get("/admin/"))
    thief = app.test_client()
    thief.set_cookie(COOKIE, copied)
    assert refused(thief.get("/admin/export/participants.csv"))
    assert bob.get("/admin/").status_code == 200
    assert logged_in(app, "alice", "a brand new password").get("/admin/").status_code == 200


def test_the_cookie_carries_only_a_session_id_and_the_store_only_its_hash(app):
    from server.store import admin_sessions

    client = logged_in(app)
    serializer = app.session_interface.get_signing_serializer(app)
    content = serializer.loads(client.get_cookie(COOKIE).value)
    assert isinstance(content["admin"], str) and len(content["admin"]) >= 32
    assert "alice" not in str(content) and "since" not in str(content)
    with app.extensions["store"].read() as conn:
        rows = conn.execute(select(admin_sessions)).all()
    assert len(rows) == 1 and content["admin"] not in str(tuple(rows[0]))


def test_a_cookie_signed_with_the_key_but_without_a_session_row_is_no_session(app):
    """The old cookie format (the account in the cookie), or any id the store never gave
    out: even someone holding SECRET_KEY cannot mint an experimenter's session."""
    serializer = app.session_interface.get_signing_serializer(app)
    at = time.time()
    client = app.test_client()
    for forged in ({"id": 1, "name": "alice", "since": at, "seen": at}, "0" * 43, 1, None):
        client.set_cookie(COOKIE, serializer.dumps({"admin": forged, "csrf": "x"}))
        assert refused(client.get("/admin/")), forged


@pytest.mark.parametrize("column, age_minutes, limit", [
    ("last_seen_at", 61, "ADMIN_IDLE_MINUTES"),       # idle for over an hour
    ("created_at", 8 * 60 + 1, "ADMIN_SESSION_MINUTES"),  # logged in over 8 hours ago
])
def test_sessions_end_when_idle_or_old_on_the_server(app, column, age_minutes, limit):
    from server.store import admin_sessions

    client = logged_in(app)
    copied = client.get_cookie(COOKIE).value
    assert client.get("/admin/").status_code == 200
    with app.extensions["store"].write() as conn:
        conn.execute(admin_sessions.update().values(
            **{column: time.time() - age_minutes * 60}))
    assert refused(client.get("/admin/"))
    thief = app.test_client()
    thief.set_cookie(COOKIE, copied)
    assert refused(thief.get("/admin/"))
    assert count(app, admin_sessions) == 0              # an ended session is deleted
    # Configurable: a longer limit keeps such a session.
    client = logged_in(app)
    with app.extensions["store"].write() as conn:
        conn.execute(admin_sessions.update().values(
            **{column: time.time() - age_minutes * 60}))
    app.config[limit] = age_minutes + 5
    assert client.get("/admin/").status_code == 200


def test_activity_keeps_a_session_alive(app):
    from server.store import admin_sessions

    client = logged_in(app)
    with app.extensions["store"].write() as conn:
        conn.execute(admin_sessions.update().values(last_seen_at=time.time() - 50 * 60))
    assert client.get("/admin/").status_code == 200
    with app.extensions["store"].read() as conn:
        seen = conn.execute(select(admin_sessions.c.last_seen_at)).scalar()
    assert time.time() - seen < 60


def test_logging_in_again_replaces_the_browsers_session(app):
    """A session id planted before login (session fixation) is not the one after it."""
    from server.store import admin_sessions

    client = logged_in(app)
    before = client.get_cookie(COOKIE).value
    assert login(client).status_code == 302
    thief = app.test_client()
    thief.set_cookie(COOKIE, before)
    assert refused(thief.get("/admin/"))
    assert client.get("/admin/").status_code == 200
    assert count(app, admin_sessions) == 1


# --- login limits -------------------------------------------------------------------------

def _counting_checks(monkeypatch) -> list:
    """Count (and slow down) password checks, so concurrent attempts overlap."""
    calls = []
    original = server.auth.check_password_hash

    def check(stored, password):
        calls.append(password)
        time.sleep(0.05)
        return original(stored, password)

    monkeypatch.setattr(server.auth, "check_password_hash", check)
    return calls


def _browser_login(base: str, username: str, password: str, barrier=None) -> int:
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = opener.open(f"{base}/admin/login", timeout=60).read().decode()
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    data = urllib.parse.urlencode({"csrf_token": token, "username": username,
                                   "password": password}).encode()
    if barrier is not None:
        barrier.wait(30)
    try:
        with opener.open(f"{base}/admin/login", data, timeout=60) as reply:
            return 302 if reply.url.endswith("/admin/") else reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_forty_concurrent_wrong_passwords_never_check_more_than_the_limit(app, monkeypatch):
    calls = _counting_checks(monkeypatch)
    n = 40
    barrier = threading.Barrier(n)
    codes: list[int] = []
    with serving(app) as base:
        threads = [threading.Thread(target=lambda i=i: codes.append(
            _browser_login(base, "alice", f"wrong password {i}", barrier))) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(codes) == n
        limit = app.config["LOGIN_MAX_FAILURES"]
        assert len(calls) <= limit, f"{len(calls)} passwords checked, limit {limit}"
        assert codes.count(401) == len(calls) and codes.count(429) == n - len(calls)
        assert count(app, login_attempts, login_attempts.c.success.is_(False)) <= limit
        # The account is locked, even with its password; not another from the address.
        assert _browser_login(base, "alice", PASSWORD) == 429
        assert _browser_login(base, "bob", BOB_PASSWORD) == 302


def test_a_locked_account_refuses_its_password_and_other_accounts_log_in(app):
    client = app.test_client()
    for _ in range(5):
        assert login(client, password="not the password").status_code == 401
    locked = login(client)
    assert locked.status_code == 429 and b"too many failed logins" in locked.data
    assert login(client, "bob", BOB_PASSWORD).location == "/admin/"   # same address
    assert login(client, "mallory", "whatever it is").status_code == 401
    from_elsewhere = login(app.test_client(), address="198.51.100.4")
    assert from_elsewhere.status_code == 429           # the account, from any address
    assert 0 < int(locked.headers["Retry-After"]) <= app.config["LOGIN_WINDOW_MINUTES"] * 60


def test_after_the_window_the_right_password_works_and_refusals_did_not_count(app):
    client = app.test_client()
    for _ in range(5):
        login(client, password="not the password")
    for _ in range(10):                                # refused, not checked, not counted
        assert login(client, password="still guessing").status_code == 429
    assert count(app, login_attempts) == 5
    window = app.config["LOGIN_WINDOW_MINUTES"] * 60
    with app.extensions["store"].write() as conn:      # the window passes
        conn.execute(login_attempts.update().values(at=login_attempts.c.at - window - 1))
    assert login(client).location == "/admin/"


def test_an_address_is_limited_too_at_a_higher_limit(app):
    assert app.config["LOGIN_MAX_FAILURES_PER_ADDRESS"] > app.config["LOGIN_MAX_FAILURES"]
    app.config["LOGIN_MAX_FAILURES_PER_ADDRESS"] = 8
    client = app.test_client()
    for i in range(8):                                  # many names from one address
        assert login(client, f"user{i}", "wrong password!", "203.0.113.7").status_code == 401
    assert login(client, "bob", BOB_PASSWORD, "203.0.113.7").status_code == 429
    assert login(client, "bob", BOB_PASSWORD, "198.51.100.2").location == "/admin/"


def test_every_attempt_is_recorded_with_its_outcome(app):
    logged_in(app)
    login(app.test_client(), password="not the password", address="192.0.2.1")
    with app.extensions["store"].read() as conn:
        rows = conn.execute(select(login_attempts.c.username, login_attempts.c.ip,
                                   login_attempts.c.success)
                            .order_by(login_attempts.c.id)).all()
    assert [tuple(r) for r in rows] == [("alice", "127.0.0.1", True),
                                        ("alice", "192.0.2.1", False)]


def test_a_store_from_before_server_side_sessions_is_upgraded(db_url, tmp_path, design_file):
    """A running study's store (schema version 3) gains the sessions table on start; an
    experimenter's cookie from before (the account in the cookie) is no session."""
    from server.store import MIGRATIONS, SCHEMA_VERSION, Store, admin_sessions, meta

    store = Store(db_url)
    with store.write() as conn:
        for version in (1, 2, 3):
            MIGRATIONS[version](conn)
        conn.execute(meta.insert().values(key="schema_version", value="3"))
    assert store.migrate() == 3
    with store.read() as conn:
        assert conn.execute(select(meta.c.value)).scalar() == str(SCHEMA_VERSION)
        assert conn.execute(select(func.count()).select_from(admin_sessions)).scalar() == 0
    store.dispose()
    app = study_app(db_url, tmp_path / "instance", design_file, "DONE123", TESTING=True)
    app.test_cli_runner().invoke(args=["create-admin", "alice", "--password-stdin"],
                                 input=PASSWORD + "\n")
    serializer = app.session_interface.get_signing_serializer(app)
    client = app.test_client()
    at = time.time()
    client.set_cookie(COOKIE, serializer.dumps(
        {"admin": {"id": 1, "name": "alice", "since": at, "seen": at}}))
    assert refused(client.get("/admin/"))
    assert logged_in(app).get("/admin/").status_code == 200
    app.extensions["store"].dispose()
