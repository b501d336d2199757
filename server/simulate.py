"""Simulated participants over HTTP: load tests and fault tests of a running server.

``python -m server.simulate --url http://127.0.0.1:8000 --participants 100 --concurrency 20``
walks each simulated participant through the whole study exactly as the pages do: the
Prolific entry link, consent, instructions, the device check, the practice and main
trials (``GET /api/state`` then one ``POST /api/responses`` per trial, in order), the
debrief and the completion page with its code. Each participant is its own browser (an
HTTP client with its own cookie jar); at most ``--concurrency`` of them take part at once.

Along the way some participants

- **reload** (``--reload-rate``, per participant): at a random trial they drop their
  browser and come back with a new one and the same PROLIFIC_PID and SESSION_ID (one
  SESSION_ID per PID, :func:`session_id_for`, in every run), resuming from
  ``/api/state``'s ``next_index`` (as a reload, another tab or another browser does);
- **abandon** (``--abandon-rate``, per participant): at a random trial they stop for good;
- meet **"This study is full"** and stop there.

Requests that fail on the way (connection refused or dropped, a timeout, a 5xx or 429)
are retried with exponential backoff and jitter, as the trial page does: every request of
the flow is idempotent on the server (the same PID resumes the same session, a step is
taken once, a repeated answer returns the stored one). A participant gives up after
``retry_seconds`` of failures on one request.

**Think time**: before every action (entering, each form, each answer) a participant waits
an exponential time with mean ``--think-ms`` (default 500 ms). Real participants spend
20-30 s on a panel, so C simulated participants with a think time of T seconds send about
as many answers per second as C * 25 / T real ones. ``--think-ms 0`` hammers the server.
The think time only paces the simulation: the reaction times an answer reports
(``rt_answer_ms``, ``rt_text_ms``) are drawn apart, as a person's (:func:`attentive_times`:
log-normal, each participant with a typical time of their own, median about 2.5 s to the
yes or no), from a generator of their own seeded by the PROLIFIC_PID, so they are the same
whatever the think time and the seeded answers are as they were without them.

**Inattentive participants** (``--inattentive FRACTION``, default 0): exactly
``round(FRACTION * N)`` of the N participants, drawn with the seed, do not look at the
panels (docs/study-design.md, "Catch trials"; docs/exclusion.md): they answer yes or no at
random (probability 0.5, the rater is never asked), very fast (``rt_answer_ms`` 250-700
ms), and with a yes type a short random word or paste the same text again
(:class:`_Careless`). ``--truth FILE.csv`` writes ``prolific_pid,inattentive``
(``true``/``false``) for every simulated participant, so a caller can check what the
study's exclusion rules made of them.

**What the page records**: every answer carries the trial page's interaction fields
(docs/study-design.md, "What the trial page records"), drawn per participant from their
own generator (seeded by the PROLIFIC_PID, so the seeded answers and think times are as
they were without them): each participant answers with the keys or the mouse by habit
(:func:`tracking_fields`), now and then switches to another tab (``hidden_ms``,
``focus_losses``) or another window (``focus_losses``) during a trial, and rarely pastes
the object's name.

The report (a table, and ``--json OUT``): participants started / completed / abandoned /
full / stopped / failed, requests per second, p50/p90/p99 latency per endpoint label
(``entry``, ``study``, ``page`` (a stage's page), ``consent``, ``instructions``, ``device``,
``state``, ``response``, ``debrief``, ``complete``, ``image``), answers acknowledged (201
stored and 200 duplicates counted apart) and the acknowledged (PROLIFIC_PID, trial_index)
pairs, so a caller can check the store holds every one of them exactly once.

Only loopback servers (127.0.0.1, ::1, localhost) are driven: anything else is refused
(exit status 2), so the simulator never loads a production server or Prolific by mistake.

``--check-store DATABASE_URL`` audits the store afterwards (:mod:`server.audit`).

The Python API is :func:`run_simulation` (or the coroutine :func:`simulate`); a ``rater``
decides each answer from the panel and, with ``fetch_images``, its image bytes. The
command line answers at random (:func:`random_rater`); ``python -m experiment.simulate``
is the same command with ``--rater MODULE:NAME`` (e.g. a classifier from ``generator``,
which the server never imports). :func:`build_parser` and :func:`run_cli` are the command
line's parts for it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import json
import logging
import math
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

from common.files import atomic_write_text

__all__ = ["run_simulation", "simulate", "SimulationResult", "NotLoopback", "check_loopback",
           "random_rater", "tracking_fields", "attentive_times", "inattentive_pids",
           "write_truth", "Rater", "WORDS", "DEFAULT_THINK_MS", "LABELS", "INATTENTIVE_RT_MS",
           "percentile", "build_parser", "prepare_cli", "run_cli", "main"]

log = logging.getLogger("server.simulate")  # the same name under python -m

DEFAULT_THINK_MS = 500.0
# How long a browser keeps an idle connection open: below gunicorn's --keep-alive (2 s by
# default), so an idle connection is never reused just as the server closes it.
DEFAULT_KEEPALIVE_S = 1.5
# A simulated participant's everyday objects, places and animals.
WORDS = ("dog", "cat", "car", "apple", "beer", "bicycle", "bird", "boat", "bread", "chair",
         "clock", "cup", "fish", "flower", "guitar", "horse", "house", "lamp", "mountain",
         "orange", "pizza", "shoe", "snake", "table", "train", "tree", "umbrella", "beach")
# Inattentive participants' time from the panel to their yes or no: uniform in this range (ms).
INATTENTIVE_RT_MS = (250.0, 700.0)
# What an inattentive participant types after a yes (or pastes, again and again).
JUNK = ("ok", "yes", "idk", "thing", "stuff", "asdf", "x", "dog", "cat", "no idea", "lol",
        "good", "a", "nice")
LABELS = ("entry", "study", "page", "consent", "instructions", "device", "state", "response",
          "debrief", "complete", "image")
STAGES = ("consent", "instructions", "device", "trials", "debrief", "complete")
# A participant's pages (a guard against a server that sends them round in circles).
MAX_STEPS = 500
# The problem pages, by their <title>.
PROBLEMS = {"Study full": "full", "Time ran out": "expired", "Study closed": "closed",
            "Not ready": "no_study", "Session ended": "ended", "Link problem": "bad_link"}
OUTCOMES = ("completed", "abandoned", "full", "declined", "expired", "ended", "closed",
            "no_study", "bad_link", "stopped", "failed")

Rater = Callable[[dict[str, Any], "bytes | None", random.Random], "tuple[bool, str | None]"]


def session_id_for(pid: str) -> str:
    """The simulated participant's SESSION_ID: 24 hexadecimal digits, a function of the PID."""
    return hashlib.sha256(f"session {pid}".encode()).hexdigest()[:24]


class NotLoopback(ValueError):
    """The URL's host is not this machine's loopback interface."""


def check_loopback(url: str) -> str:
    """``url`` normalised to end with ``/``, or NotLoopback (also for non-HTTP URLs)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NotLoopback(f"{url!r} is not an http:// URL")
    host = parts.hostname
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback:
        raise NotLoopback(f"{url!r}: the simulator drives only servers on this machine's "
                          "loopback interface (127.0.0.1, ::1, localhost), never "
                          f"{host!r}: simulated participants must not reach a real study")
    base = f"{parts.scheme}://{parts.netloc}{parts.path or '/'}"
    return base if base.endswith("/") else base + "/"


class _Habits:
    """How one simulated participant uses the page: keys or mouse, tab switches, pastes."""

    def __init__(self, pid: str):
        self.rng = random.Random(f"tracking {pid}")
        self.keys = self.rng.random() < 0.7          # most people use Y / N once shown

    def fields(self, yes: bool, trial_ms: float) -> dict[str, Any]:
        return tracking_fields(self.rng, self.keys, yes, trial_ms)


def tracking_fields(rng: random.Random, keys: bool, yes: bool,
                    trial_ms: float) -> dict[str, Any]:
    """The interaction fields a browser sends with an answer (server/api.py): the input
    (90% of the time the participant's habit: ``key`` when ``keys``, else ``mouse``), a tab
    switch in 4% of trials (hidden for part of the trial's ``trial_ms``, one focus loss),
    another window in 3% (a focus loss, nothing hidden), a paste in 3% of the yes answers."""
    draw = rng.random()
    hidden, losses = 0, 0
    if draw < 0.04:
        hidden, losses = round(trial_ms * rng.uniform(0.1, 0.8)), 1
    elif draw < 0.07:
        losses = 1
    usual, other = ("key", "mouse") if keys else ("mouse", "key")
    return {"hidden_ms": hidden, "focus_losses": losses,
            "pasted": yes and rng.random() < 0.03,
            "answer_input": usual if rng.random() < 0.9 else other}


def attentive_times(pid: str) -> Callable[[bool], tuple[float, float | None]]:
    """An attentive participant's reported reaction times: a function of whether they said
    yes giving ``(rt_answer_ms, rt_text_ms or None)``. Each participant has a typical time
    to the yes or no of their own (log-normal: median 2.5 s, 90% of participants between
    1.8 and 3.5 s); each trial's time is log-normal around it (sigma 0.5), at least 400 ms;
    typing the object's name takes about 2.5 s more (log-normal, at least 500 ms). Drawn
    from a generator seeded by the PID: the same times in every run."""
    rng = random.Random(f"times {pid}")
    typical = 2500.0 * rng.lognormvariate(0.0, 0.2)

    def times(yes: bool) -> tuple[float, float | None]:
        answer = max(400.0, typical * rng.lognormvariate(0.0, 0.5))
        text = max(500.0, 2500.0 * rng.lognormvariate(0.0, 0.4)) if yes else None
        return answer, text

    return times


class _Careless:
    """An inattentive participant's answers: yes or no at random (probability 0.5), very
    fast (:data:`INATTENTIVE_RT_MS`), and after a yes a short word typed in a hurry
    (:data:`JUNK`, 0.3-1.5 s) or their one pasted text again (a participant pastes on a
    share of their yes answers drawn between 0.2 and 0.8, in 0.15-0.5 s)."""

    def __init__(self, pid: str):
        self.rng = random.Random(f"inattentive {pid}")
        self.pasted_text = self.rng.choice(JUNK)
        self.paste_rate = self.rng.uniform(0.2, 0.8)

    def answer(self) -> tuple[bool, str | None, float, float | None, bool]:
        """``(yes, text, rt_answer_ms, rt_text_ms, pasted)``."""
        rng = self.rng
        yes = rng.random() < 0.5
        rt_answer = rng.uniform(*INATTENTIVE_RT_MS)
        if not yes:
            return False, None, rt_answer, None, False
        if rng.random() < self.paste_rate:
            return True, self.pasted_text, rt_answer, rng.uniform(150.0, 500.0), True
        return True, rng.choice(JUNK), rt_answer, rng.uniform(300.0, 1500.0), False


def inattentive_pids(pids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """Exactly ``round(fraction * len(pids))`` of ``pids``, drawn with ``seed`` (a generator
    of its own: the participants' other draws are those of a run without them)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"inattentive {fraction}: a share between 0 and 1")
    pids = list(pids)
    k = round(fraction * len(pids))
    return set(random.Random(f"inattentive {seed}").sample(pids, k))


def write_truth(path: str | Path, pids: Sequence[str], inattentive: set[str]) -> Path:
    """``prolific_pid,inattentive`` (``true``/``false``) for each of ``pids``, in order."""
    lines = ["prolific_pid,inattentive"]
    lines += [f"{pid},{'true' if pid in inattentive else 'false'}" for pid in pids]
    path = Path(path)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def random_rater(panel: dict[str, Any], image: bytes | None,
                 rng: random.Random) -> tuple[bool, str | None]:
    """The default rater: yes with probability 0.3, naming a random everyday word."""
    if rng.random() < 0.3:
        return True, rng.choice(WORDS)
    return False, None


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class SimulationResult:
    """What a simulation did and saw. Latencies are in milliseconds, per endpoint label."""

    url: str
    requested: int
    concurrency: int
    think_ms: float
    started: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)       # pid -> outcome
    elapsed_s: float = 0.0
    requests: int = 0
    retries: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, Counter] = field(default_factory=dict)   # label -> status counts
    acknowledged: set[tuple[str, int]] = field(default_factory=set)
    stored_new: int = 0            # 201: written by this request
    duplicates: int = 0            # 200: the server already had it
    unconfirmed: set[tuple[str, int]] = field(default_factory=set)  # sent, never acknowledged
    resumed_at: dict[str, int] = field(default_factory=dict)   # pid -> first next_index seen
    reloads: int = 0
    conflicts: int = 0             # 409s on answers (the participant re-read its state)
    resume_mismatches: int = 0     # a reload resumed elsewhere than after the last answer
    completion_codes: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    stopped_early: bool = False    # max_seconds ran out
    pids: list[str] = field(default_factory=list)             # every planned participant
    inattentive: set[str] = field(default_factory=set)        # those who answer at random

    def count(self, outcome: str) -> int:
        return sum(1 for value in self.outcomes.values() if value == outcome)

    @property
    def completed(self) -> int:
        return self.count("completed")

    @property
    def abandoned(self) -> int:
        return self.count("abandoned")

    @property
    def full(self) -> int:
        return self.count("full")

    @property
    def failed(self) -> int:
        return self.count("failed")

    def attentiveness(self) -> dict[str, Any]:
        """How many planned participants were attentive and inattentive, and per group the
        outcome counts of those who started."""
        groups: dict[str, Any] = {
            "attentive": len(self.pids) - len(self.inattentive & set(self.pids)),
            "inattentive": len(self.inattentive & set(self.pids))}
        for name, inattentive in (("attentive", False), ("inattentive", True)):
            outcomes = Counter(outcome for pid, outcome in self.outcomes.items()
                               if (pid in self.inattentive) == inattentive)
            groups[f"{name}_outcomes"] = {o: outcomes[o] for o in OUTCOMES if outcomes[o]}
        return groups

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency_table(self) -> dict[str, dict[str, float]]:
        """Per label: n, p50, p90, p99, max (ms)."""
        table = {}
        for label in sorted(self.latencies, key=_label_order):
            values = self.latencies[label]
            table[label] = {"n": len(values), "p50": percentile(values, 50),
                            "p90": percentile(values, 90), "p99": percentile(values, 99),
                            "max": max(values) if values else math.nan}
        return table

    def summary(self) -> dict[str, Any]:
        """Everything as JSON-ready data (acknowledged pairs sorted)."""
        return {
            "url": self.url, "requested": self.requested, "concurrency": self.concurrency,
            "think_ms": self.think_ms, "started": self.started,
            "outcomes": {name: self.count(name) for name in OUTCOMES},
            "elapsed_s": self.elapsed_s, "requests": self.requests,
            "requests_per_s": self.requests_per_s, "retries": self.retries,
            "reloads": self.reloads, "conflicts": self.conflicts,
            "resume_mismatches": self.resume_mismatches,
            "answers_acknowledged": len(self.acknowledged), "stored_new": self.stored_new,
            "duplicates": self.duplicates, "unconfirmed": sorted(self.unconfirmed),
            "latency_ms": {label: {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                   for k, v in row.items()}
                           for label, row in self.latency_table().items()},
            "statuses": {label: {str(k): v for k, v in counts.items()}
                         for label, counts in self.statuses.items()},
            "stopped_early": self.stopped_early, "errors": self.errors,
            "completion_codes": self.completion_codes,
            "participants": self.outcomes,
            "attentiveness": self.attentiveness(),
            "acknowledged": sorted([pid, index] for pid, index in self.acknowledged),
        }

    def report(self) -> str:
        """A printable table."""
        counts = ", ".join(f"{name} {self.count(name)}" for name in OUTCOMES)
        lines = [
            f"simulated participants against {self.url}: requested {self.requested}, "
            f"started {self.started} ({counts})"
            + ("; stopped early at --max-seconds" if self.stopped_early else ""),
            f"requests: {self.requests} in {self.elapsed_s:.1f} s = "
            f"{self.requests_per_s:.1f}/s (concurrency {self.concurrency}, think time "
            f"{self.think_ms:g} ms); retries {self.retries}, reloads {self.reloads} "
            f"({self.resume_mismatches} resumed elsewhere than after the last answer), "
            f"answer conflicts (409) {self.conflicts}",
            f"answers acknowledged: {len(self.acknowledged)} (201 stored {self.stored_new}, "
            f"200 duplicates {self.duplicates}); sent but unconfirmed {len(self.unconfirmed)}",
        ]
        if self.inattentive:
            groups = self.attentiveness()
            done = {name: groups[f"{name}_outcomes"].get("completed", 0)
                    for name in ("attentive", "inattentive")}
            lines.append(f"inattentive (random, fast answers): {groups['inattentive']} of "
                         f"{len(self.pids)} planned ({done['inattentive']} completed); "
                         f"attentive {groups['attentive']} ({done['attentive']} completed)")
        lines += [
            f"{'endpoint':<13}{'n':>7}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
            "  statuses",
        ]
        for label, row in self.latency_table().items():
            statuses = " ".join(f"{k}:{v}" for k, v in sorted(self.statuses.get(label, {})
                                                               .items(), key=str))
            lines.append(f"{label:<13}{row['n']:>7}{row['p50']:>9.1f}{row['p90']:>9.1f}"
                         f"{row['p99']:>9.1f}{row['max']:>9.1f}  {statuses}")
        if self.errors:
            lines.append(f"errors ({len(self.errors)}):")
            lines.extend(f"  {e}" for e in self.errors[:20])
            if len(self.errors) > 20:
                lines.append(f"  ... {len(self.errors) - 20} more (see --json)")
        return "\n".join(lines)


def _label_order(label: str) -> tuple[int, str]:
    return (LABELS.index(label) if label in LABELS else len(LABELS), label)


class _GaveUp(Exception):
    """A request kept failing for ``retry_seconds``."""


class _Stop(Exception):
    """max_seconds ran out: stop before the next action."""


@dataclass
class _Reply:
    status: int
    location: str | None
    body: bytes
    url: str

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return {}


_CSRF_FIELD = re.compile(r'name="csrf_token"\s+value="([^"]*)"')
_CSRF_DATA = re.compile(r'data-csrf="([^"]*)"')
_TITLE = re.compile(r"<title>(.*?)</title>", re.S)
_CODE = re.compile(r'id="code"[^>]*>([^<]*)<')
_REFRESH = re.compile(r'http-equiv="refresh"\s+content="[^"]*url=([^"]*)"')


class _Simulation:
    """The shared state of one run: options, the result, the clock."""

    def __init__(self, base: str, result: SimulationResult, *, think_ms: float,
                 reload_rate: float, abandon_rate: float, deadline: float | None,
                 rater: Rater | None, fetch_images: bool, timeout_s: float,
                 retry_seconds: float, study_id: str,
                 keepalive_s: float = DEFAULT_KEEPALIVE_S):
        self.base = base
        self.keepalive_s = keepalive_s
        self.result = result
        self.think_ms = think_ms
        self.reload_rate = reload_rate
        self.abandon_rate = abandon_rate
        self.deadline = deadline
        self.rater = rater
        self.fetch_images = fetch_images
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.retry_seconds = retry_seconds
        self.study_id = study_id

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def record(self, label: str, status: int | str, latency_ms: float | None) -> None:
        self.result.requests += 1
        self.result.statuses.setdefault(label, Counter())[status] += 1
        if latency_ms is not None:
            self.result.latencies.setdefault(label, []).append(latency_ms)


class _Participant:
    """One simulated participant: a browser (HTTP client) walking the study."""

    def __init__(self, sim: _Simulation, pid: str, rng: random.Random, arrival: float,
                 inattentive: bool = False):
        self.sim = sim
        self.pid = pid
        self.rng = rng
        self.arrival = arrival
        # One Prolific submission per PID: its SESSION_ID follows from the PID, so a reload
        # and a later run with the same pids enter with it (the server refuses a known PID
        # with another SESSION_ID). The draw keeps the seeded plans as they were.
        rng.getrandbits(96)
        self.session_id = session_id_for(pid)
        self.habits = _Habits(pid)
        # Reported reaction times, or an inattentive participant's whole answers: generators
        # of their own (seeded by the PID), so ``rng``'s draws are those of a run without.
        self.times = attentive_times(pid)
        self.careless = _Careless(pid) if inattentive else None
        self.http: aiohttp.ClientSession | None = None
        self.images: dict[str, bytes] = {}     # this browser's cache
        # Where (as a fraction of the trials) this participant reloads or gives up.
        self.reload_at = rng.random() if rng.random() < sim.reload_rate else None
        self.abandon_at = rng.random() if rng.random() < sim.abandon_rate else None
        self.resumed = False
        self.next_index: int | None = None   # after the last answer acknowledged in this run

    # --- the browser --------------------------------------------------------------------

    async def new_browser(self) -> None:
        await self.close()
        # keepalive below the server's (DEFAULT_KEEPALIVE_S)
        connector = aiohttp.TCPConnector(limit=2, keepalive_timeout=self.sim.keepalive_s)
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                          connector=connector, timeout=self.sim.timeout,
                                          headers={"User-Agent": "server.simulate/1"})
        self.images = {}

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
            self.http = None

    async def think(self, mean_ms: float | None = None) -> float:
        """Wait an exponential time (the participant reading, deciding); returns ms."""
        if self.sim.expired():
            raise _Stop
        mean = self.sim.think_ms if mean_ms is None else mean_ms
        wait = self.rng.expovariate(1 / mean) if mean > 0 else 0.0
        if wait:
            await asyncio.sleep(wait / 1000)
        return wait

    async def request(self, method: str, url: str, label: str, **kwargs: Any) -> _Reply:
        """One request (no redirects followed), retried with backoff on connection errors,
        timeouts, 5xx and 429 until ``retry_seconds`` have passed."""
        assert self.http is not None
        first_failure = time.monotonic()
        attempt = 0
        while True:
            t0 = time.perf_counter()
            try:
                async with self.http.request(method, url, allow_redirects=False,
                                             **kwargs) as resp:
                    body = await resp.read()
                    reply = _Reply(resp.status, resp.headers.get("Location"), body,
                                   str(resp.url))
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
                self.sim.record(label, type(exc).__name__, None)
            else:
                self.sim.record(label, reply.status, (time.perf_counter() - t0) * 1000)
                if reply.status < 500 and reply.status != 429:
                    return reply
                failure = f"HTTP {reply.status}"
            if time.monotonic() - first_failure > self.sim.retry_seconds:
                raise _GaveUp(f"{method} {label}: {failure} (gave up after "
                              f"{self.sim.retry_seconds:g} s of retries)")
            delay = min(2.0, 0.05 * 2 ** attempt) * self.rng.uniform(0.5, 1.0)
            attempt += 1
            self.sim.result.retries += 1
            log.debug("%s %s %s failed (%s); retry %d in %.2f s", self.pid, method, label,
                      failure, attempt, delay)
            await asyncio.sleep(delay)

    def url(self, path: str) -> str:
        return urljoin(self.sim.base, path)

    async def follow(self, reply: _Reply) -> _Reply:
        """Follow redirects (each hop timed under its page's label)."""
        for _ in range(10):
            if reply.status not in (301, 302, 303, 307, 308) or not reply.location:
                return reply
            target = urljoin(reply.url, reply.location)
            reply = await self.request("GET", target, _page_label(target))
        raise _GaveUp(f"too many redirects ending at {reply.url}")

    async def enter(self) -> _Reply:
        query = urlencode({"PROLIFIC_PID": self.pid, "STUDY_ID": self.sim.study_id,
                           "SESSION_ID": self.session_id})
        return await self.follow(await self.request("GET", f"{self.sim.base}?{query}",
                                                    "entry"))

    # --- the flow -----------------------------------------------------------------------

    async def run(self) -> str:
        try:
            await self.new_browser()
            wait = self.arrival - time.monotonic()   # arrivals spread over the ramp
            if wait > 0:
                await asyncio.sleep(wait)
            await self.think()
            page = await self.enter()
            for _ in range(MAX_STEPS):
                where = _where(page)
                if where in STAGES:
                    outcome = await getattr(self, f"at_{where}")(page)
                    if outcome is not None:
                        return outcome
                    page = self.page
                    continue
                if where in OUTCOMES:
                    return where
                self.error(f"unexpected page {page.url} (HTTP {page.status}, "
                           f"{_title(page)!r})")
                return "failed"
            self.error(f"no way through the study after {MAX_STEPS} pages, at {page.url}")
            return "failed"
        except _Stop:
            return "stopped"
        except _GaveUp as exc:
            self.error(str(exc))
            return "failed"
        finally:
            await self.close()

    # Each ``at_<stage>`` acts on its page; it sets ``self.page`` to where that leads and
    # returns None to go on, or an outcome to stop.

    async def form(self, page: _Reply, label: str, fields: dict[str, str]) -> _Reply:
        match = _CSRF_FIELD.search(page.text)
        if not match:
            raise _GaveUp(f"no csrf_token on {page.url}")
        await self.think()
        reply = await self.request("POST", page.url, label,
                                   data={"csrf_token": match.group(1), **fields})
        if reply.status >= 400:
            raise _GaveUp(f"POST {label}: HTTP {reply.status}: {_title(reply)!r}")
        return await self.follow(reply)

    async def at_consent(self, page: _Reply) -> str | None:
        self.page = await self.form(page, "consent", {"choice": "agree"})
        return None

    async def at_instructions(self, page: _Reply) -> str | None:
        self.page = await self.form(page, "instructions", {})
        return None

    async def at_device(self, page: _Reply) -> str | None:
        self.page = await self.form(page, "device", {
            "width": "1280", "height": "800", "screen_width": "1920",
            "screen_height": "1080", "touch_only": "0", "mobile": "0"})
        return None

    async def at_debrief(self, page: _Reply) -> str | None:
        self.page = await self.form(page, "debrief", {})
        return None

    async def at_complete(self, page: _Reply) -> str | None:
        code = _CODE.search(page.text)
        if not code:
            raise _GaveUp(f"no completion code on {page.url}")
        code_text = code.group(1).strip()
        refresh = _REFRESH.search(page.text)
        if refresh and f"cc={code_text}" not in refresh.group(1):
            self.error(f"the completion page's redirect {refresh.group(1)!r} does not carry "
                       f"the code {code_text!r}")
        self.sim.result.completion_codes[self.pid] = code_text
        return "completed"

    async def at_trials(self, page: _Reply) -> str | None:
        match = _CSRF_DATA.search(page.text)
        if not match:
            raise _GaveUp(f"no data-csrf on {page.url}")
        csrf = match.group(1)
        state = await self.state()
        if state is None:          # not at the trials any more: the study page knows
            self.page = await self.follow(await self.request("GET", self.url("study"),
                                                             "study"))
            return None
        if not self.resumed:
            self.sim.result.resumed_at[self.pid] = state["next_index"]
            self.resumed = True
        if self.next_index is not None and state["next_index"] != self.next_index:
            # After a reload the server must resume exactly after the last acknowledged
            # answer: anything else is a lost or a phantom answer.
            self.sim.result.resume_mismatches += 1
            self.error(f"resumed at trial {state['next_index']}, but the server had "
                       f"acknowledged answers up to trial {self.next_index - 1}")
        n = state["n_trials"]
        index = state["next_index"]
        while index < n:
            if self.abandon_at is not None and index >= math.floor(self.abandon_at * n):
                return "abandoned"
            if self.reload_at is not None and index >= max(1, math.floor(self.reload_at * n)):
                # A new browser, the same PROLIFIC_PID: resume from the server's state.
                self.reload_at = None
                self.sim.result.reloads += 1
                await self.new_browser()
                await self.think()
                self.page = await self.enter()
                return None
            reply = await self.answer(state["trials"][index], csrf)
            data = reply.json()
            if reply.status in (200, 201):
                if data.get("done"):
                    self.page = await self.follow(
                        await self.request("GET", self.url(data.get("next") or "study"),
                                           "study"))
                    return None
                index = self.next_index = data["next_index"]
            elif reply.status == 409:
                # Out of order, a panel mismatch, an ended session or a lost lease: like the
                # page, start over from where the server says this participant stands.
                self.sim.result.conflicts += 1
                self.error(f"trial {index}: HTTP 409 {data.get('error')!r}", quiet=True)
                self.page = await self.follow(await self.request("GET", self.url("study"),
                                                                 "study"))
                return None
            else:
                raise _GaveUp(f"trial {index}: HTTP {reply.status} {data.get('error')!r}")
        self.page = await self.follow(await self.request("GET", self.url("study"), "study"))
        return None

    async def state(self) -> dict[str, Any] | None:
        reply = await self.request("GET", self.url("api/state"), "state")
        if reply.status != 200:
            return None
        return reply.json()

    async def answer(self, trial: dict[str, Any], csrf: str) -> _Reply:
        image = None
        if self.sim.fetch_images:
            src = trial["image"]
            if src not in self.images:
                reply = await self.request("GET", self.url(src), "image")
                if reply.status != 200:
                    raise _GaveUp(f"image {src}: HTTP {reply.status}")
                self.images[src] = reply.body
            image = self.images[src]
        shown_at = time.time() * 1000
        if self.careless is not None:
            # looks at nothing: a coin, a fast click, a word or the same paste again
            yes, text, rt_answer, rt_text, pasted = self.careless.answer()
            await self.think(self.sim.think_ms / 4)
            if yes:
                await self.think(self.sim.think_ms / 8)
            fields = {**self.habits.fields(yes, rt_answer + (rt_text or 0)), "pasted": pasted}
        else:
            if self.sim.rater is None:
                yes, text = random_rater(trial, image, self.rng)
            else:
                yes, text = await asyncio.to_thread(self.sim.rater, trial, image, self.rng)
            yes = bool(yes)
            await self.think()                       # paces the run; the times are drawn
            if yes:
                await self.think(self.sim.think_ms / 2)
            rt_answer, rt_text = self.times(yes)
            fields = self.habits.fields(yes, rt_answer + (rt_text or 0))
        key = (self.pid, int(trial["index"]))
        body = {"trial_index": trial["index"], "panel_id": trial["panel_id"],
                "answer_yes": yes, "object_text": text if yes else None,
                "rt_answer_ms": round(rt_answer),
                "rt_text_ms": round(rt_text) if rt_text is not None else None,
                "shown_at": shown_at, "client_answered_at": time.time() * 1000, **fields}
        self.sim.result.unconfirmed.add(key)
        reply = await self.request("POST", self.url("api/responses"), "response", json=body,
                                   headers={"X-CSRF-Token": csrf})
        if reply.status in (200, 201):
            self.sim.result.unconfirmed.discard(key)
            self.sim.result.acknowledged.add(key)
            if reply.status == 201:
                self.sim.result.stored_new += 1
            else:
                self.sim.result.duplicates += 1
        elif reply.status < 500:
            self.sim.result.unconfirmed.discard(key)   # refused: certainly not stored
        return reply

    def error(self, message: str, quiet: bool = False) -> None:
        self.sim.result.errors.append(f"{self.pid}: {message}")
        (log.debug if quiet else log.warning)("%s: %s", self.pid, message)

    # The stage handlers leave the next page here.
    page: _Reply


def _page_label(url: str) -> str:
    path = urlsplit(url).path.rstrip("/")
    last = path.rsplit("/", 1)[-1]
    if last == "study":
        return "study"
    if last == "complete":
        return "complete"
    if last == "":
        return "entry"
    return "page"


def _title(page: _Reply) -> str:
    match = _TITLE.search(page.text)
    return match.group(1).strip() if match else ""


def _where(page: _Reply) -> str:
    """The stage page this is (consent .. complete), an outcome's page, or "?"."""
    last = urlsplit(page.url).path.rstrip("/").rsplit("/", 1)[-1]
    title = _title(page)
    if page.status == 200 and last in STAGES:
        text = page.text
        marker = {"trials": 'data-csrf="', "complete": 'id="code"'}.get(last,
                                                                      'name="csrf_token"')
        if marker in text:
            return last
    if last == "declined" or (last == "consent" and title == "Thank you"):
        return "declined"
    return PROBLEMS.get(title, "?")


async def simulate(url: str, participants: int, concurrency: int, *, seed: int = 0,
                   think_ms: float = DEFAULT_THINK_MS, reload_rate: float = 0.05,
                   abandon_rate: float = 0.05, max_seconds: float | None = None,
                   rater: Rater | None = None, fetch_images: bool = False,
                   pids: Sequence[str] | None = None, timeout_s: float = 30.0,
                   retry_seconds: float = 60.0, study_id: str | None = None,
                   ramp_seconds: float = 0.0, progress: bool = False,
                   keepalive_s: float = DEFAULT_KEEPALIVE_S,
                   inattentive: float = 0.0) -> SimulationResult:
    """The coroutine behind :func:`run_simulation` (same arguments)."""
    base = check_loopback(url)
    if participants < 0 or concurrency < 1:
        raise ValueError("participants must be >= 0 and concurrency >= 1")
    for name, rate in (("reload_rate", reload_rate), ("abandon_rate", abandon_rate),
                       ("inattentive", inattentive)):
        if not 0 <= rate <= 1:
            raise ValueError(f"{name} {rate}: must be between 0 and 1")
    master = random.Random(seed)
    if pids is None:
        pids = [f"{master.getrandbits(96):024x}" for _ in range(participants)]
    else:
        pids = list(pids)
        participants = len(pids)
    result = SimulationResult(url=base, requested=participants, concurrency=concurrency,
                              think_ms=think_ms, pids=list(pids),
                              inattentive=inattentive_pids(pids, inattentive, seed))
    began = time.monotonic()
    sim = _Simulation(base, result, think_ms=think_ms, reload_rate=reload_rate,
                      abandon_rate=abandon_rate,
                      deadline=None if max_seconds is None else began + max_seconds,
                      rater=rater, fetch_images=fetch_images, timeout_s=timeout_s,
                      retry_seconds=retry_seconds, keepalive_s=keepalive_s,
                      study_id=study_id or f"{master.getrandbits(96):024x}")
    slots = asyncio.Semaphore(concurrency)
    bar = _progress_bar(participants) if progress else None
    reporter = asyncio.create_task(_report_progress(result, began))

    async def one(participant: _Participant) -> None:
        try:
            outcome = await participant.run()
        except Exception as exc:  # noqa: BLE001 - one participant's bug never stops the run
            log.exception("participant %s failed", participant.pid)
            result.errors.append(f"{participant.pid}: {type(exc).__name__}: {exc}")
            outcome = "failed"
        finally:
            slots.release()
        result.outcomes[participant.pid] = outcome
        if bar is not None:
            bar.update(1)

    tasks = []
    try:
        for pid in pids:
            rng = random.Random(master.getrandbits(64))
            arrival = began + rng.uniform(0, ramp_seconds) if ramp_seconds > 0 else began
            await slots.acquire()
            if sim.expired():
                slots.release()
                result.stopped_early = True
                break
            result.started += 1
            tasks.append(asyncio.create_task(one(_Participant(
                sim, pid, rng, arrival, inattentive=pid in result.inattentive))))
        await asyncio.gather(*tasks)
    finally:
        reporter.cancel()
        if bar is not None:
            bar.close()
    result.stopped_early = result.stopped_early or result.count("stopped") > 0
    result.elapsed_s = time.monotonic() - began
    return result


def run_simulation(url: str, participants: int, concurrency: int, *, seed: int = 0,
                   think_ms: float = DEFAULT_THINK_MS, reload_rate: float = 0.05,
                   abandon_rate: float = 0.05, max_seconds: float | None = None,
                   rater: Rater | None = None, fetch_images: bool = False,
                   pids: Sequence[str] | None = None, timeout_s: float = 30.0,
                   retry_seconds: float = 60.0, study_id: str | None = None,
                   ramp_seconds: float = 0.0, progress: bool = False,
                   keepalive_s: float = DEFAULT_KEEPALIVE_S,
                   inattentive: float = 0.0) -> SimulationResult:
    """Drive ``participants`` simulated participants (at most ``concurrency`` at a time)
    through the study at ``url`` (a loopback server; NotLoopback otherwise).

    - ``seed``: participants' ids, answers, think times and plans are drawn from it.
    - ``think_ms``: the mean of the exponential wait before each action (0: none).
    - ``reload_rate`` / ``abandon_rate``: the share of participants who reload with a new
      browser (same PROLIFIC_PID) at a random trial / who stop for good at a random trial.
    - ``max_seconds``: after this, no participant starts and every one stops before its
      next action (requests in flight finish); ``stopped_early`` says so.
    - ``rater(panel, image_bytes, rng) -> (yes, text)``: decides each answer; ``panel`` is
      the trial from ``/api/state`` (index, panel_id, practice, image); ``image_bytes`` is
      the image when ``fetch_images`` (else None). Default :func:`random_rater`. A custom
      rater runs in a worker thread.
    - ``pids``: the PROLIFIC_PIDs to use (default: ``participants`` random ones); giving
      those of earlier participants resumes them.
    - ``timeout_s``: one request's limit; ``retry_seconds``: how long one failing request
      is retried (with backoff) before its participant gives up (outcome "failed").
    - ``study_id``: the STUDY_ID of the entry links (default random).
    - ``ramp_seconds``: participants arrive at uniform times in [0, ramp_seconds] after
      the start (then think before entering), as they do after a study is published.
    - ``keepalive_s``: how long each browser keeps an idle connection; keep it below the
      server's keep-alive (gunicorn's ``--keep-alive``, 2 s by default).
    - ``inattentive``: the share of the participants who answer at random and fast
      (exactly ``round(inattentive * N)``, drawn with ``seed``; module docstring); the
      result's ``inattentive`` holds their PIDs, ``pids`` every planned participant's.

    Runs its own event loop (call from a thread when one is running already)."""
    return asyncio.run(simulate(
        url, participants, concurrency, seed=seed, think_ms=think_ms,
        reload_rate=reload_rate, abandon_rate=abandon_rate, max_seconds=max_seconds,
        rater=rater, fetch_images=fetch_images, pids=pids, timeout_s=timeout_s,
        retry_seconds=retry_seconds, study_id=study_id, ramp_seconds=ramp_seconds,
        progress=progress, keepalive_s=keepalive_s, inattentive=inattentive))


def _progress_bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="participant", desc="simulating", file=sys.stderr)


async def _report_progress(result: SimulationResult, began: float, every: float = 10.0):
    while True:
        await asyncio.sleep(every)
        elapsed = time.monotonic() - began
        log.info("%.0f s: %d started, %d finished, %d answers acknowledged, %d requests "
                 "(%.0f/s), %d retries", elapsed, result.started, len(result.outcomes),
                 len(result.acknowledged), result.requests, result.requests / elapsed,
                 result.retries)


# --- command line -------------------------------------------------------------------------

def build_parser(prog: str = "python -m server.simulate") -> argparse.ArgumentParser:
    """The command line's options (``python -m experiment.simulate`` adds ``--rater``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Simulated participants take the study on a server running on this "
                    "machine (loopback only): entry, consent, instructions, device check, "
                    "practice and main trials with random answers, debrief, completion; "
                    "some reload with a new browser, some abandon. Prints requests/s, "
                    "latency per endpoint and the answers the server acknowledged.",
        epilog="Think time: each action waits an exponential time of mean --think-ms "
               f"(default {DEFAULT_THINK_MS:g} ms); real participants take 20-30 s a "
               "panel. Failed requests (connection errors, 5xx) are retried with backoff, "
               "as the trial page does. Exit status: 0 done, 1 some participants failed, "
               "2 bad arguments or a non-loopback URL.")
    parser.add_argument("--url", required=True,
                        help="the server's base URL, e.g. http://127.0.0.1:8000 (loopback only)")
    parser.add_argument("--participants", type=int, required=True,
                        help="how many simulated participants take part")
    parser.add_argument("--concurrency", type=int, default=10,
                        help="how many take part at once (default 10)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed: ids, answers, think times, reloads (default 0; "
                             "the same seed against the same store resumes the same PIDs)")
    parser.add_argument("--think-ms", type=float, default=DEFAULT_THINK_MS,
                        help="mean think time before each action, ms (default %(default)s; 0 "
                             "for none)")
    parser.add_argument("--reload-rate", type=float, default=0.05,
                        help="share of participants who reload with a new browser mid-study "
                             "(default %(default)s)")
    parser.add_argument("--abandon-rate", type=float, default=0.05,
                        help="share of participants who stop for good mid-study "
                             "(default %(default)s)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop starting participants, and stop every participant before "
                             "its next action, after this many seconds")
    parser.add_argument("--ramp-seconds", type=float, default=0.0,
                        help="spread the participants' arrivals uniformly over this many "
                             "seconds (default 0: all at once, after a think time)")
    parser.add_argument("--inattentive", type=float, default=0.0, metavar="FRACTION",
                        help="share of the participants who do not look at the panels: "
                             "yes or no at random, answered in 250-700 ms, a junk word or "
                             "the same pasted text after a yes (exactly round(FRACTION * N), "
                             "drawn with --seed; default 0)")
    parser.add_argument("--truth", type=Path, default=None, metavar="FILE.csv",
                        help="write prolific_pid,inattentive (true/false) for every simulated "
                             "participant")
    parser.add_argument("--fetch-images", action="store_true",
                        help="fetch each trial's panel image, as a browser does")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="one request's time limit, s (default %(default)s)")
    parser.add_argument("--retry-seconds", type=float, default=60.0,
                        help="how long a failing request is retried before its participant "
                             "gives up, s (default %(default)s)")
    parser.add_argument("--check-store", metavar="DATABASE_URL",
                        help="afterwards, check that this store holds every acknowledged "
                             "answer exactly once and no list is over its target (exit 1 "
                             "if not)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT",
                        help="write the full report (with the acknowledged answers) as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or log")
    return parser


def prepare_cli(args: argparse.Namespace) -> None:
    """Set up logging for ``args.quiet`` and check what the parser cannot: a loopback
    ``--url``, ``--participants`` >= 0 and ``--concurrency`` >= 1 (ValueError otherwise,
    NotLoopback for the URL)."""
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    check_loopback(args.url)
    if args.participants < 0 or args.concurrency < 1:
        raise ValueError("--participants must be >= 0 and --concurrency >= 1")
    if not 0 <= getattr(args, "inattentive", 0.0) <= 1:
        raise ValueError(f"--inattentive {args.inattentive:g}: a share between 0 and 1")


def run_cli(args: argparse.Namespace, rater: Rater | None = None) -> int:
    """Run the command line parsed by :func:`build_parser`; returns the exit status (0 done,
    1 some participants failed or the store check failed, 2 bad arguments). ``rater``
    decides the answers (default :func:`random_rater`) and implies fetching the images."""
    try:
        prepare_cli(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = run_simulation(
        args.url, args.participants, args.concurrency, seed=args.seed,
        think_ms=args.think_ms, reload_rate=args.reload_rate, abandon_rate=args.abandon_rate,
        max_seconds=args.max_seconds, rater=rater,
        fetch_images=args.fetch_images or rater is not None, timeout_s=args.timeout,
        retry_seconds=args.retry_seconds, ramp_seconds=args.ramp_seconds,
        progress=not args.quiet and sys.stderr.isatty(), inattentive=args.inattentive)
    print(result.report())
    if args.truth:
        write_truth(args.truth, result.pids, result.inattentive)
        print(f"who was inattentive written to {args.truth}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result.summary(), indent=1))
        print(f"report written to {args.json}")
    status = 1 if result.failed else 0
    if args.check_store:
        from .audit import check_store  # the store's tables: only when asked for

        check = check_store(args.check_store, result.acknowledged, result.unconfirmed)
        if check.ok:
            print(f"store check: {check.acknowledged} acknowledged answers, each stored once "
                  f"({check.stored} rows); {check.completed} completed; no list over target")
        else:
            print("store check FAILED:\n  " + "\n  ".join(check.problems))
            status = 1
    return status


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``python -m server.simulate``: random answers (``python -m experiment.simulate``
    takes ``--rater``); ``prog``: the program name in help and errors."""
    parser = build_parser(prog) if prog else build_parser()
    return run_cli(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
