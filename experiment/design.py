"""The rating study's design: panels manifest to lists, targets and practice panels.

docs/study-design.md. A *design* deals every panel of a panels manifest
(after optional per-layer sampling) into exactly one of ``n_lists`` lists, so that
each layer is spread as evenly as possible over the lists, and gives every list a
participant target, the targets summing to the number of participants. For the
paper's numbers (256 conv5, 995 fc8, 2,048 of 4,096 fc6; 64 lists; 333
participants) every list holds 4 conv5, 32 fc6 and 15 or 16 fc8 panels, and 51
lists target 5 participants, 13 lists 6.

Inputs
    *Panels manifest(s)* (CSV): columns ``panel_id, layer, unit, path`` and optionally
    ``method`` (how the panel was made: ``ppgn``, ``fourier``, ``natural``, ...; a manifest
    without the column holds PPGN panels); others are ignored. Every cell is read as text;
    ``unit`` must be a non-negative integer. A relative ``path`` is relative to the
    manifest's own directory. Several manifests (``--panels a.csv b.csv``, one a method,
    say) are read as one: their panel ids must be unique across them.
    *Practice manifest* (CSV): ``panel_id, path`` and optionally ``label`` and
    ``expected`` (the answer the panel expects: yes, no or empty, carried into the
    study file where given); the first ``practice_trials`` rows (file order) are the
    practice trials.
    *Catch manifest* (CSV, optional; ``generator.panels catch`` writes one):
    ``panel_id, path, expected`` (yes or no) and ``label`` (the class a yes names; empty
    for a no).

Dealing (deterministic for a seed; one ``numpy.random.default_rng(seed)``)
    1. Sampling: for each layer named in ``sample`` (layer order), ``N`` panels
       drawn uniformly without replacement; other layers are kept whole.
    2. Layers in order of first appearance. Per layer: shuffle its panels;
       ``q, r = divmod(n_layer, n_lists)``; every list gets ``q``, and the ``r``
       extra panels go to the ``r`` lists holding the fewest panels so far (ties
       broken by a random permutation of the lists). Hence per-layer counts and
       list sizes each differ by at most one between lists.
    2b. Panels of methods other than ``ppgn`` (several methods, or another alone;
       docs/study-design.md, "Methods") replace 1-2, and their study entries carry
       ``method``: a unit's panels are dealt together, so that no list holds
       two panels of one unit (layer and unit; a participant sees one list) and every
       (layer, method) is spread as evenly as every layer. Sampling draws ``N`` *units*
       of a layer (each keeps its panels of every method). The lists are visited in a
       random cycle; per layer (first appearance), the units are shuffled and each method
       (:func:`analysis.table2.method_order`) takes the next run of the cycle, one place
       per panel of that method, so every (layer, method), every layer and every list
       size differs by at most one between lists. Which unit takes which place of a run
       is a matching, methods with fewer panels first: each unit takes the list with the
       most free places among those not holding one of its panels yet (ties in a random
       order), and where none is free an augmenting path moves placed units along. In a
       small layer a matching can fail (one unit's two single panels fall to one list);
       it is tried again in other random orders, then with the methods' runs in another
       order, and only a layer no order can deal is refused. A unit with more methods
       than there are lists is refused.
    3. Targets: ``q, r = divmod(participants, n_lists)``; ``r`` random lists get
       ``q + 1``, the others ``q``.
    4. Catch trials (``catch_trials`` K > 0, drawn from a generator of their own,
       ``default_rng((seed, CATCH_STREAM))``, so that the dealing above is the same with
       and without them): every list gets K catch panels, K // 2 positive (expected yes)
       and K // 2 negative; for an odd K the extra one is positive in half the lists
       (a random half, rounded up) and negative in the others. Each kind's files are
       taken in turn from a seeded cycle of the manifest's files of that kind, so every
       file serves about equally many lists and no list shows a file twice. The K
       catches take K random positions of the list's K + n trials (n: its AM panels),
       in a random order. A catch panel gets an id of its own in every list
       (``panel-`` and 16 hexadecimal digits of a hash: the participant's browser
       sees panel ids, so an id gives nothing away), its file shared.

Output: ``study.json`` (format ``selectivity-study/1``, written atomically, every
``path`` in it relative to the file's folder). The file format (its rules, writing,
reading, checking the panel files) is :mod:`server.study_file`, shared with the server
that loads the file; this module deals the design and calls it.

API: :func:`read_panels`, :func:`read_manifests`, :func:`read_practice` (file I/O),
:func:`build_design` (pure, paths absolute), :func:`summary`, :func:`parse_sample`,
:func:`main`. Everything a user can get wrong raises :class:`DesignError` (defined in
:mod:`server.study_file`) naming what is wrong, where, and how to fix it.

Command line::

    python -m experiment.design --panels P.csv [P2.csv ...] --practice Q.csv --lists 64 \\
        --participants 333 [--sample fc6=2048] [--seed 0] \\
        [--catch 4 --catch-panels catch.csv] --out study.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import itertools
import logging
import os
import sys
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.exclusion import RuleError, parse_rules, read_rules
from analysis.table2 import method_order
from server.study_file import (
    DEFAULT_METHOD,
    DESIGN_CLI,
    FORMAT,
    MAX_LISTED,
    DesignError,
    check_files,
    is_int,
    listing,
    panel_method,
    validate_design,
    write_study,
)

__all__ = [
    "CATCH_COLUMNS",
    "PANEL_COLUMNS",
    "PRACTICE_COLUMNS",
    "DesignError",
    "build_design",
    "main",
    "parse_sample",
    "read_catch",
    "read_manifests",
    "read_panels",
    "read_practice",
    "summary",
]

log = logging.getLogger("experiment.design")  # also under python -m

#: Required columns of a panels manifest.
PANEL_COLUMNS = ("panel_id", "layer", "unit", "path")

#: Required columns of a practice manifest (``label`` and ``expected`` are optional).
PRACTICE_COLUMNS = ("panel_id", "path")

#: The values of a practice manifest's optional ``expected`` column (the answer a
#: practice panel expects; empty: not stated).
PRACTICE_EXPECTED = ("yes", "no")

#: Required columns of a catch manifest (``label``, the class a yes names, is optional for
#: a no and required for a yes).
CATCH_COLUMNS = ("panel_id", "path", "expected")

#: The catch trials' own random stream (with the seed): the dealing is the same with and
#: without them.
CATCH_STREAM = 0xCA7C4

CLI = DESIGN_CLI


# ---------------------------------------------------------------------------
# Small helpers


def _spread(values: Iterable[int]) -> str:
    """``"4"`` or ``"15-16"``: the min and max of some counts."""
    values = list(values)
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _where(frame: pd.DataFrame, default: str) -> str:
    """The manifest a DataFrame came from (set by the readers), for messages."""
    return str(frame.attrs.get("source", default))


# ---------------------------------------------------------------------------
# Reading manifests (file I/O)


def _read_csv(path: str | os.PathLike, kind: str, required: Sequence[str]) -> pd.DataFrame:
    """A manifest as text cells, stripped, with its required columns checked."""
    path = Path(path)
    if not path.is_file():
        raise DesignError(f"{path}: no such {kind} manifest (a CSV file); check the path")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise DesignError(
            f"{path}: the {kind} manifest is empty; it needs a header row "
            f"({', '.join(required)}) and one row per panel") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DesignError(f"{path}: cannot read the {kind} manifest as UTF-8 CSV ({exc}); "
                          "fix the file") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DesignError(
            f"{path}: the {kind} manifest lacks column(s) {', '.join(missing)} "
            f"(found: {', '.join(frame.columns) or 'none'}); it needs {', '.join(required)}")
    if frame.empty:
        raise DesignError(f"{path}: the {kind} manifest has a header but no rows; "
                          "add one row per panel")
    frame = frame.apply(lambda col: col.str.strip())
    return frame.reset_index(drop=True)


def _empty_cells(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    problems = []
    for col in columns:
        for i in np.flatnonzero(frame[col].to_numpy() == ""):
            problems.append(f"line {i + 2}: empty {col}")
    return problems


def _duplicates(ids: Sequence[str]) -> list[str]:
    """``"'a' (lines 2, 5)"`` for every id that occurs more than once."""
    lines: dict[str, list[int]] = {}
    for i, pid in enumerate(ids):
        lines.setdefault(pid, []).append(i + 2)
    return [f"{pid!r} (lines {', '.join(map(str, at))})"
            for pid, at in lines.items() if len(at) > 1]


def _absolute_paths(frame: pd.DataFrame, manifest: Path) -> pd.Series:
    base = os.path.abspath(manifest.parent)
    return frame["path"].map(lambda p: os.path.normpath(os.path.join(base, p)))


def _refuse_problems(path, kind: str, item: str, problems: list[str],
                     ids: Iterable[str]) -> None:
    """DesignError listing a manifest's bad cells, else its duplicate panel ids."""
    if problems:
        raise DesignError(f"{path}: {len(problems)} bad cell(s) in the {kind} manifest; "
                          f"fix them:\n{listing(problems)}")
    dups = _duplicates(list(ids))
    if dups:
        raise DesignError(f"{path}: duplicate panel_id value(s) in the {kind} manifest; "
                          f"every {item} needs its own id:\n{listing(dups)}")


def read_panels(path: str | os.PathLike, min_images: int = 1) -> pd.DataFrame:
    """The panels manifest: ``panel_id, layer, unit (int), path (absolute str)`` and, where
    the manifest has the column, ``method`` (a non-empty word each).

    Rows keep the file's order; extra columns are dropped. ``frame.attrs["source"]``
    holds ``path`` as given. Where the manifest has an ``n_images`` column (``generator.ppgn``
    writes one: a unit whose samples did not pass its threshold often enough has fewer
    than 100 images, a *short* panel), panels with fewer than ``min_images`` images are
    left out, with a warning naming them: by default only empty panels, which nobody can
    rate; ``frame.attrs["left_out"]`` lists their ids.
    """
    frame = _read_csv(path, "panels", PANEL_COLUMNS)
    has_method = "method" in frame.columns
    problems = _empty_cells(frame, PANEL_COLUMNS + (("method",) if has_method else ()))
    for i, unit in enumerate(frame["unit"]):
        if unit and not unit.isdigit():
            problems.append(f"line {i + 2}: unit {unit!r} is not a non-negative integer")
    _refuse_problems(path, "panels", "panel", problems, frame["panel_id"])
    out = pd.DataFrame({
        "panel_id": frame["panel_id"],
        "layer": frame["layer"],
        "unit": frame["unit"].astype(int),
        "path": _absolute_paths(frame, Path(path)),
    })
    if has_method:
        out["method"] = frame["method"]
    left_out: list[str] = []
    if "n_images" in frame.columns:
        counts = pd.to_numeric(frame["n_images"], errors="coerce")
        if counts.isna().any():
            bad = [f"line {i + 2}: n_images {v!r}" for i, v in
                   enumerate(frame["n_images"]) if pd.isna(counts.iloc[i])]
            raise DesignError(f"{path}: n_images must be a whole number; fix the "
                              f"manifest:\n{listing(bad)}")
        few = counts < min_images
        left_out = list(frame.loc[few, "panel_id"])
        if left_out:
            log.warning("%s: %d panel(s) with fewer than %d image(s) left out: %s", path,
                        len(left_out), min_images, ", ".join(left_out[:20])
                        + (" ..." if len(left_out) > 20 else ""))
        short = int(((counts > 0) & ~few & (counts < counts.max())).sum())
        if short:
            log.warning("%s: %d short panel(s) kept (fewer images than the others; "
                        "--min-images N leaves them out)", path, short)
        out = out.loc[~few.to_numpy()].reset_index(drop=True)
    out.attrs["source"] = str(path)
    out.attrs["left_out"] = left_out
    log.info("%s: %d panels in %d layer(s)%s", path, len(out), out["layer"].nunique(),
             f", methods {', '.join(method_order(out['method']))}" if has_method else "")
    return out


def read_manifests(paths: str | os.PathLike | Sequence[str | os.PathLike],
                   min_images: int = 1) -> pd.DataFrame:
    """One or several panels manifests (``--panels a.csv b.csv ...``) as one frame, as
    :func:`read_panels` returns it, rows in the order of the files and of their rows.

    One manifest is :func:`read_panels`'s frame as it is. Of several, every row gets a
    ``method`` (a manifest without the column holds PPGN panels,
    :data:`server.study_file.DEFAULT_METHOD`), and the panel ids must be unique across
    them (a :class:`DesignError` names each id given twice and its files).
    ``frame.attrs["sources"]`` lists the manifests as given.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise DesignError("no panels manifest: give at least one (--panels CSV [CSV ...])")
    if len(paths) == 1:
        return read_panels(paths[0], min_images)
    frames = [read_panels(path, min_images) for path in paths]
    first: dict[str, str] = {}
    clashes = []
    for path, frame in zip(paths, frames, strict=True):
        for pid in frame["panel_id"]:
            if pid in first:
                clashes.append(f"{pid!r} in {first[pid]} and {path}")
            else:
                first[pid] = str(path)
    if clashes:
        raise DesignError(f"{len(clashes)} panel id(s) occur in more than one panels "
                          "manifest; every panel needs an id of its own across them "
                          f"(generator manifests name a method's panels <method>_<layer>_"
                          f"<unit>):\n{listing(clashes)}")
    for frame in frames:
        if "method" not in frame.columns:
            frame["method"] = DEFAULT_METHOD
    out = pd.concat(frames, ignore_index=True)
    out.attrs["source"] = ", ".join(map(str, paths))
    out.attrs["sources"] = [str(path) for path in paths]
    out.attrs["left_out"] = [pid for frame in frames for pid in frame.attrs["left_out"]]
    return out


def read_practice(path: str | os.PathLike) -> pd.DataFrame:
    """The practice manifest: ``panel_id, path (absolute str), label (str or None)`` and,
    where the file has the column, ``expected`` ("yes", "no" or None)."""
    frame = _read_csv(path, "practice", PRACTICE_COLUMNS)
    problems = _empty_cells(frame, PRACTICE_COLUMNS)
    if "expected" in frame.columns:
        problems += [f"line {i + 2}: expected {value!r} is not yes, no or empty"
                     for i, value in enumerate(frame["expected"])
                     if value and value not in PRACTICE_EXPECTED]
    _refuse_problems(path, "practice", "practice panel", problems, frame["panel_id"])
    labels = frame["label"] if "label" in frame.columns else pd.Series([""] * len(frame))
    out = pd.DataFrame({
        "panel_id": frame["panel_id"],
        "path": _absolute_paths(frame, Path(path)),
        "label": [lab or None for lab in labels],
    })
    if "expected" in frame.columns:
        out["expected"] = [value or None for value in frame["expected"]]
    out.attrs["source"] = str(path)
    log.info("%s: %d practice panels", path, len(out))
    return out


def read_catch(path: str | os.PathLike) -> pd.DataFrame:
    """The catch manifest: ``panel_id, path (absolute str), expected ("yes" or "no"),
    label`` (the class a yes names; None for a no)."""
    frame = _read_csv(path, "catch", CATCH_COLUMNS)
    problems = _empty_cells(frame, ("panel_id", "path"))
    labels = frame["label"] if "label" in frame.columns else pd.Series([""] * len(frame))
    for i, (value, label) in enumerate(zip(frame["expected"], labels, strict=True)):
        if value not in PRACTICE_EXPECTED:
            problems.append(f"line {i + 2}: expected {value!r} is not yes or no")
        elif value == "yes" and not label:
            problems.append(f"line {i + 2}: a positive catch panel (expected yes) needs the "
                            "label its answer names")
        elif value == "no" and label:
            problems.append(f"line {i + 2}: a negative catch panel (expected no) has label "
                            f"{label!r}; leave it empty")
    _refuse_problems(path, "catch", "catch panel", problems, frame["panel_id"])
    out = pd.DataFrame({
        "panel_id": frame["panel_id"],
        "path": _absolute_paths(frame, Path(path)),
        "expected": frame["expected"],
        "label": pd.Series([lab or None for lab in labels], dtype=object),
    })
    out.attrs["source"] = str(path)
    log.info("%s: %d catch panels (%d positive, %d negative)", path, len(out),
             int((out["expected"] == "yes").sum()), int((out["expected"] == "no").sum()))
    return out


# ---------------------------------------------------------------------------
# The design (pure)


def _check_request(n_lists: int, participants: int, practice_trials: int, seed: int) -> None:
    if not is_int(n_lists) or n_lists < 1:
        raise DesignError(f"lists = {n_lists!r} (--lists): the number of lists must be an "
                          "integer of at least 1")
    if not is_int(participants) or participants < 0:
        raise DesignError(f"participants = {participants!r} (--participants): the number of "
                          "participants must be an integer of 0 or more")
    if not is_int(practice_trials) or practice_trials < 0:
        raise DesignError(f"practice_trials = {practice_trials!r} (--practice-trials): must "
                          "be an integer of 0 or more")
    if not is_int(seed) or seed < 0:
        raise DesignError(f"seed = {seed!r} (--seed): must be an integer of 0 or more")


def _check_frame(frame: pd.DataFrame, required: Sequence[str], kind: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DesignError(f"{_where(frame, f'the {kind} manifest')}: missing column(s) "
                          f"{', '.join(missing)}; a {kind} manifest needs {', '.join(required)}")
    dups = _duplicates([str(p) for p in frame["panel_id"]])
    if dups:
        raise DesignError(f"{_where(frame, f'the {kind} manifest')}: duplicate panel_id "
                          f"value(s); every panel needs its own id:\n{listing(dups)}")


def _panels_by_layer(panels: pd.DataFrame) -> dict[str, list[int]]:
    """Row positions of each layer's panels, layers in order of first appearance."""
    by_layer: dict[str, list[int]] = {}
    for i, layer in enumerate(panels["layer"]):
        by_layer.setdefault(str(layer), []).append(i)
    return by_layer


def _check_sample(sample: Mapping[str, int], by_layer: Mapping[str, list],
                  where: str, what: str = "panels") -> None:
    for layer, n in sample.items():
        if layer not in by_layer:
            raise DesignError(
                f"--sample {layer}={n}: {where} has no layer {layer!r} (its layers: "
                f"{', '.join(by_layer)}); name one of those")
        if not is_int(n) or n < 1:
            raise DesignError(f"--sample {layer}={n}: the sample size must be an integer of at "
                              "least 1; to leave a layer out, remove its rows from the manifest")
        if n > len(by_layer[layer]):
            raise DesignError(
                f"--sample {layer}={n}: layer {layer!r} has only {len(by_layer[layer])} "
                f"{what} in {where}; ask for at most {len(by_layer[layer])}")


def _sample(by_layer: Mapping[str, list], sample: Mapping[str, int],
            rng: np.random.Generator) -> dict[str, list]:
    """Each sampled layer's chosen rows (or units; in manifest order); other layers whole."""
    chosen = {}
    for layer, rows in by_layer.items():
        if layer in sample:
            picks = np.sort(rng.choice(len(rows), size=sample[layer], replace=False))
            chosen[layer] = [rows[i] for i in picks]
        else:
            chosen[layer] = list(rows)
    return chosen


def _deal(layers: Sequence[Sequence[str]], n_lists: int,
          rng: np.random.Generator) -> list[list[str]]:
    """Deal each layer's panel ids over ``n_lists`` lists (see the module docstring)."""
    lists: list[list[str]] = [[] for _ in range(n_lists)]
    totals = np.zeros(n_lists, dtype=np.int64)
    for ids in layers:
        shuffled = [ids[i] for i in rng.permutation(len(ids))]
        q, r = divmod(len(ids), n_lists)
        tiebreak = rng.permutation(n_lists)
        extra = np.zeros(n_lists, dtype=np.int64)
        extra[np.lexsort((tiebreak, totals))[:r]] = 1  # fewest first, then the tie-break
        start = 0
        for k in range(n_lists):
            take = q + int(extra[k])
            lists[k].extend(shuffled[start:start + take])
            start += take
        totals += q + extra
    return lists


def _units_by_layer(panels: pd.DataFrame, methods: Sequence[str],
                    where: str) -> dict[str, dict[int, dict[str, int]]]:
    """Per layer (first appearance), per unit (first appearance): the row of its panel of
    each method. Two panels of one unit and method are refused (which would be rated?)."""
    by_layer: dict[str, dict[int, dict[str, int]]] = {}
    ids = [str(p) for p in panels["panel_id"]]
    twice = []
    for i, (layer, unit, method) in enumerate(zip(panels["layer"], panels["unit"], methods,
                                                  strict=True)):
        rows = by_layer.setdefault(str(layer), {}).setdefault(_to_unit(unit, ids[i]), {})
        if method in rows:
            twice.append(f"{layer} unit {unit}, method {method}: panels {ids[rows[method]]!r} "
                         f"and {ids[i]!r}")
        else:
            rows[method] = i
    if twice:
        raise DesignError(f"{where}: {len(twice)} unit(s) have two panels of one method; keep "
                          f"one panel per unit and method:\n{listing(twice)}")
    return by_layer


def _check_methods(units: Mapping[str, Mapping[int, Mapping[str, int]]], n_lists: int,
                   where: str) -> None:
    """Refuse a unit with more methods than there are lists: its panels need a list each."""
    for layer, of_layer in units.items():
        for unit, rows in of_layer.items():
            if len(rows) > n_lists:
                raise DesignError(
                    f"lists = {n_lists} (--lists) but {where} has {len(rows)} panels of "
                    f"{layer} unit {unit} ({', '.join(method_order(rows))}): nobody may see "
                    "a unit twice, so each of a unit's panels needs a list of its own; ask "
                    f"for at least {len(rows)} lists, or leave a method out")


def _match(members: Sequence[int], free: np.ndarray, used: Mapping[int, set[int]],
           order: Sequence[int]) -> dict[int, int] | None:
    """Place every unit of ``members`` in a list with a free place (``free``: places per
    list) that holds none of its panels yet (``used``), or None where that is impossible.

    Each unit in turn takes the allowed list with the most free places (ties: first in
    ``order``); where no allowed list has one, a breadth-first augmenting path moves placed
    units along to allowed lists until one with a free place is reached (a maximum
    bipartite b-matching, so a placement is found whenever one exists)."""
    free = free.astype(np.int64).copy()
    holders: list[list[int]] = [[] for _ in range(len(free))]
    at: dict[int, int] = {}
    for unit in members:
        allowed = [k for k in order if k not in used[unit]]
        open_ = [k for k in allowed if free[k] > 0]
        if open_:
            k = max(open_, key=lambda k: free[k])   # the first of the most free
            holders[k].append(unit)
            at[unit] = k
            free[k] -= 1
            continue
        parent: dict[int, tuple[int | None, int]] = {k: (None, unit) for k in allowed}
        queue, end = deque(allowed), None
        while queue:
            k = queue.popleft()
            if free[k] > 0:
                end = k
                break
            for other in holders[k]:
                for k2 in order:
                    if k2 not in parent and k2 not in used[other]:
                        parent[k2] = (k, other)
                        queue.append(k2)
        if end is None:
            return None
        free[end] -= 1
        k = end
        while True:       # each unit on the path moves one list along
            previous, mover = parent[k]
            holders[k].append(mover)
            at[mover] = k
            if previous is None:
                break
            holders[previous].remove(mover)
            k = previous
    return at


def _deal_methods(layers: Mapping[str, Mapping[int, Mapping[str, str]]],
                  methods: Sequence[str], n_lists: int,
                  rng: np.random.Generator) -> list[list[str]]:
    """Deal panels of several methods (``layers``: per layer, per unit, its panel id of each
    method) over ``n_lists`` lists: module docstring, step 2b. Every list gets a layer's
    panels method by method (``methods`` order), the units in their shuffled order."""
    lists: list[list[str]] = [[] for _ in range(n_lists)]
    cycle = rng.permutation(n_lists)
    start = 0
    for layer, of_layer in layers.items():
        keys = list(of_layer)
        shuffled = [keys[i] for i in rng.permutation(len(keys))]
        members = {m: [u for u in shuffled if m in of_layer[u]] for m in methods}
        present = [m for m in methods if members[m]]
        placed = None
        for order in itertools.islice(itertools.permutations(present), RUN_ORDERS):
            runs, at = [], start
            for method in order:
                places = cycle[(at + np.arange(len(members[method]))) % n_lists]
                runs.append((method, members[method], np.bincount(places, minlength=n_lists)))
                at += len(members[method])
            placed = _place(runs, n_lists, rng)
            if placed is not None:
                break
        if placed is None:
            raise DesignError(
                f"cannot deal layer {layer!r}'s panels of {len(present)} methods over "
                f"{n_lists} lists so that no list holds a unit twice and every layer x method "
                "is spread evenly; try another --seed or more lists")
        start += sum(len(members[m]) for m in present)
        for method in present:
            for unit in members[method]:
                lists[placed[(method, unit)]].append(of_layer[unit][method])
    return lists


#: How many orders of a layer's methods :func:`_deal_methods` tries (in the lists' cycle;
#: the first is the methods' own order): the order decides which lists a method's extra
#: panels fall to, and in a small layer some orders leave no placement (one unit's two
#: single panels in one list).
RUN_ORDERS = 24

#: How often :func:`_place` tries an order's matching, each time in another random order.
PLACE_TRIES = 10


def _place(runs: Sequence[tuple[str, list[int], np.ndarray]], n_lists: int,
           rng: np.random.Generator) -> dict[tuple[str, int], int] | None:
    """The list of every (method, unit) of a layer: ``runs`` gives each method's units and
    its free places per list. Methods are matched one by one (:func:`_match`), fewest
    panels first, and a unit's lists kept apart; the matching of one method can leave a
    later one none (rare, in small layers), so a failed try starts again with the method
    that failed matched first and the lists in another random order, up to
    :data:`PLACE_TRIES` times. None when every try failed."""
    order = sorted(range(len(runs)), key=lambda i: len(runs[i][1]))
    for _ in range(PLACE_TRIES):
        used: dict[int, set[int]] = {u: set() for _, members, _ in runs for u in members}
        placed: dict[tuple[str, int], int] = {}
        for i in order:
            method, members, free = runs[i]
            at = _match(members, free, used, [int(k) for k in rng.permutation(n_lists)])
            if at is None:
                order.remove(i)
                order.insert(0, i)
                break
            for unit, k in at.items():
                used[unit].add(k)
                placed[(method, unit)] = k
        else:
            return placed
    return None


def _targets(participants: int, n_lists: int, rng: np.random.Generator) -> list[int]:
    q, r = divmod(participants, n_lists)
    targets = np.full(n_lists, q, dtype=np.int64)
    targets[rng.choice(n_lists, size=r, replace=False)] += 1
    return [int(t) for t in targets]


def _practice(practice: pd.DataFrame, practice_trials: int,
              main_ids: set[str]) -> tuple[list[str], dict[str, dict]]:
    where = _where(practice, "the practice manifest")
    if len(practice) < practice_trials:
        raise DesignError(
            f"practice_trials = {practice_trials} (--practice-trials) but {where} has only "
            f"{len(practice)} practice panel(s); add rows to it or ask for fewer trials")
    chosen = practice.iloc[:practice_trials]
    ids = [str(p) for p in chosen["panel_id"]]
    clash = [p for p in ids if p in main_ids]
    if clash:
        raise DesignError(
            f"{where}: practice panel id(s) {', '.join(map(repr, clash[:MAX_LISTED]))} are also "
            "main panel ids; rename them so that every id is unique across both manifests")
    labels = chosen["label"] if "label" in chosen.columns else [None] * len(chosen)
    expected = chosen["expected"] if "expected" in chosen.columns else [None] * len(chosen)
    entries = {}
    for pid, path, label, answer in zip(ids, chosen["path"], labels, expected, strict=True):
        entries[pid] = {"path": os.path.abspath(str(path)),
                        "label": None if label is None or pd.isna(label) or label == ""
                        else str(label)}
        if answer is not None and not pd.isna(answer) and answer != "":
            entries[pid]["expected"] = str(answer)  # optional: absent where not stated
    return ids, entries


def catch_id(seed: int, list_id: int, slot: int, source: str) -> str:
    """The id of a catch trial: ``panel-`` and 16 hexadecimal digits of a hash of the seed,
    the list, the slot and the catch file's id (the browser sees panel ids: nothing in it
    tells a catch from another panel, or its answer)."""
    text = f"catch/{seed}/{list_id}/{slot}/{source}"
    return "panel-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_catch(catch: pd.DataFrame | None, catch_trials: int) -> None:
    if not is_int(catch_trials) or catch_trials < 0:
        raise DesignError(f"catch_trials = {catch_trials!r} (--catch): must be an integer of "
                          "0 or more")
    if catch_trials and catch is None:
        raise DesignError(f"catch_trials = {catch_trials} (--catch) needs catch panels "
                          "(--catch-panels catch.csv; python -m generator.panels catch "
                          "makes them)")
    if catch is not None:
        _check_frame(catch, CATCH_COLUMNS, "catch")


def _catch_count(kind: str, half: int, odd: int, extra_yes: bool) -> int:
    """How many catch panels of ``kind`` (yes or no) a list gets."""
    if kind == "yes":
        return half + (odd if extra_yes else 0)
    return half + (0 if extra_yes else odd)


def _catch(catch: pd.DataFrame, catch_trials: int, dealt: Sequence[Sequence[str]],
           list_ids: Sequence[int], taken: set[str],
           seed: int) -> tuple[dict[str, dict], list[list[dict]]]:
    """The catch trials (module docstring, step 4): the entries of ``catch_panels`` and,
    per list, its ``catch`` (``{"panel": id, "position": p}``, by position)."""
    where = _where(catch, "the catch manifest")
    rng = np.random.default_rng((seed, CATCH_STREAM))
    n_lists = len(dealt)
    half, odd = divmod(catch_trials, 2)
    extra_yes = np.zeros(n_lists, dtype=bool)
    if odd:
        extra_yes[rng.permutation(n_lists)[:(n_lists + 1) // 2]] = True
    kinds = {}
    for kind in PRACTICE_EXPECTED:
        rows = [i for i, value in enumerate(catch["expected"]) if value == kind]
        need = max(_catch_count(kind, half, odd, bool(extra_yes[k])) for k in range(n_lists))
        if need > len(rows):
            what = "positive (expected yes)" if kind == "yes" else "negative (expected no)"
            raise DesignError(
                f"catch_trials = {catch_trials} (--catch): a list needs {need} {what} catch "
                f"panel(s) but {where} has {len(rows)}; a list never shows a file twice: make "
                f"more (python -m generator.panels catch --{'positive' if kind == 'yes' else 'negative'} "
                f"{need}) or ask for fewer catch trials")
        kinds[kind] = [rows[i] for i in rng.permutation(len(rows))]
    cursor = dict.fromkeys(PRACTICE_EXPECTED, 0)
    ids = [str(p) for p in catch["panel_id"]]
    entries: dict[str, dict] = {}
    per_list: list[list[dict]] = []
    for k in range(n_lists):
        chosen = []
        for kind in PRACTICE_EXPECTED:
            n = _catch_count(kind, half, odd, bool(extra_yes[k]))
            pool = kinds[kind]
            chosen += [pool[(cursor[kind] + j) % len(pool)] for j in range(n)]
            cursor[kind] += n
        order = rng.permutation(len(chosen))
        positions = np.sort(rng.choice(len(dealt[k]) + catch_trials, size=catch_trials,
                                       replace=False))
        trials = []
        for slot, (row, position) in enumerate(zip((chosen[i] for i in order), positions,
                                                   strict=True)):
            pid = catch_id(seed, list_ids[k], slot, ids[row])
            if pid in taken or pid in entries:
                raise DesignError(f"catch trial id {pid!r} of list {list_ids[k]} is taken "
                                  "already; run the design with another --seed")
            label = catch["label"].iat[row] if "label" in catch.columns else None
            entries[pid] = {"path": os.path.abspath(str(catch["path"].iat[row])),
                            "catch": True,
                            "catch_expected": str(catch["expected"].iat[row]),
                            "catch_class": None if label is None or pd.isna(label)
                            or label == "" else str(label),
                            "catch_id": ids[row]}
            trials.append({"panel": pid, "position": int(position)})
        per_list.append(trials)
    return entries, per_list


def _methods(panels: pd.DataFrame, where: str) -> list[str] | None:
    """Every row's method, or None where the panels are PPGN panels alone (no ``method``
    column, or ``ppgn`` throughout): such a design is dealt and written as before methods."""
    if "method" not in panels.columns:
        return None
    methods = ["" if pd.isna(m) else str(m).strip() for m in panels["method"]]
    empty = [f"panel {pid!r}" for pid, m in zip(panels["panel_id"], methods, strict=True)
             if not m]
    if empty:
        raise DesignError(f"{where}: {len(empty)} panel(s) without a method; name each "
                          f"panel's method (ppgn, fourier, natural, ...):\n{listing(empty)}")
    return None if set(methods) == {DEFAULT_METHOD} else methods


def _to_unit(value: Any, pid: str) -> int:
    try:
        unit = int(value)
    except (TypeError, ValueError):
        unit = -1
    if unit < 0 or str(value).strip() not in (str(unit), f"{unit}.0"):
        raise DesignError(f"panel {pid!r}: unit {value!r} is not a non-negative integer")
    return unit


def build_design(panels: pd.DataFrame, practice: pd.DataFrame, n_lists: int,
                 participants: int, sample: Mapping[str, int] | None = None, seed: int = 0,
                 practice_trials: int = 6, catch: pd.DataFrame | None = None,
                 catch_trials: int = 0) -> dict:
    """The study dict for a request: absolute paths, no sha256, no file I/O.

    ``panels`` has columns ``panel_id, layer, unit, path`` and optionally ``method``
    (:func:`read_manifests`; panels of any method but ``ppgn`` are dealt by unit, module
    docstring step 2b, and their entries carry ``method``); ``practice`` has
    ``panel_id, path`` and optionally ``label`` (as :func:`read_panels` and
    :func:`read_practice` return them); ``catch`` (needed when ``catch_trials`` > 0) has
    ``panel_id, path, expected`` and ``label`` (:func:`read_catch`). Raises
    :class:`DesignError` for an impossible request. Without catch trials the study has
    no catch keys (a file as before them).
    """
    sample = dict(sample or {})
    _check_request(n_lists, participants, practice_trials, seed)
    _check_frame(panels, PANEL_COLUMNS, "panels")
    _check_frame(practice, PRACTICE_COLUMNS, "practice")
    _check_catch(catch, catch_trials)
    where = _where(panels, "the panels manifest")
    if panels.empty:
        raise DesignError(f"{where}: no panels; the manifest needs one row per panel")
    by_layer = _panels_by_layer(panels)
    ids = [str(p) for p in panels["panel_id"]]
    methods = _methods(panels, where)
    if methods is None:     # PPGN panels alone: dealt as before methods
        _check_sample(sample, by_layer, where)
        rng = np.random.default_rng(seed)
        chosen = _sample(by_layer, sample, rng)
        in_design = sorted(i for rows in chosen.values() for i in rows)
    else:                   # several methods: units are sampled and dealt (step 2b)
        units = _units_by_layer(panels, methods, where)
        unit_keys = {layer: list(of_layer) for layer, of_layer in units.items()}
        _check_sample(sample, unit_keys, where, "units")
        rng = np.random.default_rng(seed)
        chosen_units = _sample(unit_keys, sample, rng)
        dealing = {layer: {u: {m: ids[row] for m, row in units[layer][u].items()}
                           for u in chosen_units[layer]} for layer in units}
        in_design = sorted(row for layer, picked in chosen_units.items() for u in picked
                           for row in units[layer][u].values())
    n_panels = len(in_design)
    if n_lists > n_panels:
        raise DesignError(
            f"lists = {n_lists} (--lists) but the design has only {n_panels} panels"
            f"{' after sampling' if sample else ''}, and every list needs at least one; "
            f"ask for at most {n_panels} lists")
    if participants < n_lists:
        raise DesignError(
            f"participants = {participants} (--participants) but lists = {n_lists} (--lists): "
            f"{n_lists - participants} list(s) would have no participant, and their panels "
            f"would never be rated; ask for at most {participants} lists or at least "
            f"{n_lists} participants")
    if methods is None:
        dealt = _deal([[ids[i] for i in rows] for rows in chosen.values()], n_lists, rng)
    else:
        _check_methods({layer: {u: units[layer][u] for u in picked}
                        for layer, picked in chosen_units.items()}, n_lists, where)
        dealt = _deal_methods(dealing, method_order(methods), n_lists, rng)
    targets = _targets(participants, n_lists, rng)
    practice_ids, practice_panels = _practice(practice, practice_trials, set(ids))

    panel_entries = {}
    for i in in_design:
        entry = {"layer": str(panels["layer"].iat[i]),
                 "unit": _to_unit(panels["unit"].iat[i], ids[i])}
        if methods is not None:
            entry["method"] = methods[i]
        entry["path"] = os.path.abspath(str(panels["path"].iat[i]))
        panel_entries[ids[i]] = entry
    study = {
        "format": FORMAT,
        "seed": int(seed),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "participants": int(participants),
        "practice_trials": int(practice_trials),
        "sample": {layer: int(sample[layer]) for layer in by_layer if layer in sample},
        "source": {"panels": panels.attrs.get("sources", panels.attrs.get("source")),
                   "practice": practice.attrs.get("source")},
        "layers": list(by_layer),
        "panels": panel_entries,
        "practice": practice_ids,
        "practice_panels": practice_panels,
        "lists": [{"id": k + 1, "target": targets[k], "panels": dealt[k]}
                  for k in range(n_lists)],
    }
    if catch_trials:
        entries, per_list = _catch(catch, catch_trials, dealt,
                                   [lst["id"] for lst in study["lists"]],
                                   set(ids) | set(practice_ids), seed)
        study["catch_trials"] = int(catch_trials)
        study["catch_panels"] = entries
        study["source"]["catch"] = catch.attrs.get("source")
        for lst, trials in zip(study["lists"], per_list, strict=True):
            lst["catch"] = trials
    return study


# ---------------------------------------------------------------------------
# Summary


def _targets_text(targets: Sequence[int]) -> str:
    """``"51 x 5 + 13 x 6"``: how many lists have each target."""
    counts = sorted(Counter(targets).items())
    return " + ".join(f"{n} x {t}" for t, n in counts)


def _table(rows: Sequence[Sequence[str]]) -> str:
    width0 = max(len(r[0]) for r in rows)
    width1 = max(len(r[1]) for r in rows)
    lines = [f"{r[0]:<{width0}}  {r[1]:>{width1}}  {r[2]}".rstrip() for r in rows]
    return "\n".join(lines)


def summary(study: Mapping) -> str:
    """A plain-text table of a study: layers (and, where panels carry methods, every
    layer x method), lists, participants, practice trials."""
    lists, panels = study["lists"], study["panels"]
    sample = study.get("sample") or {}
    with_methods = any("method" in entry for entry in panels.values())
    methods = method_order(panel_method(e) for e in panels.values()) if with_methods else []
    rows = [("", "panels", "per list")]
    for layer in study["layers"]:
        counts = [sum(panels[p]["layer"] == layer for p in lst["panels"]) for lst in lists]
        note = "  (sampled)" if layer in sample else ""
        if with_methods:
            n_units = len({e["unit"] for e in panels.values() if e["layer"] == layer})
            note = f"  {n_units} units" + ("; sampled" if layer in sample else "")
        rows.append((layer, str(sum(counts)), _spread(counts) + note))
        for method in methods:
            counts = [sum(panels[p]["layer"] == layer and panel_method(panels[p]) == method
                          for p in lst["panels"]) for lst in lists]
            if sum(counts):
                rows.append((f"  {layer} / {method}", str(sum(counts)), _spread(counts)))
    sizes = [len(lst["panels"]) for lst in lists]
    rows.append(("all layers", str(len(panels)), _spread(sizes)))
    rows.append(("", "", ""))
    rows.append(("lists", str(len(lists)), f"{_spread(sizes)} panels each"))
    rows.append(("participants", str(study["participants"]),
                 "targets " + _targets_text([lst["target"] for lst in lists])))
    rows.append(("practice trials", str(study["practice_trials"]), ""))
    if study.get("catch_trials"):
        expected = Counter(e["catch_expected"] for e in study["catch_panels"].values())
        files = len({e["catch_id"] for e in study["catch_panels"].values()})
        rows.append(("catch trials", str(study["catch_trials"]),
                     f"per list; {expected['yes']} yes + {expected['no']} no in all, "
                     f"from {files} files"))
    if study.get("exclusion_rules"):
        rules = parse_rules(study["exclusion_rules"])
        rows += [("exclusion rule", name, line.split(": ", 1)[1])
                 for name, line in zip(rules.rules, rules.describe(), strict=True)]
    return _table(rows)


# ---------------------------------------------------------------------------
# Command line


def parse_sample(items: Sequence[str] | None) -> dict[str, int]:
    """``["fc6=2048"]`` to ``{"fc6": 2048}``; a clear :class:`DesignError` otherwise."""
    sample: dict[str, int] = {}
    for item in items or ():
        layer, eq, n = item.rpartition("=")
        layer = layer.strip()
        if not eq or not layer or not n.strip().isdigit():
            raise DesignError(f"--sample {item}: expected LAYER=N with N a whole number, "
                              "e.g. --sample fc6=2048")
        if layer in sample:
            raise DesignError(f"--sample {item}: layer {layer!r} is sampled twice; give it once")
        sample[layer] = int(n)
    return sample


def _parser(prog: str = CLI) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Design the rating study (docs/study-design.md): deal every panel of the panels "
            "manifest(s) into exactly one list, each layer (and each layer x method, no "
            "list holding a unit twice) spread as evenly as possible, give each list "
            "a participant target (the targets sum to --participants), pick the practice "
            "panels, add --catch K catch trials to every list, check the files and write "
            "study.json. Deterministic for a seed. The "
            "summary table goes to stdout, progress to stderr."),
        epilog=(f"example (the paper): {prog} --panels panels.csv --practice practice.csv "
                "--lists 64 --participants 333 --sample fc6=2048 --seed 0 --out study.json"),
    )
    parser.add_argument("--panels", required=True, metavar="CSV", nargs="+",
                        help="panels manifest(s) with columns panel_id, layer, unit, path "
                             "and optionally method (ppgn, fourier, natural, ...; without "
                             "it: ppgn); extra columns ignored; relative paths are relative "
                             "to the CSV's folder. Panels of several methods (several "
                             "manifests, or a method column) are dealt by unit: no list "
                             "holds a unit twice, and every layer x method is spread evenly")
    parser.add_argument("--practice", required=True, metavar="CSV",
                        help="practice manifest with columns panel_id, path and optionally "
                             "label and expected (yes/no); its first --practice-trials rows "
                             "are used")
    parser.add_argument("--lists", required=True, type=int, metavar="N",
                        help="number of lists (at least 1, at most the number of panels)")
    parser.add_argument("--participants", required=True, type=int, metavar="N",
                        help="total participants, shared among the lists as evenly as possible")
    parser.add_argument("--sample", action="append", metavar="LAYER=N",
                        help="keep only N panels of LAYER, drawn at random without "
                             "replacement; repeat for several layers (default: every panel)")
    parser.add_argument("--practice-trials", type=int, default=6, metavar="N",
                        help="number of practice trials (default 6)")
    parser.add_argument("--catch", type=int, default=0, metavar="K",
                        help="catch trials in every list (default 0): K panels of "
                             "--catch-panels, half expected yes and half no (an odd K's "
                             "extra one yes in half the lists), at random positions among "
                             "the list's trials, drawn with --seed")
    parser.add_argument("--catch-panels", metavar="CSV",
                        help="catch manifest with columns panel_id, path, expected (yes/no) "
                             "and label (the class a yes names), as python -m generator.panels "
                             "catch writes it")
    parser.add_argument("--exclusion-rules", metavar="TOML",
                        help="pre-registered exclusion rules (docs/exclusion.md), written "
                             "into the study file and applied by the server to every "
                             "participant who finishes (default: none, as in the paper)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random sampling and dealing (default 0)")
    parser.add_argument("--out", required=True, metavar="JSON",
                        help="study file to write (paths in it are relative to its folder)")
    parser.add_argument("--min-images", type=int, default=1, metavar="N",
                        help="leave out panels with fewer than N images, where the manifest "
                             "has an n_images column (short AM panels; default 1: only "
                             "empty panels)")
    parser.add_argument("--no-check-images", action="store_true",
                        help="only check that the panel files exist; do not open each image")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """The command line (``prog``: the program name in help and errors); the exit status."""
    args = _parser(prog or CLI).parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.catch_panels and not args.catch:
            raise DesignError("--catch-panels without --catch K: say how many catch trials "
                              "every list gets")
        study = build_design(read_manifests(args.panels, args.min_images),
                             read_practice(args.practice),
                             n_lists=args.lists, participants=args.participants,
                             sample=parse_sample(args.sample), seed=args.seed,
                             practice_trials=args.practice_trials,
                             catch=read_catch(args.catch_panels) if args.catch_panels else None,
                             catch_trials=args.catch)
        study["source"] = {"panels": args.panels[0] if len(args.panels) == 1 else args.panels,
                           "practice": args.practice}
        if args.catch:
            study["source"]["catch"] = args.catch_panels
        if args.exclusion_rules:
            rules = read_rules(args.exclusion_rules)
            if "catch" in rules.rules and not args.catch:
                log.warning("%s: the catch rule has no catch trials to judge without "
                            "--catch K", args.exclusion_rules)
            study["exclusion_rules"] = rules.to_json()
            study["source"]["exclusion_rules"] = args.exclusion_rules
        validate_design(study)
        check_files(study, open_images=not args.no_check_images)
        write_study(study, args.out)
    except (DesignError, RuleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc}; check the folder and its permissions",
              file=sys.stderr)
        return 2
    print(summary(study))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
