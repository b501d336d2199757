"""The dependency boundary of docs/architecture.md: analysis, experiment and server never
import torch, and server never imports generator. Checked in a fresh interpreter
that imports every module of the package."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import importlib, json, pkgutil, sys
pkg = importlib.import_module(sys.argv[1])
names = [pkg.__name__]
for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
    if info.name.endswith("__main__"):
        continue
    importlib.import_module(info.name)
    names.append(info.name)
print(json.dumps({"modules": names, "loaded": sorted(sys.modules)}))
"""


def import_everything(package: str, where: Path = ROOT) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, package], cwd=where,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("package", ["common", "analysis", "experiment", "server"])
def test_torch_free_packages_never_import_torch(package):
    result = import_everything(package)
    assert result["modules"], package
    assert "torch" not in result["loaded"], f"importing {package} imported torch"


def test_common_is_the_bottom_and_needs_only_the_standard_library():
    result = import_everything("common")
    above = [m for m in result["loaded"] if m.split(".")[0] in
             ("analysis", "generator", "server", "experiment", "numpy", "pandas", "torch")]
    assert not above, f"common imports {above}"


def test_server_never_imports_generator():
    result = import_everything("server")
    leaked = [m for m in result["loaded"] if m == "generator" or m.startswith("generator.")]
    assert not leaked, f"server imports {leaked}"


def test_the_probe_sees_an_import_of_torch_in_a_submodule(tmp_path):
    # The check above can fail: a package whose submodule imports torch is caught.
    pytest.importorskip("torch")
    pkg = tmp_path / "leaky"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text("import torch\n")
    result = import_everything("leaky", where=tmp_path)
    assert "leaky.model" in result["modules"] and "torch" in result["loaded"]


def test_a_server_worker_starts_without_the_data_stack(tmp_path):
    # What each gunicorn worker does: create the app. Loading a design (pandas, numpy,
    # Pillow) belongs to the load-study command, not to every worker's start-up.
    probe = ("import sys; from server import create_app; "
             f"create_app({{'SECRET_KEY': 'x', 'DATABASE_URL': 'sqlite:///{tmp_path}/s.db'}}, "
             f"instance_path={str(tmp_path / 'instance')!r}); "
             "print(sorted(m for m in ('pandas', 'numpy', 'PIL', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
