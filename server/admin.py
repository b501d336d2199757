"""The experimenter side: login, the dashboard, actions, downloads.

Everything under ``/admin/`` except the login page needs an experimenter's session, and
every POST carries the session's CSRF token. The dashboard aggregates in SQL and pages
the participant table, so it stays fast with tens of thousands of participants.

The dashboard page is drawn twice: by the server (tables that work without scripts) and,
every few seconds, by ``static/dashboard.js`` from ``/admin/dashboard.json`` (charts of
completions and active participants over time, the yes-rate per layer with its Wilson
95% interval, each list's fill, and the participant table's catch pass rate, median
answer time and exclusion status). Experimenters exclude or reinstate a participant by
hand, with a reason (``server/exclusion.py``, recorded in ``admin_actions``).
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
from sqlalchemy import Integer, and_, case, cast, false, func, literal, or_, select, true

from analysis.exclusion import Rules, Trial, evaluate

from . import validate
from .auth import AuthError, LoginRefused, check_login, current_admin, log_in, log_out
from .csrf import check_csrf
from .exclusion import reasons_of, set_manual
from .store import admin_actions, get_store, lists, now, panels, participants, responses
from .store import study as study_table

__all__ = ["bp", "list_summary", "status_totals", "median_duration", "participant_page",
           "exclusion_status", "timeline", "layer_rates", "wilson_interval",
           "dashboard_data"]

bp = Blueprint("admin", __name__, url_prefix="/admin")

PAGE_SIZE = 50
MAX_PAGE = 1_000_000          # ?page= beyond this is a 400 (50 million participants)
MAX_NEXT = 2048               # the longest ?next= followed after login
ENDED = ("returned", "timed_out", "rejected")
FILTERS = ("all", "active", "expired", "completed", "ended", "declined")
TIMELINE_BUCKETS = 60         # points on the dashboard's chart of completions and actives
MAX_REASON = 500              # characters in a manual exclusion's reason
EXCLUSION_ACTIONS = {"exclude": "exclude", "reinstate": "reinstate", "rules": None}
Z95 = 1.959963984540054       # the standard normal's 97.5% quantile


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
        "excluded": func.coalesce(func.sum(case((p.c.excluded == true(), 1), else_=0)), 0),
        "kept": func.coalesce(func.sum(case((p.c.excluded == false(), 1), else_=0)), 0),
        "oldest_active": func.min(case((running, p.c.created_at), else_=None)),
    }


def list_summary(conn, at: float) -> list[dict[str, Any]]:
    """Per list: target, completed, active (and the oldest active session's start),
    expired, returned/timed out/rejected, declined, and how many participants are
    excluded and kept (by the rules or by hand; the others are not evaluated yet)."""
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
    """One page of participants (newest first) and the number matching ``status``, each
    with their catch trials passed, median answer time and exclusion status (see
    :func:`_add_exclusion`)."""
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
                    p.c.excluded, p.c.exclusion_reasons, p.c.manual_exclusion,
                    p.c.manual_reason, p.c.catch_passed, p.c.catch_total, p.c.median_rt_ms,
                    p.c.evaluated_at, last_answer.label("last_answer"))
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
    _add_exclusion(conn, rows)
    return rows, total


def exclusion_status(excluded: bool | None) -> str:
    """excluded | kept | pending (not evaluated yet: a participant who has not finished,
    and whom no experimenter has excluded or reinstated by hand)."""
    return "pending" if excluded is None else "excluded" if excluded else "kept"


def _add_exclusion(conn, rows: list[dict[str, Any]]) -> None:
    """Each row's catch pass rate, median answer time and exclusion status. A participant
    evaluated when they finished has the figures stored; for the others (still in the
    study, or left before the end) they are computed from their answers so far, as the
    rules compute them (analysis.exclusion.evaluate), in one query for the page."""
    live = [row["id"] for row in rows if row["evaluated_at"] is None]
    trials: dict[int, list[Trial]] = {pid: [] for pid in live}
    if live:
        query = (select(responses.c.participant_id, responses.c.answer_yes,
                        responses.c.rt_answer_ms, panels.c.catch, panels.c.catch_expected)
                 .select_from(responses.join(panels, responses.c.panel_id == panels.c.id))
                 .where(responses.c.participant_id.in_(live),
                        responses.c.practice == false()))
        for r in conn.execute(query):
            trials[r.participant_id].append(Trial(
                practice=False, answer_yes=bool(r.answer_yes),
                rt_answer_ms=float(r.rt_answer_ms), catch=bool(r.catch),
                catch_expected=r.catch_expected))
    for row in rows:
        if row["id"] in trials:
            verdict = evaluate(Rules(), trials[row["id"]])
            row.update(catch_passed=verdict.catch_passed, catch_total=verdict.catch_total,
                       median_rt_ms=verdict.median_rt_ms)
        total = row["catch_total"]
        row["catch_rate"] = row["catch_passed"] / total if total else None
        # Not evaluated and no decision by hand: pending, whatever ``excluded`` says (a
        # decision handed back to the rules before the participant finished leaves it
        # false, not NULL).
        decided = row["evaluated_at"] is not None or row["manual_exclusion"] is not None
        row["exclusion"] = exclusion_status(row["excluded"] if decided else None)
        row["reasons"] = (reasons_of(row["exclusion_reasons"], row["manual_exclusion"])
                          if row["exclusion"] == "excluded" else [])


def wilson_interval(yes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of the proportion ``yes / n`` (None when n is 0): it
    stays inside [0, 1] and is honest for small n and rates near 0 or 1, where the
    normal approximation is not."""
    if n <= 0:
        return None
    p = yes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def layer_rates(conn, layer_order: list[str]) -> list[dict[str, Any]]:
    """Per layer (in ``layer_order``, then any other in name order): the yes-rate so far
    over the main trials (no practice, no catch panel) of participants not excluded, with
    n and its Wilson 95% interval. One grouped query."""
    r, p = responses, participants
    query = (select(panels.c.layer, func.count().label("n"),
                    func.coalesce(func.sum(case((r.c.answer_yes == true(), 1), else_=0)),
                                  0).label("yes"))
             .select_from(r.join(panels, r.c.panel_id == panels.c.id)
                          .join(p, r.c.participant_id == p.c.id))
             .where(r.c.practice == false(), panels.c.catch == false(),
                    panels.c.layer.is_not(None),
                    or_(p.c.excluded.is_(None), p.c.excluded == false()))
             .group_by(panels.c.layer))
    counts = {row.layer: (int(row.yes), int(row.n)) for row in conn.execute(query)}
    order = list(layer_order) + sorted(set(counts) - set(layer_order))
    out = []
    for layer in order:
        yes, n = counts.get(layer, (0, 0))
        interval = wilson_interval(yes, n)
        out.append({"layer": layer, "n": n, "yes": yes, "rate": yes / n if n else None,
                    "low": interval[0] if interval else None,
                    "high": interval[1] if interval else None})
    return out


def _bucket(conn, value, start: float, width: float):
    """The bucket (0, 1, ...) of a time at or after ``start``, in SQL: floor((value -
    start) / width). SQLite's CAST truncates, which is floor for these non-negative
    values; PostgreSQL's CAST rounds, so it floors first."""
    scaled = (value - start) / width
    if conn.dialect.name == "sqlite":
        return cast(scaled, Integer)
    return cast(func.floor(scaled), Integer)


def timeline(conn, at: float, buckets: int = TIMELINE_BUCKETS) -> dict[str, Any]:
    """Completions and active participants over time, from the first entry to ``at`` in
    ``buckets`` equal steps. At each point t (the end of a step; the last is ``at``):
    ``completed``, the participants who completed before t; ``active``, those who had
    entered before t and whose session had not ended (completed, ended, or the lease
    run out; a session still running now has not ended). Counted per bucket in SQL (two
    grouped queries over the participants), summed up here."""
    p = participants
    start = conn.execute(select(func.min(p.c.created_at))).scalar()
    if start is None:
        return {"start": None, "end": at, "bucket_s": None, "points": []}
    start = float(min(start, at))
    width = (at - start) / buckets if at > start else 1.0 / buckets
    lease_out = case((p.c.lease_expires_at <= at, p.c.lease_expires_at), else_=None)
    end = func.coalesce(p.c.completed_at, p.c.ended_at,
                        case((p.c.status == "active", lease_out), else_=None))
    entered = [0] * buckets
    left = [0] * buckets
    done = [0] * buckets
    for counts, when, where in ((entered, p.c.created_at, None),
                                (left, end, end.is_not(None)),
                                (done, p.c.completed_at, p.c.status == "completed")):
        b = _bucket(conn, when, start, width)
        query = select(b.label("b"), func.count().label("n")).group_by(b)
        if where is not None:
            query = query.where(where)
        for row in conn.execute(query):
            counts[min(max(int(row.b), 0), buckets - 1)] += int(row.n)
    points, n_entered, n_left, n_done = [], 0, 0, 0
    for k in range(buckets):
        n_entered += entered[k]
        n_left += left[k]
        n_done += done[k]
        points.append({"t": start + (k + 1) * width if k < buckets - 1 else at,
                       "completed": n_done, "active": n_entered - n_left})
    return {"start": start, "end": at, "bucket_s": width, "points": points}


def _design_layers(design_text: str | None) -> list[str]:
    """The study's layers in its design's order (study.json's ``layers``)."""
    try:
        layers = json.loads(design_text or "{}").get("layers", [])
    except (ValueError, AttributeError):   # written by install_study after validation
        return []
    return [str(layer) for layer in layers] if isinstance(layers, list) else []


def _public_row(row: dict[str, Any]) -> dict[str, Any]:
    """A participant row as the dashboard's JSON shows it."""
    return {
        "id": row["id"], "prolific_pid": row["prolific_pid"], "list_id": row["list_id"],
        "status": row["shown_status"], "stale": row["stale"],
        "n_answered": row["n_answered"], "n_trials": row["n_trials"],
        "created_at": row["created_at"],
        "finished_at": row["completed_at"] or row["ended_at"],
        "duration_s": row["duration_s"],
        "idle_s": row["idle_s"] if row["status"] == "active" else None,
        "catch_passed": row["catch_passed"], "catch_total": row["catch_total"],
        "catch_rate": row["catch_rate"], "median_rt_ms": row["median_rt_ms"],
        "exclusion": row["exclusion"], "reasons": row["reasons"],
        "manual": row["manual_exclusion"], "manual_reason": row["manual_reason"],
    }


def dashboard_data(conn, at: float, status: str, page: int, stale_s: float
                   ) -> dict[str, Any]:
    """Everything the dashboard's charts and table show, as JSON-ready values: a fixed
    handful of aggregate queries whatever the number of participants, and one page of
    them (``status``, ``page``: as the HTML table)."""
    loaded = conn.execute(select(study_table.c.status, study_table.c.design)).first()
    summary = list_summary(conn, at)
    totals: dict[str, Any] = status_totals(summary)
    totals["excluded"] = sum(int(r["excluded"]) for r in summary)
    totals["kept"] = sum(int(r["kept"]) for r in summary)
    totals["pending"] = totals["participants"] - totals["excluded"] - totals["kept"]
    totals["median_duration_s"] = median_duration(conn)
    rows, total = participant_page(conn, at, status, page, stale_s)
    return {
        "generated_at": at,
        "study": loaded.status if loaded else None,
        "totals": totals,
        "timeline": timeline(conn, at),
        "layers": layer_rates(conn, _design_layers(loaded.design if loaded else None)),
        "lists": [{"id": r["id"], "target": int(r["target"]), "completed": int(r["completed"]),
                   "active": int(r["active"]), "excluded": int(r["excluded"]),
                   "open": bool(r["open"])} for r in summary],
        "participants": [_public_row(row) for row in rows],
        "status": status, "page": page, "pages": max(1, math.ceil(total / PAGE_SIZE)),
        "total": total,
    }


# --- pages --------------------------------------------------------------------------------

def _page_query() -> tuple[str, int]:
    """?status= (one of FILTERS) and ?page= (1 to MAX_PAGE); 400 otherwise."""
    status = request.args.get("status", "all")
    if status not in FILTERS:
        abort(400, description=f"status must be one of {', '.join(FILTERS)}")
    try:
        page = validate.query_int("page", request.args.get("page"), 1, 1, MAX_PAGE)
    except validate.Invalid as exc:
        abort(exc.status, description=str(exc))
    return status, page


@bp.get("/")
def dashboard():
    status, page = _page_query()
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
                           filters=FILTERS, admin=current_admin(), now=at,
                           refresh_ms=current_app.config["DASHBOARD_REFRESH_MS"],
                           max_reason=MAX_REASON)


@bp.get("/dashboard.json")
def dashboard_json():
    """The dashboard's figures (:func:`dashboard_data`) for static/dashboard.js, which
    fetches them every few seconds; ``?status=`` and ``?page=`` as the HTML page."""
    status, page = _page_query()
    with get_store().read() as conn:
        data = dashboard_data(conn, now(), status, page,
                              current_app.config["STALE_MINUTES"] * 60)
    return Response(json.dumps(data, separators=(",", ":"), allow_nan=False),
                    mimetype="application/json")


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


@bp.post("/participants/<int(max=2147483647):participant_id>/exclusion")
def exclusion(participant_id: int):
    """Exclude a participant by hand, reinstate one the rules exclude, or hand the
    decision back to the rules (``action``: exclude | reinstate | rules), with the
    experimenter's ``reason`` (needed to exclude or reinstate), recorded in
    admin_actions. The decision overrides the rules, at export too."""
    action = request.form.get("action", "")
    if action not in EXCLUSION_ACTIONS:
        abort(400, description=f"action must be one of {', '.join(EXCLUSION_ACTIONS)}, "
                               f"not {action[:40]!r}")
    reason = " ".join(request.form.get("reason", "").split())
    if EXCLUSION_ACTIONS[action] and not reason:
        abort(400, description=f"say why you {action} participant {participant_id}: the "
                               "reason is recorded with the decision")
    if len(reason) > MAX_REASON or not reason.isprintable():
        abort(400, description=f"the reason must be printable text of at most {MAX_REASON} "
                               f"characters ({len(reason)} sent)")
    with get_store().write() as conn:
        try:
            result = set_manual(conn, participant_id, EXCLUSION_ACTIONS[action], reason,
                                current_admin()["name"])
        except LookupError:
            abort(404, description=f"no participant {participant_id}")
    if action == "rules":
        flash(f"Participant {participant_id}: the exclusion rules decide again.")
    else:
        flash(f"Participant {participant_id} {action}d by hand "
              f"({'excluded' if result['excluded'] else 'kept'}): {reason}")
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
