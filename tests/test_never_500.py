"""No request body, query or path turns into a 500, on SQLite and on PostgreSQL.

First the attacks that did (each a reproduction): numbers too large for a float, JSON
nested 30,000 deep, lone surrogates and NUL in strings, a NUL in the login user name, a
dashboard page beyond any integer column. Then :mod:`server.validate` on its own, and one
property-based test per endpoint over arbitrary JSON, form and query bodies (Hypothesis,
derandomized), asserting "never 5xx"; a refusal under /api/ is JSON with an ``error``.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_world import Participant, count, make_design, store_url, study_app
from sqlalchemy import select

from server import validate
from server.prolific import sign
from server.store import login_attempts, panels, participants, responses
from server.store import study as study_table

PASSWORD = "correct horse battery"
BIG = "1" + "0" * 309                    # 10**309: an int Python cannot make a float of


def answer_text(person: Participant, index: int = 0, **fields) -> str:
    """A valid answer to trial ``index`` as JSON text, with ``fields`` spliced in raw
    (each value is JSON text, so that numbers beyond a float can be written)."""
    panel = person.state()["trials"][index]["panel_id"]
    body = {"trial_index": index, "panel_id": panel, "answer_yes": True,
            "object_text": "a cat", "rt_answer_ms": 900, "rt_text_ms": 1500,
            "shown_at": 1.7e12, "client_answered_at": 1.7e12 + 2400}
    for name in fields:
        body[name] = f"@@{name}@@"
    text = json.dumps(body)
    for name, raw in fields.items():
        text = text.replace(f'"@@{name}@@"', raw)
    return text


def post_json(person: Participant, text: str | bytes):
    return person.client.post("/api/responses", data=text, content_type="application/json",
                              headers={"X-CSRF-Token": person.csrf()})


def refused(response, status: int = 400) -> str:
    assert response.status_code == status, (response.status_code, response.data[:300])
    error = response.get_json()["error"]
    assert isinstance(error, str) and error
    return error


# --- finding 6: participant-reachable 500s on /api/responses ---------------------------------

@pytest.mark.parametrize("name", ["rt_answer_ms", "rt_text_ms", "shown_at",
                                  "client_answered_at", "trial_index"])
@pytest.mark.parametrize("raw", [BIG, "-" + BIG, BIG + ".5", "1e400", "NaN", "Infinity",
                                 "-Infinity", "9" * 5000])
def test_numbers_beyond_a_float_are_refused(app, name, raw):
    person = Participant(app.test_client())
    person.ready()
    error = refused(post_json(person, answer_text(person, **{name: raw})))
    assert "number" in error
    assert count(app, responses) == 0
    assert person.answer(0, True, "a cat").status_code == 201     # the session goes on


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deep_json_is_refused_before_it_is_parsed(app, opener):
    person = Participant(app.test_client())
    person.ready()
    closer = "]" if opener == "[" else "}"
    depth = 30_000 if opener == "[" else 10_000      # within the 64 KiB body limit
    error = refused(post_json(person, opener * depth + "1" + closer * depth))
    assert "nested" in error
    # also inside an otherwise valid answer
    deep = "[" * 5_000 + "]" * 5_000
    refused(post_json(person, answer_text(person, object_text=deep)))
    assert count(app, responses) == 0


@pytest.mark.parametrize("field,raw", [
    ("object_text", r'"cat\ud800"'),
    ("object_text", r'"\udfff cat"'),
    ("object_text", r'"cat\u0000"'),
    ("panel_id", r'"fc8_0000\ud800"'),
    ("panel_id", r'"fc8\u0000"'),
    ("extra\\ud800", '"x"'),
])
def test_lone_surrogates_and_nul_in_strings_are_refused(app, field, raw):
    person = Participant(app.test_client())
    person.ready()
    text = answer_text(person, **{field: raw}) if field != "extra\\ud800" else \
        answer_text(person)[:-1] + r', "extra\ud800": "x"}'
    error = refused(post_json(person, text))
    assert "surrogate" in error or "NUL" in error or "control" in error
    assert count(app, responses) == 0


@pytest.mark.parametrize("agent", ["Mozilla\x00/5.0", "\x00" * 10, "x" * 5000])
def test_a_nul_or_a_huge_user_agent_at_entry_is_stored_cleaned(app, agent):
    # werkzeug passes a NUL in a header on (gunicorn refuses it); PostgreSQL refuses NUL in
    # text: the entry once answered 500 there
    client = app.test_client()
    pid = secrets.token_hex(12)
    reply = client.get(f"/?PROLIFIC_PID={pid}&STUDY_ID={'c' * 24}&SESSION_ID={'d' * 24}",
                       headers={"User-Agent": agent})
    assert reply.status_code in (200, 302), reply.status_code
    with app.extensions["store"].read() as conn:
        stored = conn.execute(select(participants.c.user_agent)
                              .where(participants.c.prolific_pid == pid)).scalar_one()
    assert "\x00" not in stored and len(stored) <= 500 and stored


def test_paired_surrogates_and_plain_unicode_are_stored(app):
    person = Participant(app.test_client())
    person.ready()
    response = post_json(person, answer_text(person, object_text=r'"a cat \ud83d\ude00 ü字"'))
    assert response.status_code == 201, response.data
    assert response.get_json()["object_text"] == "a cat \U0001f600 ü字"


def test_bodies_in_other_encodings_or_invalid_utf8_are_refused(app):
    person = Participant(app.test_client())
    person.ready()
    refused(post_json(person, b'{"trial_index": 0, "panel_id": "\xed\xa0\x80"}'))
    refused(post_json(person, b"\xff\xfe{\x00"))
    assert count(app, responses) == 0


# --- finding 7: the experimenter side ------------------------------------------------------

@pytest.fixture
def admin_app(app):
    result = app.test_cli_runner().invoke(args=["create-admin", "alice", "--password-stdin"],
                                          input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    return app


def login_csrf(client) -> str:
    page = client.get("/admin/login").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def logged_in(app):
    client = app.test_client()
    reply = client.post("/admin/login", data={"username": "alice", "password": PASSWORD,
                                              "csrf_token": login_csrf(client)})
    assert reply.status_code == 302
    return client


@pytest.mark.parametrize("username", ["alice\x00", "\x00", "al\x00ice", "\x00" * 200])
def test_a_nul_in_the_login_name_is_a_failed_login(admin_app, username):
    client = admin_app.test_client()
    before = count(admin_app, login_attempts)
    reply = client.post("/admin/login", data={"username": username, "password": PASSWORD,
                                              "csrf_token": login_csrf(client)})
    assert reply.status_code == 401
    assert count(admin_app, login_attempts) == before + 1     # counted against the address


@pytest.mark.parametrize("query", ["page=9223372036854775807", "page=9223372036854775808",
                                   "page=" + "9" * 5000, "page=-1", "page=0", "page=abc",
                                   "page=1e3", "page=%00", "page=%ED%A0%80",
                                   "status=%00", "status=" + "a" * 10_000])
def test_dashboard_query_parameters_are_bounded(admin_app, query):
    client = logged_in(admin_app)
    reply = client.get("/admin/?" + query)
    assert reply.status_code == 400, (query, reply.status_code)


def test_a_dashboard_page_past_the_last_is_empty_not_an_error(admin_app):
    client = logged_in(admin_app)
    assert client.get("/admin/?page=1000000").status_code == 200
    assert client.get("/admin/?page=1000001").status_code == 400


@pytest.mark.parametrize("target", ["/admin/%0D%0AX-Injected:%20yes", "/admin/%0Ax",
                                    "/admin/%00", "/admin/%E2%80%AE", "/admin/" + "a" * 5000])
def test_login_next_with_control_characters_goes_to_the_dashboard(admin_app, target):
    client = admin_app.test_client()
    reply = client.post("/admin/login?next=" + target, data={
        "username": "alice", "password": PASSWORD, "csrf_token": login_csrf(client)})
    assert reply.status_code == 302
    assert reply.headers["Location"] == "/admin/"
    assert "X-Injected" not in reply.headers
    assert client.post("/admin/login?next=/admin/?page=2", data={
        "username": "alice", "password": PASSWORD, "csrf_token": login_csrf(client)}
    ).headers["Location"] == "/admin/?page=2"


@pytest.mark.parametrize("pid", ["9223372036854775807", "99999999999999999999",
                                 "2147483648", "9" * 400])
def test_participant_ids_beyond_the_column_are_not_found(admin_app, pid):
    client = logged_in(admin_app)
    token = Participant(client).csrf()
    reply = client.post(f"/admin/participants/{pid}/status",
                        data={"status": "returned", "csrf_token": token})
    assert reply.status_code == 404


# --- server.validate ------------------------------------------------------------------------

def test_validate_loads_takes_ordinary_json():
    value = validate.loads(b'{"a": [1, -2.5, 1.7e12, true, null, "x\\u00fc\\ud83d\\ude00"]}')
    assert value == {"a": [1, -2.5, 1.7e12, True, None, "xü\U0001f600"]}
    assert validate.loads('"[{\\"not nesting\\"]"') == '[{"not nesting"]'
    assert validate.loads("[" * 32 + "]" * 32) is not None
    assert validate.loads(str(2**53 - 1)) == 2**53 - 1


@pytest.mark.parametrize("text,words", [
    ("[" * 33 + "]" * 33, "nested"),
    ('{"a":' * 40 + "1" + "}" * 40, "nested"),
    (str(2**53), "number"),
    ("-" + str(2**53), "number"),
    ("1e16", "number"),
    ("1e400", "number"),
    ("NaN", "number"),
    ("[Infinity]", "number"),
    ('"\\ud800"', "surrogate"),
    ('{"\\udc00": 1}', "surrogate"),
    ('"a\\u0000b"', "NUL"),
    ("{", "not valid JSON"),
    ("", "not valid JSON"),
    (b"\xff\xfe\xfd", "UTF-8"),
    (b'"\xed\xa0\x80"', "UTF-8"),
])
def test_validate_loads_refuses(text, words):
    with pytest.raises(validate.Invalid, match=words) as caught:
        validate.loads(text)
    assert caught.value.status == 400
    # NotJSON: not JSON at all, as opposed to JSON refused for what it holds
    assert isinstance(caught.value, validate.NotJSON) == (words in ("not valid JSON", "UTF-8"))


def test_validate_loads_limits_are_keywords():
    assert validate.loads("[[1]]", max_depth=2) == [[1]]
    with pytest.raises(validate.Invalid):
        validate.loads("[[[1]]]", max_depth=2)
    assert validate.loads("1e20", max_number=1e21) == 1e20
    with pytest.raises(validate.Invalid):
        validate.loads("1001", max_number=1000)
    assert validate.loads('"a\\u0000"', allow_nul=True) == "a\x00"


def test_validate_clean_str_and_query_int():
    assert validate.clean_str("rt", "abc", max_len=3) == "abc"
    for bad in ("a\x00", "a\ud800", "abcd", 5, None):
        with pytest.raises(validate.Invalid):
            validate.clean_str("rt", bad, max_len=3)
    assert validate.is_clean("dog") and not validate.is_clean("d\x00g")
    assert not validate.is_clean("\udfff")
    assert validate.scrub("a\x00b\ud800") == "a\ufffdb\ufffd"
    assert validate.query_int("page", None, 1, 1, 10) == 1
    assert validate.query_int("page", "7", 1, 1, 10) == 7
    for bad in ("11", "0", "-1", "+1", " 1", "1.0", "١", "9" * 5000, "\x00"):
        with pytest.raises(validate.Invalid):
            validate.query_int("page", bad, 1, 1, 10)


# --- every endpoint, arbitrary bodies (Hypothesis) -----------------------------------------

@pytest.fixture(scope="module", params=["sqlite", pytest.param(
    "postgresql", marks=pytest.mark.needs_system("postgresql"))])
def world(request, tmp_path_factory):
    """One app per store for the property tests (no per-address entry limit: the tests
    make some 150 participants from one address)."""
    root = tmp_path_factory.mktemp(f"never500_{request.param}")
    design = make_design(root / "design", {"fc8": 6}, n_lists=2, participants=400)
    with store_url(request.param, root) as url:
        app = study_app(url, root / "instance", design, "NEVER500", TESTING=True,
                        PROLIFIC_WEBHOOK_SECRET="hook-secret", ENTRY_MAX_PER_ADDRESS=None,
                        LOGIN_MAX_FAILURES=10**9, LOGIN_MAX_FAILURES_PER_ADDRESS=10**9)
        app.test_cli_runner().invoke(args=["create-admin", "alice", "--password-stdin"],
                                     input=PASSWORD + "\n")
        app.admin_client = logged_in(app)            # logged in again after a fuzzed logout
        yield app
        app.extensions["store"].dispose()


COOKIE = "study_session"


@pytest.fixture
def sessions(world):
    """Fresh sessions at every stage: a stranger, a participant at each step (consent,
    instructions, device check, trials, debrief, done), a preview and an experimenter. Each is
    (client, CSRF token, its session cookie): every example starts from that cookie, so
    a fuzzed logout or preview does not leave the rest of the test without the session;
    what a request changed in the store stays (which is part of the point)."""
    with world.extensions["store"].write() as conn:     # a fuzzed "close" before this test
        conn.execute(study_table.update().values(status="open"))
    made = {"stranger": Participant(world.test_client())}
    made["consent"] = Participant(world.test_client())
    made["consent"].enter()
    made["instructions"] = Participant(world.test_client())
    made["instructions"].enter()
    made["instructions"].consent()
    made["device"] = Participant(world.test_client())
    made["device"].enter()
    made["device"].consent()
    made["device"].instructions()
    made["trials"] = Participant(world.test_client())
    made["trials"].ready()
    made["debrief"] = Participant(world.test_client())
    made["debrief"].ready()
    made["debrief"].answer_all()
    made["done"] = Participant(world.test_client())
    made["done"].ready()
    made["done"].answer_all()
    made["done"].post("/debrief")
    made["preview"] = Participant(world.test_client())
    made["preview"].client.get("/preview")
    if world.admin_client.get("/admin/").status_code != 200:
        world.admin_client = logged_in(world)
    made["admin"] = Participant(world.admin_client)
    with world.extensions["store"].read() as conn:
        image = conn.execute(select(panels.c.image)).scalars().first()
    trials = made["trials"]
    out = {"_image": image, "_fill": {b"@PANEL@": trials.state()["trials"][0]["panel_id"],
                                       b"@SESSION@": trials.session_id, b"@PID@": trials.pid}}
    for name, person in made.items():
        token = person.csrf()
        cookie = person.client.get_cookie(COOKIE)
        out[name] = (person.client, token, cookie.value if cookie else None)
    return out


texts = st.one_of(
    st.sampled_from(["", "agree", "decline", "returned", "timed_out", "open", "closed",
                     "alice", PASSWORD, "1", "0", "-1", "1280", "9223372036854775807", BIG,
                     "NaN", "\x00", "a\x00", "\ud800", "\u202e", "<script>", "'; --",
                     "fc8_0000", "practice_0", "%00", "../x", "submission.status.change",
                     "RETURNED", "TIMED-OUT", "a" * 24, "X" * 40, "responses.csv",
                     "participants.json", "trials.js", "@IMG@"]),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
)
numbers = st.one_of(st.integers(), st.integers(min_value=-10**400, max_value=10**400),
                    st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=5)), max_leaves=16)
answer_keys = ["trial_index", "panel_id", "answer_yes", "object_text", "rt_answer_ms",
               "rt_text_ms", "shown_at", "client_answered_at", "event_type", "resource_id",
               "participant_id", "status"]
answers = st.dictionaries(st.sampled_from(answer_keys), json_values, max_size=9)
# valid bodies (the "trials" participant's first answer; a delivery about them) with one
# field replaced or dropped, so that requests also get past the first checks
VALID_ANSWER = {"trial_index": 0, "panel_id": "@PANEL@", "answer_yes": True,
                "object_text": "a cat", "rt_answer_ms": 900, "rt_text_ms": 1500,
                "shown_at": 1.7e12, "client_answered_at": 1.7e12 + 2400}
VALID_EVENT = {"event_type": "submission.status.change", "resource_id": "@SESSION@",
               "participant_id": "@PID@", "status": "RETURNED"}


def _mutated(base: dict):
    """``base`` as it is, without one field, or with one field replaced."""
    def change(choice):
        key, value, how = choice
        if how == "keep":
            return dict(base)
        if how == "drop":
            return {k: v for k, v in base.items() if k != key}
        return {**base, key: value}

    return st.tuples(st.sampled_from(list(base)), json_values,
                     st.sampled_from(["keep", "drop", "replace", "replace"])).map(change)


def _json_text(value) -> bytes:
    return json.dumps(value).encode()          # NaN, Infinity and \udXXX escapes included


json_bodies = st.one_of(
    answers.map(_json_text),
    json_values.map(_json_text),
    st.integers(1, 3000).map(lambda n: ("[" * n + "]" * n).encode()),
    st.integers(1, 3000).map(lambda n: ('{"a":' * n + "0" + "}" * n).encode()),
    st.binary(max_size=300),
)
form_keys = ["csrf_token", "choice", "width", "height", "screen_width", "screen_height",
             "touch_only", "mobile", "username", "password", "status", "next", "x"]


def _urlencoded(pairs) -> bytes:
    # surrogatepass: a lone surrogate goes out as (invalid) UTF-8 bytes
    return urlencode(pairs, encoding="utf-8", errors="surrogatepass").encode()


form_pairs = st.lists(st.tuples(st.sampled_from(form_keys), texts), max_size=8)
query_keys = ["page", "status", "list", "next", "PROLIFIC_PID", "STUDY_ID", "SESSION_ID",
              "retry", "x"]
queries = st.lists(st.tuples(st.sampled_from(query_keys), texts), max_size=5).map(
    lambda pairs: urlencode(pairs, encoding="utf-8", errors="surrogatepass"))
path_values = st.one_of(texts, st.integers(-10, 10**30).map(str)).map(
    lambda v: quote(v, safe="", encoding="utf-8", errors="surrogatepass") or "x")


@st.composite
def requests(draw, methods: tuple[str, ...], who: str):
    """One request to a route taking ``methods``, mostly from the session ``who`` (the one
    the route is for), else from any, with mostly the kind of body the route takes."""
    method = draw(st.sampled_from(methods))
    kind = "none"
    if method == "POST":         # mostly the kind of body the route takes
        usual = "json" if who in ("api", "hook") else "form"
        kind = draw(st.sampled_from([usual, usual, usual, "none", "form", "json", "raw"]))
    body, content_type = b"", None
    if kind == "form":
        pairs = draw(form_pairs)
        if draw(st.booleans()):
            pairs.append(("csrf_token", "@CSRF@"))
        body, content_type = _urlencoded(pairs), "application/x-www-form-urlencoded"
    elif kind == "json":
        valid = {"api": VALID_ANSWER, "hook": VALID_EVENT}.get(who)
        if valid is not None and draw(st.booleans()):
            body = _json_text(draw(_mutated(valid)))
        else:
            body = draw(json_bodies)
        content_type = "application/json"
    elif kind == "raw":
        body = draw(st.binary(max_size=500))
        content_type = draw(st.sampled_from(["text/plain", "multipart/form-data",
                                             "application/json; charset=latin-1",
                                             "application/x-www-form-urlencoded"]))
    return {"method": method, "query": draw(queries), "body": body,
            "content_type": content_type, "who": draw(st.sampled_from(
                [SESSION_OF.get(who, who)] * 9 + SESSIONS)),
            "csrf": draw(st.sampled_from([True, True, True, False])),
            "path_value": draw(path_values),
            "signed": draw(st.sampled_from([True, True, True, False]))}


ROUTES = {   # path (with {} for a path parameter) -> methods
    "/": ("GET",), "/preview": ("GET",), "/study": ("GET",), "/consent": ("GET", "POST"),
    "/instructions": ("GET", "POST"), "/device": ("GET", "POST"), "/trials": ("GET",),
    "/debrief": ("GET", "POST"), "/complete": ("GET",), "/declined": ("GET",),
    "/ended": ("GET",), "/img/{}": ("GET",), "/static/{}": ("GET",),
    "/api/state": ("GET",), "/api/responses": ("POST",), "/api/health": ("GET",),
    "/api/prolific/webhook": ("POST",), "/admin/login": ("GET", "POST"),
    "/admin/logout": ("POST",), "/admin/": ("GET",), "/admin/design.json": ("GET",),
    "/admin/participants/{}/status": ("POST",), "/admin/study/status": ("POST",),
    "/admin/export/{}": ("GET",),
}

SESSIONS = ["stranger", "consent", "instructions", "device", "trials", "debrief", "done",
            "preview", "admin"]
SESSION_OF = {"api": "trials", "hook": "stranger"}
WHO = {"/consent": "consent", "/instructions": "instructions", "/device": "device",
       "/trials": "trials", "/api/state": "trials", "/api/responses": "api",
       "/api/prolific/webhook": "hook",
       "/debrief": "debrief", "/complete": "done", "/declined": "consent",
       "/ended": "done", "/img/{}": "trials", "/preview": "admin"}
WHO.update({path: "admin" for path in ROUTES if path.startswith("/admin/")})

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def send(sessions, path: str, req: dict):
    client, token, cookie = sessions[req["who"]]
    if cookie is None:
        client.delete_cookie(COOKIE)
    else:
        client.set_cookie(COOKIE, cookie)
    path = path.replace("{}", req["path_value"].replace("%40IMG%40", sessions["_image"]))
    body = req["body"].replace(b"%40CSRF%40", quote(token).encode())
    for mark, value in sessions["_fill"].items():
        body = body.replace(mark, value.encode())
    headers = {"X-CSRF-Token": token} if req["csrf"] else {}
    if path == "/api/prolific/webhook" and req["signed"]:   # a validly signed delivery
        stamp = str(int(time.time()))
        headers = {"X-Prolific-Request-Timestamp": stamp,
                   "X-Prolific-Request-Signature": sign("hook-secret", stamp, body)}
    return client.open(path, method=req["method"], query_string=req["query"] or None,
                       data=body if req["method"] == "POST" else None,
                       content_type=req["content_type"], headers=headers)


def check(path: str, req: dict, response) -> None:
    assert response.status_code < 500, (path, req, response.status_code, response.data[:500])
    if response.status_code >= 400 and path.startswith("/api/"):
        data = response.get_json()
        assert isinstance(data, dict) and isinstance(data.get("error"), str), response.data


@pytest.mark.parametrize("path", list(ROUTES))
def test_no_request_to_any_endpoint_is_a_5xx(sessions, path):
    @SETTINGS
    @given(req=requests(ROUTES[path], WHO.get(path, "stranger")))
    def run(req):
        check(path, req, send(sessions, path, req))

    run()


def test_the_fuzzed_store_still_works(world):
    """After all that, a fresh participant still walks the study to the end."""
    with world.extensions["store"].write() as conn:
        conn.execute(study_table.update().values(status="open"))
    person = Participant(world.test_client(), pid=secrets.token_hex(12))
    person.ready()
    assert person.answer_all()["done"] is True


# --- the trial page: a 4xx is shown and not retried, a 5xx is retried ------------------------

@pytest.mark.needs_system("chromium")
def test_the_trial_page_shows_a_4xx_once_and_retries_a_5xx(tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    from server_world import new_pid, serving
    from system_deps import chromium_path

    design = make_design(tmp_path / "design", {"fc8": 6}, n_lists=1, participants=2)
    app = study_app(f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "instance", design,
                    "BROWSER4XX")
    posts: list[tuple[str, int]] = []
    with serving(app) as base, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True,
                                     args=["--no-sandbox"])
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        page.set_default_timeout(15_000)
        page.on("response", lambda r: posts.append((r.request.post_data, r.status))
                if r.url.endswith("/api/responses") else None)
        page.goto(f"{base}/?PROLIFIC_PID={new_pid()}&STUDY_ID={'c' * 24}"
                  f"&SESSION_ID={'d' * 24}")
        page.get_by_role("button", name="I agree to take part").click()
        page.wait_for_url("**/instructions")
        page.get_by_role("button", name="Continue").click()
        page.wait_for_url("**/device")
        page.get_by_role("button", name="Check my screen and continue").click()
        page.wait_for_url("**/trials")

        # 1. The first answer reaches the server with 10**309 for its reaction time (a
        # tampered client): 400, shown, never sent again; the page reloads at the same trial.
        tampered = []

        def tamper(route):
            if tampered:
                route.continue_()
                return
            body = json.loads(route.request.post_data)
            tampered.append(json.dumps({**body, "rt_answer_ms": "@"}).replace('"@"', BIG))
            route.continue_(post_data=tampered[0])

        page.route("**/api/responses", tamper)
        page.locator("#yes").wait_for(state="visible")
        page.keyboard.press("n")
        page.locator("#network").wait_for(state="visible")
        assert "out of range" in page.locator("#network").inner_text()
        page.wait_for_load_state("load")
        page.locator("#yes").wait_for(state="visible")
        assert page.locator("#progress").inner_text() == "Practice panel 1 of 6"
        page.wait_for_timeout(1500)               # time in which a retry would have gone out
        assert [status for _, status in posts] == [400]
        page.keyboard.press("n")                   # the participant answers again: stored
        playwright_api.expect(page.locator("#progress")).to_have_text("Practice panel 2 of 6")
        assert [status for _, status in posts] == [400, 201]
        page.unroute("**/api/responses")

        # 2. A 503 (the server restarting): the answer is kept and sent again, once stored.
        failed = []

        def unavailable(route):
            if not failed:
                failed.append(route.request.post_data)
                route.fulfill(status=503, content_type="application/json",
                              body='{"error": "restarting"}')
            else:
                route.continue_()

        page.route("**/api/responses", unavailable)
        page.locator("#yes").wait_for(state="visible")
        page.keyboard.press("n")
        page.locator("#network").wait_for(state="visible")
        assert "answer is kept" in page.locator("#network").inner_text()
        playwright_api.expect(page.locator("#progress")).to_have_text("Practice panel 3 of 6")
        assert [status for _, status in posts] == [400, 201, 503, 201]
        browser.close()
    assert count(app, responses) == 2
