"""Applying the study's exclusion rules (analysis/exclusion.py) to its participants.

A participant is evaluated when they finish (in the transaction that stores their last
answer: :func:`evaluate_participant`) and every finished participant again at export
(:func:`evaluate_all`), so a verdict always reflects the stored answers and the rules
loaded with the study. The verdict lives in the participant's row: ``excluded`` (the
decision), ``exclusion_reasons`` (the failed rules' names, ``;``-joined), the catch,
practice and speed figures behind it. An experimenter's decision by hand
(:func:`set_manual`: exclude or reinstate, with a reason) overrides the rules and is
recorded in ``admin_actions``; re-evaluation keeps it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection

from analysis.exclusion import MANUAL, RuleError, Rules, Trial, evaluate, parse_rules

from .store import Store, admin_actions, now, panels, participants, responses
from .store import study as study_table

__all__ = ["study_rules", "participant_trials", "evaluate_participant", "evaluate_all",
           "set_manual", "decision", "MANUAL_ACTIONS"]

MANUAL_ACTIONS = ("exclude", "reinstate")

#: Rows fetched at a time when every participant is evaluated (as the export's).
YIELD_PER = 5000

_RULES = select(study_table.c.exclusion_rules).where(study_table.c.id == 1)
_TRIALS = (select(responses.c.participant_id, responses.c.practice, responses.c.answer_yes,
                  responses.c.rt_answer_ms, responses.c.object_text, responses.c.pasted,
                  panels.c.catch, panels.c.catch_expected, panels.c.expected)
           .select_from(responses.join(panels, responses.c.panel_id == panels.c.id)))
_ONE = _TRIALS.where(responses.c.participant_id == bindparam("pid"))


def study_rules(conn: Connection) -> Rules | None:
    """The loaded study's rules, or None (no study, or a study without rules)."""
    text = conn.execute(_RULES).scalar()
    if not text:
        return None
    try:
        return parse_rules(json.loads(text), "the study's exclusion rules")
    except (ValueError, RuleError):   # written by install_study after the same check
        return None


def _trial(row: Any) -> Trial:
    return Trial(practice=bool(row.practice), answer_yes=bool(row.answer_yes),
                 rt_answer_ms=float(row.rt_answer_ms), object_text=row.object_text,
                 pasted=row.pasted, catch=bool(row.catch), catch_expected=row.catch_expected,
                 expected=row.expected)


def participant_trials(conn: Connection, participant_id: int) -> list[Trial]:
    return [_trial(r) for r in conn.execute(_ONE, {"pid": participant_id})]


def decision(rules_failed: bool, manual: str | None) -> bool:
    """Excluded or not: an experimenter's decision, else the rules'."""
    if manual == "exclude":
        return True
    if manual == "reinstate":
        return False
    return rules_failed


def _values(rules: Rules | None, trials: Iterable[Trial], manual: str | None,
            at: float) -> dict[str, Any]:
    verdict = evaluate(rules or Rules(), list(trials))
    return dict(excluded=decision(verdict.excluded, manual),
                exclusion_reasons=verdict.reason_names,
                catch_passed=verdict.catch_passed, catch_total=verdict.catch_total,
                practice_correct=verdict.practice_correct,
                practice_scored=verdict.practice_scored,
                median_rt_ms=verdict.median_rt_ms, evaluated_at=at)


def evaluate_participant(conn: Connection, participant_id: int, at: float | None = None,
                         rules: Rules | None = None) -> dict[str, Any]:
    """Evaluate one participant now (inside a write transaction) and store the verdict;
    returns the values written. ``rules``: the study's (read from the store if None)."""
    rules = rules if rules is not None else study_rules(conn)
    manual = conn.execute(select(participants.c.manual_exclusion)
                          .where(participants.c.id == participant_id)).scalar()
    values = _values(rules, participant_trials(conn, participant_id), manual,
                     now() if at is None else at)
    conn.execute(participants.update().where(participants.c.id == participant_id)
                 .values(**values))
    return values


def evaluate_all(store: Store, at: float | None = None) -> int:
    """Evaluate every finished participant again (one write transaction); returns how
    many. Unfinished participants keep ``excluded`` NULL. The answers are read through a
    streaming cursor in participant order (:data:`YIELD_PER` rows at a time), so memory
    holds one participant's trials and one small verdict per participant."""
    at = now() if at is None else at
    stream = {"stream_results": True, "yield_per": YIELD_PER}
    with store.write() as conn:
        rules = study_rules(conn)
        query = (_TRIALS.add_columns(participants.c.manual_exclusion)
                 .join(participants, responses.c.participant_id == participants.c.id)
                 .where(participants.c.status == "completed")
                 .order_by(responses.c.participant_id, responses.c.trial_index))
        batch: list[dict[str, Any]] = []
        current, manual, trials = None, None, []
        result = conn.execute(query.execution_options(**stream))
        try:
            for row in result:
                if row.participant_id != current:
                    if current is not None:
                        batch.append({"pid": current, **_values(rules, trials, manual, at)})
                    current, manual, trials = row.participant_id, row.manual_exclusion, []
                trials.append(_trial(row))
        finally:
            result.close()
        if current is not None:
            batch.append({"pid": current, **_values(rules, trials, manual, at)})
        if batch:
            conn.execute(participants.update().where(participants.c.id == bindparam("pid")),
                         batch)
    return len(batch)


def set_manual(conn: Connection, participant_id: int, action: str | None, reason: str,
               admin: str, at: float | None = None) -> dict[str, Any]:
    """Exclude or reinstate a participant by hand (``action`` None: back to the rules),
    with the experimenter's ``reason``, recorded in ``admin_actions``. Inside a write
    transaction; LookupError if there is no such participant."""
    if action not in (*MANUAL_ACTIONS, None):
        raise ValueError(f"action must be one of {', '.join(MANUAL_ACTIONS)} or None")
    at = now() if at is None else at
    row = conn.execute(select(participants.c.exclusion_reasons, participants.c.evaluated_at)
                       .where(participants.c.id == participant_id)).first()
    if row is None:
        raise LookupError(f"no participant {participant_id}")
    # back to the rules for someone not evaluated yet (unfinished): no verdict at all
    excluded = None if action is None and row.evaluated_at is None else \
        decision(bool(row.exclusion_reasons), action)
    conn.execute(participants.update().where(participants.c.id == participant_id).values(
        manual_exclusion=action, manual_reason=reason if action else None,
        excluded=excluded))
    conn.execute(admin_actions.insert().values(
        admin=admin, action=action or "rules decide", target=str(participant_id),
        detail=reason, at=at))
    return {"excluded": excluded, "manual_exclusion": action}


def reasons_of(exclusion_reasons: str | None, manual: str | None) -> list[str]:
    """The reasons a participant is excluded for: the failed rules (unless reinstated by
    hand), and ``manual`` for an exclusion by hand."""
    if manual == "reinstate":
        return []
    names = [r for r in (exclusion_reasons or "").split(";") if r]
    return names + [MANUAL] if manual == "exclude" else names


__all__ += ["reasons_of"]
