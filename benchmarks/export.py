"""The data export at scale: 1,000,000 responses (10,000 participants x 100 trials) in a
SQLite store, exported as responses.csv and responses.json.

Prints, for each file, rows per second and the memory used, beside a baseline measured in
the same run: writing the same rows with ``csv.writer`` from a list already in memory
(the fastest a CSV can be written, holding every row). Memory is the peak traced by
tracemalloc while exporting (Python allocations) and the growth of the process's peak
resident set (ru_maxrss, everything, SQLite's page cache included). No assertion on
times::

    python benchmarks/export.py [--participants 10000] [--trials 100] [--no-trace]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from server.export import RESPONSE_COLUMNS, iter_export, write_exports
from server.store import (
    Store,
    list_panels,
    lists,
    panels,
    participants,
    responses,
)

T0 = 1.75e9
BATCH = 50_000


def fill(store: Store, n_participants: int, n_trials: int) -> None:
    """Synthetic panels, one list, completed participants and their responses."""
    n_panels = max(n_trials - 6, 1)
    with store.write() as conn:
        conn.execute(panels.insert(), [
            dict(id=f"practice_{i}", practice=True, layer=None, unit=None, label=f"class {i}",
                 image=f"{i:064x}.png", position=i) for i in range(6)] + [
            dict(id=f"fc6_{u:04d}", practice=False, layer="fc6", unit=u, label=None,
                 image=f"{u + 6:064x}.png", position=u) for u in range(n_panels)])
        conn.execute(lists.insert(), [dict(id=1, target=n_participants)])
        conn.execute(list_panels.insert(), [dict(list_id=1, position=u, panel_id=f"fc6_{u:04d}")
                                            for u in range(n_panels)])
        conn.execute(participants.insert(), [
            dict(id=i, token=f"tok{i}", prolific_pid=f"{i:024x}", study_param="a" * 24,
                 session_param=f"{i:024x}", list_id=1, status="completed", trial_order="[]",
                 order_seed=i, n_trials=n_trials, n_answered=n_trials, created_at=T0 + i,
                 lease_expires_at=T0 + i + 3600, consented_at=T0 + i + 5,
                 device_ok_at=T0 + i + 20, completed_at=T0 + i + 900,
                 debriefed_at=T0 + i + 910,
                 device=json.dumps({"width": 1280, "height": 800}),
                 user_agent="Mozilla/5.0 (X11; Linux x86_64)")
            for i in range(1, n_participants + 1)])
        rows = []
        for i in range(1, n_participants + 1):
            for k in range(n_trials):
                yes = (i + k) % 3 == 0
                rows.append(dict(
                    participant_id=i, trial_index=k, practice=k < 6,
                    panel_id=f"practice_{k}" if k < 6 else f"fc6_{(k - 6) % n_panels:04d}",
                    answer_yes=yes, object_text="a dog on a sofa" if yes else None,
                    rt_answer_ms=900 + k, rt_text_ms=1500 if yes else None,
                    shown_at=T0 + i + 8 * k, client_answered_at=T0 + i + 8 * k + 2.4,
                    answered_at=T0 + i + 8 * k + 2.5))
                if len(rows) == BATCH:
                    conn.execute(responses.insert(), rows)
                    rows = []
        if rows:
            conn.execute(responses.insert(), rows)


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def traced_peak_mb(run) -> float:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def child(kind: str, source: str, out: str, trace: bool) -> dict:
    """One measurement in a fresh process, so that ru_maxrss sees it alone: ``kind`` is an
    export's name (``source`` the store), ``all`` (write_exports) or ``baseline``
    (``source`` a responses.csv to load into a list, then write with csv.writer)."""
    rss0 = maxrss_mb()
    path = Path(out)
    if kind == "baseline":
        with open(source, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            next(reader)
            table = list(reader)

        def run() -> None:
            with open(path, "w", encoding="utf-8", newline="") as fh:
                writer = csv.writer(fh, lineterminator="\r\n")
                writer.writerow(RESPONSE_COLUMNS)
                writer.writerows(table)

        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
        sample = min(len(table), 100_000)

        def load_sample() -> None:
            with open(source, encoding="utf-8", newline="") as fh:
                rows = csv.reader(fh)
                next(rows)
                list(itertools.islice(rows, sample))

        list_mb = traced_peak_mb(load_sample) * len(table) / sample
        return {"seconds": seconds, "rows": len(table), "rss0_mb": rss0, "rss_mb": maxrss_mb(),
                "traced_mb": list_mb}
    store = Store(f"sqlite:///{source}")
    try:
        if kind == "all":
            start = time.perf_counter()
            counts = write_exports(store, path)
            return {"seconds": time.perf_counter() - start, "counts": counts,
                    "rss0_mb": rss0, "rss_mb": maxrss_mb()}

        def run() -> None:
            with open(path, "w", encoding="utf-8", newline="") as fh:
                for chunk in iter_export(store, kind):
                    fh.write(chunk)

        start = time.perf_counter()
        run()
        result = {"seconds": time.perf_counter() - start, "bytes": path.stat().st_size,
                  "rss0_mb": rss0, "rss_mb": maxrss_mb()}
        if trace:
            result["traced_mb"] = traced_peak_mb(run)
        return result
    finally:
        store.dispose()


def measure(kind: str, source: Path, out: Path, trace: bool) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", kind, str(source), str(out)]
                          + (["--trace"] if trace else []),
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--no-trace", action="store_true",
                        help="skip the tracemalloc runs (they take several times longer)")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SOURCE", "OUT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fill", metavar="DB", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fill:
        store = Store(f"sqlite:///{args.fill}")
        store.migrate()
        fill(store, args.participants, args.trials)
        store.dispose()
        return
    if args.child:
        print(json.dumps(child(*args.child, trace=args.trace)))
        return
    n = args.participants * args.trials
    trace = not args.no_trace

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db = root / "study.db"
        start = time.perf_counter()
        # Every step in a process of its own: Linux carries a parent's peak RSS into its
        # children (fork, exec), so this process stays small.
        subprocess.run([sys.executable, __file__, "--fill", str(db), "--participants",
                        str(args.participants), "--trials", str(args.trials)], check=True)
        print(f"store: {n:,} responses ({args.participants:,} participants x {args.trials} "
              f"trials) inserted in {time.perf_counter() - start:.1f} s; "
              f"{db.stat().st_size / 1e6:.0f} MB on disk")
        results = {name: measure(name, db, root / name, trace)
                   for name in ("responses.csv", "responses.json")}
        everything = measure("all", db, root / "all", False)
        base = measure("baseline", root / "responses.csv", root / "baseline.csv", False)

    base_rate = base["rows"] / base["seconds"]
    print(f"baseline, csv.writer from a list in memory: {base['seconds']:.2f} s, "
          f"{base_rate:,.0f} rows/s; the list holds about {base['traced_mb']:,.0f} MB "
          f"(tracemalloc, from its first 100,000 rows); peak RSS {base['rss_mb']:.0f} MB "
          f"({base['rss0_mb']:.0f} MB after imports)")
    for name, r in results.items():
        rate = n / r["seconds"]
        line = (f"{name}: {r['seconds']:.2f} s, {rate:,.0f} rows/s ({base_rate / rate:.1f}x "
                f"the baseline's time), {r['bytes'] / 1e6:,.0f} MB written; peak RSS "
                f"{r['rss_mb']:.0f} MB ({r['rss0_mb']:.0f} MB after imports)")
        if "traced_mb" in r:
            line += (f"; tracemalloc peak {r['traced_mb']:.1f} MB "
                     f"({r['traced_mb'] / base['traced_mb']:.1%} of the baseline's list)")
        print(line)
    counts = ", ".join(f"{k} {v:,}" for k, v in everything["counts"].items())
    print(f"write_exports, all four files from one snapshot: {everything['seconds']:.2f} s "
          f"({counts} rows); peak RSS {everything['rss_mb']:.0f} MB "
          f"({everything['rss0_mb']:.0f} MB after imports)")


if __name__ == "__main__":
    main()
