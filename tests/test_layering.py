"""The dependency boundary of docs/architecture.md, checked two ways.

1. In the source (every ``import``, at module level or inside a function, and every
   ``importlib.import_module``/``__import__``): each package imports only the layers below
   it (``common`` < ``analysis`` < ``generator``, ``server`` < ``experiment``; ``server``
   and ``generator`` never import each other), the torch-free packages never import torch,
   ``common`` only the standard library, a lower layer never loads a module named at run
   time, and no module imports itself back through others (no cycles).
2. In a fresh interpreter that imports every module of a package: what it really loads.
"""

import ast
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
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


# -- 1. the source -------------------------------------------------------------------------

#: Each package's layer and what it may import (its own package always).
MAY_IMPORT = {
    "common": set(),
    "analysis": {"common"},
    "generator": {"common", "analysis"},
    "server": {"common", "analysis"},
    "experiment": {"common", "analysis", "generator", "server"},
}
PACKAGES = tuple(MAY_IMPORT)
TORCH_FREE = {"common", "analysis", "server"}
TORCH = {"torch", "torchvision"}
#: Where a module may load another whose name it learns at run time (the console script's
#: stages, a user's rater plugin): the top layer; and one module below it,
#: generator.loading, for a user's own network (``--network module:callable``; it
#: refuses modules of server/ and experiment/).
DYNAMIC_LOADS_ALLOWED = {"experiment"}
DYNAMIC_LOAD_MODULES = {"generator.loading"}
#: The calls that load a module by a name known at run time.
DYNAMIC_IMPORTS = ("importlib.import_module", "import_module", "__import__",
                   "pkgutil.resolve_name", "resolve_name", "importlib.util.spec_from_file_location",
                   "import_util.spec_from_file_location", "util.spec_from_file_location",
                   "spec_from_file_location")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. server.api
    target: str  # the imported module, absolute, e.g. server.store or torch.nn
    line: int
    how: str     # "import", "in a function", "importlib"

    def where(self, root: Path) -> str:
        return f"{self.module.replace('.', '/')}.py:{self.line} ({self.how})"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str, root: Path) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` in ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _dynamic_name(call: ast.Call) -> tuple[bool, str | None]:
    """(is a dynamic import, its constant module name or None)."""
    func = call.func
    dotted = ast.unparse(func)
    if dotted not in DYNAMIC_IMPORTS:
        return False, None
    if dotted.endswith("spec_from_file_location"):   # a file: its name says nothing
        return True, None
    arg = call.args[0] if call.args else None
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return True, arg.value
    return True, None


def imports_of(path: Path, root: Path) -> Iterator[Import]:
    """Every import in one file: statements anywhere in it, and importlib calls."""
    module = _module_name(path, root)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        how = "import" if id(node) in top_level else "in a function"
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno, how)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            if node.module == "__future__":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                target = sub if _is_module(sub, root) else base
                yield Import(module, target, node.lineno, how)
        elif isinstance(node, ast.Call):
            dynamic, name = _dynamic_name(node)
            if dynamic:
                yield Import(module, name if name is not None else "?", node.lineno,
                             "importlib")


def all_imports(root: Path) -> list[Import]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            found.extend(imports_of(path, root))
    return found


def violations(root: Path) -> list[str]:
    """Every import that breaks the layering, and every import cycle, as messages."""
    stdlib = set(sys.stdlib_module_names)
    problems = []
    imports = all_imports(root)
    for imp in imports:
        package = imp.module.split(".")[0]
        top = imp.target.split(".")[0]
        at = imp.where(root)
        if imp.target == "?":
            if package not in DYNAMIC_LOADS_ALLOWED and imp.module not in DYNAMIC_LOAD_MODULES:
                problems.append(f"{at}: loads a module named at run time; only "
                                f"{sorted(DYNAMIC_LOADS_ALLOWED)} may")
            continue
        if top in PACKAGES:
            if top != package and top not in MAY_IMPORT[package]:
                problems.append(f"{at}: {package} imports {imp.target} (a layer it may not "
                                "import)")
        elif package == "common" and top not in stdlib:
            problems.append(f"{at}: common imports {imp.target} (standard library only)")
        elif package in TORCH_FREE and top in TORCH:
            problems.append(f"{at}: {package} imports {imp.target} (torch-free package)")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(imports)]
    return list(dict.fromkeys(problems))  # one line per import, not per imported name


def cycles(imports: list[Import]) -> list[list[str]]:
    """The import cycles among the project's modules (one per strongly connected set)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.target.split(".")[0] in PACKAGES and imp.target != imp.module:
            graph.setdefault(imp.module, set()).add(imp.target)
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_the_tree_keeps_its_layers_and_has_no_cycles():
    problems = violations(ROOT)
    assert not problems, "\n".join(problems)


def test_every_kind_of_import_is_seen():
    # The checker sees imports inside functions and importlib loads, not only the module's
    # first lines: server/simulate.py once loaded a torch rater that way.
    found = {(imp.module, imp.target, imp.how) for imp in all_imports(ROOT)}
    assert ("server.study", "server.study_file", "in a function") in found or \
        ("server.study", "server.study_file", "import") in found
    assert any(how == "in a function" for _, _, how in found)
    assert any(how == "importlib" for _, _, how in found)


@pytest.fixture
def tree_copy(tmp_path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def plant(root: Path, path: str, code: str) -> None:
    target = root / path
    target.write_text(target.read_text() + "\n\n" + code + "\n")


def test_a_planted_function_level_torch_import_in_server_fails(tree_copy):
    assert violations(tree_copy) == []
    plant(tree_copy, "server/api.py", "def helper():\n    import torch\n    return torch")
    problems = violations(tree_copy)
    assert len(problems) == 1 and "server/api.py" in problems[0] and "torch" in problems[0]


@pytest.mark.parametrize("path, code, expected", [
    ("server/export.py", "def rater():\n    from generator import rater\n    return rater",
     "server imports generator.rater"),
    ("server/export.py", "import importlib\n\ndef rater(name):\n"
     "    return importlib.import_module(name)", "named at run time"),
    ("generator/record.py", "import pkgutil\n\ndef net(name):\n"
     "    return pkgutil.resolve_name(name)", "named at run time"),
    ("server/api.py", "from importlib import util\n\ndef f(p):\n"
     "    return util.spec_from_file_location('m', p)", "named at run time"),
    ("analysis/tables.py", "def f():\n    import importlib\n"
     "    return importlib.import_module('torch')", "torch-free"),
    ("common/files.py", "def f():\n    import numpy\n    return numpy", "standard library"),
    ("analysis/wordnet.py", "def f():\n    from experiment import design\n    return design",
     "analysis imports experiment.design"),
    ("generator/threads.py", "def f():\n    from . import record\n    return record",
     "import cycle"),
])
def test_planted_violations_fail(tree_copy, path, code, expected):
    plant(tree_copy, path, code)
    problems = violations(tree_copy)
    assert any(expected in p for p in problems), problems
