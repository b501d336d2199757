"""The participant's pages: entry, consent, instructions, device check, trials, debrief,
completion. All state lives on the server (the browser holds only a signed session key).

The flow is a small state machine: ``stage(visit)`` says where a participant stands, and
every page sends them there if they ask for another, so reloads, back buttons, new tabs
and other browsers (entering again with the same PROLIFIC_PID) all land in the right place.

A preview (the entry page without Prolific's parameters) walks the same pages and trials
and stores nothing: its progress lives in the signed session cookie only.

Entry (docs/study-design.md, "Entry"): a link with another study's STUDY_ID, a known
PROLIFIC_PID with another SESSION_ID, and new places beyond the per-address limit are
refused with a page saying why, and logged (``python -m server entry-log``).
"""

from __future__ import annotations

import csv
import functools
import json
import random
import re
import sys
from dataclasses import dataclass, replace
from typing import Any

import click
from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    send_from_directory,
    session,
    url_for,
)
from sqlalchemy import select
from werkzeug.exceptions import HTTPException

from .assignment import (
    AssignmentError,
    EntryLimited,
    LeaseExpired,
    NoStudy,
    entry_hold_seconds,
    entry_limit,
    entry_source,
    lease_seconds,
    note_refusal,
    participant_by_token,
    renew_lease,
    start,
    trial_order,
)
from .csrf import check_csrf, csrf_token
from .exclusion import study_rules
from .store import entry_log, get_store, lists, now, panels, participants
from .study import current_study
from .validate import scrub

__all__ = ["bp", "Visit", "current_visit", "stage", "register_error_pages"]

bp = Blueprint("participant", __name__, cli_group=None)   # entry-log: a top-level command

PARAMS = ("PROLIFIC_PID", "STUDY_ID", "SESSION_ID")
STAGES = ("consent", "instructions", "device", "trials", "debrief", "complete")


@dataclass(frozen=True)
class Visit:
    """Where one participant (or a preview) stands."""

    preview: bool
    token: str | None
    status: str
    list_id: int
    order: tuple[str, ...]
    n_practice: int
    n_answered: int
    consented: bool
    instructions: bool
    device_ok: bool
    debriefed: bool
    completion_code: str

    @property
    def n_trials(self) -> int:
        return len(self.order)


def stage(visit: Visit) -> str:
    """The page this participant belongs on."""
    if visit.status == "declined":
        return "declined"
    if visit.status in ("returned", "timed_out", "rejected"):
        return "ended"
    if visit.status == "completed" or visit.n_answered >= visit.n_trials:
        return "complete" if visit.debriefed else "debrief"
    if not visit.consented:
        return "consent"
    if not visit.instructions:
        return "instructions"
    if not visit.device_ok:
        return "device"
    return "trials"


def _lease_seconds() -> float:
    return lease_seconds(current_app.config)


def _hold_seconds() -> float:
    return entry_hold_seconds(current_app.config)


def current_visit() -> Visit | None:
    """This browser's visit, or None. An active session whose lease has passed is renewed
    if its list has room; otherwise LeaseExpired."""
    store = get_store()
    if "preview" in session:
        state = session["preview"]
        with store.read() as conn:
            loaded = current_study(conn)
            if loaded is None:
                session.pop("preview")
                return None
            order = trial_order(conn, state["list_id"], state["seed"])
        return Visit(preview=True, token=None, status="active", list_id=state["list_id"],
                     order=tuple(order), n_practice=loaded.practice_trials,
                     n_answered=min(state["answered"], len(order)),
                     consented=state["consented"], instructions=state["instructions"],
                     device_ok=state["device_ok"], debriefed=state["debriefed"],
                     completion_code="PREVIEW")
    token = session.get("token")
    if not token:
        return None
    with store.read() as conn:
        p = participant_by_token(conn, token)
        loaded = current_study(conn)
    if p is None or loaded is None:
        session.pop("token", None)
        return None
    if p.status == "active" and p.lease_expires_at <= now():
        with store.write() as conn:
            p = renew_lease(store, conn, participant_by_token(conn, token, for_update=True),
                            _lease_seconds(), now(), hold_seconds=_hold_seconds())
    return _visit(p, loaded)


def _visit(p, loaded) -> Visit:
    return Visit(preview=False, token=p.token, status=p.status, list_id=p.list_id,
                 order=tuple(json.loads(p.trial_order)), n_practice=loaded.practice_trials,
                 n_answered=p.n_answered, consented=p.consented_at is not None,
                 instructions=p.instructions_at is not None,
                 device_ok=p.device_ok_at is not None, debriefed=p.debriefed_at is not None,
                 completion_code=loaded.completion_code)


def advance(visit: Visit, **changes: Any) -> None:
    """Record a step: ``consented``, ``instructions``, ``device_ok`` (with ``device``),
    ``debriefed`` or ``declined``. Steps are taken once; repeats change nothing."""
    if visit.preview:
        state = dict(session["preview"])
        for key in ("consented", "instructions", "device_ok", "debriefed"):
            if changes.get(key):
                state[key] = True
        if changes.get("declined"):
            session.pop("preview")
            return
        session["preview"] = state
        return
    at = now()
    columns = {"consented": "consented_at", "instructions": "instructions_at",
               "device_ok": "device_ok_at", "debriefed": "debriefed_at"}
    with get_store().write() as conn:
        p = participant_by_token(conn, visit.token, for_update=True)
        values: dict[str, Any] = {}
        for key, column in columns.items():
            if changes.get(key) and getattr(p, column) is None:
                values[column] = at
        if changes.get("device") is not None and p.device_ok_at is None:
            values["device"] = json.dumps(changes["device"])
        if changes.get("declined") and p.status == "active" and p.consented_at is None:
            values.update(status="declined", ended_at=at)
        elif values and p.status == "active" and p.n_answered == 0:
            # A step before the first answer restarts the short hold (never shortens it).
            values["lease_expires_at"] = max(p.lease_expires_at, at + _hold_seconds())
        if values:
            conn.execute(participants.update().where(participants.c.id == p.id).values(**values))


def _goto(visit: Visit | None):
    if visit is None:
        return redirect(url_for("participant.entry"))
    return redirect(url_for(f"participant.{stage(visit)}"))


def stage_page(name: str):
    """Decorate a view of stage ``name``: it receives the visit when the participant belongs
    there; everyone else is sent where they belong (or shown why they cannot go on)."""

    def decorate(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            try:
                visit = current_visit()
            except AssignmentError as exc:
                return _problem(exc)
            if visit is None or stage(visit) != name:
                return _goto(visit)
            return view(visit, *args, **kwargs)

        return wrapper

    return decorate


def _problem(exc: AssignmentError, status: int = 200):
    response = make_response(render_template(f"problem_{exc.page}.html"),
                             getattr(exc, "status", status))
    if isinstance(exc, EntryLimited):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


# --- entry --------------------------------------------------------------------------------

def _bad_params(values: dict[str, str]) -> list[str]:
    pattern = re.compile(current_app.config["PROLIFIC_ID_PATTERN"])
    problems = []
    for name in PARAMS:
        value = values.get(name)
        if not value:
            problems.append(f"{name} is missing")
        elif "%" in value or "{" in value:
            problems.append(f"{name} is Prolific's placeholder {value!r}, not a real value")
        elif not pattern.fullmatch(value):
            problems.append(f"{name} {value[:40]!r} is not a valid Prolific id")
    return problems


@bp.get("/")
def entry():
    given = {name: request.args.get(name, "") for name in PARAMS}
    if not any(given.values()):
        try:
            visit = current_visit()
        except AssignmentError as exc:
            return _problem(exc)
        if visit is not None:
            return _goto(visit)
        return render_template("welcome.html")
    problems = _bad_params(given)
    if problems:
        return render_template("bad_link.html", problems=problems), 400
    store = get_store()
    with store.read() as conn:
        loaded = current_study(conn)
    # The client's address as ProxyFix leaves it (X-Forwarded-For only from TRUSTED_PROXIES).
    source = entry_source(request.remote_addr, current_app.config["SECRET_KEY"])
    limit = entry_limit(current_app.config)
    link = (given["PROLIFIC_PID"], given["STUDY_ID"], given["SESSION_ID"])
    if loaded is not None and loaded.prolific_study_id \
            and given["STUDY_ID"] != loaded.prolific_study_id:
        note_refusal(store, "wrong_study", source, *link,
                     limit.window_seconds if limit is not None else 3600.0)
        return render_template("problem_wrong_study.html"), 400
    try:
        p, _created = start(store, *link, _lease_seconds(), _user_agent(),
                            hold_seconds=_hold_seconds(), source=source, limit=limit)
    except AssignmentError as exc:
        if isinstance(exc, EntryLimited) and request.headers.get("X-Forwarded-For") \
                and not current_app.config["TRUSTED_PROXIES"]:
            current_app.logger.warning(
                "an entry through a proxy met the per-address limit (ENTRY_MAX_PER_ADDRESS): "
                "if a reverse proxy serves this app, set TRUSTED_PROXIES, or every "
                "participant counts as the proxy's address")
        return _problem(exc)
    _forget_participant()
    session["token"] = p.token
    session.permanent = True
    return redirect(url_for("participant.study"))


def _forget_participant() -> None:
    """Drop a participant or preview from this browser (an experimenter stays logged in)."""
    for key in ("token", "preview"):
        session.pop(key, None)


@bp.get("/preview")
def preview():
    """Walk the study as a participant would; nothing is stored."""
    store = get_store()
    with store.read() as conn:
        if current_study(conn) is None:
            return _problem(NoStudy("no study is loaded"))
        ids = conn.execute(select(lists.c.id).order_by(lists.c.id)).scalars().all()
    wanted = request.args.get("list", type=int)
    if wanted is not None and wanted not in ids:
        abort(404, description=f"There is no list {wanted}.")
    _forget_participant()
    session["preview"] = {"list_id": wanted if wanted is not None else random.choice(ids),
                          "seed": random.randrange(2**31), "answered": 0, "consented": False,
                          "instructions": False, "device_ok": False, "debriefed": False}
    return redirect(url_for("participant.study"))


@bp.get("/study")
def study():
    try:
        visit = current_visit()
    except AssignmentError as exc:
        return _problem(exc)
    return _goto(visit)


# --- the steps ----------------------------------------------------------------------------

@bp.route("/consent", methods=["GET", "POST"])
@stage_page("consent")
def consent(visit: Visit):
    if request.method == "POST":
        check_csrf()
        choice = request.form.get("choice")
        if choice not in ("agree", "decline"):
            abort(400, description="Choose whether you agree to take part.")
        if choice == "agree":
            advance(visit, consented=True)
            return redirect(url_for("participant.study"))
        advance(visit, declined=True)
        return render_template("problem_declined.html", preview=visit.preview)
    return render_template("consent.html", visit=visit, n_main=visit.n_trials - visit.n_practice,
                           checks=attention_checks())


_HAS_CATCH = select(panels.c.id).where(panels.c.catch.is_(True)).limit(1)


def attention_checks() -> dict[str, bool]:
    """What the consent and instructions pages say about attention checks: ``catch``,
    the study has catch trials; ``reject``, failing them can reject a submission (the
    study's rules list the catch rule in ``reject_for``; docs/exclusion.md)."""
    with get_store().read() as conn:
        catch = conn.execute(_HAS_CATCH).first() is not None
        rules = study_rules(conn)
    return {"catch": catch,
            "reject": catch and rules is not None and "catch" in rules.rules
            and "catch" in rules.reject_for}


@bp.route("/instructions", methods=["GET", "POST"])
@stage_page("instructions")
def instructions(visit: Visit):
    if request.method == "POST":
        check_csrf()
        advance(visit, instructions=True)
        return redirect(url_for("participant.study"))
    return render_template("instructions.html", visit=visit, checks=attention_checks())


def _device_problems(info: dict[str, Any]) -> list[str]:
    cfg = current_app.config
    problems = []
    if info["touch_only"] or info["mobile"]:
        problems.append("This study needs a desktop or laptop computer with a mouse or "
                        "trackpad; phones and tablets cannot show the panels legibly.")
    if info["width"] < cfg["MIN_WINDOW_WIDTH"] or info["height"] < cfg["MIN_WINDOW_HEIGHT"]:
        problems.append(f"Your browser window is {info['width']} x {info['height']} pixels; "
                        f"please make it at least {cfg['MIN_WINDOW_WIDTH']} x "
                        f"{cfg['MIN_WINDOW_HEIGHT']} (maximise it, or zoom out with Ctrl and "
                        "minus), then check again.")
    return problems


def _int_field(name: str) -> int:
    value = request.form.get(name, "")
    if not re.fullmatch(r"\d{1,6}", value):
        abort(400, description=f"The device check could not read {name}: is JavaScript on?")
    return int(value)


@bp.route("/device", methods=["GET", "POST"])
@stage_page("device")
def device(visit: Visit):
    problems: list[str] = []
    if request.method == "POST":
        check_csrf()
        info = {"width": _int_field("width"), "height": _int_field("height"),
                "screen_width": _int_field("screen_width"),
                "screen_height": _int_field("screen_height"),
                "touch_only": request.form.get("touch_only") == "1",
                "mobile": request.form.get("mobile") == "1" or _mobile_agent(),
                "user_agent": _user_agent()}
        problems = _device_problems(info)
        if not problems:
            advance(visit, device_ok=True, device=info)
            return redirect(url_for("participant.study"))
    return render_template("device.html", visit=visit, problems=problems), \
        (422 if problems else 200)


def _user_agent() -> str:
    """The browser's User-Agent as stored: NUL and lone surrogates replaced (PostgreSQL
    refuses NUL in text), at most 500 characters."""
    return scrub(request.headers.get("User-Agent", ""))[:500]


def _mobile_agent() -> bool:
    agent = request.headers.get("User-Agent", "")
    return bool(re.search(r"Mobi|Android|iPhone|iPad", agent))


@bp.get("/trials")
@stage_page("trials")
def trials(visit: Visit):
    return render_template("trials.html", visit=visit,
                           text_max=current_app.config["OBJECT_TEXT_MAX"])


@bp.route("/debrief", methods=["GET", "POST"])
@stage_page("debrief")
def debrief(visit: Visit):
    if request.method == "POST":
        check_csrf()
        advance(visit, debriefed=True)
        return redirect(url_for("participant.study"))
    return render_template("debrief.html", visit=visit)


@bp.get("/complete")
@stage_page("complete")
def complete(visit: Visit):
    url = None
    if not visit.preview:
        url = current_app.config["PROLIFIC_COMPLETE_URL"].format(code=visit.completion_code)
    return render_template("complete.html", visit=visit, prolific_url=url,
                           wait=current_app.config["COMPLETE_REDIRECT_SECONDS"])


@bp.get("/declined")
@stage_page("declined")
def declined(visit: Visit):
    return render_template("problem_declined.html", preview=False)


@bp.get("/ended")
@stage_page("ended")
def ended(visit: Visit):
    return render_template("problem_ended.html")


# --- images -------------------------------------------------------------------------------

IMAGE_NAME = re.compile(r"[0-9a-f]{64}\.(jpg|png|webp|gif)")


IMAGE_MIMETYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}
IMAGE_CACHE_CONTROL = "public, max-age=31536000, immutable"


@bp.get("/img/<name>")
def image(name: str):
    """A panel image by content hash: the URL changes whenever the image does, so browsers
    and proxies may keep it for a year. With ``IMAGE_ACCEL_REDIRECT`` (a reverse proxy's
    internal location, e.g. ``/protected-images/``) the file is left to the proxy
    (``X-Accel-Redirect``: nginx; README, "Production front"); the app only checks the
    name."""
    match = IMAGE_NAME.fullmatch(name)
    if not match:
        abort(404)
    accel = current_app.config["IMAGE_ACCEL_REDIRECT"]
    if accel:
        response = current_app.response_class(mimetype=IMAGE_MIMETYPES[match.group(1)])
        response.headers["X-Accel-Redirect"] = f"{accel.rstrip('/')}/{name}"
    else:
        response = send_from_directory(current_app.config["IMAGE_DIR"], name,
                                       max_age=31536000)
    response.headers["Cache-Control"] = IMAGE_CACHE_CONTROL
    return response


# --- errors -------------------------------------------------------------------------------

def register_error_pages(app: Flask) -> None:
    """4xx answers say what went wrong: JSON under /api/, a page elsewhere."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if request.path.startswith("/api/"):
            return jsonify(error=exc.description or exc.name), exc.code
        return render_template("error.html", code=exc.code, name=exc.name,
                               message=exc.description), exc.code

    @app.errorhandler(LeaseExpired)
    def lease_expired(exc: LeaseExpired):
        if request.path.startswith("/api/"):
            return jsonify(error=str(exc), page=url_for("participant.study")), 409
        return _problem(exc)

    @app.context_processor
    def _csrf():
        return {"csrf_token": csrf_token}


# --- the entry log ---------------------------------------------------------------------------

ENTRY_LOG_COLUMNS = ("at", "outcome", "prolific_pid", "study_id", "session_id", "source")


@bp.cli.command("entry-log")
@click.option("--all", "everything", is_flag=True,
              help="Also the places taken (outcome 'entered'); default: refusals only.")
def entry_log_command(everything: bool) -> None:
    """Print the refused entries as CSV, oldest first: rate_limited (an address past
    ENTRY_MAX_PER_ADDRESS), other_session (a known PROLIFIC_PID with another SESSION_ID),
    wrong_study (another study's STUDY_ID). ``source`` is a keyed hash of the address."""
    from .export import iso_time

    e = entry_log.c
    query = select(e.at, e.outcome, e.prolific_pid, e.study_param, e.session_param,
                   e.source).order_by(e.id)
    if not everything:
        query = query.where(e.outcome != "entered")
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(ENTRY_LOG_COLUMNS)
    with get_store().read() as conn:
        for row in conn.execute(query):
            writer.writerow([iso_time(row[0]), *row[1:]])


def preview_answered(visit: Visit, index: int) -> Visit:
    """A preview's progress after answering trial ``index`` (in order; repeats ignored)."""
    if index == visit.n_answered:
        state = dict(session["preview"])
        state["answered"] = index + 1
        session["preview"] = state
        return replace(visit, n_answered=index + 1)
    return visit
