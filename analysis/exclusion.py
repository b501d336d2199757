"""Pre-registered exclusion rules: which participants' ratings are left out, and why.

A rules file (TOML, written before the study runs; docs/exclusion.md) names the rules in
force, each a table under ``[rules]``; a rule that is absent is not applied::

    format = "selectivity-exclusion/1"
    replace_excluded = false          # true: an excluded participant frees their place
    reject_for = ["catch"]            # which rules also reject the submission on Prolific

    [rules.catch]                     # failed more than 1 catch trial
    max_failed = 1
    [rules.fast]                      # median answer time under 800 ms
    min_median_ms = 800
    [rules.same_answer]               # the same answer (yes or no) on every panel
    [rules.pasted]                    # text pasted into the answer box on more than 2 panels
    max_panels = 2
    [rules.repeated_text]             # one identical text on more than 20 panels
    max_panels = 20
    [rules.practice]                  # fewer than 4 practice panels answered as expected
    min_correct = 4

Each rule looks at one participant's answered trials (:class:`Trial`), the practice
trials apart from the rest: ``catch`` counts catch trials answered otherwise than
expected (a yes to a positive catch passes: the text is not checked); ``fast`` takes the
median ``rt_answer_ms`` of the non-practice trials; ``same_answer`` needs at least two
non-practice trials, all yes or all no; ``pasted`` counts the non-practice trials whose
answer box had text pasted in; ``repeated_text`` counts the non-practice trials whose
text (case, spaces and punctuation at the ends ignored) is the participant's most
frequent one; ``practice`` counts practice trials answered as their ``expected``
answer (practice trials without one are not scored).

This module is pure: no files but the rules file, no store. The server evaluates each
participant when they finish and again at export (``server/exclusion.py``); Table 2
reads the verdicts from ``participants.csv`` (``analysis/table2.py``).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "RULES", "RuleError", "Rules", "Trial", "Verdict", "read_rules",
           "parse_rules", "evaluate", "practice_score", "normalise_text", "MANUAL"]

FORMAT = "selectivity-exclusion/1"

#: rule name -> {option: (type, minimum)}; a rule's table may be empty only where it has
#: no options.
RULES: dict[str, dict[str, tuple[type, float]]] = {
    "catch": {"max_failed": (int, 0)},
    "fast": {"min_median_ms": (float, 0)},
    "same_answer": {},
    "pasted": {"max_panels": (int, 0)},
    "repeated_text": {"max_panels": (int, 1)},
    "practice": {"min_correct": (int, 0)},
}

#: The reason recorded for an experimenter's exclusion by hand.
MANUAL = "manual"

TOP_KEYS = ("format", "replace_excluded", "reject_for", "rules")


class RuleError(ValueError):
    """A rules file or object is not valid; the message says where and how to fix it."""


@dataclass(frozen=True)
class Rules:
    """The rules in force (``rules``: rule name -> its options), and what follows from an
    exclusion: ``replace_excluded`` (the list takes a new participant in their place) and
    ``reject_for`` (the rules whose failure rejects the submission on Prolific; any
    other exclusion is approved and paid, and only left out of the analysis)."""

    rules: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    replace_excluded: bool = False
    reject_for: tuple[str, ...] = ("catch",)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "replace_excluded": self.replace_excluded,
                "reject_for": list(self.reject_for),
                "rules": {name: dict(options) for name, options in self.rules.items()}}

    def describe(self) -> list[str]:
        """One line per rule in force, in words."""
        out = []
        for name, opts in self.rules.items():
            out.append(f"{name}: " + {
                "catch": lambda o: f"more than {o['max_failed']} catch trials failed",
                "fast": lambda o: f"median answer time under {o['min_median_ms']:g} ms",
                "same_answer": lambda o: "the same answer on every panel",
                "pasted": lambda o: f"text pasted on more than {o['max_panels']} panels",
                "repeated_text": lambda o: f"one identical text on more than "
                                           f"{o['max_panels']} panels",
                "practice": lambda o: f"fewer than {o['min_correct']} practice panels "
                                      "answered as expected",
            }[name](opts))
        return out


@dataclass(frozen=True)
class Trial:
    """One answered trial, as the rules see it."""

    practice: bool
    answer_yes: bool
    rt_answer_ms: float
    object_text: str | None = None
    pasted: bool | None = None
    catch: bool = False
    catch_expected: str | None = None   # catch trials: "yes" | "no"
    expected: str | None = None         # practice trials: "yes" | "no" | None (unscored)


@dataclass(frozen=True)
class Verdict:
    """What the rules found for one participant: ``reasons`` (rule name -> what failed,
    in words), and the figures behind them."""

    reasons: Mapping[str, str]
    catch_passed: int
    catch_total: int
    practice_correct: int
    practice_scored: int
    median_rt_ms: float | None

    @property
    def excluded(self) -> bool:
        return bool(self.reasons)

    @property
    def reason_names(self) -> str:
        """The failed rules' names joined by ``;`` (empty when none failed)."""
        return ";".join(self.reasons)


def _fail(where: str, message: str) -> RuleError:
    return RuleError(f"{where}: {message}")


def parse_rules(data: Mapping[str, Any], where: str = "exclusion rules") -> Rules:
    """:class:`Rules` from the TOML's (or study.json's) object; RuleError names the key
    at fault and what it should be."""
    if not isinstance(data, Mapping):
        raise _fail(where, "must be a table (TOML) or object (JSON)")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise _fail(where, f"unknown key(s) {', '.join(unknown)}; allowed: "
                    f"{', '.join(TOP_KEYS)}")
    fmt = data.get("format", FORMAT)
    if fmt != FORMAT:
        raise _fail(where, f"format is {fmt!r}, expected {FORMAT!r}")
    replace = data.get("replace_excluded", False)
    if not isinstance(replace, bool):
        raise _fail(where, "replace_excluded must be true or false")
    rules_data = data.get("rules", {})
    if not isinstance(rules_data, Mapping):
        raise _fail(where, "[rules] must be a table of rules, e.g. [rules.catch]")
    rules: dict[str, dict[str, float]] = {}
    for name, opts in rules_data.items():
        if name not in RULES:
            raise _fail(where, f"unknown rule {name!r}; the rules are "
                        f"{', '.join(RULES)} (docs/exclusion.md)")
        if not isinstance(opts, Mapping):
            raise _fail(where, f"[rules.{name}] must be a table")
        wanted = RULES[name]
        extra = sorted(set(opts) - set(wanted))
        if extra:
            raise _fail(where, f"[rules.{name}]: unknown option(s) {', '.join(extra)}"
                        + (f"; it takes {', '.join(wanted)}" if wanted else
                           "; it takes none"))
        parsed: dict[str, float] = {}
        for key, (kind, lowest) in wanted.items():
            if key not in opts:
                raise _fail(where, f"[rules.{name}] needs {key} (a number of {lowest:g} or "
                            "more)")
            value = opts[key]
            ok = isinstance(value, int | float) and not isinstance(value, bool) and \
                math.isfinite(value) and value >= lowest and \
                (kind is float or float(value).is_integer())
            if not ok:
                what = "a whole number" if kind is int else "a number"
                raise _fail(where, f"[rules.{name}] {key} = {value!r}: must be {what} of "
                            f"{lowest:g} or more")
            parsed[key] = int(value) if kind is int else float(value)
        rules[name] = parsed
    reject = data.get("reject_for", ["catch"])
    if not (isinstance(reject, list) and all(isinstance(r, str) for r in reject)):
        raise _fail(where, "reject_for must be a list of rule names, e.g. [\"catch\"]")
    bad = [r for r in reject if r not in RULES and r != MANUAL]
    if bad:
        raise _fail(where, f"reject_for names unknown rule(s) {', '.join(bad)}; the rules "
                    f"are {', '.join(RULES)} and {MANUAL!r}")
    return Rules(rules=rules, replace_excluded=replace, reject_for=tuple(reject))


def read_rules(path: str | Path) -> Rules:
    """The rules of a TOML file (or a JSON file, ending ``.json``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RuleError(f"{path}: no such rules file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"{path}: cannot read it ({exc})") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise RuleError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}"
                        f" ({exc})") from None
    return parse_rules(data, str(path))


_EDGES = re.compile(r"^[\W_]+|[\W_]+$")
_SPACES = re.compile(r"\s+")


def normalise_text(text: str | None) -> str:
    """A free-text answer as the repeated-text rule compares it: case folded, runs of
    blanks one space, punctuation at the ends dropped (empty for no text)."""
    if not text:
        return ""
    return _EDGES.sub("", _SPACES.sub(" ", text.casefold().strip()))


def practice_score(trials: Iterable[Trial]) -> tuple[int, int]:
    """(practice trials answered as expected, practice trials with an expected answer)."""
    scored = [t for t in trials if t.practice and t.expected in ("yes", "no")]
    return sum(t.answer_yes == (t.expected == "yes") for t in scored), len(scored)


def evaluate(rules: Rules, trials: Sequence[Trial]) -> Verdict:
    """Apply ``rules`` to one participant's answered ``trials`` (any order)."""
    main = [t for t in trials if not t.practice]
    catches = [t for t in main if t.catch and t.catch_expected in ("yes", "no")]
    passed = sum(t.answer_yes == (t.catch_expected == "yes") for t in catches)
    correct, scored = practice_score(trials)
    median = statistics.median(t.rt_answer_ms for t in main) if main else None
    reasons: dict[str, str] = {}
    for name, opts in rules.rules.items():
        if name == "catch":
            failed = len(catches) - passed
            if failed > opts["max_failed"]:
                reasons[name] = f"failed {failed} of {len(catches)} catch trials"
        elif name == "fast":
            if median is not None and median < opts["min_median_ms"]:
                reasons[name] = f"median answer time {median:.0f} ms"
        elif name == "same_answer":
            answers = {t.answer_yes for t in main}
            if len(main) >= 2 and len(answers) == 1:
                reasons[name] = f"{'yes' if answers.pop() else 'no'} on all {len(main)} panels"
        elif name == "pasted":
            n = sum(bool(t.pasted) for t in main)
            if n > opts["max_panels"]:
                reasons[name] = f"text pasted on {n} panels"
        elif name == "repeated_text":
            texts = Counter(normalise_text(t.object_text) for t in main if t.answer_yes)
            texts.pop("", None)
            if texts:
                text, n = texts.most_common(1)[0]
                if n > opts["max_panels"]:
                    reasons[name] = f"{text!r} on {n} panels"
        elif name == "practice":
            if correct < opts["min_correct"]:
                reasons[name] = f"{correct} of {scored} practice panels as expected"
    return Verdict(reasons=reasons, catch_passed=passed, catch_total=len(catches),
                   practice_correct=correct, practice_scored=scored, median_rt_ms=median)
