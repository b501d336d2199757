"""The participant side of the experiment server, on SQLite and on PostgreSQL.

Each test builds its own world: a small design (3 lists of conv5/fc6/fc8 panels and 6
practice panels), a fresh store, an app. The PostgreSQL variants skip, with the reason,
only where no PostgreSQL is reachable (CI has one)."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
from server_world import Participant, count, make_design, new_pid, participant_row, store_of
from sqlalchemy import func, select

from server.assignment import (
    StudyFull,
    lease_seconds,
    list_fill,
    prolific_max_minutes,
    start,
)
from server.store import SCHEMA_VERSION, Store, meta, participants, responses
from server.study import StudyError, install_study

# --- the flow -----------------------------------------------------------------------------

def test_whole_flow_stores_every_answer_then_completes(app):
    p = Participant(app.test_client())
    assert p.enter().location == "/study"
    assert p.client.get("/study").location == "/consent"
    assert p.client.get("/trials").location == "/consent"          # no skipping ahead
    assert p.client.get("/complete").location == "/consent"
    state = p.ready()
    assert (state["n_trials"], state["n_practice"], state["next_index"]) == (12, 6, 0)
    assert [t["practice"] for t in state["trials"]] == [True] * 6 + [False] * 6
    assert [t["panel_id"] for t in state["trials"][:6]] == [f"practice_{i}" for i in range(6)]
    row = participant_row(app, p.pid)
    main = [t["panel_id"] for t in state["trials"][6:]]
    design = json.loads(design_file_text(app))
    assert sorted(main) == sorted(design["lists"][row.list_id - 1]["panels"])
    assert p.client.get("/complete").location == "/trials"
    last = p.answer_all()
    assert last["done"] and last["next"] == "/study"
    assert p.client.get("/study").location == "/debrief"
    assert p.post("/debrief").location == "/study"
    page = p.client.get("/complete")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "DONE123" in html
    assert 'content="5;url=https://app.prolific.com/submissions/complete?cc=DONE123"' in html
    row = participant_row(app, p.pid)
    assert row.status == "completed" and row.n_answered == 12 and row.completed_at
    with store_of(app).read() as conn:
        rows = conn.execute(select(responses).where(responses.c.participant_id == row.id)
                            .order_by(responses.c.trial_index)).all()
    assert [r.trial_index for r in rows] == list(range(12))
    assert [r.practice for r in rows] == [True] * 6 + [False] * 6
    assert rows[0].answer_yes and rows[0].object_text == "a dog" and rows[0].rt_text_ms == 1500
    assert not rows[1].answer_yes and rows[1].object_text is None and rows[1].rt_text_ms is None
    assert rows[3].rt_answer_ms == 903
    assert rows[0].shown_at == pytest.approx(1.7e9) and rows[0].answered_at > 1.7e9


def design_file_text(app) -> str:
    from server.store import study

    with store_of(app).read() as conn:
        return conn.execute(select(study.c.design)).scalar()


def test_completion_code_is_not_shown_before_every_trial_is_stored(app):
    p = Participant(app.test_client())
    state = p.ready()
    for trial in state["trials"][:-1]:
        p.answer(trial["index"], False, panel_id=trial["panel_id"])
    for path in ("/complete", "/debrief"):
        response = p.client.get(path)
        assert response.location == "/trials" and b"DONE123" not in response.data
    assert participant_row(app, p.pid).status == "active"


def test_free_text_is_trimmed_collapsed_required_and_length_limited(app):
    p = Participant(app.test_client())
    p.ready()
    assert p.answer(0, True, "   ").status_code == 400
    assert "object_text is required" in p.answer(0, True, None).get_json()["error"]
    too_long = p.answer(0, True, "x" * 201)
    assert too_long.status_code == 400 and "at most 200" in too_long.get_json()["error"]
    ok = p.answer(0, True, "  golden \n  retriever\t")
    assert ok.status_code == 201 and ok.get_json()["object_text"] == "golden retriever"


# --- idempotent writes and resume ---------------------------------------------------------

def test_repeated_post_returns_the_stored_answer_and_changes_nothing(app):
    p = Participant(app.test_client())
    p.ready()
    first = p.answer(0, True, "cat")
    assert first.status_code == 201 and first.get_json()["duplicate"] is False
    again = p.answer(0, False)                # a retry that differs changes nothing
    assert again.status_code == 200
    assert again.get_json() | {} == first.get_json() | {"duplicate": True}
    assert count(app, responses) == 1
    assert participant_row(app, p.pid).n_answered == 1
    skipped = p.answer(2, False)
    assert skipped.status_code == 409 and "answer that first" in skipped.get_json()["error"]
    wrong_panel = p.answer(1, False, panel_id="fc8_0000x")
    assert wrong_panel.status_code == 409 and "reload" in wrong_panel.get_json()["error"]
    assert count(app, responses) == 1


def test_concurrent_duplicate_posts_write_one_row(app):
    p = Participant(app.test_client())
    state = p.ready()
    csrf = p.csrf()
    with p.client.session_transaction() as sess:
        cookie = dict(sess)
    results = []

    def post():
        client = app.test_client()
        with client.session_transaction() as sess:
            sess.update(cookie)
        body = {"trial_index": 0, "panel_id": state["trials"][0]["panel_id"],
                "answer_yes": False, "rt_answer_ms": 500}
        results.append(client.post("/api/responses", json=body,
                                   headers={"X-CSRF-Token": csrf}).status_code)

    threads = [threading.Thread(target=post) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] * 9 + [201]
    assert count(app, responses) == 1


def test_reload_new_tab_and_other_browser_resume_at_the_next_trial(app):
    p = Participant(app.test_client())
    state = p.ready()
    for trial in state["trials"][:4]:
        assert p.answer(trial["index"], False, panel_id=trial["panel_id"]).status_code == 201
    assert p.client.get("/study").location == "/trials"         # reload / new tab
    assert p.state()["next_index"] == 4
    other = Participant(app.test_client(), pid=p.pid)            # another browser, same PID
    assert other.enter().location == "/study"
    assert other.client.get("/study").location == "/trials"
    resumed = other.state()
    assert resumed["next_index"] == 4 and resumed["trials"] == state["trials"]
    assert count(app, participants) == 1
    other.answer_all(start=4)
    assert participant_row(app, p.pid).status == "completed"


# --- assignment ---------------------------------------------------------------------------

def test_least_filled_list_first(app):
    """Targets 2, 2, 1 (5 participants over 3 lists): the fills never differ by more than
    one while every list has room, and the study fills exactly."""
    store = store_of(app)
    seen = []
    for _ in range(5):
        row, created = start(store, new_pid(), "s" * 24, "t" * 24, lease_seconds=3600)
        assert created
        with store.read() as conn:
            fills = list_fill(conn, at=row.created_at)
        seen.append(row.list_id)
        open_fills = [f.filled for f in fills]
        assert max(open_fills) - min(open_fills) <= 1 or any(not f.has_room for f in fills)
    assert sorted(Counter(seen).values()) == [1, 2, 2]
    assert {f.list_id: f.target for f in fills} == {f.list_id: f.filled for f in fills}
    with pytest.raises(StudyFull):
        start(store, new_pid(), "s" * 24, "t" * 24, lease_seconds=3600)


def test_fifty_concurrent_starts_never_exceed_the_targets(make_app, tmp_path):
    design = make_design(tmp_path / "big", {"conv5": 8, "fc6": 8}, n_lists=4, participants=22)
    app = make_app(design)
    barrier = threading.Barrier(50)
    outcomes = []

    def arrive():
        client = app.test_client()
        barrier.wait()
        response = Participant(client).enter(follow=True)
        outcomes.append("full" if b"This study is full" in response.data else
                        "in" if response.status_code == 200 else response.status_code)

    threads = [threading.Thread(target=arrive) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(outcomes) == {"in": 22, "full": 28}
    with store_of(app).read() as conn:
        per_list = dict(conn.execute(select(participants.c.list_id, func.count())
                                     .group_by(participants.c.list_id)).all())
        targets = {f.list_id: f.target for f in list_fill(conn, at=0)}
    assert per_list == targets and sum(targets.values()) == 22


def test_study_full_page(app):
    for _ in range(5):
        Participant(app.test_client()).ready()
    late = Participant(app.test_client())
    page = late.enter(follow=True)
    assert b"This study is full" in page.data and b"return the study on Prolific" in page.data
    assert count(app, participants) == 5


def test_lease_expiry_frees_the_slot(make_app):
    app = make_app(LEASE_MINUTES=1)
    store = store_of(app)
    early = [start(store, new_pid(), "s" * 24, "t" * 24, 60, at=1000.0)[0] for _ in range(5)]
    with pytest.raises(StudyFull):
        start(store, new_pid(), "s" * 24, "t" * 24, 60, at=1030.0)
    # A minute later every lease has passed: the slots are free again.
    late, created = start(store, new_pid(), "s" * 24, "t" * 24, 60, at=1061.0)
    assert created
    with store.read() as conn:
        fills = list_fill(conn, at=1061.0)
    assert sum(f.active for f in fills) == 1 and sum(f.completed for f in fills) == 0
    assert late.list_id in {p.list_id for p in early}


def test_expired_session_resumes_only_while_its_list_has_room(make_app):
    app = make_app(LEASE_MINUTES=0.001)           # 60 ms
    slow = Participant(app.test_client())
    slow.ready()
    import time

    time.sleep(0.1)
    # Its list has room: coming back renews the lease and the participant carries on.
    assert slow.client.get("/study").location == "/trials"
    assert slow.answer(0, False).status_code == 201
    row = participant_row(app, slow.pid)
    time.sleep(0.1)
    # Now the slot goes to others while it is expired ...
    with app.app_context():
        store = store_of(app)
        target = next(f.target for f in list_fill_now(store) if f.list_id == row.list_id)
        for _ in range(target):
            with store.write() as conn:
                conn.execute(participants.insert().values(
                    token=new_pid(), prolific_pid=new_pid(), study_param="s", session_param="t",
                    list_id=row.list_id, status="completed", trial_order="[]", order_seed=0,
                    n_trials=0, n_answered=0, created_at=0, lease_expires_at=0))
    # ... so it cannot come back, and its answers are not taken.
    page = slow.client.get("/study")
    assert page.status_code == 200 and b"time for this study has run out" in page.data
    refused = slow.answer(1, False, panel_id=row_order(row)[1])
    assert refused.status_code == 409
    assert count(app, responses) == 1


def test_lease_defaults_to_prolifics_maximum_time():
    # Prolific: maximum allowed time = 2 + X + 2 sqrt(X) minutes for an estimate of X
    assert prolific_max_minutes(30) == pytest.approx(2 + 30 + 2 * 30 ** 0.5)
    assert prolific_max_minutes(16) == 26
    assert lease_seconds({"ESTIMATED_MINUTES": 16, "LEASE_MINUTES": None}) == 26 * 60
    assert lease_seconds({"ESTIMATED_MINUTES": 16, "LEASE_MINUTES": 5}) == 300
    with pytest.raises(ValueError, match="must be positive"):
        prolific_max_minutes(0)


def list_fill_now(store):
    import time

    with store.read() as conn:
        return list_fill(conn, at=time.time())


def row_order(row):
    return json.loads(row.trial_order)


# --- consent, parameters, malformed input -------------------------------------------------

def test_declining_consent_ends_politely_and_frees_the_slot(app):
    p = Participant(app.test_client())
    p.enter()
    page = p.consent("decline")
    assert page.status_code == 200 and b"return the study on Prolific" in page.data
    assert participant_row(app, p.pid).status == "declined"
    assert p.client.get("/study").location == "/declined"
    assert p.client.get("/trials").location == "/declined"
    for _ in range(5):                              # all five places are still there
        Participant(app.test_client()).ready()
    assert count(app, participants, participants.c.status == "active") == 5


@pytest.mark.parametrize("params, problem", [
    ({"PROLIFIC_PID": ""}, b"PROLIFIC_PID is missing"),
    ({"SESSION_ID": ""}, b"SESSION_ID is missing"),
    ({"PROLIFIC_PID": "{{%PROLIFIC_PID%}}"}, b"placeholder"),
    ({"STUDY_ID": "not-an-id"}, b"STUDY_ID"),
    ({"PROLIFIC_PID": "x" * 5000}, b"not a valid Prolific id"),
    ({"PROLIFIC_PID": "<script>alert(1)</script>"}, b"&lt;script&gt;"),
])
def test_bad_or_missing_prolific_parameters(app, params, problem):
    p = Participant(app.test_client())
    page = p.enter(**params)
    assert page.status_code == 400 and problem in page.data
    assert b"<script>alert" not in page.data
    assert count(app, participants) == 0


def test_study_id_must_match_when_configured(app, design_file):
    with app.app_context():
        install_study(store_of(app), design_file, app.config["IMAGE_DIR"], "DONE123",
                      prolific_study_id="b" * 24)
    assert Participant(app.test_client()).enter().status_code == 400
    ok = Participant(app.test_client())
    ok.study_id = "b" * 24
    assert ok.enter().location == "/study"


@pytest.mark.parametrize("body, status, message", [
    ("not json", 400, "JSON object"),
    ([1, 2], 400, "JSON object"),
    ({"trial_index": "0"}, 400, "trial_index must be int"),
    ({"trial_index": True}, 400, "trial_index must be int"),
    ({"trial_index": 0, "panel_id": 5}, 400, "panel_id must be str"),
    ({"trial_index": 0, "panel_id": "p", "answer_yes": "yes"}, 400, "answer_yes must be bool"),
    ({"trial_index": 0, "panel_id": "p", "answer_yes": False}, 400, "rt_answer_ms is missing"),
    ({"trial_index": 0, "panel_id": "p", "answer_yes": False, "rt_answer_ms": -5}, 400,
     "between 0"),
    ({"trial_index": 0, "panel_id": "p", "answer_yes": False, "rt_answer_ms": 5,
      "shown_at": 12}, 400, "milliseconds since 1970"),
    ({"trial_index": 10**12, "panel_id": "p", "answer_yes": False, "rt_answer_ms": 5}, 400,
     "out of range"),
    ({"trial_index": 0, "panel_id": "p", "answer_yes": True, "rt_answer_ms": 5,
      "object_text": "dog\x00"}, 400, "control characters"),
])
def test_malformed_answers_get_a_4xx_with_a_message(app, body, status, message):
    p = Participant(app.test_client())
    p.ready()
    headers = {"X-CSRF-Token": p.csrf()}
    if isinstance(body, str):
        response = p.client.post("/api/responses", data=body, headers=headers,
                                 content_type="application/json")
    else:
        response = p.client.post("/api/responses", json=body, headers=headers)
    assert response.status_code == status
    assert message in response.get_json()["error"]
    assert count(app, responses) == 0


def test_oversized_missing_csrf_and_sessionless_posts_are_refused(app):
    p = Participant(app.test_client())
    p.ready()
    big = p.client.post("/api/responses", data="x" * 100_000, content_type="application/json",
                        headers={"X-CSRF-Token": p.csrf()})
    assert big.status_code == 413 and "error" in big.get_json()
    no_csrf = p.client.post("/api/responses", json={"trial_index": 0})
    assert no_csrf.status_code == 400 and "reload the page" in no_csrf.get_json()["error"]
    form = p.client.post("/api/responses", data={"a": "b"}, headers={"X-CSRF-Token": p.csrf()})
    assert form.status_code == 415
    stranger = Participant(app.test_client())
    nobody = stranger.client.post("/api/responses", json={"trial_index": 0},
                                  headers={"X-CSRF-Token": stranger.csrf()})
    assert nobody.status_code == 403
    assert stranger.client.get("/api/state").status_code == 403
    assert p.client.post("/consent", data={"choice": "agree"}).status_code in (302, 400)
    assert count(app, responses) == 0


def test_trials_need_consent_and_the_device_check(app):
    p = Participant(app.test_client())
    p.enter()
    assert p.client.get("/api/state").status_code == 409
    p.consent()
    p.instructions()
    small = p.device(width=800, height=600)
    assert small.status_code == 422 and b"at least 1000 x 650" in small.data
    phone = p.device(touch_only="1")
    assert phone.status_code == 422 and b"desktop or laptop" in phone.data
    garbage = p.device(width="wide")
    assert garbage.status_code == 400
    assert p.answer(0, False, panel_id="practice_0").status_code == 409
    assert p.device().location == "/study"
    assert p.answer(0, False).status_code == 201


# --- preview, images, store ---------------------------------------------------------------

def test_preview_walks_the_whole_study_and_stores_nothing(app):
    client = app.test_client()
    assert b"preview" in client.get("/").data
    assert client.get("/preview?list=2").location == "/study"
    p = Participant(client, pid="preview")
    for step in (p.consent, p.instructions, p.device):
        assert step().status_code == 302
    state = p.state()
    assert state["preview"] is True and state["n_trials"] == 12
    data = p.answer_all()
    assert data["done"]
    assert p.post("/debrief").location == "/study"
    page = client.get("/complete")
    assert b"PREVIEW" in page.data and b"app.prolific.com" not in page.data
    assert count(app, participants) == 0 and count(app, responses) == 0
    assert client.get("/preview?list=99").status_code == 404


def test_a_preview_answer_meets_the_participants_trial_checks(app):
    # One implementation (server.assignment) refuses a preview's and a participant's
    # answers alike: out of range 400, ahead of the next trial or another panel 409.
    client = app.test_client()
    client.get("/preview?list=1")
    p = Participant(client, pid="preview")
    assert p.answer(0, panel_id="x").status_code == 409   # before consent and the device check
    for step in (p.consent, p.instructions, p.device):
        assert step().status_code == 302
    trials = p.state()["trials"]
    out_of_range = p.answer(99, panel_id=trials[0]["panel_id"])
    assert out_of_range.status_code == 400 and "out of range" in out_of_range.get_json()["error"]
    ahead = p.answer(1, panel_id=trials[1]["panel_id"])
    assert ahead.status_code == 409 and "answer that first" in ahead.get_json()["error"]
    wrong = p.answer(0, panel_id=trials[1]["panel_id"])
    assert wrong.status_code == 409 and "reload" in wrong.get_json()["error"]
    assert p.answer(0).status_code == 200


def test_images_are_served_by_content_hash_with_long_cache_headers(app):
    p = Participant(app.test_client())
    state = p.ready()
    url = state["trials"][0]["image"]
    response = p.client.get(url)
    assert response.status_code == 200 and response.data[:8] == b"\x89PNG\r\n\x1a\n"
    import hashlib

    assert hashlib.sha256(response.data).hexdigest() == url.rsplit("/", 1)[1].split(".")[0]
    assert "immutable" in response.headers["Cache-Control"]
    assert "max-age=31536000" in response.headers["Cache-Control"]
    assert p.client.get("/img/..%2Fsecret_key").status_code == 404
    assert p.client.get("/img/" + "0" * 64 + ".png").status_code == 404


def test_schema_is_created_versioned_and_a_newer_one_refused(app, db_url, tmp_path):
    with store_of(app).read() as conn:
        assert conn.execute(select(meta.c.value)).scalar() == str(SCHEMA_VERSION)
    store = Store(db_url)
    assert store.migrate() == SCHEMA_VERSION            # migrating again is a no-op
    with store.write() as conn:
        conn.execute(meta.update().values(value=str(SCHEMA_VERSION + 1)))
    with pytest.raises(RuntimeError, match="newer than this server"):
        store.migrate()
    store.dispose()


def test_loading_a_design_never_discards_participants_by_accident(app, design_file):
    Participant(app.test_client()).ready()
    with app.app_context(), pytest.raises(StudyError, match="--discard-data"):
        install_study(store_of(app), design_file, app.config["IMAGE_DIR"])
    runner = app.test_cli_runner()
    result = runner.invoke(args=["load-study", str(design_file)])
    assert result.exit_code != 0 and "--discard-data" in result.output
    result = runner.invoke(args=["load-study", str(design_file), "--discard-data",
                                 "--completion-code", "NEWCODE1"])
    assert result.exit_code == 0, result.output
    assert "18 panels in 3 lists" in result.output and "NEWCODE1" in result.output
    assert count(app, participants) == 0


def test_no_study_loaded(make_app):
    app = make_app(design=None)
    page = Participant(app.test_client()).enter()
    assert page.status_code == 200 and b"not ready" in page.data


def test_memory_sqlite_and_unknown_stores_are_refused():
    with pytest.raises(ValueError, match="needs a file"):
        Store("sqlite://")
    with pytest.raises(ValueError, match="unsupported store"):
        Store("mysql://root@localhost/test")


def test_pages_carry_security_headers(app):
    page = Participant(app.test_client()).enter(follow=True)
    assert "script-src" not in page.headers["Content-Security-Policy"]   # default-src 'self'
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "no-referrer"


def test_an_instance_template_replaces_a_page(make_app, tmp_path):
    custom = tmp_path / "instance" / "templates"
    custom.mkdir(parents=True)
    (custom / "consent.html").write_text(
        '{% extends "base.html" %}{% block content %}<p>Approved wording v2</p>'
        '<form method="post"><input type="hidden" name="csrf_token" value="{{ csrf_token() }}">'
        '<button name="choice" value="agree">Yes</button></form>{% endblock %}')
    app = make_app()
    p = Participant(app.test_client())
    p.enter()
    assert b"Approved wording v2" in p.client.get("/consent").data
    assert p.consent().location == "/study"


def test_health_says_ok_while_the_store_answers(app, monkeypatch):
    reply = app.test_client().get("/api/health")
    assert reply.status_code == 200 and reply.get_json() == {"status": "ok"}
    assert reply.headers["Cache-Control"] == "no-store"

    store = app.extensions["store"]

    def broken():
        raise OSError("the database is gone")

    monkeypatch.setattr(store, "read", broken)
    reply = app.test_client().get("/api/health")
    assert reply.status_code == 503
    assert reply.get_json() == {"status": "unavailable", "error": "OSError"}
