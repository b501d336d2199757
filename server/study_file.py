"""The study file, ``study.json`` (format ``selectivity-study/1``): its rules, writing,
reading and checking the panel files it names.

``python -m experiment.design`` deals a design and writes it with :func:`write_study`;
``python -m server load-study`` reads it with :func:`read_study`. The format sits here,
below both, so that the server never imports the experiment layer; the dealing itself
(manifests, sampling, lists, targets) stays in :mod:`experiment.design`.

The file (docs/study-design.md)::

    {"format": "selectivity-study/1", "seed": 0, "created": "<ISO-8601 UTC>",
     "participants": 333, "practice_trials": 6, "sample": {"fc6": 2048},
     "source": {"panels": "<manifest as given>", "practice": "<manifest as given>"},
     "layers": ["conv5", "fc6", "fc8"],
     "panels": {"<id>": {"layer": "fc6", "unit": 12, "path": "...", "sha256": "..."}},
     "practice": ["<id>", ...],
     "practice_panels": {"<id>": {"path": "...", "label": "<label or null>", "sha256": "...",
                                  "expected": "yes|no (optional)"}},
     "lists": [{"id": 1, "target": 5, "panels": ["<id>", ...]}, ...]}

With catch trials (``python -m experiment.design --catch K``; optional, absent from a
study without them), three more keys::

     "catch_trials": 4,
     "catch_panels": {"<id>": {"path": "...", "sha256": "...", "catch": true,
                               "catch_expected": "yes|no", "catch_class": "<class or null>",
                               "catch_id": "<the catch manifest's panel_id>"}},
     "lists": [{"id": 1, "target": 5, "panels": [...],
                "catch": [{"panel": "<id>", "position": 7}, ...]}, ...]

With panels of several methods (``python -m experiment.design --panels a.csv b.csv``,
docs/study-design.md, "Methods"), every panel entry carries its ``method`` (a non-empty
string: ``ppgn``, ``fourier``, ``natural``, ...)::

     "panels": {"<id>": {"layer": "fc6", "unit": 12, "method": "fourier", "path": "...",
                         "sha256": "..."}}

A panel without ``method`` is a PPGN panel (:data:`DEFAULT_METHOD`): a study of PPGN panels
alone has no method keys, as before methods. Where panels carry methods no list holds two
panels of one unit (layer and unit: a participant sees one list, so nobody sees a unit
twice), and every (layer, method) is spread over the lists as evenly as every layer.

With pre-registered exclusion rules (``python -m experiment.design --exclusion-rules
FILE.toml``; optional): ``"exclusion_rules": {...}``, the rules file as a JSON object
(analysis/exclusion.py, docs/exclusion.md).

``panels`` stays the AM panels (units) alone. A list's trials are its ``panels`` with its
catch panels put in at their ``position`` (0-based, in the K + n trials; ascending);
every catch id is in exactly one list (a catch file shown in many lists has an id in
each) and is no AM or practice panel's id.

In the file every ``path`` is relative to the file's own directory (``..`` allowed), so a
study folder can be moved as a whole; :func:`read_study` turns them back into absolute
paths. In memory (a design from ``experiment.design.build_design``, a study from
:func:`read_study`) paths are absolute.

Standard library only at import (with :mod:`common.files` and :mod:`analysis.exclusion`): no numpy, no pandas, and
Pillow only inside :func:`check_files` when it opens the images, so a gunicorn worker
that imports the server never loads the data stack. Everything a user can get wrong
raises :class:`DesignError` naming what is wrong, where, and how to fix it.
"""

from __future__ import annotations

import copy
import json
import logging
import numbers
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from analysis.exclusion import RuleError, parse_rules
from common.files import atomic_write_text, sha256_file

__all__ = [
    "DEFAULT_METHOD",
    "DESIGN_CLI",
    "FORMAT",
    "MAX_LISTED",
    "STUDY_KEYS",
    "DesignError",
    "check_files",
    "is_int",
    "list_trials",
    "listing",
    "panel_method",
    "read_study",
    "validate_design",
    "write_study",
]

log = logging.getLogger(__name__)

#: The value of ``"format"`` in every study file written and read.
FORMAT = "selectivity-study/1"

#: Keys every study dict must have.
STUDY_KEYS = ("format", "seed", "participants", "practice_trials", "layers", "panels",
              "practice", "practice_panels", "lists")

#: How many individual problems an error message lists before summarising.
MAX_LISTED = 10

#: The method of a panel entry without ``method`` (a PPGN panel; the same word as
#: ``analysis.table2.DEFAULT_METHOD``, which cannot import the server).
DEFAULT_METHOD = "ppgn"

#: The command that writes study files, named in error messages ("regenerate it with ...").
DESIGN_CLI = "python -m experiment.design"


class DesignError(ValueError):
    """A design request, manifest or study file that cannot be used as it is."""


# ---------------------------------------------------------------------------
# Small helpers


def listing(problems: Sequence[str], limit: int = MAX_LISTED) -> str:
    """The first ``limit`` problems, one per line, and a count of the rest."""
    lines = [f"  - {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def is_int(value: Any) -> bool:
    """An integer (Python's or numpy's, which register as :class:`numbers.Integral`), not
    a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def panel_method(entry: Mapping) -> str:
    """A panel entry's method: its ``method``, else :data:`DEFAULT_METHOD`."""
    return str(entry.get("method", DEFAULT_METHOD))


def _has_methods(study: Mapping) -> bool:
    """Whether any panel of the study names its method (a study with panel methods)."""
    return any(isinstance(e, Mapping) and "method" in e for e in study["panels"].values())


def list_trials(lst: Mapping) -> list[str]:
    """A list's trials in design order: its ``panels`` with its catch panels (``catch``, if
    any) put in at their positions."""
    trials = list(lst["panels"])
    for trial in sorted(lst.get("catch", []), key=lambda t: t["position"]):
        trials.insert(trial["position"], trial["panel"])
    return trials


# ---------------------------------------------------------------------------
# Validation


def _structure_problems(study: Mapping) -> list[str]:
    missing = [k for k in STUDY_KEYS if k not in study]
    if missing:
        return [f"missing key(s) {', '.join(missing)}"]
    problems = []
    kinds = {"layers": list, "panels": dict, "practice": list, "practice_panels": dict,
             "lists": list}
    for key, kind in kinds.items():
        if not isinstance(study[key], kind):
            problems.append(f"{key!r} must be a JSON {'array' if kind is list else 'object'}")
    for key in ("participants", "practice_trials"):
        if not is_int(study[key]) or study[key] < 0:
            problems.append(f"{key!r} must be an integer of 0 or more, not {study[key]!r}")
    sample = study.get("sample") or {}
    if not (isinstance(sample, dict) and all(is_int(n) for n in sample.values())):
        problems.append("'sample' must be an object of layer: integer")
    if problems:
        return problems
    for pid, entry in study["panels"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)
                and entry.get("layer") in study["layers"]
                and is_int(entry.get("unit")) and entry["unit"] >= 0):
            problems.append(f"panel {pid!r}: needs a layer among 'layers', a non-negative "
                            "integer unit and a path")
        elif "method" in entry and not (isinstance(entry["method"], str)
                                        and entry["method"].strip()):
            problems.append(f"panel {pid!r}: method {entry['method']!r} must be a non-empty "
                            "string (ppgn, fourier, natural, ...) or absent (ppgn)")
    for pid, entry in study["practice_panels"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)):
            problems.append(f"practice panel {pid!r}: needs a path")
        elif entry.get("expected", "yes") not in ("yes", "no"):
            problems.append(f"practice panel {pid!r}: expected must be yes or no (or absent)")
    for k, lst in enumerate(study["lists"]):
        if not (isinstance(lst, dict) and is_int(lst.get("id")) and is_int(lst.get("target"))
                and lst["target"] >= 0 and isinstance(lst.get("panels"), list)):
            problems.append(f"list #{k + 1}: needs an integer id, a non-negative integer "
                            "target and a panels array")
    if not study["lists"]:
        problems.append("no lists")
    return problems


def _catch_problems(study: Mapping) -> list[str]:
    """The catch trials' rules (none for a study without catch keys)."""
    lists = study["lists"]
    if "catch_trials" not in study and "catch_panels" not in study \
            and not any("catch" in lst for lst in lists):
        return []
    k, entries = study.get("catch_trials"), study.get("catch_panels")
    if not is_int(k) or k < 0 or not isinstance(entries, dict):
        return ["catch trials need 'catch_trials' (an integer of 0 or more) and "
                "'catch_panels' (a JSON object)"]
    problems = []
    for pid, entry in entries.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)
                and entry.get("catch") is True
                and entry.get("catch_expected") in ("yes", "no")):
            problems.append(f"catch panel {pid!r}: needs a path, catch true and a "
                            "catch_expected of yes or no")
        elif entry["catch_expected"] == "yes" and not (
                isinstance(entry.get("catch_class"), str) and entry["catch_class"]):
            problems.append(f"catch panel {pid!r}: a positive catch (expected yes) needs its "
                            "catch_class")
        elif entry["catch_expected"] == "no" and entry.get("catch_class") is not None:
            problems.append(f"catch panel {pid!r}: a negative catch (expected no) has no "
                            "catch_class")
        if pid in study["panels"] or pid in study["practice_panels"]:
            problems.append(f"catch panel {pid!r} is also an AM or practice panel id")
    seen: Counter = Counter()
    for lst in lists:
        trials = lst.get("catch", [])
        if not (isinstance(trials, list) and all(
                isinstance(t, dict) and isinstance(t.get("panel"), str)
                and is_int(t.get("position")) for t in trials)):
            problems.append(f"list {lst['id']}: 'catch' must be an array of "
                            "{\"panel\": id, \"position\": integer}")
            continue
        if len(trials) != k:
            problems.append(f"list {lst['id']}: {len(trials)} catch trials, catch_trials = {k}")
        positions = [t["position"] for t in trials]
        size = len(lst["panels"]) + len(trials)
        if positions != sorted(set(positions)) or any(not 0 <= p < size for p in positions):
            problems.append(f"list {lst['id']}: catch positions {positions} must ascend, "
                            f"each once, within 0..{size - 1}")
        seen.update(t["panel"] for t in trials)
    problems += [f"catch panel {p!r} is in {n} list entries (must be exactly one)"
                 for p, n in seen.items() if n > 1]
    problems += [f"list catch panel {p!r} is not in 'catch_panels'" for p in seen
                 if p not in entries]
    problems += [f"catch panel {p!r} is in no list" for p in entries if p not in seen]
    return problems


def _dealing_problems(study: Mapping) -> list[str]:
    problems = []
    lists, panels = study["lists"], study["panels"]
    ids = [lst["id"] for lst in lists]
    problems += [f"list id {i} used {n} times" for i, n in Counter(ids).items() if n > 1]
    seen = Counter(pid for lst in lists for pid in lst["panels"])
    problems += [f"panel {p!r} is in {n} lists (must be exactly one)"
                 for p, n in seen.items() if n > 1]
    problems += [f"list panel {p!r} is not in 'panels'" for p in seen if p not in panels]
    problems += [f"panel {p!r} is in no list" for p in panels if p not in seen]
    sizes = [len(lst["panels"]) for lst in lists]
    if max(sizes) - min(sizes) > 1:
        problems.append(f"list sizes range {min(sizes)}-{max(sizes)} (must differ by at most 1)")
    for layer in study["layers"]:
        counts = [sum(panels.get(p, {}).get("layer") == layer for p in lst["panels"])
                  for lst in lists]
        if max(counts) - min(counts) > 1:
            problems.append(f"layer {layer!r}: per-list counts range {min(counts)}-"
                            f"{max(counts)} (must differ by at most 1)")
    if _has_methods(study):
        problems += _method_problems(study)
    return problems


def _method_problems(study: Mapping) -> list[str]:
    """A study of several methods: no list holds a unit twice, and every (layer, method)
    is spread over the lists within one panel."""
    problems = []
    lists, panels = study["lists"], study["panels"]
    for lst in lists:
        seen: dict[tuple, list[str]] = {}
        for pid in lst["panels"]:
            if pid in panels:
                seen.setdefault((panels[pid]["layer"], panels[pid]["unit"]), []).append(pid)
        problems += [f"list {lst['id']} holds {layer} unit {unit} {len(ids)} times (panels "
                     f"{', '.join(map(repr, ids))}); nobody may see a unit twice"
                     for (layer, unit), ids in seen.items() if len(ids) > 1]
    strata = sorted({(e["layer"], panel_method(e)) for e in panels.values()},
                    key=lambda s: (study["layers"].index(s[0]), s[1]))
    for layer, method in strata:
        counts = [sum(p in panels and panels[p]["layer"] == layer
                      and panel_method(panels[p]) == method for p in lst["panels"])
                  for lst in lists]
        if max(counts) - min(counts) > 1:
            problems.append(f"layer {layer!r}, method {method!r}: per-list counts range "
                            f"{min(counts)}-{max(counts)} (must differ by at most 1)")
    return problems


def _count_problems(study: Mapping) -> list[str]:
    problems = []
    total = sum(lst["target"] for lst in study["lists"])
    if total != study["participants"]:
        problems.append(f"list targets sum to {total}, not participants = "
                        f"{study['participants']}")
    # a study of several methods samples units (each with its panels of every method)
    what = "units" if _has_methods(study) else "panels"
    if what == "units":
        layer_sizes = Counter(layer for layer, _ in {(e["layer"], e["unit"])
                                                     for e in study["panels"].values()})
    else:
        layer_sizes = Counter(entry["layer"] for entry in study["panels"].values())
    for layer, n in dict(study.get("sample") or {}).items():
        if layer_sizes.get(layer, 0) != n:
            problems.append(f"sample asks for {n} {layer} {what}; the design has "
                            f"{layer_sizes.get(layer, 0)}")
    if len(study["layers"]) != len(set(study["layers"])):
        problems.append("'layers' repeats a layer")
    practice = study["practice"]
    if len(practice) != study["practice_trials"]:
        problems.append(f"{len(practice)} practice panels listed, practice_trials = "
                        f"{study['practice_trials']}")
    problems += [f"practice panel {p!r} listed {n} times" for p, n in Counter(practice).items()
                 if n > 1]
    problems += [f"practice panel {p!r} has no entry in 'practice_panels'" for p in practice
                 if p not in study["practice_panels"]]
    problems += [f"practice panel {p!r} is also a main panel id" for p in practice
                 if p in study["panels"]]
    return problems


def _rules_problems(study: Mapping) -> list[str]:
    """The optional ``exclusion_rules`` (analysis/exclusion.py), as a JSON object."""
    if "exclusion_rules" not in study:
        return []
    try:
        parse_rules(study["exclusion_rules"], "exclusion_rules")
    except RuleError as exc:
        return [str(exc)]
    return []


def validate_design(study: Mapping) -> None:
    """Raise :class:`DesignError` listing every broken invariant of a study dict.

    Checked: required keys and types; list ids unique; every panel in exactly one
    list and every listed panel known; per-layer counts and list sizes differ by
    at most one between lists; targets sum to ``participants``; sampled layers
    hold their sample size; practice ids unique, known, distinct from panel ids
    and ``practice_trials`` many; where there are catch trials, ``catch_trials`` of them in
    every list at distinct ascending positions, each catch id in exactly one list, known,
    distinct from the other ids, with its expected answer (and a class for a yes); where
    there are exclusion rules, rules that analysis/exclusion.py accepts; where panels carry
    a ``method``, a non-empty string each, no list holding two panels of one unit (layer
    and unit), every (layer, method)'s per-list counts within one of each other, and a
    sampled layer holding its sample size in units.
    """
    if not isinstance(study, Mapping):
        raise DesignError(f"a study must be a JSON object, not {type(study).__name__}")
    if study.get("format") != FORMAT:
        raise DesignError(f"study format is {study.get('format')!r}, expected {FORMAT!r}; "
                          f"regenerate it with {DESIGN_CLI}")
    problems = _structure_problems(study)
    if not problems:
        problems = (_dealing_problems(study) + _count_problems(study)
                    + _catch_problems(study) + _rules_problems(study))
    if problems:
        raise DesignError(f"the study breaks {len(problems)} rule(s) of the design; "
                          f"regenerate it with {DESIGN_CLI}:\n{listing(problems)}")


# ---------------------------------------------------------------------------
# Panel files: checking, hashing


def _files(study: Mapping) -> list[tuple[str, dict]]:
    """``(label, entry)`` for every panel, practice panel and catch panel of a study."""
    out = [(f"panel {pid!r} ({entry['layer']} unit {entry['unit']})", entry)
           for pid, entry in study["panels"].items()]
    out += [(f"practice panel {pid!r}", study["practice_panels"][pid])
            for pid in study["practice"]]
    out += [(f"catch panel {pid!r} ({entry.get('catch_id')})", entry)
            for pid, entry in (study.get("catch_panels") or {}).items()]
    return out


def _file_problem(path: str, open_images: bool, sha256: str | None) -> str | None:
    if not os.path.isfile(path):
        return "no such file"
    if open_images:
        from PIL import Image  # only here: a server worker never loads Pillow

        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as exc:  # Pillow raises many kinds for a bad file
            return f"not a readable image ({type(exc).__name__}: {exc})"
    if sha256 is not None and sha256_file(path) != sha256:
        return "contents changed since the study was written (sha256 differs)"
    return None


def check_files(study: Mapping, open_images: bool = True) -> None:
    """Check that every panel file exists and (by default) opens as an image.

    Where an entry carries a ``sha256`` (a written study), the file's hash must
    match it. All problems are collected and raised together as one
    :class:`DesignError`.
    """
    files = _files(study)
    log.info("checking %d files%s", len(files), " (opening each image)" if open_images else "")
    problems = []
    for label, entry in files:
        problem = _file_problem(entry["path"], open_images, entry.get("sha256"))
        if problem:
            problems.append(f"{label}: {entry['path']}: {problem}")
    if problems:
        raise DesignError(
            f"{len(problems)} of {len(files)} panel files are unusable:\n{listing(problems)}\n"
            "fix the paths in the manifests or regenerate the panels")


# ---------------------------------------------------------------------------
# The file: relative paths on disk, absolute in memory


def _relative(path: str, base: str) -> str:
    """``path`` relative to the directory ``base``, with ``/`` separators."""
    try:
        return Path(os.path.relpath(os.path.abspath(path), base)).as_posix()
    except ValueError:  # another drive (Windows): keep it absolute
        return os.path.abspath(path)


def _with_files(study: Mapping, out_dir: str) -> dict:
    """A copy of the study with sha256 added and paths made relative to ``out_dir``."""
    out = copy.deepcopy(dict(study))
    missing = []
    for label, entry in _files(out):
        try:
            entry["sha256"] = sha256_file(entry["path"])
        except OSError as exc:
            missing.append(f"{label}: {entry['path']}: {exc.strerror or exc}")
        entry["path"] = _relative(entry["path"], out_dir)
    if missing:
        raise DesignError(f"cannot hash {len(missing)} panel file(s):\n{listing(missing)}\n"
                          "fix the paths in the manifests or regenerate the panels")
    return out


def write_study(study: Mapping, out_path: str | os.PathLike) -> Path:
    """Validate, add sha256, make paths relative to ``out_path``'s folder, write atomically
    (with the project's one file mode, :data:`common.files.FILE_MODE`)."""
    validate_design(study)
    out_path = Path(out_path)
    out_dir = os.path.abspath(out_path.parent)
    os.makedirs(out_dir, exist_ok=True)
    text = json.dumps(_with_files(study, out_dir), indent=2, ensure_ascii=False) + "\n"
    atomic_write_text(out_path, text)
    log.info("wrote %s (%d lists, %d panels)", out_path, len(study["lists"]),
             len(study["panels"]))
    return out_path


def read_study(path: str | os.PathLike) -> dict:
    """Read and validate a ``study.json``; every ``path`` in it made absolute.

    Relative paths are taken relative to the study file's own directory.
    """
    path = Path(path)
    if not path.is_file():
        raise DesignError(f"{path}: no such study file; write one with {DESIGN_CLI} ... "
                          f"--out {path}")
    try:
        study = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DesignError(f"{path}: not a valid JSON study file ({exc}); regenerate it "
                          f"with {DESIGN_CLI}") from None
    if not isinstance(study, dict):
        raise DesignError(f"{path}: a study file holds a JSON object, not "
                          f"{type(study).__name__}; regenerate it with {DESIGN_CLI}")
    missing = [k for k in STUDY_KEYS if k not in study]
    if study.get("format") == FORMAT and missing:
        raise DesignError(f"{path}: missing key(s) {', '.join(missing)}; regenerate it "
                          f"with {DESIGN_CLI}")
    try:
        validate_design(study)
    except DesignError as exc:
        raise DesignError(f"{path}: {exc}") from None
    base = os.path.abspath(path.parent)
    for _, entry in _files(study):
        entry["path"] = os.path.normpath(os.path.join(base, entry["path"]))
    return study
