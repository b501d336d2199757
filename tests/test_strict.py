"""Strict mode (tests/system_deps.py): without chromium, WordNet or PostgreSQL the tests
that need them skip, with the command that provides them; under CI=true (or
SELECTIVITY_STRICT=1, `make test STRICT=1`) they fail with that command, and a strict run
fails if any test skipped at all. And `make install` retries the Debian packages on every
run, waits for Debian's package lock, and says plainly when it could not install them.

Each check runs pytest (or make) in a subprocess with the dependency made unavailable."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without the strict-mode switches, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "SELECTIVITY_STRICT")}
    return {**env, **extra}


def run_pytest(tmp_path: Path, *args: str, cwd: Path = ROOT, **env: str):
    """pytest in a subprocess: (exit code, {test id: outcome}, its output); an outcome is
    passed, skipped, failure or error (at setup: how strict mode reports a missing one)."""
    junit = tmp_path / f"junit-{len(list(tmp_path.glob('junit-*')))}.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"--junitxml={junit}", *args], cwd=cwd, env=environment(**env),
                          capture_output=True, text=True, timeout=600)
    outcomes = {}
    for case in ET.parse(junit).iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("skipped", "error", "failure")]
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = (kinds or ["passed"])[0]
    return done.returncode, outcomes, done.stdout + done.stderr


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_wordnet_chromium_and_postgresql_skip_by_default_and_fail_under_ci(tmp_path):
    (tmp_path / "nowordnet").mkdir()
    unavailable = {"WORDNET_DIR": str(tmp_path / "nowordnet"),
                   "CHROMIUM": str(tmp_path / "no-chromium"),
                   "TEST_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{unused_port()}/test"}
    # Every test of these files that needs one of the three (the marker selects them; the
    # server's PostgreSQL variants carry it through the store_kind fixture's parameter).
    args = ["tests/test_coding.py", "tests/test_table2.py", "tests/test_browser.py",
            "tests/test_server.py", "-m", "needs_system"]

    rc, outcomes, out = run_pytest(tmp_path, *args, **unavailable)
    assert rc == 0, out
    assert outcomes and set(outcomes.values()) == {"skipped"}, out
    for module in ("test_coding", "test_table2", "test_browser", "test_server"):
        assert any(test.startswith(f"tests.{module}::") for test in outcomes), module
    assert f"WordNet 3.0 is absent from {tmp_path / 'nowordnet'}" in out
    assert "fix: apt-get install wordnet-base" in out
    assert f"no chromium at {tmp_path / 'no-chromium'}" in out
    assert "fix: apt-get install chromium" in out
    assert "is not reachable" in out and "set TEST_DATABASE_URL=" in out

    rc, strict, out = run_pytest(tmp_path, *args, CI="true", **unavailable)
    assert rc == 1, out
    assert strict.keys() == outcomes.keys() and set(strict.values()) == {"error"}, out
    assert "strict mode (CI=true): the run fails" in out
    for what, fix in (("WordNet 3.0", "fix: apt-get install wordnet-base"),
                      ("chromium", "fix: apt-get install chromium"),
                      ("PostgreSQL", "or set TEST_DATABASE_URL=postgresql://")):
        assert f"MISSING SYSTEM DEPENDENCY: {what}" in out, what
        assert fix in out, what


INNER = '''
import pytest
from system_deps import require_system


def test_runs():
    pass


def test_skips_for_a_reason_strict_mode_does_not_know():
    pytest.skip("some reason")


def test_skips_for_data_outside_the_project():
    require_system("the shared photos", "absent", "put them there", strict=False)


def test_needs_a_program():
    require_system("a program", "not on PATH", "apt-get install a-program")
'''


def test_a_strict_run_fails_on_any_skip_but_the_allowed_ones(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER)

    def run(select: str, **env: str):
        return run_pytest(tmp_path, "-p", "system_deps", "-k", select, "test_inner.py",
                          cwd=tmp_path, PYTHONPATH=str(TESTS), **env)

    # Outside strict mode (SELECTIVITY_STRICT=0 wins over CI=true) every skip is a skip.
    rc, outcomes, out = run("", CI="true", SELECTIVITY_STRICT="0")
    assert rc == 0, out
    assert sorted(outcomes.values()) == ["passed", "skipped", "skipped", "skipped"], out

    rc, outcomes, out = run("not program", SELECTIVITY_STRICT="1")
    assert rc == 1, out
    assert "1 test(s) skipped; strict mode allows no skips" in out
    assert "SKIPPED test_inner.py::test_skips_for_a_reason_strict_mode_does_not_know" in out

    rc, outcomes, out = run("runs or outside", SELECTIVITY_STRICT="1")
    assert rc == 0, out
    assert "strict mode: 1 skip(s) allowed" in out and "the shared photos is missing" in out

    rc, outcomes, out = run("program", SELECTIVITY_STRICT="yes")
    assert rc == 1 and list(outcomes.values()) == ["failure"], out
    assert "MISSING SYSTEM DEPENDENCY: a program\n  why: not on PATH\n" \
           "  fix: apt-get install a-program" in out


# -- make ---------------------------------------------------------------------------------

FAKE_APT = '''#!/bin/sh
echo "$*" >>"{log}"
taken=$(cat "{lock}" 2>/dev/null || echo 0)
if [ "$taken" -gt 0 ]; then
    echo $((taken - 1)) >"{lock}"
    echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 1 (apt-get)" >&2
    exit 100
fi
{rest}
'''


def fake_system(tmp_path: Path, apt_rest: str, lock_taken: int = 0):
    """A PATH whose apt-get logs its arguments (and whose ``id -u`` says root): its first
    ``lock_taken`` calls find a package lock taken; later calls run ``apt_rest``."""
    bin_dir, log = tmp_path / "bin", tmp_path / "apt.log"
    bin_dir.mkdir(exist_ok=True)
    (tmp_path / "lock").write_text(str(lock_taken))
    (bin_dir / "apt-get").write_text(FAKE_APT.format(log=log, lock=tmp_path / "lock",
                                                     rest=apt_rest))
    (bin_dir / "id").write_text("#!/bin/sh\necho 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


def make(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    venv = tmp_path / "venv"
    venv.mkdir(exist_ok=True)
    (venv / ".installed").touch()     # an installed environment, newer than what it needs
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), f"VENV={venv}",
                           *args], env=environment(**env), capture_output=True, text=True,
                          timeout=300)


def test_make_install_checks_the_debian_packages_every_time(tmp_path):
    (tmp_path / "wordnet").mkdir()
    missing = [f"CHROMIUM={tmp_path / 'no-chromium'}", f"WORDNET_DIR={tmp_path / 'wordnet'}"]

    # apt-get fails (no such package, say): make install says so plainly and goes on.
    env, log = fake_system(tmp_path, 'echo "E: Unable to locate package $*" >&2; exit 100')
    done = make(tmp_path, "install", "APT_LOCK_TIMEOUT=7", *missing, **env)
    assert done.returncode == 0, done.stderr
    assert "venv" not in done.stdout          # the environment is not installed again
    for package in ("chromium", "wordnet-base"):
        assert f"COULD NOT INSTALL {package} (apt-get failed: its message is above)" \
               in done.stderr
        assert f"Fix, as root: apt-get install {package}" in done.stderr
    assert "fail under CI=true or `make test STRICT=1`" in done.stderr
    calls = log.read_text().splitlines()
    assert all(c.startswith("-o DPkg::Lock::Timeout=7 -qq ") for c in calls), calls
    assert [c.split()[3] for c in calls] == ["install", "update"] * 2, calls

    # apt-get waits for dpkg's lock itself (the option above), not for the package lists' or
    # the archives': a lock still taken when it gives up is tried again, for at most
    # APT_LOCK_TIMEOUT seconds in all (here three calls find one taken; each try is an
    # install, then an update and an install).
    log.unlink()
    env, log = fake_system(tmp_path, "exit 0", lock_taken=3)
    done = make(tmp_path, "install", "APT_LOCK_TIMEOUT=60", missing[0], **env)
    assert done.returncode == 0 and "COULD NOT" not in done.stderr, done.stderr
    calls = [c.split()[3] for c in log.read_text().splitlines()]
    assert calls == ["install", "update", "install", "update", "install"], calls

    # Both there: apt-get is not called.
    log.unlink()
    (tmp_path / "wordnet" / "data.noun").touch()
    done = make(tmp_path, "install", f"CHROMIUM={sys.executable}",
                f"WORDNET_DIR={tmp_path / 'wordnet'}", **env)
    assert done.returncode == 0 and not log.exists(), done.stdout + done.stderr


def test_make_test_passes_strict_to_pytest(tmp_path):
    for args, env, value in (((), {}, ""), (("STRICT=1",), {}, "1"),
                             ((), {"SELECTIVITY_STRICT": "1"}, "1")):
        done = make(tmp_path, "-n", "test", *args, **env)
        assert done.returncode == 0, done.stderr
        assert f'SELECTIVITY_STRICT="{value}" ' in done.stdout.splitlines()[-1], done.stdout
