"""Table 2: the human ratings joined with the selectivity measures (docs/table2.md).

Per layer:

- % yes responses, over judgments (practice trials never count);
- % of units with at least ``threshold`` (80%) yes (more than ``threshold`` with
  ``strict=True``, ``--strict-threshold``);
- among those units, how far the humans agree on the object, how far their object matches
  the unit's top class (TCS), and how far it matches its CCMAS class.

The first two columns are shares, with their n and the binomial standard error
``sqrt(p(1-p)/n)`` (the paper's ±) and a Wilson 95% interval. The last three are computed
one of two ways (``agreement``, ``--agreement``), from each unit's coded yes answers (free
text coded to WordNet senses by :mod:`analysis.coding`; uncoded answers are counted, and
left out of both the numerators and the denominators):

- ``"share"`` (the default, as the paper's figures require): per unit, the share of its
  coded answers that agree with the other humans (the answers that ``Coder.agree`` with the
  unit's modal answer, when at least two do), that match its top class, that match its
  CCMAS class; the column is the mean of those shares over the units, ± the standard error
  of that mean (sample SD, ddof=1, over sqrt(n units)), with a t 95% interval;
- ``"unit"``: per unit yes or no (the humans agree when at least two answers are coded and
  one agrees with every other; the object matches a class when more than half of the coded
  answers match it), and the column is the share of such units, ± the binomial SE.

Beyond the paper: Fleiss' kappa on yes/no per layer, a mixed-effects logistic regression
of yes on layer (random intercepts for participant and panel), and per layer the relation
between a unit's share of yes and each selectivity measure (Spearman's rho and a logistic
fit), with a figure. Layers in the network's order (:func:`layer_order`).

Panels of several methods (``ppgn``, ``fourier``, ``natural``, ...; docs/table2.md,
"Methods"): the export names no method, so it comes from the study's design (``--study
study.json`` or ``--panels`` manifests, :func:`read_methods`). With more than one, every
figure is given per layer x method (methods in :func:`method_order`), each table gains a
``method`` column, and the mixed model adds the method and a Wald test of its effect
(:func:`method_test`). With one method the output is as before methods.

Command line (from the repository root)::

    python analysis/table2.py --responses responses.csv --selectivity RESULTS.csv \\
        [--codes codes.csv] [--classes imagenet|digits|FILE] [--threshold 0.8] \\
        [--strict-threshold] [--agreement share|unit] [--participants participants.csv]
        [--keep-excluded] [--study study.json | --panels a.csv b.csv ...] --out DIR

Participants the study excluded (``participants.csv``'s ``excluded``: its pre-registered
rules or an experimenter, docs/exclusion.md) are left out unless ``--keep-excluded``; how
many each rule removed goes into ``table2.md`` and ``exclusions.csv``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

__all__ = [
    "RESPONSE_COLUMNS", "TABLE2_COLUMNS", "UNIT_COLUMNS", "AGREEMENT_MODES",
    "INTERPRETABILITY_MEASURES", "Table2Error", "proportion", "mean_share", "read_responses",
    "read_participants", "select_judgments", "drop_excluded", "format_exclusions",
    "unit_ratings", "unit_objects", "layer_order",
    "in_layer_order", "table2", "format_markdown", "fleiss_kappa", "kappa_by_layer",
    "mixed_model", "interpretability", "plot_interpretability", "main",
    "METHODS", "DEFAULT_METHOD", "method_order", "read_methods", "with_methods",
    "has_methods", "strata", "method_test",
]

log = logging.getLogger("analysis.table2")

#: The panel methods (how a unit's panel was made), in the order every table shows them;
#: any other method follows, alphabetically (:func:`method_order`): ``ppgn``, the paper's
#: activation maximization with a Plug-and-Play Generative Network; ``fourier``, activation
#: maximization in a Fourier basis; ``natural``, the unit's most activating photos.
METHODS = ("ppgn", "fourier", "natural")

#: The method of a panel that names none (older manifests, study files and exports).
DEFAULT_METHOD = "ppgn"

#: The columns of the server's ``responses.csv`` that Table 2 reads.
RESPONSE_COLUMNS = ("participant_id", "trial_index", "practice", "panel_id", "layer", "unit",
                    "answer_yes", "object_text")

_STATS = ("", "_se", "_ci_low", "_ci_high")
TABLE2_COLUMNS = (
    ["layer", "n_judgments"] + [f"pct_yes{s}" for s in _STATS]
    + ["n_units"] + [f"pct_units_yes80{s}" for s in _STATS] + ["n_units_yes80"]
    + [f"pct_agree_humans{s}" for s in _STATS]
    + [f"pct_match_top_class{s}" for s in _STATS]
    + [f"pct_match_ccmas_class{s}" for s in _STATS]
    + ["n_answers_yes80", "n_answers_uncoded"]
    # the n of each of the last three columns: the units it averages (share) or counts
    # (unit; then n_units_yes80 for all three), and how they were scored
    + ["n_units_agree_humans", "n_units_match_top_class", "n_units_match_ccmas_class",
       "agreement"]
)

#: How the last three columns are computed (:func:`table2`'s ``agreement``):
#: ``share``, the mean over units of each unit's share of coded answers (the paper's);
#: ``unit``, the share of units scored yes or no.
AGREEMENT_MODES = ("share", "unit")

#: The last three columns: the table's name and the per-unit detail's stem.
_OBJECT_COLUMNS = (("pct_agree_humans", "agree_humans"),
                   ("pct_match_top_class", "match_top_class"),
                   ("pct_match_ccmas_class", "match_ccmas_class"))

#: Columns of :func:`unit_objects` (and, after layer, unit, n, n_yes, yes_share and yes80,
#: of ``table2_units.csv``): every unit's counts, per-unit shares and yes/no scores.
UNIT_COLUMNS = ("layer", "unit", "n_answers", "n_uncoded", "n_coded", "modal_answer",
                "n_agree_humans", "n_match_top_class", "n_match_ccmas_class",
                "share_agree_humans", "share_match_top_class", "share_match_ccmas_class",
                "humans_agree", "match_top_class", "match_ccmas_class")

#: Selectivity measures related to interpretability (those present in the results).
INTERPRETABILITY_MEASURES = ("ccmas", "tcs", "precision_100", "precision_60", "ccmas_2",
                             "top_class_max_informedness", "top_class_average_precision")
#: The figure's measures (the paper's three).
FIGURE_MEASURES = ("tcs", "precision_100", "ccmas")

TRUE = {"true", "1", "yes", "t", "y"}
FALSE = {"false", "0", "no", "f", "n", ""}


class Table2Error(ValueError):
    """An input cannot be used (the message names the file and the problem)."""


class CoderLike(Protocol):
    """What Table 2 needs of :class:`analysis.coding.Coder`."""

    def code(self, text: str) -> Any: ...
    def agree(self, a: Any, b: Any) -> bool: ...
    def matches(self, code: Any, class_senses: Iterable[int]) -> bool: ...


def method_order(methods: Iterable[Any]) -> list[str]:
    """The distinct ``methods`` in table order: those of :data:`METHODS` in its order, then
    any other alphabetically."""
    distinct = {str(m) for m in methods}
    return [m for m in METHODS if m in distinct] + sorted(distinct - set(METHODS))


# -- statistics ----------------------------------------------------------------------------

def proportion(count: int, n: int) -> dict[str, float]:
    """``count`` of ``n`` as a percentage with the binomial standard error sqrt(p(1-p)/n)
    and the Wilson 95% interval (all in 0-100; NaN when n is 0)."""
    if n <= 0:
        return {"": math.nan, "_se": math.nan, "_ci_low": math.nan, "_ci_high": math.nan}
    from statsmodels.stats.proportion import proportion_confint

    p = count / n
    low, high = proportion_confint(count, n, alpha=0.05, method="wilson")
    return {"": 100 * p, "_se": 100 * math.sqrt(p * (1 - p) / n), "_ci_low": 100 * low,
            "_ci_high": 100 * high}


def mean_share(shares: Iterable[float]) -> dict[str, float]:
    """The mean of per-unit shares (each in [0, 1]) as a percentage, with the standard error
    of that mean, ``SD / sqrt(n)`` where SD is the sample standard deviation (ddof=1), and
    the t 95% interval (n - 1 degrees of freedom) clipped to 0-100. All in 0-100; NaN when
    there is no share, and SE and interval NaN when there is one (no spread to estimate).
    The last three columns of Table 2 under ``agreement="share"`` (docs/table2.md)."""
    values = np.asarray(list(shares), dtype=float)
    if values.ndim != 1 or not np.all(np.isfinite(values)) or (
            values.size and (values.min() < 0 or values.max() > 1)):
        raise ValueError("shares must be finite numbers in [0, 1]")
    n = values.size
    if n == 0:
        return {"": math.nan, "_se": math.nan, "_ci_low": math.nan, "_ci_high": math.nan}
    mean = float(values.mean())
    if n == 1:
        return {"": 100 * mean, "_se": math.nan, "_ci_low": math.nan, "_ci_high": math.nan}
    from scipy.stats import t

    se = float(values.std(ddof=1)) / math.sqrt(n)
    half = float(t.ppf(0.975, n - 1)) * se
    return {"": 100 * mean, "_se": 100 * se, "_ci_low": 100 * max(0.0, mean - half),
            "_ci_high": 100 * min(1.0, mean + half)}


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa for ``counts`` (subjects x categories), allowing a different number of
    raters per subject (subjects with fewer than two raters are left out). Equal numbers of
    raters give Fleiss' (1971) statistic exactly."""
    counts = np.asarray(counts, dtype=float)
    n = counts.sum(axis=1)
    counts, n = counts[n >= 2], n[n >= 2]
    if len(counts) == 0:
        return math.nan
    p_i = ((counts ** 2).sum(axis=1) - n) / (n * (n - 1))
    p_j = counts.sum(axis=0) / n.sum()
    p_e = float((p_j ** 2).sum())
    if p_e == 1.0:
        return math.nan      # every rating the same category: kappa undefined
    return float((p_i.mean() - p_e) / (1 - p_e))


# -- input ---------------------------------------------------------------------------------

def _bools(series: pd.Series, column: str, path: str) -> pd.Series:
    if series.dtype == bool:
        return series
    text = series.astype(str).str.strip().str.lower()
    bad = ~text.isin(TRUE | FALSE) | series.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise Table2Error(f"{path}: column {column!r}, data row {row + 1}: "
                          f"{series.iloc[row]!r} is not true/false")
    return text.isin(TRUE)


def read_responses(path: str | os.PathLike) -> pd.DataFrame:
    """The server's ``responses.csv`` (one row per trial), checked: the columns of
    :data:`RESPONSE_COLUMNS`, booleans, integer units. Extra columns are kept; where there
    is a ``catch`` column (catch trials, which are no units: no layer or unit) it is read
    as booleans."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise Table2Error(f"{path}: no such file (expected the server's responses.csv)")
    try:
        df = pd.read_csv(path, dtype={"layer": str, "panel_id": str, "object_text": str,
                                      "participant_id": str}, keep_default_na=False,
                         na_values={"unit": [""], "trial_index": [""]})
    except pd.errors.EmptyDataError:
        raise Table2Error(f"{path}: the file is empty (expected a header row and one row "
                          "per trial)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise Table2Error(f"{path}: not a readable CSV file ({exc})") from None
    missing = [c for c in RESPONSE_COLUMNS if c not in df.columns]
    if missing:
        raise Table2Error(f"{path}: missing column(s) {', '.join(missing)} (found: "
                          f"{', '.join(df.columns) or 'none'}); export with "
                          "python -m server export")
    if len(df) == 0:
        raise Table2Error(f"{path}: holds no responses")
    df["practice"] = _bools(df["practice"], "practice", path)
    df["answer_yes"] = _bools(df["answer_yes"], "answer_yes", path)
    main = ~df["practice"]
    if "catch" in df.columns:
        df["catch"] = _bools(df["catch"], "catch", path)
        main &= ~df["catch"]
    for column in ("unit", "trial_index"):
        values = pd.to_numeric(df[column], errors="coerce")
        bad = (values.isna() | (values != values.round())) & (main | (column == "trial_index"))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise Table2Error(f"{path}: column {column!r}, data row {row + 1}: "
                              f"{df[column].iloc[row]!r} is not an integer")
        df[column] = values.astype("Int64")
    df.attrs["source"] = path
    return df


def read_participants(path: str | os.PathLike) -> pd.DataFrame:
    """The server's ``participants.csv``: at least ``participant_id`` and ``status``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise Table2Error(f"{path}: no such file (expected the server's participants.csv)")
    df = pd.read_csv(path, dtype={"participant_id": str, "status": str})
    missing = [c for c in ("participant_id", "status") if c not in df.columns]
    if missing:
        raise Table2Error(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def select_judgments(responses: pd.DataFrame, participants: pd.DataFrame | None = None,
                     include_incomplete: bool = False) -> pd.DataFrame:
    """The main (non-practice, non-catch) trials of complete participants (all with
    ``include_incomplete``). Completeness comes from ``participants`` (status
    "completed"), else a ``participant_status`` column, else it is inferred: a participant
    is complete when they rated every panel their list holds (``list_id``; without it,
    as many panels as the most any participant rated)."""
    main = responses[~responses["practice"]]
    if "catch" in main.columns:   # catch trials are no units: never in Table 2
        catch = main["catch"]
        if catch.dtype != bool:
            catch = catch.astype(str).str.strip().str.lower().isin(TRUE)
        main = main[~catch]
    main = main.copy()
    if include_incomplete or len(main) == 0:
        return main
    if participants is not None:
        done = set(participants.loc[participants["status"] == "completed", "participant_id"])
        complete = main["participant_id"].isin(done)
    elif "participant_status" in main.columns:
        complete = main["participant_status"].astype(str) == "completed"
    else:
        rated = main.groupby("participant_id")["panel_id"].nunique()
        if "list_id" in main.columns:
            per_list = main.groupby("list_id")["panel_id"].nunique()
            lists = main.groupby("participant_id")["list_id"].first()
            needed = lists.map(per_list)
        else:
            needed = pd.Series(rated.max(), index=rated.index)
        complete_ids = set(rated.index[rated >= needed.reindex(rated.index)])
        complete = main["participant_id"].isin(complete_ids)
    dropped = main.loc[~complete, "participant_id"].nunique()
    if dropped:
        log.info("left out %d incomplete participant(s) (%d judgments); "
                 "--include-incomplete keeps them", dropped, int((~complete).sum()))
    return main[complete]


def drop_excluded(judgments: pd.DataFrame, participants: pd.DataFrame | None,
                  keep: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Leave out the judgments of participants the study excluded (``participants.csv``'s
    ``excluded`` true: its pre-registered rules, or an experimenter by hand; docs/
    exclusion.md). Returns the judgments kept and one row per reason (a rule's name, or
    ``manual``) with the excluded participants it names and their judgments, a
    participant failing several rules counted under each. ``keep``: drop nobody (the
    reasons are still counted). Without ``participants`` or its ``excluded`` column
    (an export from before exclusions), nothing is dropped."""
    columns = ["reason", "participants", "judgments"]
    if participants is None or "excluded" not in participants.columns or judgments.empty:
        return judgments, pd.DataFrame(columns=columns)
    flag = participants["excluded"].astype(str).str.strip().str.lower().isin(TRUE)
    excluded = participants[flag]
    ids = set(excluded["participant_id"])
    mask = judgments["participant_id"].astype(str).isin(ids)
    per = judgments[mask].groupby(judgments.loc[mask, "participant_id"].astype(str)).size()
    reasons: dict[str, list[str]] = {}
    reason_column = excluded.get("exclusion_reasons",
                                 pd.Series("", index=excluded.index)).fillna("")
    for pid, text in zip(excluded["participant_id"], reason_column, strict=True):
        for name in [r for r in str(text).split(";") if r] or ["unstated"]:
            reasons.setdefault(name, []).append(pid)
    report = pd.DataFrame([(name, len(pids), int(per.reindex(pids).fillna(0).sum()))
                           for name, pids in sorted(reasons.items())], columns=columns)
    if ids:
        log.info("%s %d excluded participant(s) (%d judgments): %s", "kept" if keep else
                 "left out", len(ids), int(mask.sum()),
                 ", ".join(f"{r.reason} {r.participants}" for r in report.itertuples())
                 + ("" if keep else "; --keep-excluded keeps them"))
    return (judgments if keep else judgments[~mask]), report


def format_exclusions(report: pd.DataFrame, kept: bool) -> str:
    """A sentence for table2.md: who was left out and why (empty when nobody was)."""
    if report.empty:
        return ""
    reasons = ", ".join(f"{r.reason} {r.participants}" for r in report.itertuples())
    verb = "Kept (--keep-excluded)" if kept else "Left out"
    return (f"\n{verb}: the participants the study excluded, by reason (participants): "
            f"{reasons}; a participant who failed several rules is counted under each.\n")


# -- methods -------------------------------------------------------------------------------

def read_methods(study: str | os.PathLike | None = None,
                 panels: Sequence[str | os.PathLike] = ()) -> dict[str, str]:
    """Every main panel's method, ``{panel_id: method}``, from a ``study.json`` (its panel
    entries' ``method``; an entry without one is a PPGN panel) and/or panels manifests (their
    ``method`` column; a manifest without one holds PPGN panels). The export's
    ``responses.csv`` names no method, so Table 2 takes it from the study's design
    (``--study`` or ``--panels``). A panel named twice with two methods is an error."""
    methods: dict[str, str] = {}
    where: dict[str, str] = {}

    def put(pid: str, method: str, source: str) -> None:
        method = str(method).strip() or DEFAULT_METHOD
        if pid in methods and methods[pid] != method:
            raise Table2Error(f"panel {pid!r} is a {methods[pid]} panel in {where[pid]} and a "
                              f"{method} panel in {source}; give the study's own files")
        methods[pid], where[pid] = method, source

    if study is not None:
        path = os.fspath(study)
        if not os.path.exists(path):
            raise Table2Error(f"{path}: no such file (expected the study.json of "
                              "python -m experiment.design)")
        try:
            with open(path, encoding="utf-8") as fh:
                entries = json.load(fh)["panels"]
            items = [(str(pid), entry.get("method", DEFAULT_METHOD))
                     for pid, entry in entries.items()]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Table2Error(f"{path}: not a study file with a 'panels' object ({exc}); "
                              "give the study.json the study was loaded from") from None
        for pid, method in items:
            put(pid, method, path)
    for manifest in panels:
        path = os.fspath(manifest)
        if not os.path.exists(path):
            raise Table2Error(f"{path}: no such panels manifest")
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise Table2Error(f"{path}: not a readable panels manifest ({exc})") from None
        frame.columns = [str(c).strip() for c in frame.columns]
        if "panel_id" not in frame.columns:
            raise Table2Error(f"{path}: a panels manifest needs a panel_id column (found: "
                              f"{', '.join(frame.columns) or 'none'})")
        column = frame["method"] if "method" in frame.columns else [DEFAULT_METHOD] * len(frame)
        for pid, method in zip(frame["panel_id"], column, strict=True):
            put(str(pid).strip(), method, path)
    return methods


def with_methods(judgments: pd.DataFrame, methods: Mapping[str, str] | None = None,
                 where: str = "responses") -> pd.DataFrame:
    """``judgments`` with a ``method`` column: each panel's method from ``methods``
    (:func:`read_methods`; every rated panel must be in it), else from a ``method`` column
    of the responses themselves (an empty cell: ppgn); without either, unchanged (one
    method, PPGN, as before methods)."""
    if methods:
        pids = judgments["panel_id"].astype(str)
        unknown = sorted(set(pids) - set(methods))
        if unknown:
            raise Table2Error(
                f"{where}: {len(unknown)} rated panel(s) have no method in the study file or "
                f"manifests given ({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''})"
                ": give the study.json (--study) or manifests (--panels) of this study")
        return judgments.assign(method=pids.map(methods).to_numpy())
    if "method" in judgments.columns:
        method = judgments["method"].fillna("").astype(str).str.strip()
        return judgments.assign(method=method.where(method != "", DEFAULT_METHOD))
    return judgments


def has_methods(frame: pd.DataFrame) -> bool:
    """Whether ``frame`` (judgments or units) holds panels of more than one method: then
    every figure is given per layer x method."""
    return "method" in frame.columns and frame["method"].nunique() > 1


def _keys(frame: pd.DataFrame) -> list[str]:
    """The columns that name a stratum (a layer; a layer and method) and a unit in it."""
    return ["layer", "method", "unit"] if has_methods(frame) else ["layer", "unit"]


def strata(frame: pd.DataFrame, layers: Sequence[str] | None = None
           ) -> list[tuple[str, str | None, pd.DataFrame]]:
    """``frame``'s rows per layer (``layers`` order, else first appearance) and, where it
    holds several methods, per method in :func:`method_order`: ``(layer, method or None,
    rows)``, strata without rows left out."""
    layers = list(layers) if layers is not None else list(frame["layer"].drop_duplicates())
    out = []
    for layer in layers:
        part = frame[frame["layer"] == layer]
        if not has_methods(frame):
            out.append((layer, None, part))
            continue
        for method in method_order(frame["method"]):
            rows = part[part["method"] == method]
            if len(rows):
                out.append((layer, method, rows))
    return out


def _label(layer: Any, method: str | None) -> str:
    return str(layer) if method is None else f"{layer} / {method}"


# -- per unit ------------------------------------------------------------------------------

def unit_ratings(judgments: pd.DataFrame) -> pd.DataFrame:
    """One row per rated unit: layer, unit, n (judgments), n_yes, yes_share, and the yes
    answers' texts (``answers``), layers in order of appearance. With panels of several
    methods (:func:`has_methods`) one row per unit and method, a ``method`` column after
    ``layer``: a unit's panels of two methods are two things rated."""
    keys = _keys(judgments)
    if len(judgments) == 0:
        return pd.DataFrame(columns=[*keys, "n", "n_yes", "yes_share", "answers"])
    grouped = judgments.groupby(keys, sort=False)
    units = grouped.agg(n=("answer_yes", "size"), n_yes=("answer_yes", "sum")).reset_index()
    answers = (judgments[judgments["answer_yes"]].groupby(keys, sort=False)
               ["object_text"].agg(list))
    units["answers"] = [answers.get(key, []) for key
                        in zip(*(units[k] for k in keys), strict=True)]
    units["n_yes"] = units["n_yes"].astype(int)
    units["yes_share"] = units["n_yes"] / units["n"]
    units["unit"] = units["unit"].astype(int)
    return units


def _modal_group(codes: Sequence[Any], texts: Sequence[str], coder: CoderLike
                 ) -> tuple[int, int]:
    """(index, size) of the largest group of coded answers that agree with one of them, the
    modal answer (itself counted; ``coder.agree(modal, other)``). Ties between candidate
    modal answers go to the text that sorts first (case-folded, stripped; then the first in
    the unit's answer order), so the reported answer does not depend on the file's row
    order; the size, and so every share, is the same whichever is taken. (-1, 0) when there
    is no answer."""
    best: tuple[int, str, int] | None = None
    for i, a in enumerate(codes):
        support = 1 + sum(bool(coder.agree(a, b)) for j, b in enumerate(codes) if j != i)
        key = (-support, str(texts[i]).strip().casefold(), i)
        if best is None or key < best:
            best = key
    return (-1, 0) if best is None else (best[2], -best[0])


def _hits(codes: Sequence[Any], senses: Iterable[int] | None, coder: CoderLike) -> int:
    if not codes or not senses:
        return 0
    return sum(bool(coder.matches(code, senses)) for code in codes)


def unit_objects(units: pd.DataFrame, selectivity: pd.DataFrame, coder: CoderLike,
                 class_senses: Mapping[int, Iterable[int]]) -> pd.DataFrame:
    """For each unit of ``units`` (:data:`UNIT_COLUMNS`): its coded answers counted, the
    answers that agree with the modal answer and that match the unit's top class and its
    CCMAS class, as counts and as shares of the coded answers (``agreement="share"``), and
    the unit scored yes or no on each (``agreement="unit"``).

    - ``n_agree_humans``: the size of the modal group (:func:`_modal_group`) when at least
      two coded answers are in it, else 0; its share is defined from two coded answers on.
    - ``n_match_*``: the coded answers that match the class; the share is defined from one
      coded answer on (0 when the class has no synsets).
    - ``humans_agree``: one coded answer agrees with every other (at least two coded), that
      is ``n_agree_humans == n_coded >= 2``; ``match_*``: more than half of the coded
      answers match. Undefined shares are NaN (the unit is left out of that column's mean).

    Where ``units`` has a ``method`` column (panels of several methods), so do the rows.
    """
    classes = selectivity.set_index(["layer", "unit"])[["top_class", "ccmas_class"]]
    rows = []
    methods = units["method"] if "method" in units.columns else [None] * len(units)
    for layer, method, unit, answers in zip(units["layer"], methods, units["unit"],
                                            units["answers"], strict=True):
        coded_texts, coded = [], []
        for text in answers:
            code = coder.code(text)
            if _is_coded(code):
                coded_texts.append(text)
                coded.append(code)
        n_coded = len(coded)
        modal, group = _modal_group(coded, coded_texts, coder)
        n_agree = group if group >= 2 else 0
        top, ccmas = classes.loc[(layer, unit)]
        hits_top = _hits(coded, _senses(class_senses, top), coder)
        hits_ccmas = _hits(coded, _senses(class_senses, ccmas), coder)
        rows.append({
            "layer": layer, "method": method, "unit": unit, "n_answers": len(answers),
            "n_uncoded": len(answers) - n_coded, "n_coded": n_coded,
            "modal_answer": coded_texts[modal] if n_agree else "",
            "n_agree_humans": n_agree, "n_match_top_class": hits_top,
            "n_match_ccmas_class": hits_ccmas,
            "share_agree_humans": n_agree / n_coded if n_coded >= 2 else math.nan,
            "share_match_top_class": hits_top / n_coded if n_coded else math.nan,
            "share_match_ccmas_class": hits_ccmas / n_coded if n_coded else math.nan,
            "humans_agree": n_coded >= 2 and n_agree == n_coded,
            "match_top_class": 2 * hits_top > n_coded > 0,
            "match_ccmas_class": 2 * hits_ccmas > n_coded > 0,
        })
    columns = list(UNIT_COLUMNS)
    if "method" in units.columns:
        columns.insert(1, "method")
    return pd.DataFrame(rows, columns=columns)


def _is_coded(code: Any) -> bool:
    coded = getattr(code, "coded", None)
    return bool(code) if coded is None else bool(coded)


def _senses(class_senses: Mapping[int, Iterable[int]], cls: Any):
    if cls is None or (isinstance(cls, float) and math.isnan(cls)) or int(cls) < 0:
        return None
    return class_senses.get(int(cls))


def _check_units(units: pd.DataFrame, selectivity: pd.DataFrame, where: str) -> None:
    missing_cols = [c for c in ("layer", "unit", "top_class", "ccmas_class")
                    if c not in selectivity.columns]
    if missing_cols:
        raise Table2Error(f"{where}: the selectivity results lack column(s) "
                          f"{', '.join(missing_cols)}")
    known_layers = set(selectivity["layer"])
    unknown = [layer for layer in units["layer"].unique() if layer not in known_layers]
    if unknown:
        raise Table2Error(f"{where}: layer(s) {', '.join(map(str, unknown))} of the responses "
                          "have no selectivity results (found layers: "
                          f"{', '.join(map(str, sorted(known_layers)))})")
    have = set(zip(selectivity["layer"], selectivity["unit"].astype(int), strict=True))
    lacking = [(layer, unit) for layer, unit in zip(units["layer"], units["unit"], strict=True)
               if (layer, int(unit)) not in have]
    if lacking:
        shown = ", ".join(f"{layer}/{unit}" for layer, unit in lacking[:5])
        raise Table2Error(f"{where}: {len(lacking)} rated unit(s) have no selectivity row "
                          f"({shown}{', ...' if len(lacking) > 5 else ''}): were the panels "
                          "made from another network or results file?")


# -- the table -----------------------------------------------------------------------------

def table2(judgments: pd.DataFrame, selectivity: pd.DataFrame, coder: CoderLike,
           class_senses: Mapping[int, Iterable[int]], threshold: float = 0.8,
           where: str = "responses", *, agreement: str = "share", strict: bool = False
           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2 (one row per layer, :data:`TABLE2_COLUMNS`) and the per-unit detail (one row
    per rated unit: n, n_yes, yes_share, ``yes80`` and, for the units with ``yes80``, the
    columns of :data:`UNIT_COLUMNS`).

    ``threshold``: the share of yes that makes a unit count in the last three columns, at
    least ``threshold`` (the paper's Table 2 header, ">= 80%"), or more than it with
    ``strict`` (its appendix's "over 80%"; with five raters 4 of 5 yes counts only without
    ``strict``). ``agreement``: ``"share"`` (the paper's figures: the mean over those units
    of each unit's share of coded answers that agree / match, ± the SE of that mean,
    :func:`mean_share`) or ``"unit"`` (the share of those units scored yes, ± the binomial
    SE, :func:`proportion`); docs/table2.md.

    Where the judgments hold panels of several methods (a ``method`` column,
    :func:`with_methods`), every row is a layer x method (layers in the network's order,
    methods in :func:`method_order`), both tables gain a ``method`` column after ``layer``,
    and a unit's panels of two methods count as two rated units."""
    if agreement not in AGREEMENT_MODES:
        raise Table2Error(f"agreement {agreement!r}: must be one of "
                          f"{', '.join(AGREEMENT_MODES)}")
    if not 0 < threshold <= 1:
        raise Table2Error(f"threshold {threshold}: must be in (0, 1]")
    if strict and threshold >= 1:
        raise Table2Error(f"threshold {threshold} with strict: no unit can have more than "
                          "100% yes (drop --strict-threshold or lower --threshold)")
    if len(judgments) == 0:
        raise Table2Error(f"{where}: no judgments left (only practice trials, or no complete "
                          "participant; --include-incomplete keeps incomplete ones)")
    units = unit_ratings(judgments)
    _check_units(units, selectivity, where)
    # the tolerance keeps 4/5 = 0.8 at ">= 0.8" and out of "> 0.8" despite rounding
    units["yes80"] = (units["yes_share"] > threshold + 1e-12 if strict
                      else units["yes_share"] >= threshold - 1e-12)
    objects = unit_objects(units[units["yes80"]], selectivity, coder, class_senses)
    keys = _keys(judgments)
    detail = units.merge(objects, on=keys, how="left")
    # the units under the threshold have no object columns: keep counts whole, yes/no boolean
    for column in ("n_answers", "n_uncoded", "n_coded", "n_agree_humans", "n_match_top_class",
                   "n_match_ccmas_class"):
        detail[column] = detail[column].astype("Int64")
    for column in ("share_agree_humans", "share_match_top_class", "share_match_ccmas_class"):
        detail[column] = detail[column].astype(float)
    for column in ("humans_agree", "match_top_class", "match_ccmas_class"):
        detail[column] = detail[column].astype("boolean")
    rows = []
    left_out = 0
    multi = has_methods(judgments)
    for layer, method, j in strata(judgments, layer_order(judgments, selectivity)):
        u = detail[detail["layer"] == layer]
        if multi:
            u = u[u["method"] == method]
        high = u[u["yes80"]]
        row: dict[str, Any] = {"layer": layer, "n_judgments": len(j)}
        if multi:
            row["method"] = method
        _put(row, "pct_yes", int(j["answer_yes"].sum()), len(j))
        row["n_units"] = len(u)
        _put(row, "pct_units_yes80", len(high), len(u))
        row["n_units_yes80"] = len(high)
        for name, stem in _OBJECT_COLUMNS:
            if agreement == "unit":
                yes = "humans_agree" if stem == "agree_humans" else stem
                _put(row, name, int(high[yes].astype(bool).sum()), len(high))
                n = len(high)
            else:
                shares = high[f"share_{stem}"].dropna()
                for suffix, value in mean_share(shares).items():
                    row[name + suffix] = value
                n = len(shares)
                left_out += len(high) - n
            row[f"n_units_{stem}"] = n
        row["n_answers_yes80"] = int(high["n_answers"].sum()) if len(high) else 0
        row["n_answers_uncoded"] = int(high["n_uncoded"].sum()) if len(high) else 0
        row["agreement"] = agreement
        rows.append(row)
    if left_out:
        log.info("%d unit-column(s) left out of the means: too few coded answers for a share "
                 "(agreement needs two, a class match one; n_coded in table2_units.csv)",
                 left_out)
    columns = list(TABLE2_COLUMNS)
    if multi:
        columns.insert(1, "method")
    return pd.DataFrame(rows, columns=columns), detail.drop(columns=["answers"])


def layer_order(judgments: pd.DataFrame, selectivity: pd.DataFrame) -> list[str]:
    """The rated layers in the network's order (as in the selectivity results), rather than
    in the order participants happened to see them."""
    rated = set(judgments["layer"])
    ordered = [layer for layer in selectivity["layer"].drop_duplicates() if layer in rated]
    return ordered + [layer for layer in judgments["layer"].drop_duplicates()
                      if layer not in ordered]


def in_layer_order(judgments: pd.DataFrame, selectivity: pd.DataFrame) -> pd.DataFrame:
    """``judgments`` sorted (stably) by :func:`layer_order`."""
    rank = {layer: i for i, layer in enumerate(layer_order(judgments, selectivity))}
    return judgments.sort_values("layer", key=lambda c: c.map(rank), kind="stable")


def _put(row: dict[str, Any], name: str, count: int, n: int) -> None:
    for suffix, value in proportion(count, n).items():
        row[name + suffix] = value


def _cell(row: pd.Series, name: str, n: int) -> str:
    if n == 0 or math.isnan(row[name]):
        return f"– (n={n:,})"
    se = row[name + "_se"]
    shown = "–" if math.isnan(se) else f"{se:.1f}"     # one unit: no spread to estimate
    return f"{row[name]:.1f} ± {shown} (n={n:,})"


def format_markdown(table: pd.DataFrame, threshold: float = 0.8, strict: bool = False) -> str:
    """Table 2 as Markdown: each percentage ± its standard error, with its n, and a note
    saying which ± and which scoring (the table's ``agreement``) it shows; a ``method``
    column where the table has one (panels of several methods)."""
    pct = f"{100 * threshold:g}"
    agreement = "unit"
    if "agreement" in table.columns and len(table):
        agreement = str(table["agreement"].iloc[0])
    if agreement == "share":
        objects = ["humans agree (mean % of a unit's answers)",
                   "match top class (mean % of answers)", "match CCMAS class (mean % of answers)"]
    else:
        objects = ["humans agree (% of those units)", "match top class (%)",
                   "match CCMAS class (%)"]
    multi = "method" in table.columns
    header = ["layer", *(["method"] if multi else []), "% yes (of judgments)",
              f"% units with {'>' if strict else '≥'}{pct}% yes", *objects]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        n_high = int(row["n_units_yes80"])
        cells = [str(row["layer"]), *([str(row["method"])] if multi else []),
                 _cell(row, "pct_yes", int(row["n_judgments"])),
                 _cell(row, "pct_units_yes80", int(row["n_units"]))]
        for name, stem in _OBJECT_COLUMNS:
            n = row.get(f"n_units_{stem}", n_high)
            cells.append(_cell(row, name, n_high if pd.isna(n) else int(n)))
        lines.append("| " + " | ".join(cells) + " |")
    if agreement == "share":
        note = ("Last three columns: for each unit counted in the second, the share of its "
                "coded yes answers that agree with its modal answer / match the class; the "
                "mean of those shares ± SD (ddof=1) / sqrt(n), n the units with a share (two "
                "coded answers for agreement, one for a match). First two: ± the binomial SE.")
    else:
        note = ("Last three columns: the share of the units counted in the second where one "
                "coded answer agrees with all others / more than half match the class. "
                "± the binomial SE throughout.")
    if multi:
        note += (" One row per layer x method (panel method); a unit's panels of two methods "
                 "are two units here, each rated by other participants.")
    return "\n".join(lines) + "\n\n" + note + "\n"


# -- beyond the paper ----------------------------------------------------------------------

def kappa_by_layer(judgments: pd.DataFrame) -> pd.DataFrame:
    """Fleiss' kappa on yes/no per layer (units as subjects, their raters as raters); per
    layer x method, with a ``method`` column, where the judgments hold several methods."""
    rows = []
    multi = has_methods(judgments)
    for layer, method, j in strata(judgments):
        counts = j.groupby("unit")["answer_yes"].agg(["sum", "size"])
        table = np.column_stack([counts["sum"], counts["size"] - counts["sum"]])
        row = {"layer": layer, "n_units": int((counts["size"] >= 2).sum()),
               "n_judgments": len(j), "fleiss_kappa": fleiss_kappa(table)}
        if multi:
            row["method"] = method
        rows.append(row)
    columns = ["layer", *(["method"] if multi else []), "n_units", "n_judgments",
               "fleiss_kappa"]
    return pd.DataFrame(rows, columns=columns)


def mixed_model(judgments: pd.DataFrame, seed: int = 0) -> str:
    """A mixed-effects logistic regression of yes on layer with crossed random intercepts
    for participant and panel (statsmodels' BinomialBayesMixedGLM, variational Bayes).
    Returns a plain-text report with the fit and its caveats.

    Where the judgments hold panels of several methods (:func:`has_methods`), the model is
    ``yes ~ layer + method`` (a layer term only with two layers or more) and the report adds
    a Wald test of the method terms (:func:`method_test`): whether the methods differ in
    their yes-rate, the layer held fixed."""
    if has_methods(judgments):
        return _mixed_model_methods(judgments, seed)
    from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM

    data = judgments[["answer_yes", "layer", "participant_id", "panel_id"]].copy()
    data["yes"] = data["answer_yes"].astype(float)
    layers = list(data["layer"].drop_duplicates())
    lines = ["Mixed-effects logistic regression: yes ~ layer + (1 | participant) + (1 | panel)",
             f"judgments: {len(data):,}; participants: {data['participant_id'].nunique():,}; "
             f"panels: {data['panel_id'].nunique():,}; layers: {', '.join(map(str, layers))}",
             ""]
    if len(layers) < 2 or data["yes"].nunique() < 2:
        lines.append("Not fitted: it needs at least two layers and both answers.")
        return "\n".join(lines) + "\n"
    data["layer"] = pd.Categorical(data["layer"], categories=layers)
    np.random.seed(seed)
    model = BinomialBayesMixedGLM.from_formula(
        "yes ~ C(layer)", {"participant": "0 + C(participant_id)", "panel": "0 + C(panel_id)"},
        data)
    # L-BFGS-B: the default BFGS keeps a dense matrix over every random effect (thousands
    # of panels) and takes hours at the paper's size; this takes seconds.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = model.fit_vb(fit_method="L-BFGS-B")
    names = model.exog_names
    k = len(names)
    lines.append(f"{'term':<32} {'post. mean':>10} {'post. SD':>9}   odds ratio")
    for i, name in enumerate(names):
        mean, sd = result.fe_mean[i], result.fe_sd[i]
        lines.append(f"{name:<32} {mean:>10.3f} {sd:>9.3f}   {math.exp(mean):.3g}")
    lines.append("")
    lines.append("random-intercept SDs (posterior mean of log SD, exponentiated):")
    for name, value in zip(model.vcp_names, result.vcp_mean, strict=True):
        lines.append(f"  {name:<14} {math.exp(value):.3f}")
    lines += ["",
              f"Reference layer: {layers[0]}; the other terms are log-odds differences.",
              "Caveats: a variational Bayes approximation (posterior means and SDs, not "
              "maximum-likelihood estimates or p-values); random intercepts only (no "
              "random slopes); with few judgments per panel the panel variance is poorly "
              f"determined. Fixed effects: {k}."]
    for warning in caught:
        lines.append(f"Fit warning: {warning.message}")
    return "\n".join(lines) + "\n"


def _laplace_cov(model: Any, result: Any) -> np.ndarray:
    """The fixed effects' covariance of a fitted BinomialBayesMixedGLM from the Laplace
    approximation of the joint posterior of fixed and random effects at the variational
    posterior means, the variance components fixed at theirs (as lme4 takes its fixed
    effects' covariance at the mode): the fixed-effects block of the inverse of
    ``[X Z]' W [X Z] + diag(prior precisions)``, W the binomial weights p(1 - p), by the
    Schur complement ``A - B' C^-1 B`` with C sparse. Mean-field variational Bayes treats
    fixed and random effects as independent and so understates the fixed effects' SDs."""
    from scipy import sparse
    from scipy.sparse.linalg import splu

    x = np.asarray(model.exog, dtype=float)
    z = sparse.csc_matrix(model.exog_vc)
    eta = x @ result.fe_mean + z @ result.vc_mean
    p = 1 / (1 + np.exp(-eta))
    w = p * (1 - p)
    a = x.T @ (w[:, None] * x) + np.eye(x.shape[1]) / model.fe_p ** 2
    b = np.asarray(z.T @ (w[:, None] * x))
    sd = np.exp(np.asarray(result.vcp_mean))[np.asarray(model.ident)]
    c = (z.T @ sparse.diags(w) @ z + sparse.diags(1 / sd ** 2)).tocsc()
    return np.linalg.inv(a - b.T @ splu(c).solve(b))


def method_test(names: Sequence[str], mean: np.ndarray, cov: np.ndarray
                ) -> dict[str, Any]:
    """The Wald test of the method terms (``C(method)[T.x]`` in ``names``) of a fitted
    model: ``chi2 = b' V^-1 b`` over the method terms' estimates ``b`` and covariance ``V``
    (``mean``, ``cov``), ``df`` the number of terms (methods - 1), ``p`` from the
    chi-square distribution; and per term its z and two-sided p. The null: every method
    has the same log-odds of yes, the layer held fixed."""
    from scipy.stats import chi2, norm

    index = [i for i, name in enumerate(names) if str(name).startswith("C(method)")]
    b = np.asarray(mean, dtype=float)[index]
    v = np.asarray(cov, dtype=float)[np.ix_(index, index)]
    stat = float(b @ np.linalg.solve(v, b))
    terms = []
    for j, i in enumerate(index):
        se = math.sqrt(v[j, j])
        terms.append({"term": names[i], "estimate": float(b[j]), "se": se,
                      "z": float(b[j] / se), "p": float(2 * norm.sf(abs(b[j] / se)))})
    return {"chi2": stat, "df": len(index), "p": float(chi2.sf(stat, len(index))),
            "terms": terms}


def _mixed_model_methods(judgments: pd.DataFrame, seed: int) -> str:
    """:func:`mixed_model` for panels of several methods: yes ~ layer + method."""
    from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM

    data = judgments[["answer_yes", "layer", "method", "participant_id", "panel_id"]].copy()
    data["yes"] = data["answer_yes"].astype(float)
    layers = list(data["layer"].drop_duplicates())
    methods = method_order(data["method"])
    terms = (["C(layer)"] if len(layers) > 1 else []) + ["C(method)"]
    lines = ["Mixed-effects logistic regression: yes ~ "
             f"{'layer + ' if len(layers) > 1 else ''}method + (1 | participant) + (1 | panel)",
             f"judgments: {len(data):,}; participants: {data['participant_id'].nunique():,}; "
             f"panels: {data['panel_id'].nunique():,}; layers: {', '.join(map(str, layers))}; "
             f"methods: {', '.join(methods)}",
             ""]
    if data["yes"].nunique() < 2:
        lines.append("Not fitted: it needs both answers.")
        return "\n".join(lines) + "\n"
    data["layer"] = pd.Categorical(data["layer"], categories=layers)
    data["method"] = pd.Categorical(data["method"], categories=methods)
    np.random.seed(seed)
    model = BinomialBayesMixedGLM.from_formula(
        "yes ~ " + " + ".join(terms),
        {"participant": "0 + C(participant_id)", "panel": "0 + C(panel_id)"}, data)
    with warnings.catch_warnings(record=True) as caught:   # L-BFGS-B: see mixed_model
        warnings.simplefilter("always")
        result = model.fit_vb(fit_method="L-BFGS-B")
    names = list(model.exog_names)
    cov = _laplace_cov(model, result)
    lines.append(f"{'term':<32} {'post. mean':>10} {'post. SD':>9} {'Laplace SE':>10}   "
                 "odds ratio")
    for i, name in enumerate(names):
        mean = result.fe_mean[i]
        lines.append(f"{name:<32} {mean:>10.3f} {result.fe_sd[i]:>9.3f} "
                     f"{math.sqrt(cov[i, i]):>10.3f}   {math.exp(mean):.3g}")
    lines.append("")
    lines.append("random-intercept SDs (posterior mean of log SD, exponentiated):")
    for name, value in zip(model.vcp_names, result.vcp_mean, strict=True):
        lines.append(f"  {name:<14} {math.exp(value):.3f}")
    test = method_test(names, result.fe_mean, cov)
    lines += ["",
              f"Method effect: Wald test of the {test['df']} method term(s), chi2({test['df']})"
              f" = {test['chi2']:.2f}, p = {test['p']:.3g}",
              "  (null: every method has the same log-odds of yes, the layer held fixed)"]
    for term in test["terms"]:
        lines.append(f"  {term['term']:<30} z = {term['z']:.2f}, p = {term['p']:.3g}")
    lines += ["",
              f"Reference layer: {layers[0]}; reference method: {methods[0]}; the other "
              "terms are log-odds differences.",
              "The Wald test takes the fixed effects' covariance (Laplace SE) from the "
              "Laplace approximation at the variational posterior means, the variance "
              "components fixed at theirs; the variational posterior SDs (post. SD, "
              "mean-field) understate the uncertainty and give no test.",
              "Caveats: approximate (variational Bayes estimates; the variance components' "
              "uncertainty is ignored); random intercepts only (no random slopes; a unit's "
              "panels of several methods share no unit effect); with few judgments per panel "
              f"the panel variance is poorly determined. Fixed effects: {len(names)}."]
    for warning in caught:
        lines.append(f"Fit warning: {warning.message}")
    return "\n".join(lines) + "\n"


def interpretability(units: pd.DataFrame, selectivity: pd.DataFrame,
                     measures: Sequence[str] | None = None) -> pd.DataFrame:
    """Per layer and measure: Spearman's rho between a unit's share of yes and the measure,
    and a logistic fit of its yes/no counts on the measure (standardised within the layer):
    the paper's claim is that interpretable units are not the selective ones. Per layer x
    method, with a ``method`` column, where ``units`` holds several methods."""
    from scipy.stats import spearmanr
    from statsmodels.api import GLM, add_constant, families

    measures = [m for m in (measures or INTERPRETABILITY_MEASURES) if m in selectivity.columns]
    merged = units.merge(selectivity[["layer", "unit", *measures]], on=["layer", "unit"])
    rows = []
    separated = 0
    multi = has_methods(units)
    for layer, method, part in strata(merged, list(units["layer"].drop_duplicates())):
        for measure in measures:
            ok = part[np.isfinite(part[measure].astype(float))]
            row: dict[str, Any] = {"layer": layer, **({"method": method} if multi else {}),
                                   "measure": measure, "n_units": len(ok),
                                   "spearman_rho": math.nan, "spearman_p": math.nan,
                                   "logit_slope_per_sd": math.nan, "logit_se": math.nan,
                                   "logit_p": math.nan, "logit_note": ""}
            x = ok[measure].astype(float).to_numpy()
            if len(ok) >= 3 and np.ptp(x) > 0 and np.ptp(ok["yes_share"]) > 0:
                rho, p = spearmanr(x, ok["yes_share"])
                row.update(spearman_rho=float(rho), spearman_p=float(p))
            if len(ok) >= 3 and np.ptp(x) > 0:
                z = (x - x.mean()) / x.std()
                endog = np.column_stack([ok["n_yes"], ok["n"] - ok["n_yes"]]).astype(float)
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        fit = GLM(endog, add_constant(z), family=families.Binomial()).fit()
                    if any("separation" in str(w.message).lower() for w in caught):
                        # the measure splits yes from no perfectly: no finite slope exists
                        row["logit_note"] = "perfect separation: no finite slope"
                        separated += 1
                    else:
                        row.update(logit_slope_per_sd=float(fit.params[1]),
                                   logit_se=float(fit.bse[1]), logit_p=float(fit.pvalues[1]))
                except (np.linalg.LinAlgError, ValueError) as exc:
                    log.warning("%s/%s: logistic fit failed (%s)", _label(layer, method),
                                measure, exc)
                    row["logit_note"] = f"fit failed: {exc}"
            rows.append(row)
    if separated:
        log.info("%d logistic fit(s) met perfect separation (too few or too uniform "
                 "ratings): left blank, noted in logit_note", separated)
    return pd.DataFrame(rows)


def plot_interpretability(units: pd.DataFrame, selectivity: pd.DataFrame, out: Path,
                          measures: Sequence[str] = FIGURE_MEASURES,
                          threshold: float = 0.8) -> list[Path]:
    """A unit's share of yes against TCS, precision and CCMAS, one row of panels per layer
    (per layer x method where ``units`` holds several methods), the threshold dashed (PNG
    and SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = [m for m in measures if m in selectivity.columns]
    merged = units.merge(selectivity[["layer", "unit", *measures]], on=["layer", "unit"])
    rows = strata(merged, list(units["layer"].drop_duplicates()))
    fig, axes = plt.subplots(len(rows), len(measures), squeeze=False,
                             figsize=(3.2 * len(measures), 2.6 * len(rows)))
    rng = np.random.default_rng(0)
    for r, (layer, method, part) in enumerate(rows):
        for c, measure in enumerate(measures):
            ax = axes[r][c]
            jitter = rng.uniform(-0.015, 0.015, len(part))
            ax.scatter(part[measure], part["yes_share"] + jitter, s=8, alpha=0.5,
                       color="#2f5d9b", edgecolors="none")
            ax.axhline(threshold, color="#a31515", linestyle="--", linewidth=0.8)
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel(measure)
            if c == 0:
                ax.set_ylabel(f"{_label(layer, method)}: share of yes")
    fig.suptitle("Interpretability (share of yes) against selectivity, per unit")
    fig.tight_layout()
    paths = [out / "yes_vs_selectivity.png", out / "yes_vs_selectivity.svg"]
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths


# -- command line --------------------------------------------------------------------------

def _class_senses(spec: str, coder) -> dict[int, frozenset[int]]:
    from analysis import coding

    if spec == "imagenet":
        return coding.imagenet_class_senses()
    if spec == "digits":
        return coding.class_senses_from_names([str(d) for d in range(10)], coder)
    return coding.read_class_map(spec, coder)


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python analysis/table2.py",
        description="Table 2 of the paper: per layer, the % of yes responses, the % of "
                    "units with >=80% yes, and among those how far the humans agree on the "
                    "object and how far it matches the unit's top class and CCMAS class "
                    "(--agreement); plus Fleiss' kappa, a mixed-effects logistic regression "
                    "and the relation of interpretability to each selectivity measure. "
                    "Definitions: docs/table2.md.")
    parser.add_argument("--responses", required=True,
                        help="responses.csv exported by the server (python -m server export)")
    parser.add_argument("--selectivity", required=True,
                        help="results CSV of python -m analysis.selectivity for the same network")
    parser.add_argument("--out", required=True, help="folder for table2.md, table2.csv, ...")
    parser.add_argument("--codes", help="edited codes.csv (python -m analysis.coding review): "
                                        "its codes take precedence over the automatic ones")
    parser.add_argument("--participants",
                        help="participants.csv: completeness from its status, exclusions "
                             "from its excluded column (default: the participants.csv "
                             "beside --responses, if there is one)")
    parser.add_argument("--keep-excluded", action="store_true",
                        help="keep the judgments of participants the study excluded (its "
                             "pre-registered rules or by hand); by default they are left "
                             "out, and how many each rule removed is reported")
    parser.add_argument("--study", metavar="JSON",
                        help="the study.json the study was loaded from: each panel's method "
                             "(ppgn, fourier, natural, ...), which the export does not "
                             "carry. With panels of several methods every figure is given "
                             "per layer x method, and mixed_model.txt tests the method "
                             "effect (default: every panel PPGN, as before methods)")
    parser.add_argument("--panels", nargs="+", default=[], metavar="CSV",
                        help="instead of (or besides) --study: the panels manifest(s) the "
                             "study was designed from, each panel's method from their "
                             "method column (none: ppgn)")
    parser.add_argument("--classes", default="imagenet",
                        help="class synsets: 'imagenet' (the ILSVRC-2012 classes, default), "
                             "'digits' (the demo's 0-9), or a TSV with columns index, name[, wnid]")
    parser.add_argument("--threshold", type=float, default=0.8,
                        help="share of yes that makes a unit 'interpretable' (default 0.8): "
                             "a unit counts with at least this share (the paper's Table 2 "
                             "header, '>= 80%%')")
    parser.add_argument("--strict-threshold", action="store_true",
                        help="count a unit only with MORE than --threshold yes (the paper's "
                             "appendix says 'over 80%%'): with 5 raters, >= 80%% is 4 of 5 "
                             "yes, > 80%% is 5 of 5")
    parser.add_argument("--agreement", choices=AGREEMENT_MODES, default="share",
                        help="how the last three columns are computed. 'share' (default; the "
                             "paper's figures are consistent only with it): for each counted unit, the "
                             "share of its coded yes answers that agree with its modal "
                             "answer (the largest group agreeing with one answer, when at "
                             "least two do) / match its top class / match its CCMAS class; "
                             "each column is the mean of those shares over the units, "
                             "± SD (ddof=1) / sqrt(n units). 'unit': each unit scored yes or "
                             "no (one coded answer agrees with all others / more than half "
                             "match the class), each column the share of units scored yes, "
                             "± the binomial SE")
    parser.add_argument("--include-incomplete", action="store_true",
                        help="keep the judgments of participants who did not finish")
    parser.add_argument("--no-extras", action="store_true",
                        help="only Table 2 (no kappa, mixed model, correlations, figure)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = _parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from analysis import coding
    from analysis.tables import ResultsError, read_results

    try:
        responses = read_responses(args.responses)
        participants_path = args.participants
        beside = Path(args.responses).with_name("participants.csv")
        if participants_path is None and beside.exists():
            participants_path = beside
            log.info("participants from %s (beside --responses)", beside)
        participants = read_participants(participants_path) if participants_path else None
        selectivity = read_results(args.selectivity, required=("layer", "unit", "top_class",
                                                               "ccmas_class"))
        overrides = coding.read_codes(args.codes) if args.codes else None
        coder = coding.Coder(overrides=overrides)
        class_senses = _class_senses(args.classes, coder)
        judgments = select_judgments(responses, participants, args.include_incomplete)
        judgments, exclusions = drop_excluded(judgments, participants, args.keep_excluded)
        methods = (read_methods(args.study, args.panels) if args.study or args.panels
                   else None)
        judgments = in_layer_order(with_methods(judgments, methods, args.responses),
                                   selectivity)
        if has_methods(judgments):
            log.info("panels of %d methods (%s): every figure per layer x method",
                     judgments["method"].nunique(), ", ".join(method_order(judgments["method"])))
        table, detail = table2(judgments, selectivity, coder, class_senses, args.threshold,
                               where=args.responses, agreement=args.agreement,
                               strict=args.strict_threshold)
    except (Table2Error, ResultsError, coding.CodingError, coding.WordNetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    markdown = format_markdown(table, args.threshold, args.strict_threshold) + \
        format_exclusions(exclusions, args.keep_excluded)
    (out / "table2.md").write_text("# Table 2\n\n" + markdown)
    exclusions.to_csv(out / "exclusions.csv", index=False)
    table.to_csv(out / "table2.csv", index=False)
    detail.to_csv(out / "table2_units.csv", index=False)
    print(markdown, end="")
    if not args.no_extras:
        units = detail[[*_keys(detail), "n", "n_yes", "yes_share"]]
        kappa_by_layer(judgments).to_csv(out / "kappa.csv", index=False)
        interpretability(units, selectivity).to_csv(out / "interpretability.csv", index=False)
        (out / "mixed_model.txt").write_text(mixed_model(judgments))
        plot_interpretability(units, selectivity, out, threshold=args.threshold)
        log.info("wrote kappa.csv, interpretability.csv, mixed_model.txt and "
                 "yes_vs_selectivity.png/.svg")
    log.info("wrote %s", out / "table2.md")
    return 0


if __name__ == "__main__":
    if not __package__:  # run as a file, python analysis/table2.py: import from the project
        sys.path[0] = str(Path(__file__).resolve().parents[1])
    raise SystemExit(main())
