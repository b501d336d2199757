"""The files of an AM run, the same for every panel method (docs/networks.md, "Panel
methods"): per unit ``units/<stem>.npz`` (``images``, uint8 (N, H, W, C), and the
method's per-image arrays, ``activations`` first), ``panels/<stem>.jpg`` (a 10x10 grid
of the tiles) and ``units/<stem>.json`` (the unit's figures, one manifest row; written
last: a unit with it is done); per layer ``manifest_<layer>.csv`` (one row per unit,
:data:`MANIFEST_COLUMNS`) and ``settings_<layer>.json`` (the run's settings and, once
the layer is done, its ``summary``); ``manifest.csv``, the finished layers' rows.

Stems (panel ids, :func:`unit_stem`): ``<layer>_<unit:04d>`` for ``ppgn`` (as before
there were other methods), ``<method>_<layer>_<unit:04d>`` for the others, so the panels
of several methods never share an id in one study. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.files import atomic_path, atomic_write_text

from .panels import grid, save_jpeg

__all__ = ["METHODS", "MANIFEST_COLUMNS", "unit_stem", "save_unit", "check_settings",
           "write_manifest", "layer_summary", "combine_manifests", "recognition_lines",
           "add_unit_options"]

#: The panel methods (``python -m generator.am --method``).
METHODS = ("ppgn", "fourier", "natural")

#: The manifests' columns: the study design reads ``panel_id, layer, unit, path`` (and
#: ``n_images``); the others are the unit's figures, ``method`` last.
MANIFEST_COLUMNS = ["panel_id", "layer", "unit", "path", "n_images", "short",
                    "mean_activation", "min_activation", "min_prob", "top_class",
                    "top_class_share", "target_share", "independent_target_share",
                    "threshold", "pass_rate", "n_passed", "n_candidates", "chains",
                    "chain_steps", "method"]


def unit_stem(method: str, layer: str, unit: int) -> str:
    """A unit's panel id and file stem: ``fc8_0003`` (ppgn), ``fourier_fc8_0003``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    return f"{layer}_{unit:04d}" if method == "ppgn" else f"{method}_{layer}_{unit:04d}"


def save_unit(out: Path, stem: str, pixels: np.ndarray, arrays: dict, info: dict, *,
              side: int, box: tuple[int, int, int, int] | None = None) -> None:
    """A unit's files: ``units/<stem>.npz`` (``images=pixels`` and ``arrays``), the panel
    ``panels/<stem>.jpg`` (the tiles ``pixels[:, top:bottom, left:right]`` of ``box``, or
    whole, in a ``side`` x ``side`` grid, missing cells blank, cells under 64 pixels
    enlarged), then ``units/<stem>.json`` (``info`` with ``panel_id`` and ``path``)."""
    with atomic_path(out / "units" / f"{stem}.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, images=pixels, **arrays)
    cells = pixels if box is None else pixels[:, box[0]:box[2], box[1]:box[3]]
    panel = grid(cells, side, side)  # a short unit's missing cells stay blank
    save_jpeg(panel, out / "panels" / f"{stem}.jpg", min_cell=64, cell=cells.shape[1])
    info = {"panel_id": stem, **info, "path": f"panels/{stem}.jpg"}
    atomic_write_text(out / "units" / f"{stem}.json", json.dumps(info))


def check_settings(out: Path, layer: str, record: dict) -> None:
    """Write ``settings_<layer>.json``, or refuse a folder whose record differs (but for
    the layer's ``summary``): a run resumes only with the settings it started with."""
    settings_file = out / f"settings_{layer}.json"
    if settings_file.exists():
        old = json.loads(settings_file.read_text())
        old.pop("summary", None)
        new = json.loads(json.dumps(record))
        if old != new:
            diff = sorted(k for k in {*new, *old} if old.get(k) != new.get(k))
            raise ValueError(f"{out} holds {layer} panels made with other settings "
                             f"({', '.join(diff)}); use another --out")
    else:
        atomic_write_text(settings_file, json.dumps(record, indent=2))


def write_manifest(out: Path, layer: str, stems: Sequence[str]) -> Path:
    """``manifest_<layer>.csv``: one row per unit, from its JSON (the study design reads
    it as is); the layer's figures into ``settings_<layer>.json``; ``manifest.csv``."""
    path = out / f"manifest_{layer}.csv"
    infos = [json.loads((out / "units" / f"{stem}.json").read_text()) for stem in stems]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, MANIFEST_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for info in infos:
            writer.writerow({k: ("" if info.get(k) is None else info.get(k))
                             for k in MANIFEST_COLUMNS})
    settings_file = out / f"settings_{layer}.json"
    if settings_file.exists():
        recorded = json.loads(settings_file.read_text())
        recorded["summary"] = layer_summary(infos)
        atomic_write_text(settings_file, json.dumps(recorded, indent=2))
    combine_manifests(out)
    return path


def layer_summary(infos: Sequence[dict]) -> dict:
    """A layer's figures from its units' (as ``settings_<layer>.json`` records them)."""
    passed = sum(i["n_passed"] for i in infos)
    candidates = sum(i["n_candidates"] for i in infos)
    rates = [i["pass_rate"] for i in infos]
    chains = [i["chains"] for i in infos]
    return {
        "units": len(infos), "threshold": infos[0]["threshold"] if infos else None,
        "pass_rate": passed / max(1, candidates), "n_passed": passed,
        "n_candidates": candidates,
        "pass_rate_per_unit": {"min": min(rates, default=None),
                               "max": max(rates, default=None)},
        "chains": sum(chains), "chains_per_unit": {"min": min(chains, default=None),
                                                   "max": max(chains, default=None)},
        "chain_steps": sum(i["chain_steps"] for i in infos),
        "short_units": [{"unit": i["unit"], "n_images": i["n_images"],
                         "pass_rate": i["pass_rate"], "chains": i["chains"]}
                        for i in infos if i["short"]],
    }


def combine_manifests(out: Path) -> None:
    """``manifest.csv``: the finished layers' manifests, one after the other, with
    :data:`MANIFEST_COLUMNS` (a layer's manifest from before a column existed gives it
    empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, MANIFEST_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for layer_file in sorted(out.glob("manifest_*.csv")):
        with open(layer_file, newline="") as fh:
            writer.writerows(csv.DictReader(fh))
    atomic_write_text(out / "manifest.csv", buffer.getvalue())


def recognition_lines(rows: list[dict]) -> list[str]:
    """What a manifest's rows say of how recognisable the images are: the mean share
    classified as the target unit's class, by the network and by the independent
    classifier (the lines a run prints after its manifest)."""
    lines = []
    for key, label in (("target_share", "classified as the target by the network"),
                       ("independent_target_share", "by the independent classifier")):
        values = [float(r[key]) for r in rows if r.get(key)]
        if values:
            lines.append(f"  images {label}: {100 * sum(values) / len(values):.1f}%")
    return lines


def add_unit_options(parser, layer_help: str) -> None:
    """The options every panel method's command line shares: which layer and units
    (``--layer``, ``--units``, ``--sample``), how many images a panel (``--images-per-unit``)
    and where its files go (``--out``)."""
    parser.add_argument("--layer", required=True, help=layer_help)
    parser.add_argument("--units", default="all", help="e.g. 0-255, 3,7,9 or all (default)")
    parser.add_argument("--sample", metavar="K|P%",
                        help="only K (or P%%, rounded) of the units that --units selects, "
                             "drawn at random (reproducibly from --seed; fewer draw a subset)")
    parser.add_argument("--images-per-unit", type=int, default=100)
    parser.add_argument("--out", required=True, help="output folder (panels, units, manifest)")
