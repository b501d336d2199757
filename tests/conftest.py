"""Shared fixtures: where the shared data lives (docs/data.md); the experiment server's
temporary worlds (a small design, a fresh SQLite or PostgreSQL store, an app); strict mode
(tests/system_deps.py: under CI=true a missing chromium, WordNet or PostgreSQL fails)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.register_assert_rewrite("system_deps")  # a plugin, imported below before pytest loads it

from server_world import LAYERS, make_design, store_url, study_app  # noqa: E402
from system_deps import SHARED_PHOTOS, require  # noqa: E402

# strict mode's hooks (tests/system_deps.py)
pytest_plugins = ("system_deps",)

SAMPLES = SHARED_PHOTOS


@pytest.fixture(scope="session", autouse=True)
def warm_network_cache():
    """The demo's networks (generator.digits_generator.warm_cache) train in a background
    process while the first tests run: most tests use one core, training uses one
    thread, so on a fresh checkout the second core trains what later tests load. A test
    that needs a network still being trained waits on its file lock. Off with
    SELECTIVITY_WARM_CACHE=0 (and in pytest runs started by a test, which inherit it)."""
    if os.environ.get("SELECTIVITY_WARM_CACHE", "1") == "0":
        yield
        return
    os.environ["SELECTIVITY_WARM_CACHE"] = "0"
    warm = subprocess.Popen(
        [sys.executable, "-c",
         "from generator.digits_generator import warm_cache; warm_cache()"],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        if warm.poll() is None:   # a short run: what it was training is not kept
            warm.terminate()
        warm.wait()
        del os.environ["SELECTIVITY_WARM_CACHE"]


@pytest.fixture(autouse=True)
def torch_threads_from_available_cpus():
    """torch run in the tests' own process uses the CPUs this process may use (affinity,
    cgroup quota, SELECTIVITY_CPUS), as the command-line tools do (generator/threads.py).
    Set once torch is imported, so a run of torch-free tests never imports it."""
    global _torch_threads_set
    if not _torch_threads_set and "torch" in sys.modules:
        from generator.threads import use_available_cpus

        use_available_cpus()
        _torch_threads_set = True


_torch_threads_set = False


@pytest.fixture(scope="session")
def sample_photos() -> list[Path]:
    """The optional real ImageNet photos (docs/data.md; one per class), sorted by WordNet id."""
    require("shared_data")
    return sorted(SAMPLES.glob("*.jpg"))


# -- the experiment server -------------------------------------------------------------------

@pytest.fixture(params=["sqlite", pytest.param("postgresql",
                                                marks=pytest.mark.needs_system("postgresql"))])
def store_kind(request):
    return request.param


@pytest.fixture
def db_url(store_kind, tmp_path):
    with store_url(store_kind, tmp_path) as url:
        yield url


@pytest.fixture(scope="session")
def design_file(tmp_path_factory):
    return make_design(tmp_path_factory.mktemp("design"), LAYERS, n_lists=3, participants=5)


@pytest.fixture
def make_app(db_url, tmp_path, design_file):
    apps = []

    def factory(design=design_file, **config):
        app = study_app(db_url, tmp_path / "instance", design, "DONE123", TESTING=True,
                        **config)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["store"].dispose()


@pytest.fixture
def app(make_app):
    return make_app()


