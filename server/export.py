"""Exporting the study's data for analysis: ``python -m server export --out DIR``.

Four files, the first two read directly by ``analysis/table2.py``:

``responses.csv`` / ``responses.json``
    One row per stored trial (long format), ordered by participant then trial, with the
    columns of :data:`RESPONSE_COLUMNS`: the participant (``participant_id`` is the
    store's id; ``prolific_pid``, and Prolific's ``STUDY_ID`` and ``SESSION_ID`` as
    ``study_id`` and ``session_id``), their ``list_id`` and ``participant_status``
    (``active``, ``completed``, ``declined``, ``returned`` or ``timed_out``, as stored),
    the trial (``trial_index`` from 0, practice trials first; ``practice``; the
    ``panel_id`` and its ``layer`` and ``unit``, empty for practice panels), the answer
    (``answer_yes``, ``object_text``), the browser's reaction times (``rt_answer_ms``:
    image onset to yes/no; ``rt_text_ms``: yes to the text's submission) and three times:
    ``shown_at`` and ``client_answered_at`` by the browser's clock, ``answered_at`` by the
    server's; then what the trial page recorded while the panel was shown (empty where
    it sent nothing: answers stored before these were recorded): ``hidden_ms`` (the
    page hidden, ms), ``focus_losses`` (the window's blur events), ``pasted`` (text
    pasted into the answer box; false for a no) and ``answer_input`` (yes / no chosen by
    ``key``, ``mouse``, ``touch`` or ``pen``).
    Last, the panel's catch columns (docs/study-design.md, "Catch trials"): ``catch``
    (true for a catch trial, false otherwise), ``catch_expected`` (the answer it
    expects, yes or no) and ``catch_class`` (the class a yes names; empty for a negative
    catch); a catch panel is no unit: its ``layer`` and ``unit`` are empty.
``participants.csv`` / ``participants.json``
    One row per participant, ordered by ``participant_id``, with the columns of
    :data:`PARTICIPANT_COLUMNS`: counts (``n_trials``, ``n_answered``,
    ``n_practice_answered``), the time of each step, ``duration_s`` (completion minus
    entry, for completed participants), the browser window measured by the device check
    and the user agent; last the exclusion columns of :data:`EXCLUSION_EXPORT_COLUMNS`
    (docs/exclusion.md): ``excluded``, ``exclusion_reasons``, ``manual_reason``,
    ``catch_passed``, ``catch_total``, ``practice_correct``, ``practice_scored``,
    ``median_rt_ms``. Every finished participant is evaluated again by the study's rules
    just before an export.

Formats:

- Times are ISO 8601 in UTC with milliseconds, e.g. ``2026-11-26T01:02:03.456Z``.
- CSV: RFC 4180 (UTF-8, a header row, CRLF line ends, a cell holding a comma, quote or
  line break in double quotes); booleans ``true`` / ``false``; a missing value is an
  empty cell.
- JSON: an array of objects with the same keys in the same order; numbers and booleans
  are native, times the same ISO strings, a missing value ``null``.
- CSV injection (OWASP): a spreadsheet runs a cell that begins with ``=``, ``+``, ``-``,
  ``@``, a tab or a carriage return as a formula, and participants write ``object_text``
  themselves. In the CSV files every text cell that begins with one of these characters
  is prefixed with a single quote (``=1+1`` is written ``'=1+1``), and so is one that
  begins with one after Unicode compatibility normalisation (NFKC: fullwidth ``＝1+1``,
  small ``﹦1``) or after leading invisible characters (format characters, category Cf,
  such as U+200B or U+202E, and blanks other than tab and CR): :func:`csv_text`. The
  quote is the only change: the rest of the cell is the stored text, unnormalised;
  numbers are never altered. The JSON files hold the text exactly as stored: use them
  where the raw text matters (a stored text that itself begins with a quote is not
  altered, so the CSV alone cannot tell ``'=x`` from ``=x``).

Exports stream: rows are read with a server-side cursor on PostgreSQL and by stepping the
cursor on SQLite, a few thousand at a time (:data:`YIELD_PER`), and written as they come,
so memory stays bounded whatever the number of responses. :func:`write_exports` reads
every file from one snapshot of the store (so ``n_answered`` agrees with the responses)
and replaces the files atomically; :func:`iter_export` yields one file's text in chunks,
for a streamed download.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import click
from flask import Flask
from flask.cli import with_appcontext
from sqlalchemy import Select, func, select
from sqlalchemy.engine import Connection

from common.files import fsync_dir

from .exclusion import evaluate_all, reasons_of
from .store import Store, get_store, panels, participants, responses

__all__ = ["EXPORTS", "RESPONSE_COLUMNS", "PARTICIPANT_COLUMNS", "YIELD_PER", "iso_time",
           "csv_text", "iter_export", "write_exports", "export_command", "init_app"]

# file name -> mimetype (for a download's Content-Type)
EXPORTS: dict[str, str] = {
    "responses.csv": "text/csv",
    "participants.csv": "text/csv",
    "responses.json": "application/json",
    "participants.json": "application/json",
}

RESPONSE_COLUMNS: tuple[str, ...] = (
    "participant_id", "prolific_pid", "study_id", "session_id", "list_id",
    "participant_status", "trial_index", "practice", "panel_id", "layer", "unit",
    "answer_yes", "object_text", "rt_answer_ms", "rt_text_ms", "shown_at",
    "client_answered_at", "answered_at",
    "hidden_ms", "focus_losses", "pasted", "answer_input")

PARTICIPANT_COLUMNS: tuple[str, ...] = (
    "participant_id", "prolific_pid", "study_id", "session_id", "list_id", "status",
    "n_trials", "n_answered", "n_practice_answered", "created_at", "consented_at",
    "device_ok_at", "completed_at", "debriefed_at", "ended_at", "lease_expires_at",
    "duration_s", "window_width", "window_height", "user_agent")

# Rows fetched (and written as one chunk) at a time.
YIELD_PER = 5000

# A CSV text cell beginning with one of these is prefixed with "'" (OWASP CSV injection),
# also after NFKC and leading invisible characters (csv_text).
FORMULA_START = frozenset("=+-@\t\r")


# --- values ---------------------------------------------------------------------------------

@lru_cache(maxsize=4096)
def _iso_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def iso_time(t: float | None) -> str | None:
    """UTC seconds since the epoch as ISO 8601 with milliseconds and a Z (None stays None)."""
    if t is None:
        return None
    second, ms = divmod(round(t * 1000), 1000)
    return f"{_iso_second(second)}.{ms:03d}Z"


def _lead(text: str) -> str:
    """The first character of ``text`` after any format characters (Cf: U+200B, U+202E,
    U+FEFF, ...) and blanks other than tab and CR (those are formula triggers)."""
    for c in text:
        if c in "\t\r" or not (c.isspace() or unicodedata.category(c) == "Cf"):
            return c
    return ""


def _formula(text: str) -> bool:
    return _lead(text) in FORMULA_START or \
        _lead(unicodedata.normalize("NFKC", text)) in FORMULA_START


def csv_text(text: str) -> str:
    """A text as the CSV export writes it: prefixed with ``'`` when a spreadsheet could
    take it for a formula (it begins with ``= + - @``, a tab or a CR, as stored or after
    NFKC, once leading invisible characters are skipped), otherwise unchanged."""
    return "'" + text if text and _formula(text) else text


def _window(device: str | None) -> tuple[int | None, int | None, str | None]:
    """The window size and user agent recorded by the device check (its JSON)."""
    if not device:
        return None, None, None
    try:
        info = json.loads(device)
    except ValueError:
        return None, None, None
    if not isinstance(info, dict):
        return None, None, None

    def size(key: str) -> int | None:
        value = info.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    agent = info.get("user_agent")
    return size("width"), size("height"), agent if isinstance(agent, str) else None


# --- the two tables ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Table:
    columns: tuple[str, ...]
    query: Callable[[], Select]
    native: Callable[[Sequence[Any]], list[Any]]   # a row -> JSON-ready values in order
    bools: tuple[int, ...]                          # column positions of booleans
    texts: tuple[int, ...]                          # ... and of text (escaped in CSV)


def _responses_query() -> Select:
    r, p = responses.c, participants.c
    return (select(r.participant_id, p.prolific_pid, p.study_param, p.session_param, p.list_id,
                   p.status, r.trial_index, r.practice, r.panel_id, panels.c.layer,
                   panels.c.unit, r.answer_yes, r.object_text, r.rt_answer_ms, r.rt_text_ms,
                   r.shown_at, r.client_answered_at, r.answered_at,
                   r.hidden_ms, r.focus_losses, r.pasted, r.answer_input)
            # LEFT joins keep the responses the driving table: SQLite then walks the
            # (participant_id, trial_index) index in order instead of sorting.
            .select_from(responses.outerjoin(participants, r.participant_id == p.id)
                         .outerjoin(panels, r.panel_id == panels.c.id))
            .order_by(r.participant_id, r.trial_index))


_RESPONSE_TIMES = (15, 16, 17)


def _responses_native(row: Sequence[Any]) -> list[Any]:
    values = list(row)
    for i in _RESPONSE_TIMES:
        t = values[i]
        if t is not None:
            values[i] = iso_time(t)
    return values


def _participants_query() -> Select:
    p = participants.c
    practice = (select(responses.c.participant_id, func.count().label("n"))
                .where(responses.c.practice)
                .group_by(responses.c.participant_id)
                .subquery("practice_answered"))
    return (select(p.id, p.prolific_pid, p.study_param, p.session_param, p.list_id, p.status,
                   p.n_trials, p.n_answered, func.coalesce(practice.c.n, 0), p.created_at,
                   p.consented_at, p.device_ok_at, p.completed_at, p.debriefed_at,
                   p.ended_at, p.lease_expires_at, p.device, p.user_agent)
            .select_from(participants.outerjoin(practice, practice.c.participant_id == p.id))
            .order_by(p.id))


def _participants_native(row: Sequence[Any]) -> list[Any]:
    values = list(row[:9])
    created, completed = row[9], row[12]
    values.extend(iso_time(t) for t in row[9:16])
    values.append(round(completed - created, 3) if completed is not None else None)
    width, height, agent = _window(row[16])
    values.extend((width, height, row[17] or agent))
    return values


_TABLES = {
    "responses": _Table(RESPONSE_COLUMNS, _responses_query, _responses_native,
                        bools=(7, 11, RESPONSE_COLUMNS.index("pasted")),
                        texts=(1, 2, 3, 5, 8, 9, 12, RESPONSE_COLUMNS.index("answer_input"))),
    "participants": _Table(PARTICIPANT_COLUMNS, _participants_query, _participants_native,
                           bools=(), texts=(1, 2, 3, 5, 19)),
}


# --- catch trials: the panel's three catch columns, last in the responses ------------------

#: The catch columns of the responses (docs/study-design.md, "Catch trials").
CATCH_EXPORT_COLUMNS: tuple[str, ...] = ("catch", "catch_expected", "catch_class")
RESPONSE_COLUMNS += CATCH_EXPORT_COLUMNS


def _responses_with_catch() -> Select:
    return _responses_query().add_columns(panels.c.catch, panels.c.catch_expected,
                                          panels.c.catch_class)


_TABLES["responses"] = _Table(
    RESPONSE_COLUMNS, _responses_with_catch, _responses_native,
    bools=(*_TABLES["responses"].bools, RESPONSE_COLUMNS.index("catch")),
    texts=(*_TABLES["responses"].texts, RESPONSE_COLUMNS.index("catch_expected"),
           RESPONSE_COLUMNS.index("catch_class")))
__all__ += ["CATCH_EXPORT_COLUMNS"]


# --- exclusions: the verdict and the figures behind it, last in the participants -----------

#: The participants' exclusion columns (docs/exclusion.md): ``excluded`` (true / false;
#: empty for a participant who has not finished: not evaluated), ``exclusion_reasons``
#: (the failed rules' names joined by ``;``, with ``manual`` for an exclusion by hand; a
#: participant reinstated by hand has none), ``manual_reason`` (the experimenter's
#: words), the catch trials passed of those answered, the practice trials answered as
#: expected of those with an expected answer, and the median answer time (ms) of the
#: non-practice trials.
EXCLUSION_EXPORT_COLUMNS: tuple[str, ...] = (
    "excluded", "exclusion_reasons", "manual_reason", "catch_passed", "catch_total",
    "practice_correct", "practice_scored", "median_rt_ms")
_BASE_PARTICIPANT_COLUMNS = len(PARTICIPANT_COLUMNS)
PARTICIPANT_COLUMNS += EXCLUSION_EXPORT_COLUMNS


def _participants_with_exclusion() -> Select:
    p = participants.c
    return _participants_query().add_columns(
        p.excluded, p.exclusion_reasons, p.manual_exclusion, p.manual_reason, p.catch_passed,
        p.catch_total, p.practice_correct, p.practice_scored, p.median_rt_ms)


def _participants_exclusion_native(row: Sequence[Any]) -> list[Any]:
    values = _participants_native(row[:18])
    excluded, reasons, manual, manual_reason, *figures = row[18:]
    median = figures[-1]
    figures[-1] = round(median, 1) if median is not None else None
    values.extend([excluded, ";".join(reasons_of(reasons, manual)) if excluded is not None
                   or manual else None, manual_reason, *figures])
    return values


_TABLES["participants"] = _Table(
    PARTICIPANT_COLUMNS, _participants_with_exclusion, _participants_exclusion_native,
    bools=(*_TABLES["participants"].bools, PARTICIPANT_COLUMNS.index("excluded")),
    texts=(*_TABLES["participants"].texts, PARTICIPANT_COLUMNS.index("exclusion_reasons"),
           PARTICIPANT_COLUMNS.index("manual_reason")))
__all__ += ["EXCLUSION_EXPORT_COLUMNS"]


# --- streaming ----------------------------------------------------------------------------------

def _split(name: str) -> tuple[_Table, str]:
    if name not in EXPORTS:
        raise ValueError(f"unknown export {name!r}: one of {', '.join(EXPORTS)}")
    stem, fmt = name.rsplit(".", 1)
    return _TABLES[stem], fmt


def _batches(conn: Connection, table: _Table) -> Iterator[Sequence[Sequence[Any]]]:
    """The table's rows, YIELD_PER at a time, from a streaming cursor (never fetchall)."""
    query = table.query().execution_options(stream_results=True, yield_per=YIELD_PER)
    result = conn.execute(query)
    try:
        yield from result.partitions()
    finally:
        result.close()


class _Lines(list):
    """What csv.writer writes to: its lines, kept apart (lighter than a StringIO)."""

    write = list.append


def _csv_chunks(conn: Connection, table: _Table, counter: list[int]) -> Iterator[str]:
    lines = _Lines()
    writer = csv.writer(lines, lineterminator="\r\n")   # so a lone CR is quoted too
    writer.writerow(table.columns)
    yield lines.pop()
    native, bools, texts = table.native, table.bools, table.texts

    def cells(row: Sequence[Any]) -> list[Any]:
        values = native(row)                     # None, int and float: csv writes them
        for i in bools:
            v = values[i]
            if v is not None:
                values[i] = "true" if v else "false"
        for i in texts:
            v = values[i]
            # printable ASCII other than a trigger starts plain text whatever follows
            # (NFKC keeps it); anything else takes the full rule
            if v and (v[0] in FORMULA_START or not "!" <= v[0] <= "~") and _formula(v):
                values[i] = "'" + v
        return values

    for batch in _batches(conn, table):
        writer.writerows(map(cells, batch))
        counter[0] += len(batch)
        chunk = "".join(lines)
        lines.clear()
        yield chunk


def _json_chunks(conn: Connection, table: _Table, counter: list[int]) -> Iterator[str]:
    encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
    columns, native = table.columns, table.native
    opened = False
    for batch in _batches(conn, table):
        parts = [",\n" if opened else "[\n"]
        for row in batch:
            parts.append(encode(dict(zip(columns, native(row), strict=True))))
            parts.append(",\n")
        parts.pop()
        counter[0] += len(batch)
        opened = True
        chunk = "".join(parts)
        del parts
        yield chunk
    yield "\n]\n" if opened else "[]\n"


def _chunks(conn: Connection, name: str, counter: list[int]) -> Iterator[str]:
    table, fmt = _split(name)
    if fmt == "csv":
        return _csv_chunks(conn, table, counter)
    return _json_chunks(conn, table, counter)


def iter_export(store: Store, name: str) -> Iterator[str]:
    """The text of export ``name`` (a key of :data:`EXPORTS`), in chunks of about
    :data:`YIELD_PER` rows, read in one read transaction that stays open while the chunks
    are consumed (closing the iterator ends it). Unknown names raise ValueError at once.
    Every finished participant is evaluated again by the study's exclusion rules first
    (server/exclusion.py), so the verdicts are current.

    For a download: ``Response(iter_export(store, name), mimetype=EXPORTS[name])``."""
    _split(name)
    evaluate_all(store)

    def generate() -> Iterator[str]:
        with store.read() as conn:
            yield from _chunks(conn, name, [0])

    return generate()


@contextmanager
def _snapshot(store: Store) -> Iterator[Connection]:
    """A read transaction whose every statement sees the same data (SQLite's read
    transactions do; PostgreSQL needs REPEATABLE READ)."""
    if store.dialect != "postgresql":
        with store.read() as conn:
            yield conn
        return
    with store.engine.connect() as conn:
        conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            yield conn


def write_exports(store: Store, out_dir: str | os.PathLike, names: Iterable[str] | None = None,
                  progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Write the exports ``names`` (default: all of :data:`EXPORTS`) into ``out_dir``
    (created if missing) from one snapshot of the store; returns the rows in each file.

    Each file is written to a temporary file beside it and moved into place only once
    every file is complete, so readers never see a partial file and a failure leaves the
    old files as they were. ``progress(name, rows_so_far)`` is called after each chunk.
    Every finished participant is evaluated again by the study's exclusion rules first.
    The files are readable by their owner only (they hold Prolific ids)."""
    names = list(EXPORTS if names is None else names)
    for name in names:
        _split(name)
    evaluate_all(store)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, int] = {}
    temps: dict[str, str] = {}
    try:
        with _snapshot(store) as conn:
            for name in names:
                fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
                temps[name] = tmp
                counter = [0]
                with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                    for chunk in _chunks(conn, name, counter):
                        fh.write(chunk)
                        if progress is not None:
                            progress(name, counter[0])
                    fh.flush()
                    os.fsync(fh.fileno())
                rows[name] = counter[0]
        for name in names:
            os.replace(temps.pop(name), out / name)
    finally:
        for tmp in temps.values():
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    fsync_dir(out)
    return rows


# --- command line ---------------------------------------------------------------------------

def init_app(app: Flask) -> None:
    app.cli.add_command(export_command)


@click.command("export")
@with_appcontext
@click.option("--out", "out_dir", required=True,
              type=click.Path(file_okay=False, writable=True, path_type=Path),
              help="Folder for the files (created if missing; files there are replaced).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "both"]), default="both",
              show_default=True, help="Which files: the CSV, the JSON or both.")
def export_command(out_dir: Path, fmt: str) -> None:
    """Export the responses (one row per trial) and the participants as CSV and JSON."""
    names = [name for name in EXPORTS if fmt == "both" or name.endswith("." + fmt)]
    live = sys.stderr.isatty()

    def show(name: str, n: int) -> None:
        click.echo(f"\r{name}: {n} rows", nl=False, err=True)

    counts = write_exports(get_store(), out_dir, names, progress=show if live else None)
    if live:
        click.echo("\r" + " " * 40 + "\r", nl=False, err=True)
    for name, n in counts.items():
        click.echo(f"{out_dir / name}: {n} rows")
