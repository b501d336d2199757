"""List assignment, leases and trial writes: the rules that keep the study's quotas.

- A new participant gets the list that is least filled (completed + active sessions whose
  lease has not passed), ties broken at random. The choice runs in a transaction that
  holds the lists: row locks on PostgreSQL, the write lock (``BEGIN IMMEDIATE``) on SQLite.
- The same PROLIFIC_PID always returns to the same session and list, but only with the
  SESSION_ID it first came with: another SESSION_ID is refused (OtherSession) and recorded
  in the entry log.
- A new participant first holds their place briefly (``entry_hold_seconds``), each step
  before the trials restarting the hold; their first stored answer (practice included)
  extends it to the lease. A lease runs ``lease_seconds`` from the start. An expired
  session frees its slot; if the participant comes back, the hold or lease is renewed
  only while the list still has room.
- An address takes at most so many new places in a window (``entry_limit``; EntryLimited
  beyond it), counted in the entry log under the same lock as the assignment.
- So no list ever has more completed participants than its target: a session completes
  only while it holds a valid lease, and leases are only handed out below the target.
  With the study's exclusion rules saying ``replace_excluded``, an excluded participant
  (by the rules when they finish, or by hand) does not count: the list takes another.
- Every response is written once: (participant, trial index) is unique, answers come in
  order, and a repeated POST returns the stored row and changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import random
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, case, func, or_, select
from sqlalchemy.engine import Connection, Row

from .exclusion import evaluate_participant
from .store import (
    Store,
    entry_log,
    list_panels,
    lists,
    now,
    panels,
    participants,
    responses,
    study,
)
from .study import current_study

__all__ = ["prolific_max_minutes", "lease_seconds", "AssignmentError", "NoStudy", "StudyClosed", "StudyFull", "LeaseExpired",
           "TrialError", "ListFill", "list_fill", "start", "trial_order", "renew_lease",
           "Recorded", "record_response", "stored_response", "participant_by_token", "Answer",
           "BEFORE_TRIALS", "check_trial_index", "check_trial_order", "EntryLimit",
           "EntryLimited", "OtherSession", "entry_hold_seconds", "entry_limit",
           "entry_source", "note_refusal"]

_rng = random.SystemRandom()


def prolific_max_minutes(estimated_minutes: float) -> float:
    """Prolific's (minimum) maximum allowed time for a study whose estimated completion
    time is X minutes: 2 + X + 2 sqrt(X) (Prolific's participant help, "Timed Out
    Submissions")."""
    if estimated_minutes <= 0:
        raise ValueError(f"estimated completion time {estimated_minutes}: must be positive")
    return 2 + estimated_minutes + 2 * math.sqrt(estimated_minutes)


def lease_seconds(config: Mapping[str, Any]) -> float:
    """How long a participant holds a list slot: ``LEASE_MINUTES`` when set, else Prolific's
    maximum time for ``ESTIMATED_MINUTES``."""
    if config.get("LEASE_MINUTES") is not None:
        return float(config["LEASE_MINUTES"]) * 60
    return prolific_max_minutes(float(config["ESTIMATED_MINUTES"])) * 60


class AssignmentError(Exception):
    """Base class: the participant cannot go on; ``page`` names the page that explains."""

    page = "error"


class NoStudy(AssignmentError):
    page = "no_study"


class StudyClosed(AssignmentError):
    page = "closed"


class StudyFull(AssignmentError):
    page = "full"


class LeaseExpired(AssignmentError):
    page = "expired"


# --- entry: the short hold, the per-address limit, the PID's SESSION_ID --------------------

class EntryLimited(AssignmentError):
    """Too many new places taken from this address in the window (HTTP 429)."""

    page = "busy"
    status = 429

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = max(60, math.ceil(retry_after))


class OtherSession(AssignmentError):
    """The PROLIFIC_PID has a session begun with another SESSION_ID (HTTP 403)."""

    page = "other_session"
    status = 403


@dataclass(frozen=True)
class EntryLimit:
    """At most ``max_places`` new places per address in ``window_seconds``."""

    max_places: int
    window_seconds: float


def entry_hold_seconds(config: Mapping[str, Any]) -> float:
    """How long a new participant holds a place before their first answer:
    ``ENTRY_HOLD_MINUTES``, never longer than the lease (None: the lease)."""
    lease = lease_seconds(config)
    minutes = config.get("ENTRY_HOLD_MINUTES")
    if minutes is None:
        return lease
    if float(minutes) <= 0:
        raise ValueError(f"ENTRY_HOLD_MINUTES {minutes}: must be positive (or None)")
    return min(float(minutes) * 60, lease)


def entry_limit(config: Mapping[str, Any]) -> EntryLimit | None:
    """``ENTRY_MAX_PER_ADDRESS`` new places per ``ENTRY_WINDOW_MINUTES``; None (or 0): no
    limit."""
    places = config.get("ENTRY_MAX_PER_ADDRESS")
    if not places:
        return None
    window = float(config.get("ENTRY_WINDOW_MINUTES") or 60) * 60
    if int(places) < 0 or window <= 0:
        raise ValueError("ENTRY_MAX_PER_ADDRESS and ENTRY_WINDOW_MINUTES must be positive")
    return EntryLimit(int(places), window)


def entry_source(address: str | None, secret: str | bytes) -> str:
    """The entry log's name for a client address: a keyed hash (the address is never
    stored) of the IPv4 address, or of the /64 network of an IPv6 one (one subscriber's
    allocation)."""
    key = address or "unknown"
    try:
        ip = ipaddress.ip_address(key)
    except ValueError:
        pass
    else:
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        key = str(ip) if ip.version == 4 else str(ipaddress.ip_network(f"{ip}/64", strict=False))
    secret = secret if isinstance(secret, bytes) else str(secret).encode()
    return hmac.new(secret, b"entry source " + key.encode(), hashlib.sha256).hexdigest()[:32]


#: At most this many refusals are logged per source and window (a flood logs no more).
MAX_LOGGED_REFUSALS = 100


def _entered_since(conn: Connection, source: str, since: float) -> tuple[int, float | None]:
    """The places ``source`` took after ``since``, and when the oldest of them was taken."""
    e = entry_log.c
    n, oldest = conn.execute(select(func.count(), func.min(e.at)).where(
        e.source == source, e.outcome == "entered", e.at > since)).one()
    return int(n), oldest


def _should_log_refusal(conn: Connection, outcome: str, source: str, pid: str | None,
                        study_param: str | None, session_param: str | None, since: float) -> bool:
    """A refusal is logged once per window: "rate_limited" once per source, the others once
    per link (PID, STUDY_ID, SESSION_ID); and at most MAX_LOGGED_REFUSALS per source."""
    e = entry_log.c
    recent = [e.source == source, e.at > since, e.outcome != "entered"]
    if conn.execute(select(func.count()).where(*recent)).scalar() >= MAX_LOGGED_REFUSALS:
        return False
    same = [e.outcome == outcome, e.at > since]
    if outcome == "rate_limited":
        same.append(e.source == source)
    else:
        same += [e.prolific_pid == pid, e.study_param == study_param,
                 e.session_param == session_param]
    return conn.execute(select(entry_log.c.id).where(*same).limit(1)).first() is None


def _log_entry(conn: Connection, outcome: str, source: str, pid: str | None,
               study_param: str | None, session_param: str | None, at: float) -> None:
    conn.execute(entry_log.insert().values(at=at, outcome=outcome, source=source,
                                           prolific_pid=pid, study_param=study_param,
                                           session_param=session_param))


def note_refusal(store: Store, outcome: str, source: str, pid: str | None,
                 study_param: str | None, session_param: str | None, window_seconds: float,
                 at: float | None = None) -> None:
    """Log a refused entry for the experimenter (``python -m server entry-log``), unless the
    same refusal is logged already in the window (checked first without the write lock,
    so a flood of refusals costs reads only)."""
    at = now() if at is None else at
    args = (outcome, source, pid, study_param, session_param)
    with store.read() as conn:
        if not _should_log_refusal(conn, *args, at - window_seconds):
            return
    with store.write() as conn:
        if _should_log_refusal(conn, *args, at - window_seconds):
            _log_entry(conn, *args, at)


class TrialError(ValueError):
    """A trial write that cannot be taken: ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


#: The refusal of an answer sent before consent and the device check (409).
BEFORE_TRIALS = "consent and the device check come before the trials"


def check_trial_index(index: int, n_trials: int) -> None:
    """TrialError (400) unless ``index`` is a trial of a study of ``n_trials``."""
    if index < 0 or index >= n_trials:
        raise TrialError(f"trial_index {index} is out of range 0..{n_trials - 1}")


def check_trial_order(index: int, panel_id: str, n_answered: int,
                      order: Sequence[str]) -> None:
    """TrialError (409) unless an answer to trial ``index`` may come after ``n_answered``
    answers (trials are answered in order) and names the panel ``order`` shows there."""
    if index > n_answered:
        raise TrialError(f"trial {index} comes after trial {n_answered}, which has no "
                         "answer yet: answer that first", 409)
    if order[index] != panel_id:
        raise TrialError(f"trial {index} shows panel {order[index]!r}, not "
                         f"{panel_id!r}: reload the page", 409)


@dataclass(frozen=True)
class ListFill:
    list_id: int
    target: int
    completed: int
    active: int

    @property
    def filled(self) -> int:
        return self.completed + self.active

    @property
    def has_room(self) -> bool:
        return self.filled < self.target


def list_fill(conn: Connection, at: float, exclude: int | None = None) -> list[ListFill]:
    """Every list's target, completed and active (unexpired lease) counts, aggregated in SQL.
    ``exclude``: a participant id left out of the counts."""
    if exclude is None:
        rows = conn.execute(_LIST_FILL, {"at": at})
    else:
        rows = conn.execute(_LIST_FILL_EXCLUDING, {"at": at, "exclude": exclude})
    return [ListFill(int(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]


def _list_fill_query(exclude: bool):
    p = participants
    join_on = p.c.list_id == lists.c.id
    if exclude:
        join_on = and_(join_on, p.c.id != bindparam("exclude"))
    # An excluded participant counts toward the target unless the study's rules say
    # replace_excluded (then their place goes to a new participant).
    replace = select(study.c.replace_excluded).where(study.c.id == 1).scalar_subquery()
    counted = and_(p.c.status == "completed",
                   or_(p.c.excluded.is_not(True), replace.is_not(True)))
    completed = func.coalesce(func.sum(case((counted, 1), else_=0)), 0)
    active = func.coalesce(func.sum(case(
        (and_(p.c.status == "active", p.c.lease_expires_at > bindparam("at")), 1),
        else_=0)), 0)
    return (select(lists.c.id, lists.c.target, completed, active)
            .select_from(lists.outerjoin(p, join_on))
            .group_by(lists.c.id, lists.c.target).order_by(lists.c.id))


# Built once (every entry runs one, holding the lists' lock).
_LIST_FILL = _list_fill_query(exclude=False)
_LIST_FILL_EXCLUDING = _list_fill_query(exclude=True)


def trial_order(conn: Connection, list_id: int, seed: int) -> list[str]:
    """Practice panels in design order, then the list's panels shuffled by ``seed``."""
    practice = conn.execute(_PRACTICE_PANELS).scalars().all()
    main = list(conn.execute(_LIST_PANELS, {"list_id": list_id}).scalars().all())
    random.Random(seed).shuffle(main)
    return list(practice) + main


_PRACTICE_PANELS = select(panels.c.id).where(panels.c.practice.is_(True)).order_by(
    panels.c.position)
_LIST_PANELS = select(list_panels.c.panel_id).where(
    list_panels.c.list_id == bindparam("list_id")).order_by(list_panels.c.position)


def start(store: Store, prolific_pid: str, study_param: str, session_param: str,
          lease_seconds: float, user_agent: str = "", at: float | None = None,
          rng: random.Random | None = None, *, hold_seconds: float | None = None,
          source: str | None = None, limit: EntryLimit | None = None) -> tuple[Row, bool]:
    """The participant for ``prolific_pid``: the existing session (entered again with its
    SESSION_ID), or a new one on the least filled list, holding its place for
    ``hold_seconds`` (default: the lease). Returns (row, created). Raises NoStudy,
    StudyClosed, StudyFull, OtherSession (another SESSION_ID) or EntryLimited (``source``,
    the client's :func:`entry_source`, took ``limit``'s places already); refusals and new
    places are logged under ``source`` (nothing is logged without one)."""
    rng = rng or _rng
    hold = lease_seconds if hold_seconds is None else min(hold_seconds, lease_seconds)
    if limit is not None and source:
        # A flood from one address is refused here, on a read, without the write lock.
        checked = now() if at is None else at
        with store.read() as conn:
            known = conn.execute(select(participants.c.id).where(
                participants.c.prolific_pid == prolific_pid)).first() is not None
            taken, oldest = _entered_since(conn, source, checked - limit.window_seconds)
        if not known and taken >= limit.max_places:
            note_refusal(store, "rate_limited", source, prolific_pid, study_param,
                         session_param, limit.window_seconds, checked)
            raise EntryLimited("too many new places from this address",
                               oldest + limit.window_seconds - checked)
    refused: AssignmentError | None = None
    with store.write() as conn:
        loaded = current_study(conn)
        if loaded is None:
            raise NoStudy("no study is loaded")
        store.lock_lists(conn)
        at = now() if at is None else at
        existing = conn.execute(select(participants)
                                .where(participants.c.prolific_pid == prolific_pid)).first()
        link = (prolific_pid, study_param, session_param)
        if existing is not None and existing.session_param == session_param:
            return existing, False
        if existing is not None:
            refused = OtherSession("this PROLIFIC_PID has a session with another SESSION_ID")
            window = limit.window_seconds if limit is not None else 3600.0
            if source and _should_log_refusal(conn, "other_session", source, *link,
                                              at - window):
                _log_entry(conn, "other_session", source, *link, at)
        elif loaded.status != "open":
            raise StudyClosed("the study is closed")
        else:
            # The count and the new place share this transaction and the lists' lock, so
            # racing workers never let an address past its limit.
            taken, oldest = (0, None)
            if limit is not None and source:
                taken, oldest = _entered_since(conn, source, at - limit.window_seconds)
            if limit is None or taken < limit.max_places:
                return _new_participant(conn, link, user_agent, hold, at, rng, source)
            refused = EntryLimited("too many new places from this address",
                                   oldest + limit.window_seconds - at)
            if _should_log_refusal(conn, "rate_limited", source, *link,
                                   at - limit.window_seconds):
                _log_entry(conn, "rate_limited", source, *link, at)
    # Refused: the log entry is committed, then the participant is told why.
    raise refused


def _new_participant(conn: Connection, link: tuple[str, str, str], user_agent: str,
                     hold_seconds: float, at: float, rng: random.Random,
                     source: str | None) -> tuple[Row, bool]:
    """A new participant for ``link`` (PID, STUDY_ID, SESSION_ID) on the least filled list
    (StudyFull if none has room), holding the place for ``hold_seconds``. Inside start's
    transaction, the lists locked."""
    prolific_pid, study_param, session_param = link
    fills = [f for f in list_fill(conn, at) if f.has_room]
    if not fills:
        raise StudyFull("every list is full")
    lowest = min(f.filled for f in fills)
    chosen = rng.choice([f for f in fills if f.filled == lowest])
    seed = rng.randrange(2**31)
    order = trial_order(conn, chosen.list_id, seed)
    # the new row comes back with the insert (one round trip fewer under the lock)
    row = conn.execute(participants.insert().values(
        token=secrets.token_urlsafe(32), prolific_pid=prolific_pid,
        study_param=study_param, session_param=session_param, list_id=chosen.list_id,
        status="active", trial_order=json.dumps(order), order_seed=seed,
        n_trials=len(order), n_answered=0, created_at=at,
        lease_expires_at=at + hold_seconds, user_agent=user_agent[:500])
        .returning(*participants.c)).one()
    if source:
        _log_entry(conn, "entered", source, *link, at)
    return row, True


# Built once: nearly every participant request runs one of these (a statement built per
# call costs more CPU than SQLite takes to answer it).
_BY_TOKEN = select(participants).where(participants.c.token == bindparam("token"))
_BY_TOKEN_FOR_UPDATE = _BY_TOKEN.with_for_update()


def participant_by_token(conn: Connection, token: str, for_update: bool = False) -> Row | None:
    query = _BY_TOKEN_FOR_UPDATE if for_update else _BY_TOKEN
    return conn.execute(query, {"token": token}).first()


def renew_lease(store: Store, conn: Connection, participant: Row, lease_seconds: float,
                at: float, hold_seconds: float | None = None) -> Row:
    """``participant`` with a valid lease: as is while it runs; renewed if it has passed and
    the list still has room (for ``hold_seconds`` when given and nothing is answered yet,
    else ``lease_seconds``); otherwise LeaseExpired. Call inside a write transaction."""
    if participant.status != "active" or participant.lease_expires_at > at:
        return participant
    store.lock_lists(conn)
    fill = next(f for f in list_fill(conn, at, exclude=participant.id)
                if f.list_id == participant.list_id)
    loaded = current_study(conn)
    if not fill.has_room or loaded is None or loaded.status != "open":
        raise LeaseExpired("the time for this session has run out and its place was taken")
    renewal = lease_seconds
    if hold_seconds is not None and participant.n_answered == 0:
        renewal = min(hold_seconds, lease_seconds)
    conn.execute(participants.update().where(participants.c.id == participant.id)
                 .values(lease_expires_at=at + renewal))
    return conn.execute(select(participants).where(participants.c.id == participant.id)).one()


@dataclass(frozen=True)
class Answer:
    """One trial's answer as the client sends it (validated by the API)."""

    trial_index: int
    panel_id: str
    answer_yes: bool
    object_text: str | None
    rt_answer_ms: int
    rt_text_ms: int | None
    shown_at: float | None
    client_answered_at: float | None
    # What the trial page recorded while the panel was shown (None: not sent).
    hidden_ms: int | None = None         # the page hidden (another tab, minimised)
    focus_losses: int | None = None      # the window's blur events
    pasted: bool | None = None           # text pasted into the answer box
    answer_input: str | None = None      # yes / no by: key | mouse | touch | pen


def stored_response(conn: Connection, participant_id: int, trial_index: int) -> dict[str, Any]:
    row = conn.execute(select(responses).where(and_(
        responses.c.participant_id == participant_id,
        responses.c.trial_index == trial_index))).one()
    return dict(row._mapping)


@dataclass(frozen=True)
class Recorded:
    """What became of an answer: the stored response, whether this request wrote it, and
    the participant's progress afterwards."""

    response: dict[str, Any]
    written: bool
    n_answered: int
    n_trials: int


def record_response(store: Store, token: str, answer: Answer, lease_seconds: float,
                    at: float | None = None) -> Recorded:
    """Store ``answer`` once, in one write transaction (the trial POST's whole work).

    A repeat of an answered trial returns the stored row unchanged. Raises TrialError
    (no such session, out of order, wrong panel, ended session) or LeaseExpired."""
    with store.write() as conn:
        p = participant_by_token(conn, token, for_update=True)
        if p is None:
            raise TrialError("no such session: start the study from its link", 403)
        index = answer.trial_index
        check_trial_index(index, p.n_trials)
        if index < p.n_answered:
            return Recorded(stored_response(conn, p.id, index), False, p.n_answered,
                            p.n_trials)
        if p.status != "active":
            raise TrialError(f"this session is {p.status}: no more answers are taken", 409)
        if p.consented_at is None or p.device_ok_at is None:
            raise TrialError(BEFORE_TRIALS, 409)
        check_trial_order(index, answer.panel_id, p.n_answered, json.loads(p.trial_order))
        at = now() if at is None else at
        p = renew_lease(store, conn, p, lease_seconds, at)
        n_practice = conn.execute(_PRACTICE_TRIALS).scalar() or 0
        # The stored row comes back with the insert (nothing, for a concurrent duplicate).
        row = conn.execute(_insert_response(store), dict(
            participant_id=p.id, trial_index=index, practice=index < n_practice,
            panel_id=answer.panel_id, answer_yes=answer.answer_yes,
            object_text=answer.object_text if answer.answer_yes else None,
            rt_answer_ms=answer.rt_answer_ms,
            rt_text_ms=answer.rt_text_ms if answer.answer_yes else None,
            shown_at=answer.shown_at, client_answered_at=answer.client_answered_at,
            hidden_ms=answer.hidden_ms, focus_losses=answer.focus_losses,
            pasted=answer.pasted, answer_input=answer.answer_input,
            answered_at=at)).first()
        written = row is not None
        n_answered = p.n_answered + written
        if written:
            values: dict[str, Any] = {"n_answered": n_answered}
            if p.n_answered == 0:
                # The first answer ends the short hold: the lease, counted from entry.
                values["lease_expires_at"] = max(p.lease_expires_at,
                                                 p.created_at + lease_seconds)
            if n_answered == p.n_trials:
                values.update(status="completed", completed_at=at)
            conn.execute(participants.update().where(participants.c.id == p.id).values(**values))
            if n_answered == p.n_trials:
                # the study's exclusion rules, once the last answer is in (server/exclusion.py)
                evaluate_participant(conn, p.id, at)
        stored = dict(row._mapping) if written else stored_response(conn, p.id, index)
        return Recorded(stored, written, n_answered, p.n_trials)


_PRACTICE_TRIALS = select(study.c.practice_trials)
_INSERT_RESPONSE: dict[str, Any] = {}


def _insert_response(store: Store):
    """The answer's INSERT ... ON CONFLICT DO NOTHING RETURNING the row, built once per
    dialect (values are bound at execution)."""
    statement = _INSERT_RESPONSE.get(store.dialect)
    if statement is None:
        statement = _insert(store)(responses).on_conflict_do_nothing(
            index_elements=["participant_id", "trial_index"]).returning(*responses.c)
        _INSERT_RESPONSE[store.dialect] = statement
    return statement


def _insert(store: Store):
    if store.dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert
