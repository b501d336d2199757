"""Benchmark of the selectivity engine against a plain read and a naive per-unit baseline.

    python benchmarks/selectivity.py [--images 200000 --classes 1000 --units 1024]

Builds a synthetic activation table (in .cache/bench, ignored by git; reused
when its size matches), then measures in one run:

* the plain read: every chunk-aligned block of units read once with h5py;
* the engine, basic measures (CCMAS, CCMAS_2, TCS, localist, precision) and all
  measures (plus the signal-detection ones), with one worker per core;
* a naive per-unit numpy implementation (vectorised over images, a Python
  loop over units, the obvious algorithm for each measure) on a sample of
  units, extrapolated to all units;

and prints each as a ratio to the plain read, with the peak memory of the
engine's processes. It asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np

from analysis.activations import TableWriter, open_table
from analysis.example import synthetic_activations
from analysis.selectivity import compute
from common.files import cache_dir


def build_table(path: Path, n: int, k: int, u: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n).astype(np.int32)
    kinds = ["conv", "fc"]
    with TableWriter(path, [f"class{c}" for c in range(k)], {"fc6": u}, n_images=n) as w:
        for start in range(0, n, 16384):
            y = labels[start:start + 16384]
            # half the units distributed (conv-like), half sparse (fc-like)
            acts = np.concatenate(
                [synthetic_activations(rng, y, u // 2, kind, k) for kind in kinds], axis=1
            )
            w.append(y, {"fc6": acts})


def drop_page_cache() -> bool:
    """Ask Linux to forget cached file pages (root only); False where it cannot."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def plain_read(path: Path) -> float:
    started = time.perf_counter()
    with open_table(path) as t:
        for layer in t.layers:
            for _ in t.iter_blocks(layer, check=False):
                pass
    return time.perf_counter() - started


def naive_unit(a: np.ndarray, y: np.ndarray, k: int, signal_detection: bool) -> dict:
    """Every measure of one unit with plain numpy, the obvious way."""
    n = len(a)
    counts = np.bincount(y, minlength=k)
    present = counts > 0
    sums = np.bincount(y, weights=a, minlength=k)
    means = np.where(present, sums / np.maximum(counts, 1), -np.inf)
    ca = int(np.argmax(means))
    mu_not_a = (sums.sum() - sums[ca]) / (n - counts[ca])
    out = {"ccmas": (means[ca] - mu_not_a) / (means[ca] + mu_not_a)}
    means_b = means.copy()
    means_b[ca] = -np.inf
    cb = int(np.argmax(means_b))
    rest = n - counts[ca] - counts[cb]
    mu_not_ab = (sums.sum() - sums[ca] - sums[cb]) / rest
    out["ccmas_2"] = (means[cb] - mu_not_ab) / (means[cb] + mu_not_ab)
    cmax = np.full(k, -np.inf)
    cmin = np.full(k, np.inf)
    np.maximum.at(cmax, y, a)
    np.minimum.at(cmin, y, a)
    top = int(np.argmax(cmax))
    others = np.delete(cmax, top)
    m2 = others.max()
    out["tcs"] = (a > m2).sum() / counts[top]
    out["on"] = cmin[top] > m2
    order = np.argsort(-a, kind="stable")
    s, ls = a[order], y[order]
    for kk in (60, 100):
        v = s[kk - 1]
        g = np.bincount(ls[s > v], minlength=k)
        t = np.bincount(ls[s == v], minlength=k)
        e = g + t * (kk - g.sum()) / t.sum()
        out[f"precision_{kk}"] = e.max() / kk
    if signal_detection:
        ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), n - 1]
        positives = ends + 1
        best = 0.0
        for c in np.flatnonzero(present):
            tp = np.cumsum(ls == c)[ends]
            inf = tp / counts[c] - (positives - tp) / (n - counts[c])
            best = max(best, inf.max())
        out["max_informedness"] = best
    return out


def naive_time(path: Path, sample: int, signal_detection: bool) -> tuple[float, int]:
    with open_table(path) as t:
        layer = t.layers[0]
        units = t.n_units(layer)
        block = t.read_units(layer, 0, sample)
        labels, k = t.labels, t.n_classes
    started = time.perf_counter()
    for j in range(sample):
        naive_unit(block[:, j].astype(np.float64), labels, k, signal_detection)
    per_unit = (time.perf_counter() - started) / sample
    return per_unit * units, units


def peak_rss_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--units", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--naive-sample", type=int, default=8,
                        help="units the naive baseline runs on (extrapolated to all)")
    parser.add_argument("--cache", default=str(cache_dir() / "bench"))
    args = parser.parse_args()

    n, k, u = args.images, args.classes, args.units
    path = Path(args.cache) / f"selectivity_{n}x{k}x{u}.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        print(f"building {path} ({n * u * 4 / 1e9:.2f} GB) ...", flush=True)
        started = time.perf_counter()
        build_table(path, n, k, u)
        print(f"  built in {time.perf_counter() - started:.1f} s")
    gb = n * u * 4 / 1e9
    print(f"table: {n:,} images x {k:,} classes x {u:,} units = {gb:.2f} GB float32, "
          f"{os.cpu_count()} cores, {args.workers} workers")

    plain_read(path)  # warm the page cache: every timing below reads from memory
    read = min(plain_read(path) for _ in range(3))
    rows = [("plain h5py read (chunk-aligned blocks)", read)]
    basic = compute(path, measures="basic", workers=args.workers, progress=False)
    started = time.perf_counter()
    basic = compute(path, measures="basic", workers=args.workers, progress=False)
    rows.append(("engine, basic measures (no full sort)", time.perf_counter() - started))
    started = time.perf_counter()
    full = compute(path, measures="all", workers=args.workers, progress=False)
    rows.append(("engine, all measures", time.perf_counter() - started))
    assert len(basic) == len(full) == u
    if drop_page_cache():
        rows.append(("plain h5py read, cold page cache (from disk)", plain_read(path)))
        drop_page_cache()
        started = time.perf_counter()
        compute(path, measures="all", workers=args.workers, progress=False)
        rows.append(("engine, all measures, cold page cache", time.perf_counter() - started))
    else:
        print("(cold-cache figures skipped: dropping the page cache needs root on Linux)")
    plain_read(path)  # back in memory for the baseline
    naive_basic, _ = naive_time(path, args.naive_sample, signal_detection=False)
    naive_all, _ = naive_time(path, max(1, args.naive_sample // 4), signal_detection=True)
    rows.append((f"naive per-unit numpy, basic (from {args.naive_sample} units)", naive_basic))
    rows.append((f"naive per-unit numpy, all (from {max(1, args.naive_sample // 4)} units)",
                 naive_all))

    print(f"\n{'what':58s} {'seconds':>9s} {'x read':>8s} {'ns/value':>9s}")
    for name, seconds in rows:
        print(f"{name:58s} {seconds:9.2f} {seconds / read:8.2f} {seconds / (n * u) * 1e9:9.2f}")
    print(f"\nengine speed-up over naive per-unit numpy: basic {naive_basic / rows[1][1]:.0f}x, "
          f"all {naive_all / rows[2][1]:.0f}x")
    own, children = peak_rss_mb()
    print(f"peak memory: this process {own:.0f} MB, largest worker {children:.0f} MB")
    # The paper's table (30 GB) does not fit this machine's page cache: use the
    # cold-cache rate where it was measured.
    timed = dict(rows)
    full_rate = timed.get("engine, all measures, cold page cache", rows[2][1]) / (n * u)
    paper = 721_536 * 10_448
    print(f"extrapolated to the paper's scale (721,536 images x 10,448 units, "
          f"{paper * 4 / 1e9:.0f} GB float32): all measures {full_rate * paper / 60:.1f} min, "
          f"basic {rows[1][1] / (n * u) * paper / 60:.1f} min (in-memory rate), "
          f"plain read {read / (n * u) * paper / 60:.1f} min in memory")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
