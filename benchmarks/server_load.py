"""Load benchmark of the experiment server: simulated participants against real gunicorn.

For each store (SQLite, and PostgreSQL where one answers) and each concurrency level
(default 10, 100, 500 simulated participants at once), this script

1. creates a fresh store (a SQLite file in a temporary instance folder, or a new schema
   in PostgreSQL) and loads a generated design whose list targets add up to the level
   (so the lists fill exactly; a few extra participants arrive late and meet "study full");
2. starts gunicorn on a free loopback port: ``-w 4 -k gthread --threads 4 --keep-alive 10``
   (see below; the simulated browsers keep idle connections 9.5 s, as browsers keep them
   for a minute or more, so they reuse them instead of opening one per request), and with
   ``--front nginx`` / ``nginx-accel`` nginx before it as in production (README,
   "Production front": images sent by nginx, directly or after the app's
   X-Accel-Redirect);
3. measures a baseline: ``GET /static/study.css`` through the same gunicorn, idle;
4. runs ``server.simulate`` (entry, consent, instructions, device check, 6 practice and
   6 main trials with their images, debrief, completion; 5% reload with a new browser, 5%
   abandon), arrivals spread over ``--ramp`` seconds, think time ``--think-ms`` per action;
5. reads the store back with SQLAlchemy and checks: every acknowledged answer stored exactly
   once and nothing else stored, no duplicate (participant, trial) rows, no list with more
   completed participants than its target, counts consistent.

It prints requests/s and p50/p99 latency per endpoint for every run, the ratio of the
trial POST's latency to the static baseline, and the checks. It never asserts a time: the
target (500 at once, trial POST p99 under 500 ms, nothing lost or duplicated, on both
stores) is read off the table.

Think time: real participants spend 20-30 s on a panel. A run has to fit in about a minute
and a half here, so simulated participants think 2 s (mean, exponential) per action and
arrive over 5 s: 500 of them answer about as fast as 6,000 real ones would, many times the
paper's 333 participants all at once (about 280 requests/s with their images).

gunicorn, measured on these 2 cores at 500 at once (trial POST p99, SQLite / PostgreSQL):
``-w 4 -k gthread --threads 4`` about 60-150 / 55-85 ms; ``--threads 8`` 95 / 260-640 ms
(PostgreSQL: each worker's connection pool keeps 5 connections, so threads beyond 5 open
and close connections all the time: 355 connections opened in a run instead of 17);
``-w 2 --threads 16`` 70 / 670 ms; ``-w 4 -k sync`` 160 / 470 ms (no keep-alive: a new
TCP connection per request). Four processes keep both cores busy while some wait on the
store; four threads each stay within the pool and keep idle keep-alive connections cheap.
``python benchmarks/server_load.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from experiment.design import build_design
from server.audit import check_store
from server.simulate import percentile, run_simulation
from server.store import Store
from server.study import install_study
from server.study_file import write_study

ROOT = Path(__file__).resolve().parents[1]

PG_URL = os.environ.get("BENCH_DATABASE_URL", os.environ.get(
    "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"))
# Per list: 1 conv5, 3 fc6, 2 fc8 panels (6 main trials) after 6 practice panels.
N_LISTS = 8
LAYERS = {"conv5": N_LISTS, "fc6": 3 * N_LISTS, "fc8": 2 * N_LISTS}


def make_design(root: Path, participants: int, seed: int = 0) -> Path:
    """A study.json with small distinct PNG panels (64x64) and targets adding up to
    ``participants``."""
    rng = np.random.default_rng(seed)
    folder = root / "panels"
    folder.mkdir(parents=True, exist_ok=True)

    def png(name: str) -> str:
        path = folder / f"{name}.png"
        if not path.exists():
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        return str(path)

    rows = [{"panel_id": f"{layer}_{unit:04d}", "layer": layer, "unit": unit,
             "path": png(f"{layer}_{unit:04d}")}
            for layer, n in LAYERS.items() for unit in range(n)]
    practice = [{"panel_id": f"practice_{i}", "path": png(f"practice_{i}"),
                 "label": f"class {i}"} for i in range(6)]
    design = build_design(pd.DataFrame(rows), pd.DataFrame(practice), n_lists=N_LISTS,
                          participants=participants, seed=seed, practice_trials=6)
    return write_study(design, root / f"study_{participants}.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_reason() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure: skip with the reason
        return f"{type(exc).__name__}: {exc}".strip()



def wait_until_answering(server, what: str, seconds: float, poll: float,
                         log_tail) -> None:
    """Wait until ``server.url`` serves its static CSS; stop the server and raise with
    ``log_tail()`` when its process exits or ``seconds`` pass first."""
    deadline = time.monotonic() + seconds
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({server.proc.returncode}):{log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/static/study.css", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"{what} did not answer within {seconds:g} s") from None
            time.sleep(poll)

class PgSchema:
    """A fresh schema in the benchmark PostgreSQL, dropped afterwards."""

    def __init__(self):
        import psycopg

        self.name = f"bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {self.name}")
        sep = "&" if "?" in PG_URL else "?"
        self.url = f"{PG_URL}{sep}options=-csearch_path%3D{self.name}"

    @staticmethod
    def sessions() -> int:
        """Connections ever opened to the benchmark database (pg_stat_database)."""
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            return conn.execute("SELECT sessions FROM pg_stat_database "
                                "WHERE datname = current_database()").fetchone()[0]

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {self.name} CASCADE")


class Gunicorn:
    """gunicorn serving ``server:create_app()`` on a free loopback port."""

    def __init__(self, instance: Path, database_url: str, workers: int, threads: int,
                 worker_class: str, keep_alive: float = 2,
                 extra_env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = instance / "gunicorn.log"
        # every simulated participant comes from 127.0.0.1: no per-address entry limit
        env = dict(os.environ, FLASK_INSTANCE_PATH=str(instance), DATABASE_URL=database_url,
                   FLASK_ENTRY_MAX_PER_ADDRESS="null", **(extra_env or {}))
        cmd = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-k", worker_class,
               "--threads", str(threads), "-b", f"127.0.0.1:{self.port}",
               "--backlog", "2048", "--keep-alive", str(keep_alive), "--log-level", "warning", "server:create_app()"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_until_answering(self, "gunicorn", 60, 0.2,
                             lambda: "\n" + self.log.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


NGINX_CONF = """\
# The production front (README, "Production front") on loopback, for the benchmark.
{user}worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/nginx_error.log warn;
events {{ worker_connections 4096; }}
http {{
    include {mime_types};
    access_log off;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    upstream study_app {{ server 127.0.0.1:{app_port}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 64k;
        location / {{
            proxy_pass http://study_app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
        }}
{images}
    }}
}}
"""

# The security headers the app sets on every response, for the files nginx sends itself
# (after an X-Accel-Redirect nginx keeps the app's Cache-Control, not these).
NGINX_IMAGE_HEADERS = """\
            add_header Cache-Control "public, max-age=31536000, immutable" always;
            add_header Content-Security-Policy "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'" always;
            add_header X-Content-Type-Options nosniff always;
            add_header Referrer-Policy no-referrer always;
            add_header X-Frame-Options DENY always;"""

# "nginx": panel images straight from the image folder (a valid name only; anything else
# goes to the app, which answers 404). "nginx-accel": every image request goes to the app,
# which answers with X-Accel-Redirect (IMAGE_ACCEL_REDIRECT) and nginx sends the file.
NGINX_IMAGES = {
    "nginx": """\
        location ~ "^/img/([0-9a-f]{{64}}\\.(?:jpg|png|webp|gif))$" {{
            alias {image_dir}/$1;
{headers}
        }}""",
    "nginx-accel": """\
        location /protected-images/ {{
            internal;
            alias {image_dir}/;
{accel_headers}
        }}""",
}


class Nginx:
    """nginx (the production front) on a free loopback port before gunicorn."""

    def __init__(self, instance: Path, app_port: int, mode: str):
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(exe).exists():
            raise RuntimeError("--front nginx: no nginx here (Debian: apt-get install nginx)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root = instance / "nginx"
        root.mkdir()
        images = NGINX_IMAGES[mode].format(image_dir=instance / "images",
                                           headers=NGINX_IMAGE_HEADERS,
                                           # Cache-Control comes with the app's answer
                                           accel_headers=NGINX_IMAGE_HEADERS.split("\n", 1)[1])
        conf = root / "nginx.conf"
        conf.write_text(NGINX_CONF.format(
            user="user root;\n" if os.geteuid() == 0 else "", root=root,
            mime_types="/etc/nginx/mime.types", app_port=app_port, port=self.port,
            images=images))
        self.proc = subprocess.Popen([exe, "-c", str(conf), "-p", str(root)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until_answering(self, "nginx", 20, 0.1,
                             lambda: " " + (root / "nginx_error.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)     # graceful
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def baseline(url: str, n: int = 300, concurrency: int = 1) -> dict[str, float]:
    """Static GETs through the same gunicorn and the same client stack (aiohttp), one at
    a time on an idle server: the floor every other latency stands on."""
    import asyncio

    import aiohttp

    async def go():
        times: list[float] = []

        async def worker(session):
            for _ in range(n // concurrency):
                t0 = time.perf_counter()
                async with session.get(f"{url}/static/study.css") as r:
                    await r.read()
                    r.raise_for_status()
                times.append((time.perf_counter() - t0) * 1000)

        sessions = [aiohttp.ClientSession() for _ in range(concurrency)]
        t0 = time.perf_counter()
        try:
            await asyncio.gather(*(worker(s) for s in sessions))
        finally:
            for s in sessions:
                await s.close()
        return times, time.perf_counter() - t0

    times, elapsed = asyncio.run(go())
    return {"p50": percentile(times, 50), "p99": percentile(times, 99),
            "rps": len(times) / elapsed}


def run_level(kind: str, level: int, design_root: Path, args) -> dict:
    """One store kind at one concurrency level, on a fresh store and server."""
    design = make_design(design_root, level)
    extra = max(1, level // 20)          # late arrivals: they meet "study full"
    with tempfile.TemporaryDirectory(prefix=f"bench_{kind}_{level}_") as tmp:
        instance = Path(tmp) / "instance"
        instance.mkdir()
        schema = PgSchema() if kind == "postgresql" else None
        url = schema.url if schema else f"sqlite:///{instance / 'study.db'}"
        try:
            store = Store(url)
            store.migrate()
            install_study(store, design, instance / "images", completion_code="BENCH1")
            store.dispose()
            sessions = PgSchema.sessions() if schema else None
            extra_env = {}
            if args.front != "none":
                extra_env["FLASK_TRUSTED_PROXIES"] = "1"
            if args.front == "nginx-accel":
                extra_env["FLASK_IMAGE_ACCEL_REDIRECT"] = "/protected-images/"
            server = Gunicorn(instance, url, args.workers, args.threads, args.worker_class,
                              args.keep_alive, extra_env)
            front = None
            try:
                if args.front != "none":
                    front = Nginx(instance, server.port, args.front)
                target = front.url if front else server.url
                base = baseline(target)
                result = run_simulation(
                    target, level + extra, level + extra, seed=level,
                    think_ms=args.think_ms, ramp_seconds=args.ramp, reload_rate=0.05,
                    abandon_rate=0.05, fetch_images=True, max_seconds=args.max_seconds,
                    timeout_s=30, retry_seconds=30,
                    keepalive_s=max(0.5, args.keep_alive - 0.5))
            finally:
                if front:
                    front.stop()
                server.stop()
            if schema:
                time.sleep(0.5)       # the statistics of the ended sessions settle
                sessions = PgSchema.sessions() - sessions
            check = check_store(url, result.acknowledged, result.unconfirmed)
            log_tail = server.log.read_text()[-2000:]
        finally:
            if schema:
                schema.drop()
    return {"store": kind, "level": level, "extra": extra, "baseline": base,
            "result": result, "check": check, "log_tail": log_tail, "pg_sessions": sessions}


def fmt(value: float) -> str:
    return "-" if value != value else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def print_run(run: dict) -> None:
    r, c, b = run["result"], run["check"], run["baseline"]
    print(f"\n== {run['store']}, {run['level']} at once (+{run['extra']} late) ==")
    print(f"participants: {r.started} started, {r.completed} completed, {r.abandoned} "
          f"abandoned, {r.full} full, {r.count('stopped')} stopped, {r.failed} failed; "
          f"{r.reloads} reloads ({r.resume_mismatches} resumed at the wrong trial), "
          f"{r.retries} retries")
    if run["pg_sessions"] is not None:
        print(f"PostgreSQL connections opened by the server during the run: "
              f"{run['pg_sessions']}")
    print(f"requests: {r.requests} in {r.elapsed_s:.1f} s = {r.requests_per_s:.0f}/s; "
          f"baseline static GET (idle, one at a time): p50 {fmt(b['p50'])} ms, p99 "
          f"{fmt(b['p99'])} ms, {b['rps']:.0f}/s")
    print(f"{'endpoint':<13}{'n':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}  statuses")
    for label, row in r.latency_table().items():
        statuses = " ".join(f"{k}:{v}" for k, v in sorted(r.statuses.get(label, {}).items(),
                                                         key=str))
        print(f"{label:<13}{row['n']:>7}{fmt(row['p50']):>9}{fmt(row['p99']):>9}"
              f"{fmt(row['max']):>9}  {statuses}")
    print(f"store: {c.stored} responses stored, {c.acknowledged} acknowledged "
          f"({r.stored_new} as 201, {r.duplicates} as 200 duplicates); lost "
          f"{len(c.missing)}, unacknowledged extra {len(c.extra)}, duplicate rows "
          f"{len(c.duplicate_rows)}, lists over target {len(c.lists_over_target)}, "
          f"{c.completed} completed participants")
    for problem in c.problems:
        print(f"  PROBLEM: {problem}")
    for error in r.errors[:5]:
        print(f"  error: {error}")
    if "Traceback" in run["log_tail"] or "[ERROR]" in run["log_tail"]:
        print("  gunicorn log tail:\n" + run["log_tail"])


def print_summary(runs: list[dict]) -> None:
    print("\n== summary (latencies in ms; ratio = trial POST p50 / static GET p50) ==")
    print(f"{'store':<11}{'at once':>8}{'req/s':>7}{'static p50':>11}{'POST p50':>9}"
          f"{'POST p99':>9}{'ratio':>6}{'entry p99':>10}{'state p99':>10}{'page p99':>9}"
          f"{'done':>6}{'full':>5}{'lost':>5}{'dup':>4}{'over':>5}")
    for run in runs:
        r, c, b = run["result"], run["check"], run["baseline"]
        lat = r.latency_table()

        def p(label, q, lat=lat):
            return lat.get(label, {}).get(q, float("nan"))

        ratio = p("response", "p50") / b["p50"] if b["p50"] else float("nan")
        print(f"{run['store']:<11}{run['level']:>8}{r.requests_per_s:>7.0f}"
              f"{fmt(b['p50']):>11}{fmt(p('response', 'p50')):>9}"
              f"{fmt(p('response', 'p99')):>9}{ratio:>6.1f}{fmt(p('entry', 'p99')):>10}"
              f"{fmt(p('state', 'p99')):>10}{fmt(p('page', 'p99')):>9}{r.completed:>6}"
              f"{r.full:>5}{len(c.missing):>5}{len(c.duplicate_rows):>4}"
              f"{len(c.lists_over_target):>5}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="10,100,500",
                        help="simulated participants at once, comma-separated "
                             "(default %(default)s)")
    parser.add_argument("--stores", default="sqlite,postgresql",
                        help="sqlite, postgresql or both (default %(default)s)")
    parser.add_argument("--think-ms", type=float, default=2000.0,
                        help="mean think time per action, ms (default %(default)s)")
    parser.add_argument("--ramp", type=float, default=5.0,
                        help="arrivals spread over this many seconds (default %(default)s)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    parser.add_argument("--threads", type=int, default=4,
                        help="threads per gunicorn worker (default 4)")
    parser.add_argument("--keep-alive", type=int, default=10,
                        help="gunicorn's --keep-alive, seconds; the simulated browsers keep "
                             "idle connections half a second less (default %(default)s)")
    parser.add_argument("--front", choices=("none", "nginx", "nginx-accel"), default="none",
                        help="a reverse proxy before gunicorn, as in production: nginx "
                             "sending the panel images itself (nginx) or after the app's "
                             "X-Accel-Redirect (nginx-accel); default none")
    parser.add_argument("--worker-class", default="gthread",
                        help="gunicorn worker class (default gthread)")
    parser.add_argument("--max-seconds", type=float, default=240.0,
                        help="a run's time limit (default %(default)s)")
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    kinds = [k.strip() for k in args.stores.split(",") if k.strip()]
    print(f"server load: gunicorn -w {args.workers} -k {args.worker_class} --threads "
          f"{args.threads} --keep-alive {args.keep_alive}"
          f"{'' if args.front == 'none' else ', behind ' + args.front}; {os.cpu_count()} CPUs shared by server, store and simulator; "
          f"think {args.think_ms:g} ms per action, arrivals over {args.ramp:g} s; "
          f"{N_LISTS} lists of 6 panels after 6 practice panels, images fetched")
    runs = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_design_") as design_root:
        for kind in kinds:
            if kind == "postgresql":
                reason = postgres_reason()
                if reason:
                    print(f"\n== postgresql skipped: {PG_URL} does not answer ({reason})")
                    continue
            for level in levels:
                run = run_level(kind, level, Path(design_root), args)
                print_run(run)
                runs.append(run)
    print_summary(runs)
    for run in runs:
        if run["level"] < 500:
            continue
        r, c = run["result"], run["check"]
        p99 = r.latency_table().get("response", {}).get("p99", float("nan"))
        reached = (p99 < 500 and r.failed == 0 and not c.missing and not c.extra
                   and not c.duplicate_rows and not c.lists_over_target)
        print(f"target on {run['store']} ({run['level']} at once: trial POST p99 < 500 ms, "
              f"nothing lost or doubled, no list over target): "
              f"{'reached' if reached else 'NOT reached'} (p99 {fmt(p99)} ms, lost "
              f"{len(c.missing)}, extra {len(c.extra)}, doubled {len(c.duplicate_rows)})")
    print(f"\nwhole benchmark: {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([{
            "store": run["store"], "level": run["level"], "baseline": run["baseline"],
            "summary": {k: v for k, v in run["result"].summary().items()
                        if k not in ("acknowledged", "participants", "completion_codes")},
            "check_problems": run["check"].problems} for run in runs], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
