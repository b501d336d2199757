"""Fuzzing the participant and API endpoints: wrong types, huge bodies, unicode, HTML and
script in free text, SQL metacharacters, forged session cookies. Nothing may answer 500,
nothing may be stored from a refused request, and stored markup is never executed (shown
escaped) when an experimenter looks at the data. Every test runs on SQLite and on
PostgreSQL.

The fuzz run (:func:`test_fuzz_run_never_answers_5xx`): ``FUZZ_REQUESTS`` (2,000)
generated requests per store, from a fixed seed, to every route of the app's URL map
(path parameters, query strings, form, JSON and raw bodies, right and wrong CSRF tokens,
signed and unsigned webhook deliveries) from sessions at every stage of the study and an
experimenter's; not one may answer 5xx::

    .venv/bin/python -m pytest -q tests/test_fuzz.py -k fuzz_run   # FUZZ_REQUESTS=20000 for more
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_world import Participant, make_design, store_url
from sqlalchemy import func, select

from server import create_app
from server.prolific import sign
from server.store import panels, participants, responses
from server.store import study as study_table
from server.study import install_study

NASTY = ["'; DROP TABLE responses; --", "\" OR 1=1 --", "<script>alert(1)</script>",
         "<img src=x onerror=alert(1)>", "{{7*7}}", "${7*7}", "%s%s%n", "\u202e\u0000",
         "ü🙂字", "../../etc/passwd", "\\x00", "NaN", "Infinity", "-1", "1e309", ""]

text = st.one_of(st.sampled_from(NASTY), st.text(max_size=300))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    text)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)), max_leaves=12)
answer_bodies = st.fixed_dictionaries({}, optional={
    "trial_index": st.one_of(st.integers(-5, 40), scalars),
    "panel_id": st.one_of(st.sampled_from(["practice_0", "fc8_0000"]), scalars),
    "answer_yes": scalars, "object_text": scalars, "rt_answer_ms": scalars,
    "rt_text_ms": scalars, "shown_at": scalars, "client_answered_at": scalars,
})

SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.fixture(scope="module", params=["sqlite", pytest.param(
    "postgresql", marks=pytest.mark.needs_system("postgresql"))])
def app(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"fuzz_{request.param}")
    design = make_design(root / "design", {"fc8": 6}, n_lists=2, participants=1000)
    with store_url(request.param, root) as url:
        app = create_app({"TESTING": True, "SECRET_KEY": "fuzz", "DATABASE_URL": url,
                          "PROLIFIC_WEBHOOK_SECRET": HOOK_SECRET,
                          "ENTRY_MAX_PER_ADDRESS": None, "LOGIN_MAX_FAILURES": 10**9,
                          "LOGIN_MAX_FAILURES_PER_ADDRESS": 10**9},
                         instance_path=root / "instance")
        with app.app_context():
            install_study(app.extensions["store"], design, app.config["IMAGE_DIR"], "FUZZ1")
        yield app
        app.extensions["store"].dispose()


@pytest.fixture(scope="module")
def ready(app):
    person = Participant(app.test_client())
    person.ready()
    return person


def stored(app) -> int:
    with app.extensions["store"].read() as conn:
        return conn.execute(select(func.count()).select_from(responses)).scalar()


@SETTINGS
@given(body=st.one_of(answer_bodies, json_values))
def test_answers_of_any_shape_get_a_4xx_or_are_stored_once(app, ready, body):
    before = stored(app)
    response = ready.client.post("/api/responses", json=body,
                                 headers={"X-CSRF-Token": ready.csrf()})
    assert response.status_code < 500, (body, response.data)
    data = response.get_json()
    if response.status_code >= 400:
        assert isinstance(data["error"], str) and data["error"]
        assert stored(app) == before
    else:
        assert stored(app) - before in (0, 1)


@SETTINGS
@given(raw=st.one_of(st.binary(max_size=2000), text.map(str.encode)),
       content_type=st.sampled_from(["application/json", "text/plain",
                                     "application/x-www-form-urlencoded", "multipart/form-data",
                                     "application/json; charset=latin-1"]))
def test_raw_bodies_never_break_the_api(app, ready, raw, content_type):
    before = stored(app)
    response = ready.client.post("/api/responses", data=raw, content_type=content_type,
                                 headers={"X-CSRF-Token": ready.csrf()})
    assert 400 <= response.status_code < 500, response.data
    assert stored(app) == before


@SETTINGS
@given(params=st.dictionaries(st.sampled_from(["PROLIFIC_PID", "STUDY_ID", "SESSION_ID",
                                               "list", "x"]), text, max_size=4),
       path=st.sampled_from(["/", "/preview", "/study", "/consent", "/trials", "/complete",
                             "/api/state", "/img/x.png", "/admin/", "/admin/login"]))
def test_query_strings_never_break_pages(app, params, path):
    response = app.test_client().get(path, query_string=params)
    assert response.status_code < 500
    assert b"<script>alert(1)</script>" not in response.data


@SETTINGS
@given(form=st.dictionaries(st.sampled_from(["csrf_token", "choice", "width", "height",
                                             "screen_width", "screen_height", "touch_only",
                                             "mobile", "username", "password", "status"]),
                            text, max_size=6),
       path=st.sampled_from(["/consent", "/instructions", "/device", "/debrief",
                             "/admin/login", "/admin/study/status", "/admin/logout"]))
def test_forms_never_break_pages(app, ready, form, path):
    response = ready.client.post(path, data=form)
    assert response.status_code < 500


@SETTINGS
@given(cookie=st.one_of(text, st.binary(max_size=300).map(lambda b: b.hex())))
def test_forged_session_cookies_are_no_session(app, cookie):
    client = app.test_client()
    client.set_cookie("study_session", cookie)
    for path in ("/study", "/trials", "/api/state", "/admin/"):
        response = client.get(path)
        assert response.status_code in (302, 403), (path, response.status_code)
    assert client.post("/api/responses", json={"trial_index": 0},
                       headers={"X-CSRF-Token": "x"}).status_code in (400, 403)


def test_stored_markup_is_shown_escaped_to_experimenters(app):
    person = Participant(app.test_client())
    person.ready()
    markup = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    assert person.answer(0, True, markup).status_code == 201
    runner = app.test_cli_runner()
    runner.invoke(args=["create-admin", "eve", "--password-stdin"],
                  input="fuzzing password\n")
    admin = app.test_client()
    page = admin.get("/admin/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    admin.post("/admin/login", data={"username": "eve", "password": "fuzzing password",
                                     "csrf_token": token})
    with app.extensions["store"].write() as conn:      # markup wherever text is stored
        conn.execute(participants.update().values(
            user_agent=markup, device=json.dumps({"width": markup})))
    for path in ("/admin/", "/admin/?status=active", "/admin/design.json"):
        body = admin.get(path).get_data(as_text=True)
        assert "<script>alert(1)</script>" not in body and "onerror=alert(2)>" not in body
    export = admin.get("/admin/export/responses.json")
    assert export.headers["Content-Type"].startswith("application/json")
    assert "attachment" in export.headers["Content-Disposition"]
    assert export.headers["X-Content-Type-Options"] == "nosniff"
    assert markup in {row["object_text"] for row in json.loads(export.data)}


# --- the fuzz run: FUZZ_REQUESTS requests per store, every route, zero 5xx ----------------

HOOK_SECRET = "fuzz-hook"
FUZZ_REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "2000"))
FUZZ_SEED = 20261126
COOKIE = "study_session"
PASSWORD = "fuzzing password"
WORDS = NASTY + ["agree", "decline", "returned", "timed_out", "open", "closed", "all",
                 "active", "completed", "eve", PASSWORD, "1", "0", "1280", "800",
                 "9223372036854775807", "1" + "0" * 309, "\x00", "a\x00", "\ud800",
                 "\udfff x", "\uff1d1+1", "\u200b=1", "fc8_0000", "practice_0",
                 "submission.status.change", "RETURNED", "TIMED-OUT", "X" * 40,
                 "responses.csv", "participants.json", "study.css", "trials.js", "%00",
                 "/admin/", "//evil.example", "/admin/\x00", "/admin/\r\nX-A: b",
                 "/admin/?page=2", "a" * 24, "\r\nX-A: b"]


class Fuzzer:
    """Generated requests from a seeded random.Random (deterministic, no shrinking: a
    failure reports the request as sent)."""

    def __init__(self, app, seed: int):
        self.app = app
        self.rng = random.Random(seed)
        self.routes = sorted((rule.rule, sorted(rule.methods - {"OPTIONS"}),
                              dict(rule._converters)) for rule in app.url_map.iter_rules())
        self.sessions: dict[str, tuple] = {}
        with app.extensions["store"].read() as conn:
            self.image = conn.execute(select(panels.c.image)).scalars().first()
        self.admin = None
        self.admin_out = False

    # values ---------------------------------------------------------------------------

    def text(self) -> str:
        rng = self.rng
        pick = rng.random()
        if pick < 0.45:
            return rng.choice(WORDS)
        if pick < 0.7:
            return "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(12)))
        if pick < 0.9:       # any code point: controls, surrogates, format characters, ...
            return "".join(chr(rng.choice([rng.randrange(0x110000), rng.randrange(0x80),
                                           rng.randrange(0xD800, 0xE000),
                                           rng.randrange(0x2000, 0x2070),
                                           rng.randrange(0xFF00, 0xFFFF)]))
                           for _ in range(rng.randrange(1, 12)))
        return rng.choice("x<'\"\\%") * rng.randrange(1, 3000)

    def header_text(self) -> str:
        """A header value as a WSGI server hands it on: bytes as Latin-1, never CR, LF or
        NUL (gunicorn refuses those)."""
        raw = self.text().encode("utf-8", "surrogatepass")[:100].decode("latin-1")
        return re.sub("[\r\n\x00]", "", raw)

    def number_text(self) -> str:
        rng = self.rng
        return rng.choice([str(rng.randrange(-10, 100)), str(rng.randrange(-2**63, 2**63)),
                           "1" + "0" * rng.choice([16, 309, 400, 4000]), "-0", "1e400",
                           "-1e309", "NaN", "Infinity", "-Infinity", "1.7e12", "0.5",
                           "9" * rng.randrange(1, 6000), "1e-400", "1E+2"])

    def json_text(self, depth: int = 0) -> str:
        rng = self.rng
        pick = rng.random()
        if depth > 3 or pick < 0.35:
            return rng.choice([self.number_text(), json.dumps(self.text()), "true", "false",
                               "null"])
        if pick < 0.45:
            opener = rng.choice(["[", '{"a":'])
            n = rng.choice([5, 33, 100, 1000, 5000, 12000])
            return opener * n + "0" + ("]" if opener == "[" else "}") * n
        if pick < 0.7:
            return "[" + ",".join(self.json_text(depth + 1)
                                  for _ in range(rng.randrange(4))) + "]"
        return "{" + ",".join(f"{json.dumps(self.text())}:{self.json_text(depth + 1)}"
                              for _ in range(rng.randrange(4))) + "}"

    def answer_text(self, person) -> str:
        """A valid answer (the participant's next trial) with some fields replaced."""
        rng = self.rng
        state = person.client.get("/api/state").get_json() or {}
        trials, index = state.get("trials") or [], state.get("next_index", 0)
        panel = trials[index]["panel_id"] if index < len(trials) else "fc8_0000"
        fields = {"trial_index": str(index), "panel_id": json.dumps(panel),
                  "answer_yes": rng.choice(["true", "false"]),
                  "object_text": json.dumps(rng.choice(["a cat", "dog", self.text()])),
                  "rt_answer_ms": "900", "rt_text_ms": "1500",
                  "shown_at": "1700000000000", "client_answered_at": "1700000002400"}
        for name in rng.sample(sorted(fields), rng.randrange(3)):
            if rng.random() < 0.3:
                del fields[name]
            else:
                fields[name] = rng.choice([self.number_text(), self.json_text(2)])
        return "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"

    def event_text(self, person) -> str:
        rng = self.rng
        fields = {"event_type": '"submission.status.change"',
                  "resource_id": json.dumps(person.session_id),
                  "participant_id": json.dumps(person.pid),
                  "status": json.dumps(rng.choice(["RETURNED", "TIMED-OUT", "REJECTED",
                                                   "APPROVED", "returned"]))}
        for name in rng.sample(sorted(fields), rng.randrange(3)):
            fields[name] = rng.choice([self.json_text(2), json.dumps(self.text())])
        return "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"

    # sessions -------------------------------------------------------------------------

    def refresh_sessions(self) -> None:
        """Fresh participants at every stage (fuzzed requests move them on or end them)."""
        with self.app.extensions["store"].write() as conn:     # reopen a fuzzed "close"
            conn.execute(study_table.update().values(status="open"))
        made = {"stranger": Participant(self.app.test_client())}
        steps = ["consent", "instructions", "device"]
        for stage, done in zip(steps + ["trials"], range(4), strict=True):
            person = Participant(self.app.test_client())
            person.enter()
            for step in steps[:done]:
                assert getattr(person, step)().status_code == 302, step
            made[stage] = person
        made["debrief"] = Participant(self.app.test_client())
        made["debrief"].ready()
        made["debrief"].answer_all()
        made["done"] = Participant(self.app.test_client())
        made["done"].ready()
        made["done"].answer_all()
        made["done"].post("/debrief")
        made["declined"] = Participant(self.app.test_client())
        made["declined"].enter()
        made["declined"].consent("decline")
        made["preview"] = Participant(self.app.test_client())
        made["preview"].client.get("/preview")
        self.sessions = {}
        for name, person in made.items():
            self.keep(name, person)
        self.log_in()

    def keep(self, name: str, person) -> None:
        token = person.csrf()
        cookie = person.client.get_cookie(COOKIE)
        self.sessions[name] = (person, token, cookie.value if cookie else None)

    def log_in(self) -> None:
        """The experimenter's session, logged in again if a fuzzed logout ended it."""
        if self.admin is None or self.admin.get("/admin/").status_code != 200:
            self.admin = self.app.test_client()
            page = self.admin.get("/admin/login").get_data(as_text=True)
            token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
            reply = self.admin.post("/admin/login", data={
                "username": "eve", "password": PASSWORD, "csrf_token": token})
            assert reply.status_code == 302, reply.status_code
        self.keep("admin", Participant(self.admin))

    # requests -------------------------------------------------------------------------

    def path(self, rule: str, converters: dict) -> str:
        rng = self.rng
        path = rule
        for name, converter in converters.items():
            kind = type(converter).__name__
            if kind == "IntegerConverter":
                value = rng.choice([str(rng.randrange(0, 20)), str(2**31), str(2**63),
                                    "9" * rng.randrange(1, 500)])
            else:
                value = rng.choice([self.image, "x.png", "0" * 64 + ".png", "trials.js",
                                    "responses.csv", "participants.json", "../secret_key",
                                    self.text()])
            value = quote(value, safe="/" if kind == "PathConverter" else "",
                          errors="surrogatepass") or "x"
            path = re.sub(rf"<(?:[^:>]+:)?{name}>", lambda _m, v=value: v, path)
        return path

    def one(self):
        rng = self.rng
        rule, methods, converters = rng.choice(self.routes)
        method = rng.choice(methods)
        who = rng.choice(list(self.sessions))
        if rule.startswith("/admin/") and rng.random() < (0.1 if "logout" in rule else 0.6):
            who = "admin"
            if self.admin_out:
                self.log_in()
                self.admin_out = False
        if rule == "/api/responses" and rng.random() < 0.6:
            who = "trials"
        person, token, cookie = self.sessions[who]
        client = person.client
        if cookie is None:
            client.delete_cookie(COOKIE)
        else:
            client.set_cookie(COOKIE, cookie if rng.random() < 0.97 else
                              quote(self.text(), errors="surrogatepass")[:200])
        path = self.path(rule, converters)
        query = urlencode([(rng.choice(["page", "status", "list", "next", "PROLIFIC_PID",
                                        "STUDY_ID", "SESSION_ID", "x"]), self.text())
                           for _ in range(rng.choice([0, 0, 1, 2, 4]))],
                          errors="surrogatepass")
        headers = {}
        if rng.random() < 0.8:
            headers["X-CSRF-Token"] = token if rng.random() < 0.9 else self.header_text()
        body, content_type = b"", None
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            kind = rng.choice(["form", "form", "json", "json", "raw", "none"])
            if kind == "form":
                pairs = [(rng.choice(["csrf_token", "choice", "width", "height",
                                      "screen_width", "screen_height", "touch_only",
                                      "mobile", "username", "password", "status", "x"]),
                          self.text()) for _ in range(rng.randrange(6))]
                if rule == "/admin/login" and rng.random() < 0.5:    # a real login
                    pairs = [("username", "eve"), ("password", PASSWORD)]
                    target = rng.choice(["\r\nX-A: b", "\n", "\x00", "\u202e", "a" * 3000,
                                         "?page=2", self.text(), self.text()])
                    query = urlencode([("next", "/admin/" + target)], errors="surrogatepass")
                if rng.random() < 0.8:
                    pairs.append(("csrf_token", token))
                body = urlencode(pairs, errors="surrogatepass").encode()
                content_type = "application/x-www-form-urlencoded"
            elif kind == "json":
                if rule == "/api/responses" and rng.random() < 0.6:
                    text = self.answer_text(self.sessions["trials"][0])
                elif rule == "/api/prolific/webhook" and rng.random() < 0.6:
                    text = self.event_text(self.sessions["trials"][0])
                else:
                    text = self.json_text()
                body = text.encode("utf-8", "surrogatepass")
                content_type = "application/json"
            elif kind == "raw":
                body = rng.randbytes(rng.randrange(300))
                content_type = rng.choice(["text/plain", "multipart/form-data",
                                           "multipart/form-data; boundary=x",
                                           "application/json; charset=utf-16",
                                           "application/x-www-form-urlencoded"])
            if rule == "/api/prolific/webhook" and rng.random() < 0.8:
                stamp = str(int(time.time()) + rng.choice([0, 0, 0, -10**6]))
                headers["X-Prolific-Request-Timestamp"] = stamp
                headers["X-Prolific-Request-Signature"] = sign(HOOK_SECRET, stamp, body)
        request = dict(path=path, method=method, query_string=query or None,
                       data=body or None, content_type=content_type, headers=headers)
        response = client.open(**request)
        self.admin_out |= who == "admin" and rule == "/admin/logout"
        return rule, request, response


def test_fuzz_run_never_answers_5xx(app):
    app.test_cli_runner().invoke(args=["create-admin", "eve", "--password-stdin"],
                                 input=PASSWORD + "\n")
    fuzzer = Fuzzer(app, FUZZ_SEED)
    seen: Counter = Counter()
    for i in range(FUZZ_REQUESTS):
        if i % 250 == 0:
            fuzzer.refresh_sessions()
        rule, request, response = fuzzer.one()
        assert response.status_code < 500, (request, response.status_code,
                                            response.data[:500])
        seen[rule, response.status_code // 100] += 1
    assert sum(seen.values()) == FUZZ_REQUESTS >= 2000 or "FUZZ_REQUESTS" in os.environ
    routes = {rule for rule, _ in seen}
    assert routes == {rule for rule, _, _ in fuzzer.routes}          # every route
    # and not only refusals: answers stored, webhooks applied, pages and the dashboard
    for rule in ("/api/responses", "/api/prolific/webhook", "/admin/", "/consent"):
        assert seen[rule, 2] > 0, (rule, {k: v for k, v in seen.items() if k[0] == rule})
