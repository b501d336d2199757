"""The experimenter side: login, the dashboard, actions, downloads.

Everything under ``/admin/`` except the login page needs an experimenter's session, and
every POST carries the session's CSRF token. The dashboard aggregates in SQL and pages
the participant table, so it stays fast with tens of thousands of participants.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import urlparse

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import and_, case, func, literal, select

from . import validate
from .auth import AuthError, LoginRefused, check_login, current_admin, log_in, log_out
from .csrf import check_csrf
from .store import admin_actions, get_store, lists, now, participants, responses
from .store import study as study_table

__all__ = ["bp", "list_summary", "status_totals", "median_duration", "participant_page"]

bp = Blueprint("admin", __name__, url_prefix="/admin")

PAGE_SIZE = 50
MAX_PAGE = 1_000_000          # ?page= beyond this is a 400 (50 million participants)
MAX_NEXT = 2048               # the longest ?next= followed after login
ENDED = ("returned", "timed_out", "rejected")
FILTERS = ("all", "active", "expired", "completed", "ended", "declined")


@bp.before_request
def _guard():
    """Log in first (the login page aside); every POST carries the CSRF token."""
    if request.method == "POST":
        check_csrf()
    if request.endpoint != "admin.login" and current_admin() is None:
        return redirect(url_for("admin.login", next=request.full_path))
    return None


@bp.after_request
def _no_store(response):
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Robots-Tag"] = "noindex"
    return response


# --- login --------------------------------------------------------------------------------

def _safe_next(target: str | None) -> str:
    """Only a local path under /admin/ (never another site), of printable ASCII (a CR, LF
    or NUL in a Location header is a 500 or worse) and at most MAX_NEXT characters."""
    if target and target.startswith("/admin/") and len(target) <= MAX_NEXT \
            and target.isascii() and target.isprintable() \
            and not urlparse(target).netloc and not target.startswith("//"):
        return target
    return url_for("admin.dashboard")


@bp.route("/login", methods=["GET", "POST"])
def login():
    """The login form. Limits (server/auth.py): a user name with LOGIN_MAX_FAILURES
    failures in the window is refused (429) even with its password, other accounts are
    not; an address past LOGIN_MAX_FAILURES_PER_ADDRESS is refused for every name."""
    error, status, headers = None, 200, {}
    if request.method == "POST":
        cfg = current_app.config
        address = request.remote_addr or "?"
        try:
            account = check_login(get_store(), request.form.get("username", ""),
                                  request.form.get("password", ""), address,
                                  cfg["LOGIN_MAX_FAILURES"], cfg["LOGIN_WINDOW_MINUTES"] * 60,
                                  max_address_failures=cfg["LOGIN_MAX_FAILURES_PER_ADDRESS"])
        except LoginRefused as exc:
            error, status = str(exc), 429
            headers["Retry-After"] = str(exc.retry_after)
        except AuthError as exc:
            error, status = str(exc), 401
        else:
            log_in(account, address)
            return redirect(_safe_next(request.args.get("next")))
    return render_template("admin/login.html", error=error), status, headers


@bp.post("/logout")
def logout():
    """End the session: in the store, so a copy of the cookie is worth nothing."""
    log_out()
    return redirect(url_for("admin.login"))


# --- aggregates (SQL) ---------------------------------------------------------------------

def _counts(at: float) -> dict[str, Any]:
    p = participants
    running = and_(p.c.status == "active", p.c.lease_expires_at > at)
    expired = and_(p.c.status == "active", p.c.lease_expires_at <= at)
    return {
        "completed": func.coalesce(func.sum(case((p.c.status == "completed", 1), else_=0)), 0),
        "active": func.coalesce(func.sum(case((running, 1), else_=0)), 0),
        "expired": func.coalesce(func.sum(case((expired, 1), else_=0)), 0),
        "ended": func.coalesce(func.sum(case((p.c.status.in_(ENDED), 1), else_=0)), 0),
        "declined": func.coalesce(func.sum(case((p.c.status == "declined", 1), else_=0)), 0),
        "oldest_active": func.min(case((running, p.c.created_at), else_=None)),
    }


def list_summary(conn, at: float) -> list[dict[str, Any]]:
    """Per list: target, completed, active (and the oldest active session's start),
    expired, returned/timed out/rejected, declined."""
    counts = _counts(at)
    query = (select(lists.c.id, lists.c.target, *[v.label(k) for k, v in counts.items()])
             .select_from(lists.outerjoin(participants, participants.c.list_id == lists.c.id))
             .group_by(lists.c.id, lists.c.target).order_by(lists.c.id))
    rows = []
    for r in conn.execute(query).mappings():
        row = dict(r)
        row["lease_age_s"] = at - row["oldest_active"] if row["oldest_active"] else None
        row["open"] = row["completed"] + row["active"] < row["target"]
        rows.append(row)
    return rows


def status_totals(summary: list[dict[str, Any]]) -> dict[str, int]:
    keys = ("target", "completed", "active", "expired", "ended", "declined")
    totals = {k: sum(int(r[k]) for r in summary) for k in keys}
    totals["participants"] = sum(totals[k] for k in keys[1:])
    return totals


def median_duration(conn) -> float | None:
    """The median time from entry to completion, in seconds, ordered and picked in SQL."""
    p = participants
    done = p.c.status == "completed"
    n = conn.execute(select(func.count()).select_from(p).where(done)).scalar()
    if not n:
        return None
    duration = (p.c.completed_at - p.c.created_at).label("d")
    middle = conn.execute(select(duration).where(done).order_by(duration)
                          .offset((n - 1) // 2).limit(2 - n % 2)).scalars().all()
    return float(sum(middle) / len(middle))


def participant_page(conn, at: float, status: str, page: int, stale_s: float
                     ) -> tuple[list[dict[str, Any]], int]:
    """One page of participants (newest first) and the number matching ``status``."""
    p = participants
    where = {
        "all": literal(True),
        "active": and_(p.c.status == "active", p.c.lease_expires_at > at),
        "expired": and_(p.c.status == "active", p.c.lease_expires_at <= at),
        "completed": p.c.status == "completed",
        "ended": p.c.status.in_(ENDED),
        "declined": p.c.status == "declined",
    }[status]
    total = conn.execute(select(func.count()).select_from(p).where(where)).scalar()
    last_answer = (select(func.max(responses.c.answered_at))
                   .where(responses.c.participant_id == p.c.id).scalar_subquery())
    query = (select(p.c.id, p.c.prolific_pid, p.c.list_id, p.c.status, p.c.n_answered,
                    p.c.n_trials, p.c.created_at, p.c.completed_at, p.c.ended_at,
                    p.c.lease_expires_at, p.c.consented_at, p.c.device_ok_at,
                    last_answer.label("last_answer"))
             .where(where).order_by(p.c.id.desc())
             .offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE))
    rows = []
    for r in conn.execute(query).mappings():
        row = dict(r)
        row["shown_status"] = ("expired" if row["status"] == "active"
                               and row["lease_expires_at"] <= at else row["status"])
        last = max(t for t in (row["last_answer"], row["device_ok_at"], row["consented_at"],
                               row["created_at"]) if t is not None)
        row["idle_s"] = at - last
        row["stale"] = row["status"] == "active" and (row["shown_status"] == "expired"
                                                      or row["idle_s"] > stale_s)
        finished = row["completed_at"] or row["ended_at"]
        row["duration_s"] = finished - row["created_at"] if finished else None
        rows.append(row)
    return rows, total


# --- pages --------------------------------------------------------------------------------

@bp.get("/")
def dashboard():
    status = request.args.get("status", "all")
    if status not in FILTERS:
        abort(400, description=f"status must be one of {', '.join(FILTERS)}")
    try:
        page = validate.query_int("page", request.args.get("page"), 1, 1, MAX_PAGE)
    except validate.Invalid as exc:
        abort(exc.status, description=str(exc))
    at = now()
    with get_store().read() as conn:
        loaded = conn.execute(select(study_table.c.status, study_table.c.completion_code,
                                     study_table.c.loaded_at, study_table.c.format)).first()
        summary = list_summary(conn, at)
        median = median_duration(conn)
        rows, total = participant_page(conn, at, status, page,
                                       current_app.config["STALE_MINUTES"] * 60)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    return render_template("admin/dashboard.html", study=loaded, summary=summary,
                           totals=status_totals(summary), median=median, rows=rows,
                           total=total, page=page, pages=pages, status=status,
                           filters=FILTERS, admin=current_admin(), now=at)


def _record(conn, action: str, target: str) -> None:
    conn.execute(admin_actions.insert().values(admin=current_admin()["name"], action=action,
                                               target=target, at=now()))


@bp.post("/participants/<int(max=2147483647):participant_id>/status")
def mark(participant_id: int):
    """Mark a participant returned or timed out: their slot goes back to the list."""
    new = request.form.get("status")
    if new not in ("returned", "timed_out"):
        abort(400, description="status must be returned or timed_out")
    with get_store().write() as conn:
        person = conn.execute(select(participants).where(participants.c.id == participant_id)
                              .with_for_update()).first()
        if person is None:
            abort(404, description=f"no participant {participant_id}")
        if person.status != "active":
            flash(f"Participant {participant_id} is {person.status}: nothing changed.")
        else:
            conn.execute(participants.update().where(participants.c.id == participant_id)
                         .values(status=new, ended_at=now()))
            _record(conn, f"mark {new}", str(participant_id))
            flash(f"Participant {participant_id} marked {new.replace('_', ' ')}; "
                  f"a slot on list {person.list_id} is free again.")
    return redirect(request.referrer if _local(request.referrer)
                    else url_for("admin.dashboard"))


def _local(url: str | None) -> bool:
    if not url:
        return False
    parsed = urlparse(url)
    return parsed.netloc in ("", request.host) and parsed.path.startswith("/admin/")


@bp.post("/study/status")
def study_status():
    """Close the study (new arrivals see 'closed'; those in it carry on) or reopen it."""
    new = request.form.get("status")
    if new not in ("open", "closed"):
        abort(400, description="status must be open or closed")
    with get_store().write() as conn:
        if conn.execute(select(study_table.c.id)).first() is None:
            abort(409, description="no study is loaded")
        conn.execute(study_table.update().values(status=new))
        _record(conn, f"study {new}", "study")
    flash(f"The study is {new}.")
    return redirect(url_for("admin.dashboard"))


@bp.get("/design.json")
def design():
    with get_store().read() as conn:
        text = conn.execute(select(study_table.c.design)).scalar()
    if text is None:
        abort(404, description="no study is loaded")
    return Response(json.dumps(json.loads(text), indent=1), mimetype="application/json",
                    headers={"Content-Disposition": "attachment; filename=study.json"})


@bp.get("/export/<name>")
def export(name: str):
    """responses.csv, participants.csv, responses.json or participants.json, streamed."""
    from . import export as exports

    if name not in exports.EXPORTS:
        abort(404, description=f"no export {name!r}; one of {', '.join(exports.EXPORTS)}")
    return Response(exports.iter_export(get_store(), name), mimetype=exports.EXPORTS[name],
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
