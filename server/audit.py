"""The store audit after simulated participants: does the store hold exactly what the
server acknowledged?

:func:`check_store` compares a store (a :class:`server.store.Store` or a DATABASE_URL) with
the (PROLIFIC_PID, trial_index) pairs a run of :mod:`server.simulate` saw acknowledged:
every acknowledged answer stored exactly once, nothing stored that was neither
acknowledged nor in flight, no list with more completed participants than its target, and
every participant's counts consistent with its rows. The simulator's ``--check-store``,
the fault tests and ``benchmarks/server_load.py`` use it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from .store import Store, lists, participants, responses

__all__ = ["StoreCheck", "check_store"]


@dataclass
class StoreCheck:
    """What the store holds compared with what the server acknowledged."""

    stored: int                                   # response rows
    acknowledged: int                             # distinct acknowledged answers
    missing: list[tuple[str, int]]                # acknowledged, not stored: lost
    extra: list[tuple[str, int]]                  # stored, never acknowledged nor in flight
    stored_unconfirmed: int                       # stored among the unconfirmed ones
    duplicate_rows: list[tuple[str, int, int]]    # (pid, trial_index, rows) with rows > 1
    lists_over_target: list[tuple[int, int, int]]  # (list, completed, target)
    inconsistent: list[str]                       # participants whose counts disagree
    completed: int                                # completed participants

    @property
    def problems(self) -> list[str]:
        out = []
        if self.missing:
            out.append(f"{len(self.missing)} acknowledged answers are not stored, e.g. "
                       f"{self.missing[:3]}")
        if self.extra:
            out.append(f"{len(self.extra)} stored answers were never acknowledged, e.g. "
                       f"{self.extra[:3]}")
        if self.duplicate_rows:
            out.append(f"{len(self.duplicate_rows)} (participant, trial) pairs have more "
                       f"than one row, e.g. {self.duplicate_rows[:3]}")
        if self.lists_over_target:
            out.append(f"lists over their target (list, completed, target): "
                       f"{self.lists_over_target}")
        out.extend(self.inconsistent[:10])
        return out

    @property
    def ok(self) -> bool:
        return not self.problems


def check_store(database: Any, acknowledged: set[tuple[str, int]],
                unconfirmed: set[tuple[str, int]] = frozenset()) -> StoreCheck:
    """Compare the store (a ``server.store.Store`` or a DATABASE_URL) with the answers a
    simulation saw acknowledged: every acknowledged (PROLIFIC_PID, trial_index) stored
    exactly once, nothing else stored but answers whose acknowledgement was lost in flight
    (``unconfirmed``), no list with more completed participants than its target, every
    participant's ``n_answered`` equal to its rows, and completed ones with every trial."""
    store = database if isinstance(database, Store) else Store(str(database))
    try:
        with store.read() as conn:
            rows = conn.execute(
                select(participants.c.prolific_pid, responses.c.trial_index, func.count())
                .select_from(responses.join(participants,
                                            responses.c.participant_id == participants.c.id))
                .group_by(participants.c.prolific_pid, responses.c.trial_index)).all()
            people = conn.execute(select(
                participants.c.prolific_pid, participants.c.status, participants.c.list_id,
                participants.c.n_answered, participants.c.n_trials)).all()
            targets = dict(conn.execute(select(lists.c.id, lists.c.target)).all())
    finally:
        if store is not database:
            store.dispose()
    stored = {(pid, int(index)): int(n) for pid, index, n in rows}
    per_person = Counter(pid for pid, _ in stored)
    completed = Counter(p.list_id for p in people if p.status == "completed")
    inconsistent = []
    for p in people:
        if per_person[p.prolific_pid] != p.n_answered:
            inconsistent.append(f"{p.prolific_pid}: n_answered {p.n_answered} but "
                                f"{per_person[p.prolific_pid]} distinct trials stored")
        if p.status == "completed" and p.n_answered != p.n_trials:
            inconsistent.append(f"{p.prolific_pid}: completed with {p.n_answered} of "
                                f"{p.n_trials} trials")
    return StoreCheck(
        stored=sum(stored.values()), acknowledged=len(acknowledged),
        missing=sorted(acknowledged - stored.keys()),
        extra=sorted(stored.keys() - acknowledged - set(unconfirmed)),
        stored_unconfirmed=len(stored.keys() & (set(unconfirmed) - acknowledged)),
        duplicate_rows=sorted((pid, index, n) for (pid, index), n in stored.items() if n > 1),
        lists_over_target=sorted((list_id, n, targets[list_id])
                                 for list_id, n in completed.items() if n > targets[list_id]),
        inconsistent=inconsistent, completed=sum(completed.values()))
