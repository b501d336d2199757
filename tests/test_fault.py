"""Faults under load: real gunicorn, simulated participants answering, and then a worker is
SIGKILLed mid-run (gunicorn respawns it), or the whole server is killed and started again.
The participants' failed requests are retried (as the trial page retries them), and
afterwards every acknowledged answer is stored exactly once, and every participant who had
not finished resumes where the store says (entering again with the same PROLIFIC_PID: the
same session, ``/api/state``'s ``next_index`` equal to their stored answers) and finishes.
On SQLite and on PostgreSQL (where one answers)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from server_world import make_design, store_url
from sqlalchemy import func, select

from server.audit import check_store
from server.simulate import run_simulation
from server.store import Store, participants, responses
from server.study import install_study

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="finding gunicorn's workers reads /proc (Linux)")

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"conv5": 3, "fc6": 9, "fc8": 6}   # 3 lists of 6 panels; 6 practice panels
PLACES = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (from /proc/*/stat)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


class Gunicorn:
    """``gunicorn -w 2 -k gthread`` serving the app, in its own process group."""

    def __init__(self, instance: Path, database_url: str, port: int | None = None):
        self.instance, self.database_url = instance, database_url
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = instance / "gunicorn.log"
        env = dict(os.environ, FLASK_INSTANCE_PATH=str(instance), DATABASE_URL=database_url,
                   FLASK_SECRET_KEY="fault-test")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads",
                 "4", "-b", f"127.0.0.1:{self.port}", "--log-level", "warning",
                 "server:create_app()"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.url}/static/study.css", timeout=2):
                    if len(self.workers()) == 2:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.1)

    def workers(self) -> set[int]:
        return children(self.proc.pid)

    def kill_all(self) -> None:
        """SIGKILL the master and its workers at once (a crash, an OOM kill)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        deadline = time.monotonic() + 10
        while self.workers() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def design_file(tmp_path_factory):
    return make_design(tmp_path_factory.mktemp("design"), LAYERS, n_lists=3,
                       participants=PLACES)


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request, tmp_path, design_file):
    """A loaded store and gunicorn serving it: yields (server, store)."""
    with store_url(request.param, tmp_path) as url:
        instance = tmp_path / "instance"
        instance.mkdir()
        store = Store(url)
        store.migrate()
        install_study(store, design_file, instance / "images", completion_code="FAULT1")
        server = Gunicorn(instance, url)
        holder = {"server": server}
        try:
            yield holder, store
        finally:
            holder["server"].stop()
            store.dispose()


def stored_count(store: Store) -> int:
    with store.read() as conn:
        return conn.execute(select(func.count()).select_from(responses)).scalar()


def simulate_in_thread(url: str, seed: int) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target():
        box["result"] = run_simulation(url, PLACES, PLACES, seed=seed, think_ms=60,
                                       reload_rate=0.2, abandon_rate=0.3, retry_seconds=45,
                                       timeout_s=20)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def wait_for_answers(store: Store, n: int, thread: threading.Thread) -> None:
    deadline = time.monotonic() + 60
    while stored_count(store) < n:
        assert thread.is_alive(), "the simulation ended before the fault"
        assert time.monotonic() < deadline, "no answers arrived"
        time.sleep(0.02)


def check_and_resume(store: Store, url: str, result) -> None:
    """Nothing lost or doubled; every unfinished participant resumes and finishes."""
    assert result.failed == 0, result.errors
    assert result.resume_mismatches == 0, result.errors
    assert result.completed + result.abandoned == PLACES, result.outcomes
    check = check_store(store, result.acknowledged, result.unconfirmed)
    assert check.ok, check.problems
    assert check.stored == len(result.acknowledged) + check.stored_unconfirmed

    with store.read() as conn:
        before = {row.prolific_pid: row for row in conn.execute(select(participants))}
    assert set(before) == set(result.outcomes)
    unfinished = sorted(pid for pid, row in before.items() if row.status != "completed")
    assert unfinished, "the run should leave some participants unfinished"
    again = run_simulation(url, 0, 6, pids=unfinished, think_ms=0, reload_rate=0,
                           abandon_rate=0, retry_seconds=30)
    assert again.failed == 0 and again.completed == len(unfinished), again.errors
    # The same session: /api/state's next_index was their stored answers, no new rows.
    assert again.resumed_at == {pid: before[pid].n_answered for pid in unfinished}
    with store.read() as conn:
        after = {row.prolific_pid: row for row in conn.execute(select(participants))}
    assert {pid: row.id for pid, row in after.items()} == \
        {pid: row.id for pid, row in before.items()}
    assert all(row.status == "completed" for row in after.values())
    check = check_store(store, result.acknowledged | again.acknowledged, result.unconfirmed)
    assert check.ok, check.problems
    assert check.completed == PLACES and check.stored == PLACES * 12


def test_a_worker_killed_mid_run_loses_and_doubles_nothing(world):
    holder, store = world
    server = holder["server"]
    thread, box = simulate_in_thread(server.url, seed=7)
    wait_for_answers(store, 15, thread)
    killed = set()
    for _ in range(3):                       # three kills while answers are arriving
        if not thread.is_alive():
            break
        victim = min(server.workers() - killed)
        os.kill(victim, signal.SIGKILL)
        killed.add(victim)
        time.sleep(0.25)
    assert killed, "the simulation ended before the first kill"
    thread.join(120)
    assert not thread.is_alive()
    result = box["result"]
    # Whether a kill cuts a request in flight is a matter of timing (a worker between
    # requests dies without a trace): the requests it cut, if any, were sent again, and
    # what matters is below: nothing lost, nothing doubled.
    assert result.completed + result.abandoned > 0
    # gunicorn replaced the killed workers
    deadline = time.monotonic() + 30
    while len(server.workers() - killed) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(server.workers() - killed) == 2
    assert "WORKER TIMEOUT" not in server.log.read_text()
    check_and_resume(store, server.url, result)


def test_the_whole_server_killed_and_restarted_loses_and_doubles_nothing(world):
    holder, store = world
    server = holder["server"]
    thread, box = simulate_in_thread(server.url, seed=8)
    wait_for_answers(store, 20, thread)
    answered_at_kill = stored_count(store)
    server.kill_all()
    time.sleep(0.5)                          # clients see refused connections meanwhile
    holder["server"] = server = Gunicorn(server.instance, server.database_url, server.port)
    thread.join(120)
    assert not thread.is_alive()
    result = box["result"]
    assert result.retries > 0                # requests failed during the outage and retried
    assert stored_count(store) > answered_at_kill
    check_and_resume(store, server.url, result)
