"""Reference implementation of the selectivity measures: one unit at a time, straight from the definitions.

This module is the *oracle*: it is written for clarity, not speed, and is what the
fast vectorised engine (:mod:`analysis.selectivity`) is tested against. It is also
the "naive per-unit numpy" baseline of the selectivity benchmark. Do not optimise it
beyond what keeps it obviously correct; do not make it share code with the engine.

Definitions follow docs/measures.md, with these binding conventions:

* Classes are ``0 .. n_classes-1``. A class with no images is *absent* and is left out
  of every argmax / argmin and every maximum "over classes". Ties between classes go
  to the lowest class index, everywhere.
* Everything is computed in float64 (the activations are cast once, exactly).
  Quantities that are ratios of image counts (precision@k, informedness) are compared
  in exact integer arithmetic, so class ties among them are decided exactly; each
  value is then returned as the correctly rounded float of the exact ratio.
* Undefined ratios (zero denominators, nothing to compare with) are NaN, never an
  exception and never a silent 0.

Columns (in this order; see :data:`COLUMNS`):

``ccmas``, ``ccmas_class``
    A = present class with the highest mean; ``(mu_A - mu_notA) / (mu_A + mu_notA)``.
    ``mu_notA`` is the mean over all images outside A (``ccmas_mode="pooled"``) or the
    mean of the other present classes' means (``ccmas_mode="class_means"``). NaN with a
    zero denominator or a single present class (``ccmas_class`` is still A).
``ccmas_2``, ``ccmas_2_class``
    B = present class with the highest mean once A is removed;
    ``(mu_B - mu_notAB) / (mu_B + mu_notAB)``, ``mu_notAB`` pooled over the images
    outside A and B (whatever ``ccmas_mode``). NaN with a zero denominator or no image
    outside A and B; NaN and class -1 with fewer than two present classes.
``top_class``, ``top_cluster_size``, ``tcs``
    T = class of the most active image (lowest index if several classes share the
    maximum); m2 = maximum over the images outside T (-inf if none); the cluster is the
    images of T with activation strictly above m2 (0 if the maximum is shared);
    ``tcs = top_cluster_size / n_T`` in [0, 1].
``localist``, ``localist_class``
    With at least two present classes: ``'on'`` for T if min over T > max over not-T;
    else ``'off'`` for A' (present class with the lowest minimum) if max over A' < min
    over not-A'; else ``''`` and -1 (also ``''``/-1 with fewer than two present classes).
``precision_60``, ``precision_60_class``, ``precision_100``, ``precision_100_class``
    ``k_eff = min(k, N)``; v = the k_eff-th largest activation; images above v count
    fully, the images tied at v share the remaining slots uniformly at random
    (expected counts ``E_c = g_c + t_c * r / t``); precision = ``max_c E_c / k_eff``.
``max_informedness``, ``max_informedness_class``
    For a present class c, thresholds at the distinct activation values, predicted
    positive = ``a >= v``: informedness_c = max(0, max_v hit - false alarm), with
    hit = TP / n_c and false alarm = FP / (N - n_c) (0 when N == n_c). Maximum over
    present classes and the lowest class reaching it.
``top_class_max_informedness``, ``top_class_recall_at_precision_95``,
``top_class_recall_at_precision_100``, ``top_class_average_precision``, ``top_class_max_f1``
    The signal-detection measures for c = T: informedness_T; the best recall TP / n_T
    over thresholds whose precision TP / P is >= 0.95 (tested as ``20 TP >= 19 P``) or
    == 1 (0 if none); average precision ``sum_i (R_i - R_{i-1}) Prec_i`` over the
    thresholds in descending order with R_{-1} = 0 (scikit-learn's definition); and the
    best F1 ``2 TP / (P + n_T)``.
``mean_activation``, ``max_activation``, ``dead``
    Over all images; ``dead`` is True iff every activation is exactly 0.

Torch is never imported here (docs/architecture.md).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd

__all__ = ["COLUMNS", "CCMAS_MODES", "reference_unit", "reference_measures"]

#: Output columns, in order (the engine's :func:`analysis.selectivity.unit_measures` has the same).
COLUMNS: tuple[str, ...] = (
    "unit",
    "ccmas",
    "ccmas_class",
    "ccmas_2",
    "ccmas_2_class",
    "top_class",
    "top_cluster_size",
    "tcs",
    "localist",
    "localist_class",
    "precision_60",
    "precision_60_class",
    "precision_100",
    "precision_100_class",
    "max_informedness",
    "max_informedness_class",
    "top_class_max_informedness",
    "top_class_recall_at_precision_95",
    "top_class_recall_at_precision_100",
    "top_class_average_precision",
    "top_class_max_f1",
    "mean_activation",
    "max_activation",
    "dead",
)

#: Allowed values of ``ccmas_mode``.
CCMAS_MODES: tuple[str, ...] = ("pooled", "class_means")

_INT_COLUMNS = (
    "unit",
    "ccmas_class",
    "ccmas_2_class",
    "top_class",
    "top_cluster_size",
    "localist_class",
    "precision_60_class",
    "precision_100_class",
    "max_informedness_class",
)

NAN = float("nan")


# --------------------------------------------------------------------------- helpers


def _check_inputs(a, y, n_classes: int, ccmas_mode: str) -> tuple[np.ndarray, np.ndarray, int]:
    if ccmas_mode not in CCMAS_MODES:
        raise ValueError(f"ccmas_mode must be one of {CCMAS_MODES}, got {ccmas_mode!r}")
    a = np.asarray(a)
    y = np.asarray(y)
    n_classes = int(n_classes)
    if a.ndim != 1:
        raise ValueError(f"activations of one unit must be 1-d, got shape {a.shape}")
    if y.shape != a.shape:
        raise ValueError(f"labels shape {y.shape} does not match activations shape {a.shape}")
    if a.size == 0:
        raise ValueError("a unit needs at least one image")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}, got {y.min()}..{y.max()}")
    a = a.astype(np.float64)  # exact for float32 input
    if not np.all(np.isfinite(a)):
        raise ValueError("activations must be finite")
    return a, y.astype(np.int64), n_classes


def _ratio(num: float, den: float) -> float:
    """num / den, NaN when den is exactly 0 (never an exception or a warning)."""
    if den == 0:
        return NAN
    return float(num / den)


def _best_class(values: dict[int, float]) -> int:
    """Class with the largest value; lowest class index on ties (dict keys ascending)."""
    best = None
    for c in sorted(values):
        if best is None or values[c] > values[best]:
            best = c
    return best


# --------------------------------------------------------------------------- measures


def _ccmas(a, y, present, mode) -> dict:
    means = {c: float(np.mean(a[y == c])) for c in present}
    cls_a = _best_class(means)
    mu_a = means[cls_a]

    if len(present) < 2:
        ccmas = NAN
    else:
        if mode == "pooled":
            mu_not_a = float(np.mean(a[y != cls_a]))
        else:  # "class_means": unweighted mean of the other present classes' means
            mu_not_a = float(np.mean([means[c] for c in present if c != cls_a]))
        ccmas = _ratio(mu_a - mu_not_a, mu_a + mu_not_a)

    if len(present) < 2:
        ccmas_2, cls_b = NAN, -1
    else:
        cls_b = _best_class({c: m for c, m in means.items() if c != cls_a})
        mu_b = means[cls_b]
        outside = (y != cls_a) & (y != cls_b)
        if not outside.any():
            ccmas_2 = NAN
        else:
            mu_not_ab = float(np.mean(a[outside]))
            ccmas_2 = _ratio(mu_b - mu_not_ab, mu_b + mu_not_ab)

    return {"ccmas": ccmas, "ccmas_class": cls_a, "ccmas_2": ccmas_2, "ccmas_2_class": cls_b}


def _top_class(a, y) -> int:
    """Class of the most active image; lowest class index if several classes share it."""
    return int(y[a == a.max()].min())


def _top_cluster(a, y, top) -> dict:
    in_t = y == top
    m2 = a[~in_t].max() if (~in_t).any() else -np.inf
    size = int(np.sum(a[in_t] > m2))
    return {"top_cluster_size": size, "tcs": size / int(in_t.sum())}


def _localist(a, y, present, top) -> dict:
    if len(present) < 2:
        return {"localist": "", "localist_class": -1}
    in_t = y == top
    if a[in_t].min() > a[~in_t].max():
        return {"localist": "on", "localist_class": top}
    minima = {c: float(a[y == c].min()) for c in present}
    lowest = min(present, key=lambda c: (minima[c], c))
    in_l = y == lowest
    if a[in_l].max() < a[~in_l].min():
        return {"localist": "off", "localist_class": lowest}
    return {"localist": "", "localist_class": -1}


def _precision_at(a, y, present, n_classes, k) -> tuple[float, int]:
    n = a.size
    k_eff = min(k, n)
    v = np.sort(a)[::-1][k_eff - 1]  # the k_eff-th largest activation
    g = np.bincount(y[a > v], minlength=n_classes)  # certainly in the top k_eff
    t = np.bincount(y[a == v], minlength=n_classes)  # tied at v: share the rest
    r = k_eff - int(g.sum())  # slots left for the tied images
    t_all = int(t.sum())  # >= 1: v is itself an activation
    # Expected count E_c = g_c + t_c * r / t_all, kept exact as E_c * t_all (an integer).
    scaled = {c: int(g[c]) * t_all + int(t[c]) * r for c in present}
    best = _best_class(scaled)
    return float(Fraction(scaled[best], t_all * k_eff)), best


def _counts_by_threshold(a, y, n_classes):
    """Distinct thresholds (descending), P and per-class TP at each (a >= threshold)."""
    thresholds = np.unique(a)[::-1]
    p = np.empty(thresholds.size, dtype=np.int64)
    tp = np.empty((thresholds.size, n_classes), dtype=np.int64)
    for i, v in enumerate(thresholds):
        positive = a >= v
        p[i] = positive.sum()
        tp[i] = np.bincount(y[positive], minlength=n_classes)
    return thresholds, p, tp


def _informedness(p, tp_c, n, n_c) -> Fraction:
    """max(0, max over thresholds of TP/n_c - FP/(n - n_c)), exactly."""
    fp = p - tp_c
    if n == n_c:  # no negatives: false alarm is 0 by convention
        return max(Fraction(0), Fraction(int(tp_c.max()), n_c))
    # hit - fa = (TP (n - n_c) - FP n_c) / (n_c (n - n_c)); maximise the integer numerator
    numer = tp_c * (n - n_c) - fp * n_c
    return max(Fraction(0), Fraction(int(numer.max()), n_c * (n - n_c)))


def _signal_detection(a, y, present, n_classes, top) -> dict:
    n = a.size
    counts = np.bincount(y, minlength=n_classes)
    _, p, tp = _counts_by_threshold(a, y, n_classes)

    informedness = {c: _informedness(p, tp[:, c], n, int(counts[c])) for c in present}
    best = _best_class(informedness)

    n_t = int(counts[top])
    tp_t = tp[:, top]
    # recall at precision >= 0.95 / == 1, in integers (precision = TP / P, P >= 1 here)
    ok_95 = 20 * tp_t >= 19 * p
    ok_100 = tp_t == p
    recall_95 = Fraction(int(tp_t[ok_95].max()), n_t) if ok_95.any() else Fraction(0)
    recall_100 = Fraction(int(tp_t[ok_100].max()), n_t) if ok_100.any() else Fraction(0)
    # average precision: thresholds in descending order, R_{-1} = 0
    ap = Fraction(0)
    prev_tp = 0
    for p_i, tp_i in zip(p.tolist(), tp_t.tolist(), strict=True):
        ap += Fraction(tp_i - prev_tp, n_t) * Fraction(tp_i, p_i)
        prev_tp = tp_i
    max_f1 = max(
        Fraction(2 * tp_i, p_i + n_t) for p_i, tp_i in zip(p.tolist(), tp_t.tolist(), strict=True)
    )

    return {
        "max_informedness": float(informedness[best]),
        "max_informedness_class": best,
        "top_class_max_informedness": float(informedness[top]),
        "top_class_recall_at_precision_95": float(recall_95),
        "top_class_recall_at_precision_100": float(recall_100),
        "top_class_average_precision": float(ap),
        "top_class_max_f1": float(max_f1),
    }


# --------------------------------------------------------------------------- public API


def reference_unit(
    a: np.ndarray, y: np.ndarray, n_classes: int, *, ccmas_mode: str = "pooled"
) -> dict:
    """Every selectivity measure of one unit.

    Parameters
    ----------
    a:
        Activations of the unit over N images, shape (N,).
    y:
        Class index of each image, integers in ``0 .. n_classes-1``, shape (N,).
    n_classes:
        Number of classes K (classes without images are absent, see module docstring).
    ccmas_mode:
        ``"pooled"`` (image-weighted mean outside A, the paper's) or ``"class_means"``
        (mean of the other classes' means, the Morcos et al. convention). CCMAS only.

    Returns
    -------
    dict
        Keys :data:`COLUMNS` except ``unit``.
    """
    a, y, n_classes = _check_inputs(a, y, n_classes, ccmas_mode)
    present = [c for c in range(n_classes) if np.any(y == c)]
    top = _top_class(a, y)

    out: dict = {}
    out.update(_ccmas(a, y, present, ccmas_mode))
    out["top_class"] = top
    out.update(_top_cluster(a, y, top))
    out.update(_localist(a, y, present, top))
    for k in (60, 100):
        value, cls = _precision_at(a, y, present, n_classes, k)
        out[f"precision_{k}"] = value
        out[f"precision_{k}_class"] = cls
    out.update(_signal_detection(a, y, present, n_classes, top))
    out["mean_activation"] = float(np.mean(a))
    out["max_activation"] = float(np.max(a))
    out["dead"] = bool(np.all(a == 0))
    return {name: out[name] for name in COLUMNS[1:]}


def reference_measures(
    activations: np.ndarray, labels, n_classes, *, ccmas_mode: str = "pooled"
) -> pd.DataFrame:
    """:func:`reference_unit` for every column of ``activations`` (N images x U units).

    One row per unit, columns :data:`COLUMNS` (``unit`` = 0..U-1 first); class and
    count columns are int64, ``localist`` is str, ``dead`` is bool, the rest float64.
    """
    activations = np.asarray(activations)
    if activations.ndim != 2:
        raise ValueError(f"activations must be 2-d (images x units), got shape {activations.shape}")
    labels = np.asarray(labels)
    rows = []
    for u in range(activations.shape[1]):
        row = {"unit": u}
        row.update(reference_unit(activations[:, u], labels, n_classes, ccmas_mode=ccmas_mode))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for name in _INT_COLUMNS:
        frame[name] = frame[name].astype(np.int64)
    for name in COLUMNS:
        if name not in _INT_COLUMNS and name not in ("localist", "dead"):
            frame[name] = frame[name].astype(np.float64)
    frame["localist"] = frame["localist"].astype(object)
    frame["dead"] = frame["dead"].astype(bool)
    return frame
