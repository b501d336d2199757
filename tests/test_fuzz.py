"""Fuzzing the participant and API endpoints: wrong types, huge bodies, unicode, HTML and
script in free text, SQL metacharacters, forged session cookies. Nothing may answer 500,
nothing may be stored from a refused request, and stored markup is never executed (shown
escaped) when an experimenter looks at the data."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_world import Participant, make_design
from sqlalchemy import func, select

from server import create_app
from server.store import participants, responses
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


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    design = make_design(root / "design", {"fc8": 6}, n_lists=2, participants=50)
    app = create_app({"TESTING": True, "SECRET_KEY": "fuzz",
                      "DATABASE_URL": f"sqlite:///{root / 'study.db'}"},
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
