"""Prolific's ``submission.status.change`` webhook: a returned, timed-out or rejected
submission gives its list slot back.

Prolific signs each delivery: ``X-Prolific-Request-Signature`` is the base64 HMAC-SHA256,
keyed with the workspace's webhook secret, of ``X-Prolific-Request-Timestamp`` followed
by the request body (Prolific API reference, "Webhooks: Verifying"). The body is
``{"resource_id": <submission id>, "event_type": "submission.status.change",
"participant_id": <PROLIFIC_PID>, "status": <new status>}``. Deliveries carry no event id,
so an event is identified by (event type, submission, status): a repeat is a no-op.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .store import Store, now, participants, webhook_events

__all__ = ["WebhookError", "sign", "verify", "apply_event", "RELEASING"]

# Prolific's status -> ours; each frees the participant's slot.
RELEASING = {"RETURNED": "returned", "TIMED-OUT": "timed_out", "REJECTED": "rejected"}


class WebhookError(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature Prolific sends for ``body`` at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verify(secret: str, timestamp: str | None, body: bytes, signature: str | None) -> None:
    """WebhookError (401) unless ``signature`` is Prolific's for this body and time."""
    if not timestamp or not signature:
        raise WebhookError("missing X-Prolific-Request-Timestamp or -Signature", 401)
    if not timestamp.isdigit() or len(timestamp) > 20:
        raise WebhookError("X-Prolific-Request-Timestamp is not a UNIX time", 401)
    if not hmac.compare_digest(sign(secret, timestamp, body).encode(),
                               signature.strip().encode()):
        raise WebhookError("bad signature", 401)


def _field(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value or len(value) > 64:
        raise WebhookError(f"{name} must be a non-empty string")
    return value


def apply_event(store: Store, body: bytes) -> dict[str, Any]:
    """Apply one verified delivery; returns what happened (also stored with the event)."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WebhookError(f"the body is not JSON ({exc.__class__.__name__})") from None
    if not isinstance(payload, dict):
        raise WebhookError("the body must be a JSON object")
    event_type = _field(payload, "event_type")
    if event_type != "submission.status.change":
        return {"outcome": f"ignored: event type {event_type}"}
    submission = _field(payload, "resource_id")
    pid = _field(payload, "participant_id")
    status = _field(payload, "status").upper()
    key = f"{event_type}:{submission}:{status}"
    try:
        return _apply(store, key, event_type, submission, pid, status)
    except IntegrityError:           # the same event, delivered twice at once: one counts
        return {"outcome": "duplicate delivery", "duplicate": True}


def _apply(store: Store, key: str, event_type: str, submission: str, pid: str,
           status: str) -> dict[str, Any]:
    at = now()
    with store.write() as conn:
        seen = conn.execute(select(webhook_events.c.outcome)
                            .where(webhook_events.c.event_key == key)).first()
        if seen is not None:
            return {"outcome": seen.outcome, "duplicate": True}
        person = conn.execute(select(participants).where(participants.c.prolific_pid == pid)
                              .with_for_update()).first()
        if status not in RELEASING:
            outcome = f"no change: status {status}"
        elif person is None:
            outcome = "no change: unknown participant"
        elif person.status in RELEASING.values():
            outcome = f"no change: already {person.status}"
        else:
            new = RELEASING[status]
            conn.execute(participants.update().where(participants.c.id == person.id)
                         .values(status=new, ended_at=at))
            outcome = f"{person.status} -> {new}: slot on list {person.list_id} released"
        conn.execute(webhook_events.insert().values(
            event_key=key, event_type=event_type, resource_id=submission, prolific_pid=pid,
            status=status, outcome=outcome, received_at=at))
    return {"outcome": outcome, "duplicate": False}
