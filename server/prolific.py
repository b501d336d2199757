"""Prolific's ``submission.status.change`` webhook: a returned, timed-out or rejected
submission gives its list slot back.

Prolific signs each delivery: ``X-Prolific-Request-Signature`` is the base64 HMAC-SHA256,
keyed with the workspace's webhook secret, of ``X-Prolific-Request-Timestamp`` (a UNIX
time in seconds: when the request was sent) followed by the request body (Prolific API
reference, "Webhooks: Verifying"). The body is ``{"resource_id": <submission id>,
"event_type": "submission.status.change", "participant_id": <PROLIFIC_PID>, "status":
<new status>}``.

What a delivery must be before it changes anything:

- **signed and fresh**: the signature matches, and the timestamp is within
  ``PROLIFIC_WEBHOOK_WINDOW_SECONDS`` (default 300) of the server clock, either way
  (401 otherwise), so a captured delivery cannot be replayed later;
- **well formed**: a JSON object whose fields are short strings of the characters
  Prolific's ids and statuses use (400 otherwise; checked before the store is touched,
  so no body, however deep, long or full of NULs, reaches the database or gives a 500);
- **about this study's submission**: ``resource_id`` is the submission id (SESSION_ID)
  the participant arrived with, ``participant_id`` their PROLIFIC_PID, and their STUDY_ID
  this study's (the ``study_id`` of the delivery too, where one is given). A workspace's
  webhook receives every study's events: another study's event (the same participant
  in another study has another submission id) is recorded and changes nothing;
- **new**: an event is identified by (event type, submission, status), all from the
  signed body (``X-Event-ID`` is not signed, so it cannot be the key); a repeat is
  answered as a duplicate (200, as Prolific redelivers at least once) and changes nothing;
- **allowed**: only an active participant becomes returned, timed out or rejected; a
  completed one only rejected (the experimenter's own decision on Prolific), never
  returned or timed out: their completion code stands. Anything else is recorded with
  the reason and changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from . import validate
from .store import Store, now, participants, webhook_events
from .store import study as study_table

__all__ = ["WebhookError", "Event", "sign", "verify", "parse_event", "apply_event",
           "RELEASING", "DEFAULT_WINDOW_SECONDS"]

# Prolific's status -> ours; each frees the participant's slot.
RELEASING = {"RETURNED": "returned", "TIMED-OUT": "timed_out", "REJECTED": "rejected"}

#: How far X-Prolific-Request-Timestamp may be from the server clock, either way.
DEFAULT_WINDOW_SECONDS = 300

SUBMISSION_EVENT = "submission.status.change"

# What the fields may hold (ASCII only; no NUL, control character or newline): Prolific's
# ids are 24 hex digits, its statuses words like "TIMED-OUT" or "AWAITING REVIEW".
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EVENT_TYPE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_STATUS = re.compile(r"[A-Za-z][A-Za-z _-]{0,31}")


class WebhookError(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Event:
    """A valid ``submission.status.change`` delivery."""

    event_type: str
    submission: str            # resource_id: the submission (Prolific's SESSION_ID)
    pid: str                   # participant_id (PROLIFIC_PID)
    status: str                # upper case
    study_id: str | None       # not in Prolific's documented payload; checked when given

    @property
    def key(self) -> str:      # at most 24 + 1 + 64 + 1 + 32 = 122 characters
        return f"{self.event_type}:{self.submission}:{self.status}"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature Prolific sends for ``body`` at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _configured_window() -> float:
    from flask import current_app, has_app_context

    if has_app_context():
        value = current_app.config.get("PROLIFIC_WEBHOOK_WINDOW_SECONDS")
        if value is not None:
            return float(value)
    return float(DEFAULT_WINDOW_SECONDS)


def verify(secret: str, timestamp: str | None, body: bytes, signature: str | None, *,
           window_seconds: float | None = None, at: float | None = None) -> None:
    """WebhookError (401) unless ``signature`` is Prolific's for this body and time, and
    the time is within ``window_seconds`` of ``at`` (default: the app's
    ``PROLIFIC_WEBHOOK_WINDOW_SECONDS``, else 300 s; and now)."""
    if not timestamp or not signature:
        raise WebhookError("missing X-Prolific-Request-Timestamp or -Signature", 401)
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 20:
        raise WebhookError("X-Prolific-Request-Timestamp is not a UNIX time", 401)
    expected = sign(secret, timestamp, body).encode()
    if not hmac.compare_digest(expected, signature.strip().encode("utf-8", "replace")):
        raise WebhookError("bad signature", 401)
    window = _configured_window() if window_seconds is None else float(window_seconds)
    at = now() if at is None else at
    if abs(at - int(timestamp)) > window:
        raise WebhookError(f"X-Prolific-Request-Timestamp is outside the accepted window "
                           f"({window:g} s either side of the server's clock): a stale, "
                           "replayed or future delivery", 401)


def _field(payload: dict[str, Any], name: str, pattern: re.Pattern,
           required: bool = True) -> str | None:
    value = payload.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise WebhookError(f"{name} must be a string of at most "
                           f"{'32' if pattern is _STATUS else '64'} letters, digits or "
                           "dashes")
    return value


def parse_event(body: bytes) -> Event | dict[str, Any]:
    """The delivery's event, or (another event type) the outcome ``ignored``; WebhookError
    (400) for anything malformed. Touches no store."""
    try:   # nesting and numbers bounded before parsing, no NUL or lone surrogate
        payload = validate.loads(body)
    except validate.Invalid as exc:
        raise WebhookError(f"the body is not JSON that can be taken ({exc})") from None
    if not isinstance(payload, dict):
        raise WebhookError("the body must be a JSON object")
    event_type = _field(payload, "event_type", _EVENT_TYPE)
    if event_type != SUBMISSION_EVENT:
        return {"outcome": f"ignored: event type {event_type}", "duplicate": False}
    submission = _field(payload, "resource_id", _ID)
    pid = _field(payload, "participant_id", _ID)
    status = _field(payload, "status", _STATUS).upper()
    study_id = _field(payload, "study_id", _ID, required=False)
    return Event(event_type, submission, pid, status, study_id)


def apply_event(store: Store, body: bytes) -> dict[str, Any]:
    """Apply one verified delivery; returns what happened (also stored with the event)."""
    event = parse_event(body)
    if not isinstance(event, Event):
        return event
    try:
        return _apply(store, event)
    except IntegrityError:           # the same event, delivered twice at once: one counts
        return {"outcome": "duplicate delivery", "duplicate": True}


def _decide(event: Event, person, study_id: str | None) -> tuple[str | None, str]:
    """(the participant's new status or None, the outcome)."""
    if event.status not in RELEASING:
        return None, f"no change: status {event.status}"
    if person is None:
        return None, "no change: unknown participant"
    if person.session_param != event.submission:
        return None, ("no change: not this participant's submission in this study "
                      "(another study's event, or a forged resource_id)")
    if (event.study_id is not None and event.study_id != person.study_param) or \
            (study_id and person.study_param != study_id):
        return None, "no change: another study's event"
    new = RELEASING[event.status]
    if person.status == "active" or (person.status == "completed" and new == "rejected"):
        return new, f"{person.status} -> {new}: slot on list {person.list_id} released"
    if person.status == "completed":
        return None, f"no change: completed, the completion code stands ({event.status})"
    return None, f"no change: already {person.status}"


def _apply(store: Store, event: Event) -> dict[str, Any]:
    at = now()
    with store.write() as conn:
        seen = conn.execute(select(webhook_events.c.outcome)
                            .where(webhook_events.c.event_key == event.key)).first()
        if seen is not None:
            return {"outcome": seen.outcome, "duplicate": True}
        study_id = conn.execute(select(study_table.c.prolific_study_id)).scalar()
        person = conn.execute(select(participants)
                              .where(participants.c.prolific_pid == event.pid)
                              .with_for_update()).first()
        new, outcome = _decide(event, person, study_id)
        if new is not None:
            conn.execute(participants.update().where(participants.c.id == person.id)
                         .values(status=new, ended_at=at))
        conn.execute(webhook_events.insert().values(
            event_key=event.key, event_type=event.event_type, resource_id=event.submission,
            prolific_pid=event.pid, status=event.status, outcome=outcome, received_at=at))
    return {"outcome": outcome, "duplicate": False}
