"""List assignment, leases and trial writes: the rules that keep the study's quotas.

- A new participant gets the list that is least filled (completed + active sessions whose
  lease has not passed), ties broken at random. The choice runs in a transaction that
  holds the lists: row locks on PostgreSQL, the write lock (``BEGIN IMMEDIATE``) on SQLite.
- The same PROLIFIC_PID always returns to the same session and list.
- A lease runs ``lease_seconds`` from the start. An expired session frees its slot; if the
  participant comes back, the lease is renewed only while the list still has room.
- So no list ever has more completed participants than its target: a session completes
  only while it holds a valid lease, and leases are only handed out below the target.
- Every response is written once: (participant, trial index) is unique, answers come in
  order, and a repeated POST returns the stored row and changes nothing.
"""

from __future__ import annotations

import json
import math
import random
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.engine import Connection, Row

from .store import Store, list_panels, lists, now, panels, participants, responses, study
from .study import current_study

__all__ = ["prolific_max_minutes", "lease_seconds", "AssignmentError", "NoStudy", "StudyClosed", "StudyFull", "LeaseExpired",
           "TrialError", "ListFill", "list_fill", "start", "trial_order", "renew_lease",
           "Recorded", "record_response", "stored_response", "participant_by_token", "Answer",
           "BEFORE_TRIALS", "check_trial_index", "check_trial_order"]

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
    p = participants
    join_on = p.c.list_id == lists.c.id
    if exclude is not None:
        join_on = and_(join_on, p.c.id != exclude)
    completed = func.coalesce(func.sum(case((p.c.status == "completed", 1), else_=0)), 0)
    active = func.coalesce(func.sum(case(
        (and_(p.c.status == "active", p.c.lease_expires_at > at), 1), else_=0)), 0)
    query = (select(lists.c.id, lists.c.target, completed, active)
             .select_from(lists.outerjoin(p, join_on))
             .group_by(lists.c.id, lists.c.target).order_by(lists.c.id))
    return [ListFill(int(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in conn.execute(query)]


def trial_order(conn: Connection, list_id: int, seed: int) -> list[str]:
    """Practice panels in design order, then the list's panels shuffled by ``seed``."""
    practice = conn.execute(select(panels.c.id).where(panels.c.practice.is_(True))
                            .order_by(panels.c.position)).scalars().all()
    main = conn.execute(select(list_panels.c.panel_id).where(list_panels.c.list_id == list_id)
                        .order_by(list_panels.c.position)).scalars().all()
    main = list(main)
    random.Random(seed).shuffle(main)
    return list(practice) + main


def start(store: Store, prolific_pid: str, study_param: str, session_param: str,
          lease_seconds: float, user_agent: str = "", at: float | None = None,
          rng: random.Random | None = None) -> tuple[Row, bool]:
    """The participant for ``prolific_pid``: the existing session, or a new one on the least
    filled list. Returns (row, created). Raises NoStudy, StudyClosed or StudyFull."""
    rng = rng or _rng
    with store.write() as conn:
        loaded = current_study(conn)
        if loaded is None:
            raise NoStudy("no study is loaded")
        store.lock_lists(conn)
        existing = conn.execute(select(participants)
                                .where(participants.c.prolific_pid == prolific_pid)).first()
        if existing is not None:
            return existing, False
        if loaded.status != "open":
            raise StudyClosed("the study is closed")
        at = now() if at is None else at
        fills = [f for f in list_fill(conn, at) if f.has_room]
        if not fills:
            raise StudyFull("every list is full")
        lowest = min(f.filled for f in fills)
        chosen = rng.choice([f for f in fills if f.filled == lowest])
        seed = rng.randrange(2**31)
        order = trial_order(conn, chosen.list_id, seed)
        result = conn.execute(participants.insert().values(
            token=secrets.token_urlsafe(32), prolific_pid=prolific_pid,
            study_param=study_param, session_param=session_param, list_id=chosen.list_id,
            status="active", trial_order=json.dumps(order), order_seed=seed,
            n_trials=len(order), n_answered=0, created_at=at,
            lease_expires_at=at + lease_seconds, user_agent=user_agent[:500]))
        row = conn.execute(select(participants).where(
            participants.c.id == result.inserted_primary_key[0])).one()
        return row, True


def participant_by_token(conn: Connection, token: str, for_update: bool = False) -> Row | None:
    query = select(participants).where(participants.c.token == token)
    if for_update:
        query = query.with_for_update()
    return conn.execute(query).first()


def renew_lease(store: Store, conn: Connection, participant: Row, lease_seconds: float,
                at: float) -> Row:
    """``participant`` with a valid lease: as is while it runs; renewed if it has passed and
    the list still has room; otherwise LeaseExpired. Call inside a write transaction."""
    if participant.status != "active" or participant.lease_expires_at > at:
        return participant
    store.lock_lists(conn)
    fill = next(f for f in list_fill(conn, at, exclude=participant.id)
                if f.list_id == participant.list_id)
    loaded = current_study(conn)
    if not fill.has_room or loaded is None or loaded.status != "open":
        raise LeaseExpired("the time for this session has run out and its place was taken")
    conn.execute(participants.update().where(participants.c.id == participant.id)
                 .values(lease_expires_at=at + lease_seconds))
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
        n_practice = conn.execute(select(study.c.practice_trials)).scalar() or 0
        dialect_insert = _insert(store)
        statement = dialect_insert(responses).values(
            participant_id=p.id, trial_index=index, practice=index < n_practice,
            panel_id=answer.panel_id, answer_yes=answer.answer_yes,
            object_text=answer.object_text if answer.answer_yes else None,
            rt_answer_ms=answer.rt_answer_ms,
            rt_text_ms=answer.rt_text_ms if answer.answer_yes else None,
            shown_at=answer.shown_at, client_answered_at=answer.client_answered_at,
            answered_at=at).on_conflict_do_nothing(
                index_elements=["participant_id", "trial_index"]).returning(responses.c.id)
        written = conn.execute(statement).first() is not None
        n_answered = p.n_answered + written
        if written:
            values: dict[str, Any] = {"n_answered": n_answered}
            if n_answered == p.n_trials:
                values.update(status="completed", completed_at=at)
            conn.execute(participants.update().where(participants.c.id == p.id).values(**values))
        return Recorded(stored_response(conn, p.id, index), written, n_answered, p.n_trials)


def _insert(store: Store):
    if store.dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert
