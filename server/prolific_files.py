"""Prolific's files: who to approve or reject, and who to pay a bonus (docs/prolific-files.md).

``python -m server prolific-files --out DIR [--bonus AMOUNT]``, or the dashboard's
downloads (``POST /admin/prolific/approvals.csv``, ``POST /admin/prolific/bonuses.csv``
with a form field ``amount``), write:

``approvals-<UTC time>.csv``
    ``participant_id,decision,reason`` (a header row, then one row per participant who
    completed the study): ``participant_id`` is the Prolific PID; ``decision`` is
    ``reject`` when the participant is excluded (server/exclusion.py) for at least one
    rule the study's rules name in ``reject_for`` (analysis/exclusion.py; by default
    ``catch``: failed attention checks are fair grounds for a rejection on Prolific,
    slowness alone is not), and ``reason`` those rules' names (``;``-joined); otherwise
    ``approve`` (an excluded participant whose reasons are not rejection grounds is
    approved and paid, and only left out of the analysis).
``bonuses-<UTC time>.csv``
    Prolific's bulk bonus format: ``<participant_id>,<amount>`` a line, no header, the
    amount in the study's currency with two decimals (``0.50``), for every participant
    approved in an approvals file.

Why a store table: Prolific pays every line of a bonus file it is given, and a
participant approved, rejected or paid twice is a real cost, so each participant goes
into each kind of file once, ever. The rows written are recorded in ``prolific_files``
(unique per participant and kind) in the same write transaction that chooses them, so
a second request writes only participants not yet written (or no file at all: "nothing
new to write"), and two requests at once never write one participant twice (SQLite's
write transactions are serial; on PostgreSQL an advisory lock makes them so, and the
unique constraint is the backstop).

A file exists if and only if its rows were recorded: it is written to a temporary file
beside it first (mode 0600: it holds Prolific ids), the transaction is committed, and only
then the file is moved into place; if the commit fails the temporary file is removed.
The batch (the file's name) is recorded with each row. The dashboard keeps its files in
``PROLIFIC_FILES_DIR`` (default ``instance/prolific``), so a download lost on the way can
be fetched again (``GET /admin/prolific/files/<name>``).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from flask import (
    Flask,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    request,
    url_for,
)
from flask.cli import with_appcontext
from sqlalchemy import and_, exists, select
from sqlalchemy.engine import Connection

from analysis.exclusion import Rules
from common.files import fsync_dir

from .admin import bp
from .auth import current_admin
from .exclusion import evaluate_all, reasons_of, study_rules
from .export import csv_text
from .store import Store, admin_actions, get_store, now, participants, prolific_files

__all__ = ["APPROVAL_COLUMNS", "MAX_BONUS", "AmountError", "PlacementError", "approval",
           "parse_amount", "write_approvals", "write_bonuses", "files_dir", "init_app",
           "prolific_files_command"]

log = logging.getLogger(__name__)

#: The approvals file's header.
APPROVAL_COLUMNS = ("participant_id", "decision", "reason")

#: The largest bonus accepted, in the study's currency: Prolific pays exactly the amount
#: written (its docs: an amount of 30 pays 30.00), so a slip of the decimal point is
#: refused rather than paid.
MAX_BONUS = Decimal("100")

# PostgreSQL: one writer of Prolific's files at a time (727001: migrations, 727002: logins).
_LOCK = 727017

_STAMP = "%Y%m%dT%H%M%SZ"
_NAME = re.compile(r"(approvals|bonuses)-[0-9]{8}T[0-9]{6}Z(-[0-9]{1,6})?\.csv")
_AMOUNT = re.compile(r"[0-9]{1,9}(\.[0-9]{1,2})?")


class AmountError(ValueError):
    """A bonus amount that is not a number of the study's currency in (0, MAX_BONUS]
    with at most 2 decimals; the message says what to write instead."""


class PlacementError(OSError):
    """The rows were recorded but the file could not be moved into place: the message
    names the temporary file that holds them (it is kept)."""


# --- what goes into the files ---------------------------------------------------------------

def parse_amount(value: Any, maximum: Decimal = MAX_BONUS) -> str:
    """A bonus amount as Prolific's bulk bonus file takes it: ``"0.50"``. ``value``: a
    decimal number (text such as ``"0.5"``, ``"2"``, ``"1.25"``), more than 0, at most
    ``maximum``, with at most 2 decimals; AmountError otherwise."""
    text = value.strip() if isinstance(value, str) else \
        ("" if value is None or isinstance(value, bool) else str(value))
    if not _AMOUNT.fullmatch(text):
        shown = "nothing" if value is None or text == "" else repr(value)
        raise AmountError(f"bonus amount {shown}: write a number in the study's currency "
                          f"with a decimal point and at most 2 decimals, e.g. 0.50 (no "
                          f"currency sign, no comma)")
    amount = Decimal(text)
    if amount <= 0:
        raise AmountError(f"bonus amount {text}: must be more than 0")
    if amount > maximum:
        raise AmountError(f"bonus amount {text}: more than {maximum:.2f}, the most allowed "
                          f"(Prolific pays exactly the amount written: 30 pays 30.00); "
                          f"pay a larger bonus on Prolific by hand")
    return f"{amount:.2f}"


def approval(excluded: bool | None, exclusion_reasons: str | None, manual: str | None,
             reject_for: Sequence[str]) -> tuple[str, str]:
    """(decision, reason) for one participant who completed: ``("reject", "catch")`` when
    excluded for a rule in ``reject_for`` (the reason: those rules, ``;``-joined), else
    ``("approve", "")``. ``excluded`` NULL (not evaluated) counts as not excluded."""
    if not excluded:
        return "approve", ""
    grounds = [r for r in reasons_of(exclusion_reasons, manual) if r in reject_for]
    return ("reject", ";".join(grounds)) if grounds else ("approve", "")


def _not_written(kind: str):
    f = prolific_files.c
    return ~exists().where(and_(f.participant_id == participants.c.id, f.kind == kind))


def _approval_rows(conn: Connection) -> list[dict[str, Any]]:
    reject_for = (study_rules(conn) or Rules()).reject_for
    p = participants.c
    query = (select(p.id, p.prolific_pid, p.excluded, p.exclusion_reasons, p.manual_exclusion)
             .where(p.status == "completed", _not_written("approval"))
             .order_by(p.id))
    rows = []
    for r in conn.execute(query):
        decision, reason = approval(r.excluded, r.exclusion_reasons, r.manual_exclusion,
                                    reject_for)
        rows.append({"participant_id": r.id, "pid": r.prolific_pid, "decision": decision,
                     "reason": reason or None, "amount": None})
    return rows


def _bonus_rows(amount: str) -> Callable[[Connection], list[dict[str, Any]]]:
    def rows(conn: Connection) -> list[dict[str, Any]]:
        p, approved = participants.c, prolific_files.alias("approved")
        query = (select(p.id, p.prolific_pid)
                 .join_from(participants, approved,
                            and_(approved.c.participant_id == p.id,
                                 approved.c.kind == "approval",
                                 approved.c.decision == "approve"))
                 .where(_not_written("bonus"))
                 .order_by(p.id))
        return [{"participant_id": r.id, "pid": r.prolific_pid, "decision": None,
                 "reason": None, "amount": amount} for r in conn.execute(query)]
    return rows


def _approvals_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")     # RFC 4180, as the exports
    writer.writerow(APPROVAL_COLUMNS)
    writer.writerows([csv_text(r["pid"]), r["decision"], r["reason"] or ""] for r in rows)
    return buffer.getvalue()


def _bonuses_text(rows: list[dict[str, Any]]) -> str:
    # Prolific's format: "<participant_id>,<amount>\n", no header.
    return "".join(f"{csv_text(r['pid'])},{r['amount']}\n" for r in rows)


# --- writing a batch ---------------------------------------------------------------------------

def _batch_name(conn: Connection, out: Path, stem: str, at: float) -> str:
    """A file name not used by any recorded batch nor by a file in ``out``: the time,
    then ``-2``, ``-3``, ... for another batch in the same second."""
    base = f"{stem}-{datetime.fromtimestamp(at, tz=UTC).strftime(_STAMP)}"
    taken = set(conn.execute(select(prolific_files.c.batch).distinct()
                             .where(prolific_files.c.batch.like(f"{base}%"))).scalars())
    n = 1
    while True:
        name = f"{base}.csv" if n == 1 else f"{base}-{n}.csv"
        if name not in taken and not (out / name).exists():
            return name
        n += 1


def _write_batch(store: Store, out_dir: str | os.PathLike, kind: str, stem: str,
                 choose: Callable[[Connection], list[dict[str, Any]]],
                 text: Callable[[list[dict[str, Any]]], str], at: float | None,
                 admin: str | None) -> tuple[Path | None, list[dict[str, Any]]]:
    """Choose the rows not yet written, write them to a temporary file, record them, commit,
    then move the file into place. (None, []) when there is nothing new."""
    at = now() if at is None else at
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{stem}.", suffix=".tmp")   # mode 0600
    os.close(fd)
    committed = False
    try:
        with store.write() as conn:
            if store.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK})")
            rows = choose(conn)
            if not rows:
                return None, []
            name = _batch_name(conn, out, stem, at)
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                fh.write(text(rows))
                fh.flush()
                os.fsync(fh.fileno())
            conn.execute(prolific_files.insert(), [
                {"participant_id": r["participant_id"], "kind": kind,
                 "decision": r["decision"], "reason": r["reason"], "amount": r["amount"],
                 "written_at": at, "batch": name} for r in rows])
            if admin is not None:
                conn.execute(admin_actions.insert().values(
                    admin=admin, action=f"prolific {stem}", target=name, at=at,
                    detail=f"{len(rows)} participants"))
        committed = True
        path = out / name
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise PlacementError(f"{path}: recorded {len(rows)} participants as batch {name} "
                                 f"but could not move the file into place ({exc}); its rows "
                                 f"are in {tmp}: rename it to {name}") from exc
        fsync_dir(out)
        return path, rows
    finally:
        if not committed:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def write_approvals(store: Store, out_dir: str | os.PathLike, at: float | None = None,
                    admin: str | None = None) -> tuple[Path | None, dict[str, int]]:
    """Write ``approvals-<UTC time>.csv`` into ``out_dir`` (created if missing) for every
    completed participant not yet in an approvals file, after evaluating every completed
    participant again (so the decisions follow the current answers and rules). Returns
    the file's path (None: nothing new, no file) and ``{"approve": n, "reject": m}``.
    ``admin``: the experimenter, recorded in ``admin_actions``."""
    evaluate_all(store, at)
    path, rows = _write_batch(store, out_dir, "approval", "approvals", _approval_rows,
                              _approvals_text, at, admin)
    counts = {"approve": sum(r["decision"] == "approve" for r in rows),
              "reject": sum(r["decision"] == "reject" for r in rows)}
    if path is None:
        log.info("approvals: nothing new to write")
    else:
        log.info("wrote %s: %d approve, %d reject", path, counts["approve"], counts["reject"])
    return path, counts


def write_bonuses(store: Store, out_dir: str | os.PathLike, amount: Any,
                  at: float | None = None,
                  admin: str | None = None) -> tuple[Path | None, dict[str, int]]:
    """Write ``bonuses-<UTC time>.csv`` into ``out_dir``: ``amount`` (see
    :func:`parse_amount`; AmountError before anything is written) for every participant
    approved in an approvals file and not yet in a bonus file. Returns the path (None:
    nothing new) and ``{"bonus": n}``."""
    value = parse_amount(amount)
    path, rows = _write_batch(store, out_dir, "bonus", "bonuses", _bonus_rows(value),
                              _bonuses_text, at, admin)
    if path is None:
        log.info("bonuses: nothing new to write")
    else:
        log.info("wrote %s: %d bonuses of %s", path, len(rows), value)
    return path, {"bonus": len(rows)}


# --- the dashboard's downloads ------------------------------------------------------------------

def files_dir() -> Path:
    """Where the dashboard keeps the files it hands out: ``PROLIFIC_FILES_DIR``, default
    ``prolific/`` in the instance folder."""
    folder = current_app.config.get("PROLIFIC_FILES_DIR")
    return Path(folder) if folder else Path(current_app.instance_path) / "prolific"


def _download(path: Path) -> Response:
    return Response(path.read_bytes(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{path.name}"'})


def _nothing_new(what: str, why: str):
    flash(f"{what}: nothing new to write ({why}).")
    return redirect(url_for("admin.dashboard"))


@bp.post("/prolific/approvals.csv")
def prolific_approvals():
    """The approvals file for participants not yet in one, as a download."""
    path, _ = write_approvals(get_store(), files_dir(), admin=current_admin()["name"])
    if path is None:
        return _nothing_new("Approvals", "every participant who completed is in an earlier "
                            "approvals file")
    return _download(path)


@bp.post("/prolific/bonuses.csv")
def prolific_bonuses():
    """The bonus file (form field ``amount``) for approved participants not yet in one."""
    try:
        amount = parse_amount(request.form.get("amount"))
    except AmountError as exc:
        abort(400, description=str(exc))
    path, _ = write_bonuses(get_store(), files_dir(), amount, admin=current_admin()["name"])
    if path is None:
        return _nothing_new("Bonuses", "bonuses go to participants approved in an approvals "
                            "file, once each: every one of them has had one")
    return _download(path)


@bp.get("/prolific/files/<name>")
def prolific_file(name: str):
    """A file written earlier, again (a download lost on the way)."""
    path = files_dir() / name
    if not _NAME.fullmatch(name) or not path.is_file():
        abort(404, description=f"no Prolific file {name!r} in {files_dir().name}/")
    return _download(path)


# --- command line -------------------------------------------------------------------------------

def init_app(app: Flask) -> None:
    """Add ``prolific-files`` to the app's commands (importing this module has attached
    the dashboard's routes to the admin blueprint)."""
    app.cli.add_command(prolific_files_command)


def _amount_option(_ctx, _param, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return parse_amount(value)
    except AmountError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("prolific-files")
@with_appcontext
@click.option("--out", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the files (created if missing; earlier files are kept).")
@click.option("--bonus", "amount", metavar="AMOUNT", callback=_amount_option,
              help="Also a bonus file: AMOUNT (e.g. 0.50, the study's currency, at most "
                   f"{MAX_BONUS:.2f}) for every approved participant not yet paid one.")
def prolific_files_command(out_dir: Path, amount: str | None) -> None:
    """Prolific's approvals file (approve, or reject for the study's reject_for rules) and,
    with --bonus, its bulk bonus file; each participant goes into each file once, ever."""
    store = get_store()
    path, counts = write_approvals(store, out_dir)
    if path is None:
        click.echo("approvals: nothing new to write")
    else:
        click.echo(f"{path}: {counts['approve']} approve, {counts['reject']} reject")
    if amount is None:
        return
    path, counts = write_bonuses(store, out_dir, amount)
    if path is None:
        click.echo("bonuses: nothing new to write")
    else:
        click.echo(f"{path}: {counts['bonus']} bonus of {amount}")
