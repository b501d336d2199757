"""The JSON API the trial page talks to.

- ``GET /api/state``: the participant's trials (panel image URLs, practice flags) and the
  next unanswered trial, so a reload resumes where the participant stopped.
- ``POST /api/responses``: one answer. Validated strictly (4xx with a message, never a
  500): the body is parsed by :func:`server.validate.loads` (UTF-8, nesting and every
  number bounded before anything is converted, no lone surrogate or NUL in any string);
  written once; a repeat returns the stored answer and changes nothing. Besides the answer
  and its times, the body may carry what the trial page records while the panel is shown
  (:data:`ANSWER_INPUTS`, :func:`parse_answer`): ``hidden_ms``, ``focus_losses``,
  ``pasted`` and ``answer_input``, each optional (older pages and clients send none).
- ``GET /api/health``: 200 when the app answers and its store runs a query, else 503
  (the container's health check, :mod:`server.healthcheck`).
"""

from __future__ import annotations

import math
import re
from typing import Any

from flask import Blueprint, abort, current_app, jsonify, request, session, url_for
from sqlalchemy import select

from . import prolific, validate
from .assignment import (
    BEFORE_TRIALS,
    Answer,
    AssignmentError,
    TrialError,
    check_trial_index,
    check_trial_order,
    lease_seconds,
    record_response,
)
from .csrf import check_csrf
from .participant import Visit, current_visit, preview_answered, stage
from .store import get_store, panels

__all__ = ["bp", "parse_answer", "ANSWER_INPUTS", "MAX_FOCUS_LOSSES"]

bp = Blueprint("api", __name__, url_prefix="/api")

MAX_RT_MS = 24 * 3600 * 1000
# Client clocks: accept 2000-01-01 .. 2100-01-01, in milliseconds since the epoch.
CLIENT_TIME_RANGE = (946684800000, 4102444800000)
#: How yes / no was chosen (``answer_input``): the Y / N keys (or Enter / Space on a
#: focused button), or a button pressed with a mouse, a finger or a pen.
ANSWER_INPUTS = ("key", "mouse", "touch", "pen")
#: The most window focus losses one trial may report (``focus_losses``).
MAX_FOCUS_LOSSES = 100_000
WHITESPACE = re.compile(r"\s+")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _visit_for_api() -> Visit:
    try:
        visit = current_visit()
    except AssignmentError as exc:
        abort(409, description=str(exc))
    if visit is None:
        abort(403, description="No session: open the study from its link.")
    return visit


@bp.get("/state")
def state():
    visit = _visit_for_api()
    where = stage(visit)
    if where not in ("trials", "debrief", "complete"):
        abort(409, description=f"This session is at the {where} step, not the trials.")
    with get_store().read() as conn:
        images = dict(conn.execute(select(panels.c.id, panels.c.image)
                                   .where(panels.c.id.in_(visit.order))).all())
    trials = [{"index": i, "panel_id": pid, "practice": i < visit.n_practice,
               "image": url_for("participant.image", name=images[pid])}
              for i, pid in enumerate(visit.order)]
    return jsonify(
        preview=visit.preview, n_trials=visit.n_trials, n_practice=visit.n_practice,
        next_index=visit.n_answered, trials=trials,
        text_max=current_app.config["OBJECT_TEXT_MAX"],
        done_url=url_for("participant.study"))


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], required: bool = True):
    value = body.get(name)
    if value is None:
        if required:
            raise TrialError(f"{name} is missing")
        return None
    # bool is an int in Python: never take one for the other
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise TrialError(f"{name} must be {names}, not {type(value).__name__}")
    # the same bounds as validate.loads, for a body parsed elsewhere: no int too large
    # for a float, no string a database cannot store
    if isinstance(value, int | float) and not abs(value) <= validate.MAX_NUMBER:
        raise TrialError(f"{name}: the number is out of range")
    if isinstance(value, str) and not validate.is_clean(value):
        raise TrialError(f"{name} contains a NUL or a lone surrogate: not valid text")
    return value


def _ms(body: dict[str, Any], name: str, required: bool) -> int | None:
    value = _field(body, name, (int, float), required)
    if value is None:
        return None
    if not math.isfinite(value) or not 0 <= value <= MAX_RT_MS:
        raise TrialError(f"{name} must be between 0 and {MAX_RT_MS} milliseconds")
    return int(round(value))


def _client_time(body: dict[str, Any], name: str) -> float | None:
    value = _field(body, name, (int, float), required=False)
    if value is None:
        return None
    if not math.isfinite(value) or not CLIENT_TIME_RANGE[0] <= value <= CLIENT_TIME_RANGE[1]:
        raise TrialError(f"{name} must be a time in milliseconds since 1970 (browser clock)")
    return value / 1000.0


def _count(body: dict[str, Any], name: str, limit: int) -> int | None:
    """An optional whole number from 0 to ``limit`` (an integer in the JSON, not 2.0)."""
    value = _field(body, name, int, required=False)
    if value is not None and not 0 <= value <= limit:
        raise TrialError(f"{name} must be a whole number from 0 to {limit}")
    return value


def _choice(body: dict[str, Any], name: str, choices: tuple[str, ...]) -> str | None:
    """An optional string, one of ``choices``."""
    value = _field(body, name, str, required=False)
    if value is not None and value not in choices:
        shown = value if len(value) <= 20 else value[:17] + "..."
        raise TrialError(f"{name} must be one of {', '.join(choices)}, not {shown!r}")
    return value


def clean_text(text: str, limit: int) -> str:
    """Trimmed, whitespace runs as one space, control characters refused, length-limited."""
    if CONTROL.search(text):
        raise TrialError("object_text contains control characters")
    text = WHITESPACE.sub(" ", text).strip()
    if len(text) > limit:
        raise TrialError(f"object_text is {len(text)} characters long; at most {limit}")
    return text


def parse_answer(body: Any, text_max: int) -> Answer:
    """A validated Answer from a JSON body, or TrialError (400) saying what is wrong.

    Besides the answer, four optional fields (absent or null: not recorded) say what the
    trial page saw while the panel was shown: ``hidden_ms`` (milliseconds the page was
    hidden, 0 to 24 h, rounded), ``focus_losses`` (window blurs, 0 to
    :data:`MAX_FOCUS_LOSSES`), ``pasted`` (text pasted into the answer box: a boolean,
    false for a no, whose box is never shown) and ``answer_input`` (one of
    :data:`ANSWER_INPUTS`)."""
    if not isinstance(body, dict):
        raise TrialError("the body must be a JSON object")
    index = _field(body, "trial_index", int)
    panel_id = _field(body, "panel_id", str)
    if len(panel_id) > 128:
        raise TrialError("panel_id is too long")
    yes = _field(body, "answer_yes", bool)
    text = _field(body, "object_text", str, required=False)
    if yes:
        text = clean_text(text or "", text_max)
        if not text:
            raise TrialError("object_text is required when the answer is yes: write which "
                             "everyday object, place or animal you saw")
    else:
        text = None
    pasted = _field(body, "pasted", bool, required=False)
    return Answer(trial_index=index, panel_id=panel_id, answer_yes=yes, object_text=text,
                  rt_answer_ms=_ms(body, "rt_answer_ms", True),
                  rt_text_ms=_ms(body, "rt_text_ms", False) if yes else None,
                  shown_at=_client_time(body, "shown_at"),
                  client_answered_at=_client_time(body, "client_answered_at"),
                  hidden_ms=_ms(body, "hidden_ms", False),
                  focus_losses=_count(body, "focus_losses", MAX_FOCUS_LOSSES),
                  pasted=(pasted and yes) if pasted is not None else None,
                  answer_input=_choice(body, "answer_input", ANSWER_INPUTS))


@bp.post("/responses")
def respond():
    check_csrf()
    if not request.is_json:
        abort(415, description="Send the answer as JSON (Content-Type: application/json).")
    token = session.get("token")
    if "preview" not in session and not token:
        abort(403, description="No session: open the study from its link.")
    try:
        body = validate.loads(request.get_data())
    except validate.NotJSON as exc:
        abort(exc.status, description=f"the body must be a JSON object ({exc})")
    except validate.Invalid as exc:
        abort(exc.status, description=f"the answer cannot be taken: {exc}")
    try:
        answer = parse_answer(body, current_app.config["OBJECT_TEXT_MAX"])
        if "preview" in session:
            return _preview_answer(_visit_for_api(), answer)
        # One write transaction checks the session, its stage and lease, and stores.
        recorded = record_response(get_store(), token, answer,
                                   lease_seconds(current_app.config))
    except TrialError as exc:
        abort(exc.status, description=str(exc))
    stored, written = recorded.response, recorded.written
    done = recorded.n_answered >= recorded.n_trials
    return jsonify(
        trial_index=stored["trial_index"], stored=True, duplicate=not written,
        answer_yes=stored["answer_yes"], object_text=stored["object_text"],
        next_index=recorded.n_answered, n_trials=recorded.n_trials, done=done,
        next=url_for("participant.study") if done else None), 201 if written else 200


@bp.get("/health")
def health():
    """Liveness and readiness in one: the store must answer a query."""
    try:
        with get_store().read() as conn:
            conn.execute(select(1)).scalar()
    except Exception as exc:  # any store failure is "unhealthy", reported, never a 500
        current_app.logger.warning("health check: the store does not answer: %s", exc)
        return jsonify(status="unavailable", error=type(exc).__name__), 503
    return jsonify(status="ok")


@bp.post("/prolific/webhook")
def prolific_webhook():
    """Prolific's submission.status.change: a returned, timed-out or rejected submission
    frees its slot. Signed with the shared secret; a repeat changes nothing."""
    secret = current_app.config["PROLIFIC_WEBHOOK_SECRET"]
    if not secret:
        abort(404, description="The Prolific webhook is not configured "
                               "(set FLASK_PROLIFIC_WEBHOOK_SECRET).")
    body = request.get_data(cache=False)
    try:
        prolific.verify(secret, request.headers.get("X-Prolific-Request-Timestamp"), body,
                        request.headers.get("X-Prolific-Request-Signature"))
        result = prolific.apply_event(get_store(), body)
    except prolific.WebhookError as exc:
        abort(exc.status, description=str(exc))
    return jsonify(result)


def _preview_answer(visit: Visit, answer: Answer):
    index = answer.trial_index
    if stage(visit) not in ("trials", "debrief", "complete"):
        raise TrialError(BEFORE_TRIALS, 409)
    check_trial_index(index, visit.n_trials)
    check_trial_order(index, answer.panel_id, visit.n_answered, visit.order)
    after = preview_answered(visit, index)
    done = after.n_answered >= after.n_trials
    return jsonify(
        trial_index=index, stored=False, duplicate=index < visit.n_answered,
        answer_yes=answer.answer_yes, object_text=answer.object_text,
        next_index=after.n_answered, n_trials=after.n_trials, done=done, preview=True,
        next=url_for("participant.study") if done else None)
