"""Natural-image panels: a unit's most activating images of the activation table, the
panel method ``--method natural`` of :mod:`generator.am` (docs/networks.md, "Panel
methods").

* **Selection** (:func:`top_k`): the table's column of the unit (``/layers/<layer>``,
  docs/activation-table.md) sorted by activation, highest first, ties broken by the
  lower image index (row): a stable sort on (-activation, index). The first 100 are the
  unit's images. With ``one_per_class`` the walk down that order keeps an image only if
  no image of its class (``/labels``) is kept yet: the best image of each of the 100
  best classes. A table with fewer images (or classes) gives a short panel.
* **Images**: ``/image_paths`` names each row's image (``generator.record`` writes it);
  a file is read and preprocessed as the table was recorded (its ``preprocessing``
  attribute, else the network's default), the demo's digits (``digits:<split>/<i>``)
  come from scikit-learn. A relative path that does not exist is looked up beside the
  table.
* **Tiles**: an fc unit's tile is the whole preprocessed image, what the network saw
  (shown back in 0-255 RGB or grey: the preprocessing undone). A conv unit's table value
  is its map reduced to one number (the spatial maximum by default), so the map is
  computed again for the selected images only, with the network: the tile is the input
  window of the receptive field of the map's maximum (the first in row-major order when
  several positions tie), :func:`generator.panels.receptive_field` of that location,
  centred on it, as large as the receptive field of the map's centre (the size of a
  ppgn or fourier conv tile of the network) and moved inside the image where it would
  cross the border. With the table's ``reduction`` ``max``, the recomputed maxima must
  match the table's values (or the table was recorded with another network, weights or
  preprocessing: an error says so). The receptive field is walked through a
  :class:`~generator.networks.TappedNet`'s steps, measured by gradients for any other
  network (:func:`generator.panels.gradient_field`).

:func:`generate` writes the unit files, panels and manifests of
:mod:`generator.unit_files` (stems ``natural_<layer>_<unit:04d>``): ``activations`` (the
table's), ``image_index`` (table rows), ``labels`` and, for conv units, ``locations``
(the map's maximum, (y, x)), ``boxes`` (the tiles' (top, left, bottom, right)) and
``map_max``. Manifest rows: no threshold, every image "passes" (``pass_rate`` 1,
``n_passed`` = ``n_candidates`` = ``n_images``), no chains, no probability
(``min_prob`` empty); ``top_class`` is the recorded network's prediction
(``/predictions``) where the table has it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from analysis.activations import ActivationTable, ActivationTableError, open_table

from .networks import Preprocessing
from .panels import receptive_field, unclipped_field
from .unit_files import check_settings, save_unit, unit_stem, write_manifest

__all__ = ["top_k", "table_preprocessing", "load_images", "to_pixels",
           "tile_window", "conv_windows", "generate", "SELECTION"]

log = logging.getLogger("generator.natural")

#: How a panel's images are chosen (recorded in ``settings_<layer>.json``).
SELECTION = ("the images_per_unit highest activations of the table, ties broken by the "
             "lower image index; with one_per_class the best image of each class")


def top_k(values: np.ndarray, k: int, labels: np.ndarray | None = None,
          one_per_class: bool = False) -> np.ndarray:
    """Rows of the ``k`` highest ``values``, highest first, ties by the lower row; with
    ``one_per_class`` at most one row per label (the best)."""
    values = np.asarray(values)
    order = np.lexsort((np.arange(len(values)), -values.astype(np.float64)))
    if not one_per_class:
        return order[:k]
    if labels is None:
        raise ValueError("one image per class needs the labels")
    _, first = np.unique(np.asarray(labels)[order], return_index=True)
    return order[np.sort(first)][:k]


def table_preprocessing(table: ActivationTable) -> Preprocessing | None:
    """The preprocessing a table was recorded with (its ``preprocessing`` attribute)."""
    text = table.attrs.get("preprocessing")
    if text is None:
        return None
    fields = json.loads(text)
    for key in ("mean", "std"):
        if key in fields:
            fields[key] = tuple(fields[key])
    return Preprocessing(**fields)


def load_images(paths: Sequence[str], preprocessing: Preprocessing,
                base: str | os.PathLike | None = None) -> torch.Tensor:
    """The images of ``paths`` as the network's input (n, C, H, W): files through
    ``preprocessing``, ``digits:<split>/<i>`` from the demo's digits."""
    from .digits import load_digits_tensors

    digits: dict[str, torch.Tensor] = {}
    images = []
    for path in paths:
        if path.startswith("digits:"):
            split, _, index = path[len("digits:"):].partition("/")
            if split not in digits:
                digits[split] = load_digits_tensors(split)[0]
            images.append(digits[split][int(index)])
            continue
        file = Path(path)
        if not file.exists() and base is not None and not file.is_absolute():
            file = Path(base) / file
        try:
            with Image.open(file) as image:
                images.append(preprocessing(image))
        except OSError as exc:
            raise OSError(f"{path}: cannot read the image of the activation table ({exc}); "
                          "natural panels need the recorded images where the table's "
                          "/image_paths says") from None
    return torch.stack(images)


def to_pixels(x: torch.Tensor, preprocessing: Preprocessing) -> np.ndarray:
    """Network inputs (n, C, H, W) -> uint8 (n, H, W, C), RGB or grey: the preprocessing's
    normalisation undone."""
    c = x.shape[1]
    mean = torch.tensor([float(v) for v in preprocessing.mean][:c]).view(1, -1, 1, 1)
    std = torch.tensor([float(v) for v in preprocessing.std][:c]).view(1, -1, 1, 1)
    pixels = (x.float().cpu() * std + mean) / float(preprocessing.scale)
    if preprocessing.channels == "BGR":
        pixels = pixels.flip(1)
    return pixels.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


_FIELDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _field(model: nn.Module, tap: str, location: tuple[int, int]) -> tuple[int, int, int, int]:
    """:func:`generator.panels.unclipped_field`, once per model, tap and location (a
    referenced network's is measured by gradients: one measure serves every image whose
    maximum is there; forgotten with the model)."""
    known = _FIELDS.setdefault(model, {})
    if (tap, location) not in known:
        known[tap, location] = unclipped_field(model, tap, location)
    return known[tap, location]


def tile_window(model: nn.Module, tap: str, location: tuple[int, int],
                size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A ``size`` (h, w) window of the input centred on the receptive field of ``tap`` at
    ``location``, moved inside the input where it would cross the border."""
    top, left, bottom, right = _field(model, tap, tuple(location))
    _, height, width = model.input_shape
    h, w = size
    y = math.floor((top + bottom - h) / 2 + 0.5)
    x = math.floor((left + right - w) / 2 + 0.5)
    y = min(max(0, y), height - h)
    x = min(max(0, x), width - w)
    return y, x, y + h, x + w


@torch.no_grad()
def conv_windows(model: nn.Module, tap: str, unit: int, x: torch.Tensor,
                 batch: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each image of ``x``: the location (y, x) of the maximum of ``unit``'s map of
    ``tap`` (the first in row-major order), the maximum, and its tile's window
    (:func:`tile_window`)."""
    maps = torch.cat([model(x[i:i + batch], [tap])[tap][:, unit].float().cpu()
                      for i in range(0, len(x), batch)])
    flat = maps.flatten(1)
    best = flat.argmax(1)
    width = maps.shape[-1]
    locations = np.stack([(best // width).numpy(), (best % width).numpy()], 1)
    centre = (maps.shape[-2] // 2, maps.shape[-1] // 2)
    top, left, bottom, right = receptive_field(model, tap, centre)
    size = (bottom - top, right - left)
    boxes = np.array([tile_window(model, tap, (int(y), int(x_)), size)
                      for y, x_ in locations], dtype=np.int64).reshape(-1, 4)
    return locations.astype(np.int64), flat.max(1).values.numpy(), boxes


def generate(table: str | os.PathLike, layer: str, units: Sequence[int],
             out_dir: str | os.PathLike, *, preprocessing: Preprocessing | None = None,
             network: nn.Module | None = None, images_per_unit: int = 100,
             one_per_class: bool = False, independent: nn.Module | None = None,
             output_tap: str = "fc8", record: dict | None = None,
             shard: tuple[int, int] = (0, 1), progress: bool = True,
             device: str | torch.device = "cpu") -> Path | None:
    """Natural-image panels of ``layer``'s ``units`` from the activation ``table``
    (module docstring); returns the manifest once every unit is done (None while other
    shards still have units). ``network`` is needed for conv layers (the maps);
    ``independent``: a classifier whose verdicts on fc8 images are recorded
    (``independent_target_share``). Resumes per unit like :mod:`generator.ppgn`."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    side = math.isqrt(images_per_unit)
    if side * side != images_per_unit:
        raise ValueError(f"images per unit must be a square (100 = 10x10), got {images_per_unit}")
    with open_table(table) as t:
        n_units = t.n_units(layer)
        bad = [u for u in units if not 0 <= u < n_units]
        if bad:
            raise ValueError(f"unit(s) {bad[:5]} outside 0..{n_units - 1} of {layer} in {table}")
        info = t.layer_info(layer)
        spatial = info.attrs.get("spatial_shape")
        reduction = info.attrs.get("reduction")
        if isinstance(reduction, bytes):
            reduction = reduction.decode()
        is_conv = spatial is not None and len(spatial) == 2
        if preprocessing is None:
            preprocessing = table_preprocessing(t)
        if preprocessing is None:
            raise ValueError(f"{table}: the table does not say how its images were "
                             "preprocessed (attribute preprocessing): name the --network")
        try:
            paths = [p.decode() if isinstance(p, bytes) else str(p)
                     for p in t.dataset("image_paths")[()]]
        except ActivationTableError as exc:
            raise ActivationTableError(f"{exc}; natural panels need the table's images "
                                       "(generator.record writes their paths)") from None
        try:
            predictions = t.dataset("predictions")[()]
        except ActivationTableError:
            predictions = None
        labels = t.labels
        if is_conv and network is None:
            raise ValueError(f"{layer} is a convolutional layer: its tiles need the network "
                             "(--network, --weights) to find each image's maximum")
        record = {"method": "natural", "layer": layer, "table": os.path.abspath(table),
                  "table_network": t.attrs.get("network"),
                  "table_weights_sha256": t.attrs.get("weights_sha256"),
                  "images_per_unit": images_per_unit, "one_per_class": one_per_class,
                  "selection": SELECTION, "reduction": reduction,
                  "preprocessing": json.loads(preprocessing.to_json()), **(record or {})}
        (out / "units").mkdir(parents=True, exist_ok=True)
        (out / "panels").mkdir(parents=True, exist_ok=True)
        check_settings(out, layer, record)
        mine = [u for i, u in enumerate(units) if i % shard[1] == shard[0]]
        todo = [u for u in mine
                if not (out / "units" / f"{unit_stem('natural', layer, u)}.json").exists()]
        bar = tqdm(total=len(todo), unit="unit", desc=f"natural {layer}",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)
        wanted = set(todo)
        try:
            for start, stop in t.block_ranges(layer, units=(min(todo), max(todo) + 1)) \
                    if todo else []:
                if not wanted & set(range(start, stop)):
                    continue
                block = t.read_units(layer, start, stop)
                for unit in sorted(wanted & set(range(start, stop))):
                    values = block[:, unit - start]
                    rows = top_k(values, images_per_unit, labels, one_per_class)
                    _save(out, layer, unit, rows, values, labels, predictions, paths,
                          preprocessing, Path(table).resolve().parent, network, is_conv,
                          reduction, independent, output_tap, side, device)
                    bar.update(1)
        finally:
            bar.close()
    missing = [u for u in units
               if not (out / "units" / f"{unit_stem('natural', layer, u)}.json").exists()]
    if missing:
        log.info("%d unit(s) left to other shards", len(missing))
        return None
    return write_manifest(out, layer, [unit_stem("natural", layer, u) for u in units])


def _save(out: Path, layer: str, unit: int, rows: np.ndarray, values: np.ndarray,
          labels: np.ndarray, predictions, paths: list[str], preprocessing: Preprocessing,
          base: Path, network, is_conv: bool, reduction, independent, output_tap: str,
          side: int, device) -> None:
    x = load_images([paths[r] for r in rows], preprocessing, base)
    pixels = to_pixels(x, preprocessing)
    acts = values[rows].astype(np.float64)
    arrays = {"activations": acts, "image_index": rows.astype(np.int64),
              "labels": labels[rows].astype(np.int64)}
    if is_conv:
        locations, maxima, boxes = conv_windows(network, layer, unit, x.to(device))
        if reduction == "max" and not np.allclose(maxima, acts, rtol=1e-3, atol=1e-4):
            worst = int(np.argmax(np.abs(maxima - acts)))
            raise ValueError(
                f"{layer} unit {unit}: the map's maximum of table row {int(rows[worst])} is "
                f"{maxima[worst]:.6g} here but {acts[worst]:.6g} in the table: the table was "
                "recorded with another network, weights or preprocessing; pass the ones it "
                "was recorded with (--network, --weights)")
        arrays |= {"locations": locations, "boxes": boxes, "map_max": maxima.astype(np.float64)}
        pixels = np.stack([p[b[0]:b[2], b[1]:b[3]] for p, b in zip(pixels, boxes,
                                                                    strict=True)]) \
            if len(pixels) else pixels
    n = len(rows)
    info = {
        "layer": layer, "unit": unit, "n_images": n, "short": n < side * side,
        "mean_activation": float(acts.mean()) if n else None,
        "min_activation": float(acts.min()) if n else None, "min_prob": None,
        "top_class": None, "top_class_share": None, "target_share": None,
        "independent_target_share": None, "threshold": None, "pass_rate": 1.0,
        "n_passed": n, "n_candidates": n, "chains": 0, "chain_steps": 0,
        "method": "natural",
    }
    if predictions is not None and n:
        tops = np.asarray(predictions)[rows]
        classes, counts = np.unique(tops, return_counts=True)
        info["top_class"] = int(classes[np.argmax(counts)])
        info["top_class_share"] = float(counts.max() / n)
        if layer == output_tap:
            info["target_share"] = float((tops == unit).mean())
    if independent is not None and layer == output_tap and n:
        with torch.no_grad():
            verdicts = independent(x.to(device), ["fc8"])["fc8"].argmax(1).cpu().numpy()
        info["independent_target_share"] = float((verdicts == unit).mean())
    save_unit(out, unit_stem("natural", layer, unit), pixels, arrays, info, side=side)
