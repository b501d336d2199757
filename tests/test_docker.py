"""The container files: no Docker engine runs here, so the Dockerfile is linted (hadolint)
and every command in it is one these tests run: the install script is the Makefile's (CI
runs it), and the image's CMD and HEALTHCHECK are started and probed exactly as written,
with the image's environment (only paths and the port changed, as ``docker run -e``
would)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiment.demo import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def env_of(found: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in found:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


@pytest.mark.needs_system("hadolint")   # skips without it (make install); fails under CI=true
def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_basics():
    found = instructions()
    words = [w for w, _ in found]
    base = dict(found)["FROM"]
    assert base.startswith("python:3.11-slim"), base
    # non-root, by number (resolvable without the image's /etc/passwd)
    user = [rest for w, rest in found if w == "USER"][-1]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) > 0
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")
    volumes = exec_form(dict(found)["VOLUME"])
    env = env_of(found)
    assert env["FLASK_INSTANCE_PATH"] in volumes and "/data" in volumes
    assert env["TORCH_INDEX_URL"].endswith("/whl/cpu")  # the CPU build of torch
    assert "HEALTHCHECK" in words and "CMD" in words


def test_every_run_command_is_the_makefiles_or_plain_user_setup():
    runs = [rest for word, rest in instructions() if word == "RUN"]
    install = [r for r in runs if r.startswith("sh scripts/install.sh")]
    assert install == ["sh scripts/install.sh python ."]
    makefile = (ROOT / "Makefile").read_text()
    assert "sh scripts/install.sh $(BIN)/python" in makefile  # what CI runs (make install)
    others = [r for r in runs if r not in install]
    # the only other step makes the unprivileged user and the volumes' folders
    assert len(others) == 1 and others[0].startswith("useradd "), others
    env = env_of(instructions())
    for folder in (env["FLASK_INSTANCE_PATH"], env["SELECTIVITY_CACHE"], "/data"):
        assert folder in others[0]


def test_install_script_refuses_missing_arguments():
    done = subprocess.run(["sh", str(ROOT / "scripts" / "install.sh")], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "usage" in done.stderr


def test_the_images_cmd_serves_and_its_healthcheck_tells(tmp_path):
    found = instructions()
    cmd = exec_form(dict(found)["CMD"])
    health = dict(found)["HEALTHCHECK"]
    health_cmd = exec_form(health[health.index("CMD") + 3:].strip())
    port = free_port()
    env = {**os.environ, **env_of(found)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # what `docker run -e ... -v ...` changes: paths and the port (and fewer workers here)
    env["FLASK_INSTANCE_PATH"] = str(tmp_path / "instance")
    env["SELECTIVITY_CACHE"] = str(tmp_path / "cache")
    args = env["GUNICORN_CMD_ARGS"]
    assert "0.0.0.0:8000" in args and "--workers 4" in args
    env["GUNICORN_CMD_ARGS"] = args.replace("0.0.0.0:8000", f"127.0.0.1:{port}") \
        .replace("--workers 4", "--workers 2")
    env["HEALTHCHECK_URL"] = env["HEALTHCHECK_URL"].replace(":8000", f":{port}")
    env.pop("DATABASE_URL", None)

    def healthcheck() -> subprocess.CompletedProcess:
        return subprocess.run(health_cmd, env=env, capture_output=True, text=True, cwd=ROOT)

    assert healthcheck().returncode == 1  # nothing serves yet
    server = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while (result := healthcheck()).returncode != 0:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, result.stderr
            time.sleep(0.3)
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as reply:
            assert reply.status == 200  # the welcome page (no study yet: a preview)
        assert (tmp_path / "instance" / "study.db").exists()  # the SQLite default, there
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)
    failed = healthcheck()
    assert failed.returncode == 1 and "unhealthy" in failed.stderr


def test_compose_serves_the_image_with_postgresql():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    app, db = compose["services"]["app"], compose["services"]["db"]
    assert app["build"] == "."
    assert app["environment"]["DATABASE_URL"].startswith("postgresql://")
    assert app["depends_on"]["db"]["condition"] == "service_healthy"
    assert "healthcheck" in db and db["image"].startswith("postgres:")
    env = env_of(instructions())
    mounts = {v.split(":")[1] for v in app["volumes"]}
    assert {"/data", env["FLASK_INSTANCE_PATH"]} <= mounts
    assert any(p.endswith(":8000") for p in app["ports"])
    assert "0.0.0.0:8000" in env["GUNICORN_CMD_ARGS"]
    # secrets come from the environment, never from the file
    assert "${FLASK_SECRET_KEY" in app["environment"]["FLASK_SECRET_KEY"]
