"""Selectivity of every unit: the measures of docs/measures.md, computed block by block.

Layers, from the inside out:

* :func:`block_measures` -- every measure for a block of units held in memory
  (float32 images x units), vectorised over the block: per-class sums, maxima
  and minima in one pass; precision from the few images above a cheap lower
  bound of the k-th activation; the signal-detection measures from one sort of
  (activation, label) keys per unit. The inner loops are in :mod:`._kernels`.
* :func:`unit_measures` -- the same for an in-memory array, as a DataFrame.
* :func:`compute` -- streams an activation table out of core, chunk-aligned
  blocks of units in parallel worker processes, optionally one shard of the
  units, with a progress bar.
* ``python -m analysis.selectivity TABLE.h5 --out RESULTS.csv`` -- the CLI.

Conventions (see README "Selectivity measures"): classes are the indices of
``/class_names``; classes without images are ignored; ties between classes go
to the lowest index; ``tcs`` and ``precision_*`` are fractions in [0, 1];
``localist`` is ``on``, ``off`` or empty with ``localist_class`` -1 when empty;
a zero CCMAS denominator (a dead unit) gives NaN.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np
import pandas as pd

from common.cpus import available_cpus
from common.files import atomic_path

from . import _kernels as K
from .activations import ActivationTable, ActivationTableError, open_table

__all__ = [
    "COLUMNS",
    "BASIC_COLUMNS",
    "SIGNAL_DETECTION_COLUMNS",
    "ClassLayout",
    "block_measures",
    "unit_measures",
    "compute",
    "parse_shard",
    "main",
]

log = logging.getLogger("analysis.selectivity")  # the same name under python -m

PRECISION_KS = (60, 100)

BASIC_COLUMNS = [
    "ccmas", "ccmas_class", "ccmas_2", "ccmas_2_class",
    "top_class", "top_cluster_size", "tcs", "localist", "localist_class",
    "precision_60", "precision_60_class", "precision_100", "precision_100_class",
]
SIGNAL_DETECTION_COLUMNS = [
    "max_informedness", "max_informedness_class",
    "top_class_max_informedness", "top_class_recall_at_precision_95",
    "top_class_recall_at_precision_100", "top_class_average_precision", "top_class_max_f1",
]
SUMMARY_COLUMNS = ["mean_activation", "max_activation", "dead"]
#: Columns of :func:`unit_measures`, in order (``compute`` adds ``layer`` first).
COLUMNS = ["unit"] + BASIC_COLUMNS + SIGNAL_DETECTION_COLUMNS + SUMMARY_COLUMNS

MEASURE_SETS = ("all", "basic")
CCMAS_MODES = ("pooled", "class_means")

#: Sort keys handled at once (bytes): small enough to stay in a core's L2 cache.
SORT_BYTES = 1024 * 1024
#: Room for the images above the precision floor before a unit falls back to a full sort.
CANDIDATE_CAP = 4096


@dataclass(frozen=True)
class ClassLayout:
    """The labels, reduced to the classes that have images.

    ``present`` are the class indices with at least one image (ascending),
    ``counts`` their image counts, ``y`` each image's index into ``present``.
    Because ``present`` is ascending, the lowest present index is the lowest
    class index, so ties resolve as docs/measures.md asks.
    """

    present: np.ndarray
    counts: np.ndarray
    y: np.ndarray
    n_classes: int

    @classmethod
    def from_labels(cls, labels: np.ndarray, n_classes: int) -> ClassLayout:
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0:
            raise ValueError("labels must be a non-empty 1-d array of class indices")
        if labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        if labels.min() < 0 or labels.max() >= n_classes:
            raise ValueError(f"labels must lie in 0..{n_classes - 1} (n_classes={n_classes})")
        counts_all = np.bincount(labels, minlength=n_classes)
        present = np.flatnonzero(counts_all)
        index = np.full(n_classes, -1, dtype=np.int32)
        index[present] = np.arange(len(present), dtype=np.int32)
        return cls(present, counts_all[present].astype(np.int64), index[labels], n_classes)

    @property
    def n_images(self) -> int:
        return len(self.y)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 or NaN."""
    out = np.full(num.shape, np.nan)
    ok = (den != 0) & np.isfinite(den)
    np.divide(num, den, out=out, where=ok)
    return out


def _masked_arg(values: np.ndarray, exclude: np.ndarray, fill: float, fn) -> np.ndarray:
    """argmax/argmin over axis 1 with one column per row excluded."""
    masked = values.astype(np.float64, copy=True)
    masked[np.arange(len(values)), exclude] = fill
    return fn(masked, axis=1)


def block_measures(
    X: np.ndarray,
    layout: ClassLayout,
    *,
    measures: str = "all",
    ccmas_mode: str = "pooled",
) -> dict[str, np.ndarray]:
    """Every measure for each column of ``X`` (float32, images x units)."""
    if measures not in MEASURE_SETS:
        raise ValueError(f"measures must be one of {MEASURE_SETS}, got {measures!r}")
    if ccmas_mode not in CCMAS_MODES:
        raise ValueError(f"ccmas_mode must be one of {CCMAS_MODES}, got {ccmas_mode!r}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    n, b = X.shape
    kp = len(layout.counts)
    rows = np.arange(b)
    counts = layout.counts.astype(np.float64)
    kmax = min(max(PRECISION_KS), n)
    n_chunks = min(n, 8 * max(PRECISION_KS))

    sums, cmax, cmin, chunk_max = K.class_stats(X, layout.y, kp, n_chunks)
    sums, cmax, cmin = sums.T, cmax.T.astype(np.float64), cmin.T.astype(np.float64)
    out: dict[str, np.ndarray] = {}

    # CCMAS: A = class with the highest mean; not-A pooled over images (or class means).
    means = sums / counts
    total = sums.sum(axis=1)
    a = np.argmax(means, axis=1)
    mu_a = means[rows, a]
    if ccmas_mode == "pooled":
        rest = n - counts[a]
        mu_not_a = _ratio(total - sums[rows, a], rest)
    else:
        mu_not_a = _ratio(means.sum(axis=1) - mu_a, np.full(b, kp - 1.0))
    out["ccmas"] = _ratio(mu_a - mu_not_a, mu_a + mu_not_a)
    out["ccmas_class"] = layout.present[a]
    # CCMAS_2: B = next class by mean; not-A-not-B pooled over images.
    if kp >= 2:
        b2 = _masked_arg(means, a, -np.inf, np.argmax)
        mu_b = means[rows, b2]
        rest2 = n - counts[a] - counts[b2]
        mu_not_ab = _ratio(total - sums[rows, a] - sums[rows, b2], rest2)
        out["ccmas_2"] = _ratio(mu_b - mu_not_ab, mu_b + mu_not_ab)
        out["ccmas_2_class"] = layout.present[b2]
    else:
        out["ccmas_2"] = np.full(b, np.nan)
        out["ccmas_2_class"] = np.full(b, -1)

    # Top class T (of the most active image) and m2, the best of every other class.
    top = np.argmax(cmax, axis=1)
    m1 = cmax[rows, top]
    if kp >= 2:
        m2 = cmax.copy()
        m2[rows, top] = -np.inf
        m2 = m2.max(axis=1)
    else:
        m2 = np.full(b, -np.inf)
    out["top_class"] = layout.present[top]

    # Localist: 'on' for T if all of T beats everything else; else 'off' for the
    # class holding the lowest image if all of it is below everything else.
    localist = np.full(b, "", dtype=object)
    localist_class = np.full(b, -1)
    if kp >= 2:
        on = cmin[rows, top] > m2
        low = np.argmin(cmin, axis=1)
        second_min = cmin.copy()
        second_min[rows, low] = np.inf
        off = ~on & (cmax[rows, low] < second_min.min(axis=1))
        localist[on] = "on"
        localist_class[on] = layout.present[top[on]]
        localist[off] = "off"
        localist_class[off] = layout.present[low[off]]
    out["localist"] = localist
    out["localist_class"] = localist_class

    # One more pass: the top cluster (images above m2, all of class T) and the
    # images above a floor that at least k images reach (the k-th largest of
    # the row-chunk maxima): every image at or above the k-th activation.
    floor = np.partition(chunk_max.T, n_chunks - kmax, axis=1)[:, n_chunks - kmax]
    cand, n_cand, at_floor, n_above = K.top_candidates(
        X, layout.y, floor, m2.astype(np.float32), kp, CANDIDATE_CAP
    )
    cand.sort(axis=1)
    out["top_cluster_size"] = n_above
    out["tcs"] = n_above / counts[top]
    overflow = n_cand > CANDIDATE_CAP  # keys incomplete: these units get a full sort below
    for k in PRECISION_KS:
        out[f"precision_{k}"] = np.full(b, np.nan)
        out[f"precision_{k}_class"] = np.zeros(b, dtype=np.int64)
        ok = ~overflow
        p, c = K.precision_at_k(cand[ok], n_cand[ok], at_floor[ok], n, k)
        out[f"precision_{k}"][ok] = p
        out[f"precision_{k}_class"][ok] = c

    # Full sorts, a few units at a time so that their keys stay in cache: signal
    # detection (all measures) and precision for the units whose keys overflowed.
    if measures == "all":
        inform = np.zeros((b, kp))
        top_stats = np.zeros((b, 4))
        todo = np.arange(b)
    else:
        todo = np.flatnonzero(overflow)
    if len(todo):
        Xt = K.transpose(X)
        step = max(1, min(len(todo), SORT_BYTES // (8 * n)))
        buffer = np.empty((step, n), dtype=np.uint64)
        for s in range(0, len(todo), step):
            cols = todo[s:s + step]
            keys = buffer[:len(cols)]
            K.order_keys(Xt, layout.y, cols, keys)
            keys.sort(axis=1)
            redo = overflow[cols]
            if redo.any():
                full = np.full(int(redo.sum()), n, dtype=np.int64)  # every image is a key
                no_floor = np.zeros((len(full), kp), dtype=np.int64)
                for k in PRECISION_KS:
                    p, c = K.precision_at_k(keys[redo], full, no_floor, n, k)
                    out[f"precision_{k}"][cols[redo]] = p
                    out[f"precision_{k}_class"][cols[redo]] = c
            if measures == "all":
                inform[cols], top_stats[cols] = K.signal_detection(
                    keys, layout.counts, top[cols]
                )
    for k in PRECISION_KS:
        out[f"precision_{k}_class"] = layout.present[out[f"precision_{k}_class"]]

    if measures == "all":
        best = np.argmax(inform, axis=1)
        out["max_informedness"] = inform[rows, best]
        out["max_informedness_class"] = layout.present[best]
        out["top_class_max_informedness"] = inform[rows, top]
        out["top_class_recall_at_precision_95"] = top_stats[:, 0]
        out["top_class_recall_at_precision_100"] = top_stats[:, 1]
        out["top_class_average_precision"] = top_stats[:, 2]
        out["top_class_max_f1"] = top_stats[:, 3]
    else:
        for col in SIGNAL_DETECTION_COLUMNS:
            out[col] = np.full(b, -1) if col.endswith("_class") else np.full(b, np.nan)

    out["mean_activation"] = total / n
    out["max_activation"] = m1
    out["dead"] = (m1 == 0) & (cmin.min(axis=1) == 0)
    return out


def _frame(results: dict[str, np.ndarray], units: np.ndarray) -> pd.DataFrame:
    data = {"unit": units}
    data.update({col: results[col] for col in COLUMNS[1:]})
    return pd.DataFrame(data, columns=COLUMNS)


def unit_measures(
    activations: np.ndarray,
    labels: np.ndarray,
    n_classes: int | None = None,
    *,
    measures: str = "all",
    ccmas_mode: str = "pooled",
    block_units: int = 64,
) -> pd.DataFrame:
    """Selectivity of every unit of an in-memory array, one DataFrame row per unit.

    ``activations``: (N images, U units), or (N,) for one unit; ``labels``:
    (N,) class indices in ``0..n_classes-1`` (default: ``max(labels) + 1``).
    """
    acts = np.asarray(activations)
    if acts.ndim == 1:
        acts = acts[:, None]
    if acts.ndim != 2:
        raise ValueError(f"activations must be 2-d (images x units), got shape {acts.shape}")
    labels = np.asarray(labels)
    if len(labels) != acts.shape[0]:
        raise ValueError(
            f"{acts.shape[0]} rows of activations but {len(labels)} labels: one label per image"
        )
    if not np.isfinite(acts).all():
        raise ValueError("activations contain NaN or inf")
    if n_classes is None:
        n_classes = int(labels.max()) + 1 if labels.size else 0
    layout = ClassLayout.from_labels(labels, n_classes)
    frames = []
    for start in range(0, acts.shape[1], block_units):
        block = acts[:, start:start + block_units]
        res = block_measures(block, layout, measures=measures, ccmas_mode=ccmas_mode)
        frames.append(_frame(res, np.arange(start, start + block.shape[1])))
    return pd.concat(frames, ignore_index=True)


# -- streaming engine ---------------------------------------------------------

def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {text!r}: need 0 <= i < n")
    return i, n


def shard_range(n_units: int, shard: tuple[int, int]) -> tuple[int, int]:
    """The units of one shard: a contiguous share, disjoint across shards."""
    i, n = shard
    return (i * n_units) // n, ((i + 1) * n_units) // n


_WORKER: dict = {}


def _worker_init(path: str, measures: str, ccmas_mode: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    table = open_table(path)
    _WORKER.update(
        table=table,
        layout=ClassLayout.from_labels(table.labels, table.n_classes),
        measures=measures,
        ccmas_mode=ccmas_mode,
    )


def _worker_block(layer: str, start: int, stop: int) -> tuple[str, int, dict]:
    table: ActivationTable = _WORKER["table"]
    block = table.read_units(layer, start, stop)
    res = block_measures(
        block, _WORKER["layout"], measures=_WORKER["measures"], ccmas_mode=_WORKER["ccmas_mode"]
    )
    return layer, start, res


def _warm_kernels(measures: str) -> None:
    """Run every kernel once on a tiny block (numba compiles or loads them on first use)."""
    y = np.array([0, 1, 1])
    block_measures(np.array([[0.0], [1.0], [2.0]], np.float32),
                   ClassLayout.from_labels(y, 2), measures=measures)


def _pool_context():
    """fork where it is safe and cheap (Linux; no file is open in the parent), else spawn."""
    import multiprocessing

    if sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods():
        return get_context("fork")
    return get_context("spawn")


def _default_workers(n_values: int, n_tasks: int) -> int:
    if n_values < 20_000_000:  # a few seconds of work: not worth starting processes
        return 1
    return max(1, min(available_cpus(), n_tasks))  # the CPUs this process may use


def compute(
    table: str | os.PathLike,
    layers: Sequence[str] | None = None,
    *,
    measures: str = "all",
    ccmas_mode: str = "pooled",
    shard: tuple[int, int] = (0, 1),
    workers: int | None = None,
    block_units: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Selectivity of every unit of ``layers`` (default: all) of an activation table.

    Reads chunk-aligned blocks of units across all images, so memory stays
    bounded by a few blocks per worker whatever the table's size. ``shard=(i,
    n)`` computes the i-th of n disjoint shares of each layer's units; the
    shards' CSVs concatenate to the whole. Returns one row per unit with
    ``layer`` first, in layer then unit order.
    """
    path = os.fspath(table)
    if measures not in MEASURE_SETS:
        raise ValueError(f"measures must be one of {MEASURE_SETS}, got {measures!r}")
    if ccmas_mode not in CCMAS_MODES:
        raise ValueError(f"ccmas_mode must be one of {CCMAS_MODES}, got {ccmas_mode!r}")
    with open_table(path) as t:
        layers = list(layers) if layers else t.layers
        for layer in layers:
            t.layer_info(layer)  # a clear error for an unknown layer
        tasks = [
            (layer, lo, hi)
            for layer in layers
            for lo, hi in t.block_ranges(layer, block_units, shard_range(t.n_units(layer), shard))
        ]
        n_units = {layer: shard_range(t.n_units(layer), shard) for layer in layers}
        n_values = t.n_images * sum(hi - lo for lo, hi in n_units.values())
        layout = ClassLayout.from_labels(t.labels, t.n_classes)
        empty = t.n_classes - len(layout.present)
        if empty:
            log.info("%s: %d of %d classes have no images and are ignored",
                     path, empty, t.n_classes)
    if workers is None:
        workers = _default_workers(n_values, len(tasks))
    total_units = sum(hi - lo for _, lo, hi in tasks)
    log.info("%s: %d units in %d layers over %d images (%d workers)",
             path, total_units, len(layers), layout.n_images, workers)

    from tqdm.auto import tqdm

    results: dict[tuple[str, int], dict] = {}
    done = {layer: 0 for layer in layers}

    def record(bar, layer: str, start: int, res: dict) -> None:
        results[(layer, start)] = res
        n = len(res["ccmas"])
        done[layer] += n
        bar.set_postfix_str(" ".join(
            f"{name} {done[name]}/{hi - lo}" for name, (lo, hi) in n_units.items()
        ))
        bar.update(n)

    def progress_bar():
        return tqdm(total=total_units, unit="unit", disable=not progress, desc="selectivity",
                    file=sys.stderr, dynamic_ncols=True)

    started = time.perf_counter()
    if workers <= 1:
        _worker_init(path, measures, ccmas_mode)
        try:
            with progress_bar() as bar:
                for task in tasks:
                    record(bar, *_worker_block(*task))
        finally:
            _WORKER.pop("table").close()
    else:
        # Compile or load the kernels once, here: forked workers inherit them.
        _warm_kernels(measures)
        # The pool starts its processes before any thread of ours (tqdm's monitor) exists.
        with ProcessPoolExecutor(
            workers, mp_context=_pool_context(), initializer=_worker_init,
            initargs=(path, measures, ccmas_mode),
        ) as pool:
            futures = [pool.submit(_worker_block, *task) for task in tasks]
            try:
                with progress_bar() as bar:
                    for fut in as_completed(futures):
                        record(bar, *fut.result())
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    log.info("selectivity: %d units in %.1f s", total_units, time.perf_counter() - started)

    frames = []
    for layer in layers:
        parts = [(s, r) for (name, s), r in results.items() if name == layer]
        parts.sort(key=lambda p: p[0])
        for start, res in parts:
            frame = _frame(res, np.arange(start, start + len(res["ccmas"])))
            frame.insert(0, "layer", layer)
            frames.append(frame)
        n_dead = int(sum(r["dead"].sum() for _, r in parts))
        if n_dead:
            log.warning("%s: %d dead unit(s) (every activation 0): their CCMAS is NaN",
                        layer, n_dead)
    if not frames:
        return pd.DataFrame(columns=["layer"] + COLUMNS)
    return pd.concat(frames, ignore_index=True)


def write_results(df: pd.DataFrame, out: str | os.PathLike) -> None:
    """Write a results CSV atomically (a crash never leaves half a file), with the
    project's one file mode (:data:`common.files.FILE_MODE`)."""
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as fh:
        df.to_csv(fh, index=False)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m analysis.selectivity",
        description=(
            "Compute the selectivity of every unit of an activation table (docs/measures.md): "
            "CCMAS, CCMAS_2, top-class selectivity, localist, precision@60/100 and the "
            "signal-detection measures. One CSV row per unit."
        ),
    )
    parser.add_argument("table", help="activation table (.h5, docs/activation-table.md)")
    parser.add_argument("--out", required=True, help="results CSV to write")
    parser.add_argument("--layers", nargs="+", metavar="LAYER",
                        help="layers to measure (default: every layer of the table)")
    parser.add_argument("--measures", choices=MEASURE_SETS, default="all",
                        help="'basic' skips the signal-detection measures, which need a "
                             "full sort of each unit (default: all)")
    parser.add_argument("--ccmas-mode", choices=("pooled", "class-means"), default="pooled",
                        help="mean of not-A: pooled over images (the paper) or the mean of "
                             "the other classes' means (Morcos et al.)")
    parser.add_argument("--shard", default="0/1", metavar="I/N",
                        help="compute the I-th of N disjoint shares of each layer's units; "
                             "the N CSVs concatenate to the whole (default 0/1)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: one per core for large tables)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        shard = parse_shard(args.shard)
        df = compute(args.table, args.layers, measures=args.measures,
                     ccmas_mode=args.ccmas_mode.replace("-", "_"), shard=shard, workers=args.workers,
                     progress=not args.quiet)
    except (ActivationTableError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_results(df, args.out)
    print(f"wrote {len(df)} units to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
