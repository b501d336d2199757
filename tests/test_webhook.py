"""Prolific's webhook under attack, on SQLite and PostgreSQL: a delivery acts only on the
submission it names (the SESSION_ID the participant arrived with) in this study, only while
it is fresh (X-Prolific-Request-Timestamp within PROLIFIC_WEBHOOK_WINDOW_SECONDS), once,
never takes a completed participant's completion code away, and any body gets a 4xx, never
a 500, before the store is touched."""

from __future__ import annotations

import json
import time

import pytest
from server_world import Participant, new_pid, study_app
from sqlalchemy import func, select

from server.prolific import WebhookError, sign, verify
from server.store import participants, webhook_events

SECRET = "hook-secret"


@pytest.fixture
def app(db_url, tmp_path, design_file):
    app = study_app(db_url, tmp_path / "instance", design_file, "DONE123", TESTING=True,
                    PROLIFIC_WEBHOOK_SECRET=SECRET)
    yield app
    app.extensions["store"].dispose()


def signed(body: bytes, timestamp: str | None = None, secret: str = SECRET) -> dict:
    timestamp = timestamp or str(int(time.time()))
    return {"X-Prolific-Request-Timestamp": timestamp,
            "X-Prolific-Request-Signature": sign(secret, timestamp, body),
            "Content-Type": "application/json"}


def deliver(client, payload, timestamp: str | None = None):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return client.post("/api/prolific/webhook", data=body, headers=signed(body, timestamp))


def event(person: Participant, status: str = "RETURNED", **change) -> dict:
    return {"resource_id": person.session_id, "event_type": "submission.status.change",
            "participant_id": person.pid, "status": status, **change}


def status_of(app, person: Participant) -> str:
    with app.extensions["store"].read() as conn:
        return conn.execute(select(participants.c.status)
                            .where(participants.c.prolific_pid == person.pid)).scalar()


def events(app) -> int:
    with app.extensions["store"].read() as conn:
        return conn.execute(select(func.count()).select_from(webhook_events)).scalar()


def ready_person(app) -> Participant:
    person = Participant(app.test_client())
    person.ready()
    return person


# --- which submission ---------------------------------------------------------------------

def test_a_forged_or_mismatched_resource_id_changes_nothing(app):
    person = ready_person(app)
    client = app.test_client()
    forged = deliver(client, event(person, resource_id=new_pid()))
    assert forged.status_code == 200, forged.get_json()
    assert forged.get_json()["outcome"].startswith("no change")
    assert status_of(app, person) == "active"
    assert events(app) == 1                     # recorded, for the experimenter to see
    right = deliver(client, event(person))
    assert "active -> returned" in right.get_json()["outcome"]
    assert status_of(app, person) == "returned"


def test_another_studys_event_for_the_same_participant_is_ignored(app):
    """One workspace, two studies, one participant in both: the other study's submission
    (its own resource_id, and the other STUDY_ID where a delivery names one) is not ours."""
    person = ready_person(app)
    client = app.test_client()
    other_submission = deliver(client, event(person, "TIMED-OUT", resource_id=new_pid()))
    assert other_submission.get_json()["outcome"].startswith("no change")
    other_study = deliver(client, event(person, "TIMED-OUT", study_id="b" * 24))
    assert other_study.status_code == 200
    assert other_study.get_json()["outcome"].startswith("no change")
    assert status_of(app, person) == "active"
    ours = deliver(client, event(person, "REJECTED", study_id=person.study_id))
    assert "active -> rejected" in ours.get_json()["outcome"]


def test_only_this_studys_id_counts_when_one_is_configured(app, design_file):
    from server.study import install_study

    with app.app_context():
        install_study(app.extensions["store"], design_file, app.config["IMAGE_DIR"],
                      completion_code="DONE123", prolific_study_id="a" * 24,
                      discard_data=True)
    person = ready_person(app)
    with app.extensions["store"].write() as conn:   # an entry from before the id was set
        conn.execute(participants.update().where(participants.c.prolific_pid == person.pid)
                     .values(study_param="c" * 24))
    reply = deliver(app.test_client(), event(person))
    assert reply.get_json()["outcome"].startswith("no change")
    assert status_of(app, person) == "active"


# --- when ---------------------------------------------------------------------------------

@pytest.mark.parametrize("timestamp", [
    "1000000000",                               # 2001
    "99999999999",                              # 5138
    lambda: str(int(time.time()) - 3600),       # an hour old
    lambda: str(int(time.time()) + 3600),       # an hour ahead
    lambda: str(int(time.time()) - 301),        # just past the default five minutes
])
def test_stale_and_future_timestamps_are_refused(app, timestamp):
    person = ready_person(app)
    timestamp = timestamp() if callable(timestamp) else timestamp
    reply = deliver(app.test_client(), event(person), timestamp)
    assert reply.status_code == 401 and "window" in reply.get_json()["error"]
    assert status_of(app, person) == "active" and events(app) == 0


def test_the_window_is_configurable_and_allows_some_clock_skew(app):
    person = ready_person(app)
    client = app.test_client()
    skewed = deliver(client, event(person, "TIMED-OUT"), str(int(time.time()) + 120))
    assert skewed.status_code == 200
    app.config["PROLIFIC_WEBHOOK_WINDOW_SECONDS"] = 30
    other = ready_person(app)
    late = deliver(client, event(other), str(int(time.time()) - 60))
    assert late.status_code == 401 and status_of(app, other) == "active"


def test_verify_checks_the_window_without_an_app():
    body = b"{}"
    at = 1_700_000_000
    verify(SECRET, str(at), body, sign(SECRET, str(at), body), window_seconds=300, at=at + 299)
    for moment in (at + 301, at - 301):
        with pytest.raises(WebhookError) as caught:
            verify(SECRET, str(at), body, sign(SECRET, str(at), body), window_seconds=300,
                   at=moment)
        assert caught.value.status == 401
    with pytest.raises(WebhookError):               # digits, but not ASCII ones
        verify(SECRET, "١٧٠٠٠٠٠٠٠٠", body, sign(SECRET, "١٧٠٠٠٠٠٠٠٠", body))


def test_a_replayed_delivery_changes_nothing(app):
    first, second = ready_person(app), ready_person(app)
    client = app.test_client()
    body = json.dumps(event(first)).encode()
    headers = signed(body)
    applied = client.post("/api/prolific/webhook", data=body, headers=headers)
    assert applied.status_code == 200 and applied.get_json()["duplicate"] is False
    replayed = client.post("/api/prolific/webhook", data=body, headers=headers)
    assert replayed.status_code == 200 and replayed.get_json()["duplicate"] is True
    assert events(app) == 1
    # A delivery captured long ago (never seen here) cannot be replayed either.
    old = str(int(time.time()) - 24 * 3600)
    body = json.dumps(event(second)).encode()
    captured = client.post("/api/prolific/webhook", data=body, headers=signed(body, old))
    assert captured.status_code == 401
    assert status_of(app, second) == "active" and events(app) == 1


# --- what it may change -------------------------------------------------------------------

@pytest.mark.parametrize("status", ["RETURNED", "TIMED-OUT"])
def test_a_completed_participant_keeps_the_completion_code(app, status):
    person = ready_person(app)
    person.answer_all()
    assert status_of(app, person) == "completed"
    assert person.post("/debrief").status_code == 302
    reply = deliver(app.test_client(), event(person, status))
    assert reply.status_code == 200
    assert reply.get_json()["outcome"].startswith("no change")
    assert status_of(app, person) == "completed" and events(app) == 1
    page = person.client.get("/complete")
    assert page.status_code == 200 and b"DONE123" in page.data


def test_a_declined_participant_stays_declined(app):
    person = Participant(app.test_client())
    person.enter()
    person.consent("decline")
    reply = deliver(app.test_client(), event(person))
    assert reply.get_json()["outcome"] == "no change: already declined"
    assert status_of(app, person) == "declined"


# --- any body -----------------------------------------------------------------------------

def _event(**change) -> bytes:
    base = {"resource_id": "a" * 24, "event_type": "submission.status.change",
            "participant_id": "b" * 24, "status": "RETURNED", **change}
    return json.dumps(base).encode()


BODIES = {
    "deep array": b"[" * 30_000 + b"]" * 30_000,
    "deep object": b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
    "deep field": _event(status=json.loads("[" * 500 + "]" * 500)),
    "NUL in the resource id": _event(resource_id="a\u0000b"),
    "NUL in the participant id": _event(participant_id="b" * 23 + "\u0000"),
    "NUL in the status": _event(status="RETURNED\u0000"),
    "NUL in the event type": _event(event_type="submission.status.change\u0000"),
    "NUL in the study id": _event(study_id="\u0000"),
    "an over-long status": _event(status="RETURNED" * 8),
    "a 33-character status": _event(status="R" * 33),
    "an over-long resource id": _event(resource_id="a" * 65),
    "an over-long event type": _event(event_type="x" * 65),
    "a status that is a number": _event(status=7),
    "a huge number": b'{"status": ' + b"9" * 5000 + b"}",
    "not UTF-8": b'{"status": "\xff\xfe"}',
    "a lone surrogate": b'{"resource_id": "\\ud800", "event_type": '
                        b'"submission.status.change", "participant_id": "x", "status": "x"}',
    "control characters": _event(participant_id="b\x1b[31m"),
    "a newline at the end": _event(resource_id="a" * 24 + "\n"),
    "a list": b"[]",
    "a string": b'"submission.status.change"',
    "null": b"null",
    "empty": b"",
    "NaN": b'{"status": NaN}',
}


@pytest.mark.parametrize("name", list(BODIES))
def test_any_body_gets_a_4xx_and_touches_nothing(app, name):
    person = ready_person(app)
    reply = deliver(app.test_client(), BODIES[name])
    assert 400 <= reply.status_code < 500, (reply.status_code, reply.data[:200])
    assert reply.is_json and reply.get_json()["error"]
    assert events(app) == 0 and status_of(app, person) == "active"


def test_other_event_types_are_acknowledged_and_ignored(app):
    reply = deliver(app.test_client(), {"resource_id": "s" * 24,
                                        "event_type": "study.status.change",
                                        "status": "AWAITING REVIEW", "metadata": {}})
    assert reply.status_code == 200 and reply.get_json()["outcome"].startswith("ignored")
    assert events(app) == 0


def test_prolifics_statuses_with_spaces_are_read(app):
    person = ready_person(app)
    reply = deliver(app.test_client(), event(person, "AWAITING REVIEW"))
    assert reply.status_code == 200
    assert reply.get_json()["outcome"] == "no change: status AWAITING REVIEW"
    assert status_of(app, person) == "active"
