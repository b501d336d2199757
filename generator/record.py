"""Record a classifier's activations over a labelled image set into an activation table.

    python -m generator.record --network caffenet --weights caffenet.caffemodel \\
        --images /data/ILSVRC2012/val --out caffenet_val.h5 [--preprocess authors|crop]

    python -m generator.record --network torchvision:resnet18 --weights r18.pth \\
        --layers layer3 layer4 fc --images val.csv --out r18_val.h5
    python -m generator.record --network torchvision:resnet18 --list-layers

Each network decodes and preprocesses the images its own way (docs/networks.md,
"Preprocessing"); ``--preprocess`` names another of its ways, or gives a spec
(``size=256,crop=224``). CaffeNet's default, ``authors``, is how the paper's authors
recorded it.

Any PyTorch network is taken by reference (``torchvision:<name>``,
``module.path:callable``, ``file.py:callable``; docs/networks.md, "Any PyTorch
network"): its layers are its modules' names (``--list-layers`` prints them with their
output shapes), read with forward hooks. Every layer becomes one column per channel:
conv maps (N, C, H, W) by their spatial max or mean (``--reduction``), token maps
(N, T, C) by the max or mean over tokens, vectors (N, C) as they are.

How a run is laid out, so that it can stop and go on:

* The images are cut into segments of ``--segment-images`` (16,384) inputs.
  Each finished segment is written whole to ``OUT.parts/seg-NNNNNN.h5`` (an
  activation table of its own) and renamed into place, so a crash loses at
  most the segment in progress. Running the same command again skips the
  finished segments: the result is the same as an uninterrupted run, because
  batches never cross a segment boundary.
* ``--shard i/n`` (or ``RANK``/``WORLD_SIZE`` under torchrun) records every
  n-th segment; the shards share the parts folder.
* When every segment is there, they are joined into ``OUT``: copied into one
  file (tables under ``--copy-limit``, 2 GB by default; the parts are then
  removed), or as HDF5 virtual datasets that point into the parts, without
  copying (keep ``OUT.parts`` beside ``OUT``).

Images that cannot be decoded are skipped, counted, and listed in the table
(``/skipped_images``, ``/skipped_errors``); they never stop a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader

from analysis.activations import TableWriter, unit_chunk_width
from common.files import atomic_path, atomic_write_text

from .hooked import HookedNet, Layer
from .images import ImageSet, ImageSetError, collate, imagenet_classes, load_image_set
from .loading import build_network, load_network
from .networks import TappedNet, WeightsError
from .threads import available_cpus, torch_threads, use_available_cpus

__all__ = ["record", "join_segments", "reduce_activation", "network_layers", "RecordError",
           "JoinInProgress", "main", "DEFAULT_LAYERS"]

log = logging.getLogger("generator.record")  # the same name under python -m

DEFAULT_LAYERS = ("conv5", "fc6", "fc7", "fc8", "prob")
REDUCTIONS = ("max", "mean")


class RecordError(RuntimeError):
    """A recording that cannot go on (the message says why and what to do)."""


def reduce_activation(t: torch.Tensor, how: str = "max", layer: str = "") -> torch.Tensor:
    """One value per channel: (N, C, H, W) -> (N, C) by spatial max or mean (a conv map);
    (N, T, C) -> (N, C) by max or mean over the T tokens (a transformer's token map);
    (N, C) as it is. Any other shape is a ValueError naming ``layer``."""
    if t.ndim == 2:
        return t
    if t.ndim == 4:
        return t.amax(dim=(2, 3)) if how == "max" else t.mean(dim=(2, 3))
    if t.ndim == 3:
        return t.amax(dim=1) if how == "max" else t.mean(dim=1)
    raise ValueError(f"cannot reduce layer {layer or '?'} of shape {tuple(t.shape)}: a layer "
                     "must give (N, C), a conv map (N, C, H, W) or a token map (N, T, C)")


#: Modules whose 3-d outputs are channels first, (N, C, L), not a token map (N, T, C).
_CHANNELS_FIRST_1D = (torch.nn.Conv1d, torch.nn.ConvTranspose1d, torch.nn.MaxPool1d,
                      torch.nn.AvgPool1d, torch.nn.AdaptiveMaxPool1d, torch.nn.AdaptiveAvgPool1d,
                      torch.nn.BatchNorm1d, torch.nn.InstanceNorm1d)


def _layer_attrs(model, layer: str, shape: tuple[int, ...], reduction: str) -> dict:
    """How ``layer`` (one input's ``shape``) becomes columns, as the table's layer
    attributes; ValueError for a shape that cannot become one column per channel."""
    if len(shape) == 1:
        return {}
    if len(shape) == 3:
        return {"reduction": reduction, "spatial_shape": list(shape[1:])}
    module = model.module(layer) if isinstance(model, HookedNet) else None
    if len(shape) == 2 and not isinstance(module, _CHANNELS_FIRST_1D):
        return {"reduction": reduction, "reduced_over": "tokens", "token_count": shape[0]}
    raise ValueError(f"cannot record layer {layer}: its output {tuple(shape)} (one input; "
                     f"{type(module).__name__ if module is not None else 'a tap'}) is "
                     "neither (C,), a conv map (C, H, W) nor a token map (T, C); choose "
                     "another layer (--list-layers)")


def _units(shape: tuple[int, ...]) -> int:
    """Columns of a layer of one input's ``shape``: its channels."""
    return shape[-1] if len(shape) == 2 else shape[0]


def network_layers(model: TappedNet | HookedNet) -> list[Layer]:
    """The layers one can record, with their types and output shapes for one input."""
    if isinstance(model, HookedNet):
        return list(model.layers().values())
    shapes = model.layer_shapes(model.tap_names)
    return [Layer(tap, type(model._modules[step]).__name__, shapes[tap], 1)
            for tap, step in model.taps.items()]


def _closest(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    return f"{name!r} (closest: {', '.join(close)})" if close else repr(name)


@dataclass(frozen=True)
class Plan:
    """Everything that must match for segments to be reused."""

    network: str
    weights_sha256: str
    images: str
    images_fingerprint: str
    n_inputs: int
    layers: tuple[str, ...]
    reduction: str
    keep: str
    preprocessing: str
    segment_images: int

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def _parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _segment_path(parts: Path, k: int) -> Path:
    return parts / f"seg-{k:06d}.h5"


def _check_manifest(parts: Path, plan: Plan) -> None:
    manifest = parts / "manifest.json"
    if manifest.exists():
        old = json.loads(manifest.read_text())
        new = json.loads(plan.to_json())
        diff = sorted(k for k in new if old.get(k) != new[k])
        if diff:
            raise RecordError(
                f"{parts}: made by a run with other settings ({', '.join(diff)} differ); "
                "delete the folder to start afresh, or record to another --out"
            )
    else:
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write_text(manifest, plan.to_json())


def _segment_batches(segments: Sequence[int], seg_size: int, n_inputs: int, batch: int):
    for k in segments:
        start, stop = k * seg_size, min(n_inputs, (k + 1) * seg_size)
        for b in range(start, stop, batch):
            yield list(range(b, min(stop, b + batch)))


class _SegmentBuffer:
    """Collects one segment's rows and writes it as a file, atomically."""

    def __init__(self, k: int, start: int, stop: int):
        self.k, self.start, self.stop = k, start, stop
        self.seen = 0
        self.rows: list[dict] = []
        self.skipped: list[tuple[int, str, str]] = []  # (input index, path, error)

    def write(self, path: Path, image_set: ImageSet, layer_units: dict[str, int],
              layer_attrs: dict, attrs: dict) -> int:
        n = sum(len(r["index"]) for r in self.rows)
        with atomic_path(path) as tmp, TableWriter(
            tmp, image_set.class_names, layer_units, n_images=max(n, 1),
            attrs=attrs | {"segment": self.k, "first_input": self.start,
                           "stop_input": self.stop,
                           "skipped": json.dumps(self.skipped)},
            layer_attrs=layer_attrs, extra_string_columns=["image_paths"],
            extra_int_columns=["predictions", "input_index"],
        ) as writer:
            for r in self.rows:
                idx = r["index"]
                writer.append(
                    image_set.labels[idx], r["acts"],
                    extra={"image_paths": [image_set.paths[i] for i in idx],
                           "predictions": r["pred"], "input_index": idx},
                )
        return n


def record(
    network: str,
    images: str | ImageSet,
    out: str | os.PathLike,
    *,
    weights: str | None = None,
    layers: Sequence[str] | None = None,
    keep: str = "correct",
    reduction: str = "max",
    classes: str | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    device: str | None = None,
    shard: tuple[int, int] = (0, 1),
    segment_images: int = 16384,
    join: str = "auto",
    progress: bool = True,
    preprocess: str | None = None,
) -> Path | None:
    """Record ``layers`` of ``network`` over ``images`` into the table ``out``.

    ``network``: a name of :data:`generator.loading.NETWORKS` or a reference
    (``torchvision:resnet18``, ``module.path:callable``); ``layers``: its taps, or for a
    referenced network its modules' names (None: :data:`DEFAULT_LAYERS`; a referenced
    network must name them). ``preprocess`` names one of the network's preprocessings or
    gives a spec (None: its default;
    :meth:`generator.loading.NetworkSpec.preprocessing_named`). Returns the table's path
    once every segment is recorded and joined, or None when other shards still have
    segments to record.
    """
    out = Path(out)
    if keep not in ("correct", "all"):
        raise ValueError(f"keep must be 'correct' or 'all', got {keep!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if out.exists():
        raise RecordError(f"{out} exists: remove it or choose another --out")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, spec, checksum = load_network(network, weights, device=device, preprocess=preprocess)
    preprocessing = spec.preprocessing_named(preprocess)
    if layers is None:
        if isinstance(model, HookedNet):
            raise ValueError(f"name the layers of {network} to record (--layers); "
                             "--list-layers lists them")
        layers = DEFAULT_LAYERS
    layers = list(layers)
    unknown = [t for t in layers if t not in model.taps]
    if unknown:
        hint = "--list-layers lists them all" if isinstance(model, HookedNet) else \
            f"choose from {model.tap_names}"
        raise ValueError(f"{network} has no tap(s) {unknown}: "
                         f"{'; '.join(_closest(t, model.tap_names) for t in unknown)}; {hint}")
    output_tap = model.output_tap
    n_classes_out = model.layer_shapes([output_tap])[output_tap][0]
    image_set = images if isinstance(images, ImageSet) else load_image_set(images, classes)
    if spec.classes == "outputs" and classes is None:
        image_set = _classes_from_outputs(image_set, n_classes_out, network)
    if len(image_set.class_names) != n_classes_out:
        log.warning("%s has %d classes but %s has %d outputs: predictions and --keep "
                    "correct compare indices", image_set.source, len(image_set.class_names),
                    network, n_classes_out)
    plan = Plan(network, checksum, image_set.source, image_set.fingerprint(), len(image_set),
                tuple(layers), reduction, keep, preprocessing.to_json(), segment_images)
    parts = _parts_dir(out)
    _check_manifest(parts, plan)

    n_segments = -(-len(image_set) // segment_images)
    mine = [k for k in range(n_segments) if k % shard[1] == shard[0]]
    todo = [k for k in mine if not _segment_path(parts, k).exists()]
    shapes = model.layer_shapes(layers)
    layer_units = {t: _units(s) for t, s in shapes.items()}
    layer_attrs = {t: a for t, s in shapes.items()
                   if (a := _layer_attrs(model, t, s, reduction))}
    attrs = {
        "network": network, "weights_sha256": checksum, "images": image_set.source,
        "preprocessing": preprocessing.to_json(),
        "preprocess": spec.preprocessing_name(preprocessing), "keep": keep,
        "software_version": _version(), "torch_version": str(torch.__version__),
    }
    if isinstance(model, HookedNet):
        attrs["network_definition"] = model.definition
    log.info("%s: %d images in %d segments, %d to record here (shard %d/%d), device %s",
             out, len(image_set), n_segments, len(todo), shard[0], shard[1], device)
    if todo:
        _record_segments(model, image_set, preprocessing, todo, parts, plan, layers,
                         layer_units, layer_attrs, attrs, batch_size, workers, device,
                         progress)
    missing = [k for k in range(n_segments) if not _segment_path(parts, k).exists()]
    if missing:
        log.info("%d segment(s) left to other shards; join once they are done", len(missing))
        return None
    try:
        return join_segments(out, mode=join)
    except JoinInProgress as exc:
        log.info("%s", exc)
        return None


def _classes_from_outputs(image_set: ImageSet, n_outputs: int, network: str) -> ImageSet:
    """A user's model without --classes: its classes are its outputs, named 0..K-1, where
    the image set fell back on ImageNet's list (a CSV, a folder of WordNet ids)."""
    if image_set.tensors is not None or n_outputs == len(image_set.class_names) or \
            image_set.class_names != imagenet_classes()[1]:
        return image_set
    if len(image_set.labels) and int(image_set.labels.max()) >= n_outputs:
        raise ImageSetError(f"{image_set.source}: label {int(image_set.labels.max())} is not "
                            f"an output of {network} ({n_outputs} outputs); give --classes")
    return dataclasses.replace(image_set, class_names=[str(k) for k in range(n_outputs)])


def _version() -> str:
    try:
        return metadata.version("selectivity-study")
    except metadata.PackageNotFoundError:
        return "unknown"


def _record_segments(model: TappedNet | HookedNet, image_set: ImageSet, preprocess, todo, parts,
                     plan, layers, layer_units, layer_attrs, attrs, batch_size, workers, device,
                     progress) -> None:
    from tqdm.auto import tqdm

    dataset = image_set.dataset(preprocess)
    in_memory = image_set.tensors is not None
    cores = available_cpus()  # not os.cpu_count(): the CPUs this process may use
    if workers is None:  # decoding takes ~10% of CaffeNet's CPU time: leave cores to the net
        workers = 0 if in_memory else min(8, cores) if device.type == "cuda" else \
            max(1, min(4, cores // 4))
    # on the CPU the network gets the cores the decoding processes leave (at least one)
    threads = max(1, cores - workers) if device.type == "cpu" else torch.get_num_threads()
    loader = DataLoader(
        dataset,
        batch_sampler=list(_segment_batches(todo, plan.segment_images, plan.n_inputs,
                                            batch_size)),
        num_workers=workers, collate_fn=collate, pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    output_tap = model.output_tap
    taps = list(dict.fromkeys([*layers, output_tap]))
    labels = torch.as_tensor(image_set.labels)
    total = sum(min(plan.n_inputs, (k + 1) * plan.segment_images) - k * plan.segment_images
                for k in todo)
    segments = iter(todo)
    current = None
    kept = skipped = 0
    bar = tqdm(total=total, unit="img", desc="record", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    started = time.perf_counter()
    try:
        with torch.inference_mode(), torch_threads(threads):
            log.info("recording with %d intra-op thread(s) and %d decoding process(es) on %d "
                     "available CPU(s)", torch.get_num_threads(), workers, cores)
            for batch, indices, bad in loader:
                if current is None or current.seen == current.stop - current.start:
                    k = next(segments)
                    current = _SegmentBuffer(k, k * plan.segment_images,
                                             min(plan.n_inputs, (k + 1) * plan.segment_images))
                for i, err in bad:
                    current.skipped.append((int(i), image_set.paths[i], err))
                    log.warning("skipped %s: %s", image_set.paths[i], err)
                skipped += len(bad)
                current.seen += len(indices) + len(bad)
                if batch is not None:
                    outs = model(batch.to(device, non_blocking=True), taps)
                    pred = outs[output_tap].argmax(dim=1).cpu()
                    keep_rows = (pred == labels[indices]) if plan.keep == "correct" else \
                        torch.ones(len(indices), dtype=torch.bool)
                    acts = {t: reduce_activation(outs[t], plan.reduction, t)
                            [keep_rows.to(device)].float().cpu().numpy() for t in layers}
                    current.rows.append({"index": indices[keep_rows].numpy(), "acts": acts,
                                         "pred": pred[keep_rows].numpy()})
                bar.update(len(indices) + len(bad))
                bar.set_postfix(skipped=skipped, refresh=False)
                if current.seen == current.stop - current.start:
                    kept += current.write(_segment_path(parts, current.k), image_set,
                                          layer_units, layer_attrs, attrs)
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    log.info("recorded %d images in %.1f s (%.0f images/s); kept %d, skipped %d",
             total, seconds, total / max(seconds, 1e-9), kept, skipped)


#: ``join="auto"`` copies tables up to this size into one file, and joins larger ones virtually.
COPY_LIMIT_BYTES = 2 * 1024**3
JOIN_MODES = ("auto", "copy", "virtual")


def join_segments(out: str | os.PathLike, *, mode: str = "auto") -> Path:
    """Join the finished segments of ``OUT.parts`` into the table ``out``.

    ``mode``: "copy" writes one self-contained file and removes the parts;
    "virtual" maps the parts with HDF5 virtual datasets (no copy; keep
    ``OUT.parts`` beside ``OUT``); "auto" copies up to COPY_LIMIT_BYTES.
    """
    if mode not in JOIN_MODES:
        raise ValueError(f"join mode must be one of {JOIN_MODES}, got {mode!r}")
    out = Path(out)
    parts = _parts_dir(out)
    plan = json.loads((parts / "manifest.json").read_text())
    n_segments = -(-plan["n_inputs"] // plan["segment_images"])
    files = [_segment_path(parts, k) for k in range(n_segments)]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise RecordError(f"cannot join {out}: {len(missing)} segment(s) missing, e.g. "
                          f"{missing[0]}; run the recording (all shards) to the end")
    lock = parts / "join.lock"  # shards finishing together: one of them joins
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        raise JoinInProgress(f"{lock} exists: another process is joining {out} (if it died, "
                             "remove the lock and run with --join-only)") from None
    try:
        result = _join(out, parts, plan, files, mode)
    finally:
        lock.unlink(missing_ok=True)
    if not any(parts.iterdir()):  # a copied join leaves nothing behind
        parts.rmdir()
    return result


class JoinInProgress(RecordError):
    """Another process holds the join lock."""


def _join(out: Path, parts: Path, plan: dict, files: list[Path], mode: str) -> Path:
    segs = [h5py.File(f, "r") for f in files]
    try:
        rows = [len(s["labels"]) for s in segs]
        total = sum(rows)
        if total == 0:
            raise RecordError(f"{out}: no image was kept (keep={plan['keep']}): is the network "
                              "given the right weights and classes?")
        first = segs[0]
        layer_order = [v.decode() if isinstance(v, bytes) else str(v)
                       for v in first["layers"].attrs["order"]]
        units = {name: first["layers"][name].shape[1] for name in layer_order}
        copy = mode == "copy" or (
            mode == "auto" and total * sum(units.values()) * 4 <= COPY_LIMIT_BYTES)
        class_names = [v.decode() if isinstance(v, bytes) else v for v in first["class_names"]]
        attrs = {k: v for k, v in first.attrs.items()
                 if k not in ("segment", "first_input", "stop_input", "skipped", "complete")}
        layer_attrs = {n: dict(first["layers"][n].attrs) for n in layer_order}
        skipped = [tuple(item) for s in segs for item in json.loads(s.attrs["skipped"])]
        with atomic_path(out) as tmp:
            if copy:
                _join_copy(tmp, segs, class_names, units, attrs, layer_attrs, total)
            else:
                _join_virtual(tmp, segs, files, out, class_names, layer_order, units, attrs,
                              layer_attrs, rows)
            with h5py.File(tmp, "a") as f:
                string = h5py.string_dtype("utf-8")
                for name, column in (("skipped_images", 1), ("skipped_errors", 2)):
                    f.create_dataset(name, data=np.array([item[column] for item in skipped],
                                                         dtype=object), dtype=string)
                f.attrs["n_inputs"] = plan["n_inputs"]
                f.attrs["n_skipped"] = len(skipped)
                f.attrs["n_kept"] = total
                f.attrs["joined"] = "copy" if copy else "virtual"
                f.attrs["complete"] = True
    finally:
        for s in segs:
            s.close()
    if copy:
        for f in files:
            f.unlink()
        (parts / "manifest.json").unlink()
    log.info("%s: %d images kept of %d (%d skipped), %s", out, total, plan["n_inputs"],
             len(skipped), "one file" if copy else f"virtual, over {parts}")
    return out


def _join_copy(tmp, segs, class_names, units, attrs, layer_attrs, total) -> None:
    with TableWriter(tmp, class_names, units, n_images=total, attrs=attrs,
                     layer_attrs=layer_attrs, extra_string_columns=["image_paths"],
                     extra_int_columns=["predictions", "input_index"]) as writer:
        for s in segs:
            if not len(s["labels"]):
                continue
            writer.append(
                s["labels"][()], {n: s["layers"][n][()] for n in units},
                extra={"image_paths": [p.decode() if isinstance(p, bytes) else p
                                       for p in s["image_paths"][()]],
                       "predictions": s["predictions"][()], "input_index": s["input_index"][()]},
            )


def _join_virtual(tmp, segs, files, out, class_names, layer_order, units, attrs, layer_attrs,
                  rows) -> None:
    total = sum(rows)
    with h5py.File(tmp, "w") as f:
        f.attrs.update(attrs)
        f.create_dataset("class_names", data=np.array(class_names, dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("labels", data=np.concatenate([s["labels"][()] for s in segs]))
        f.create_dataset("predictions", data=np.concatenate([s["predictions"][()] for s in segs]))
        f.create_dataset("input_index", data=np.concatenate([s["input_index"][()] for s in segs]))
        f.create_dataset("image_paths", data=np.concatenate([s["image_paths"][()] for s in segs]),
                         dtype=h5py.string_dtype("utf-8"))
        group = f.create_group("layers")
        group.attrs["order"] = np.array(layer_order, dtype=object)
        for name in layer_order:
            layout = h5py.VirtualLayout(shape=(total, units[name]), dtype="f4")
            start = 0
            for path, n in zip(files, rows, strict=True):
                if n:
                    rel = os.path.relpath(path, out.parent)
                    layout[start:start + n] = h5py.VirtualSource(
                        rel, f"layers/{name}", shape=(n, units[name]))
                start += n
            ds = group.create_virtual_dataset(name, layout, fillvalue=np.nan)
            ds.attrs.update(layer_attrs[name])
            ds.attrs["chunk_units"] = unit_chunk_width(units[name])


def _parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        return (int(rank), int(world)) if rank and world else (0, 1)
    from analysis.selectivity import parse_shard  # pandas: a slow import for this alone

    return parse_shard(text)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m generator.record",
        description="Record a network's activations over a labelled image set into an "
                    "activation table (docs/activation-table.md). Interrupted runs go on where they "
                    "stopped when run again with the same arguments.",
    )
    parser.add_argument("--network", required=True,
                        help="caffenet, bvlc_alexnet, alexnet (torchvision's) or demo; or any "
                             "PyTorch network: torchvision:<name> (e.g. torchvision:resnet18) "
                             "or a function (or class) of no arguments that returns an "
                             "nn.Module, module.path:callable or path/to/file.py:callable "
                             "(docs/networks.md, 'Any PyTorch network')")
    parser.add_argument("--weights", help=".caffemodel or PyTorch state dict (.pth; for "
                        "torchvision: and module:callable networks, with the model's own keys, "
                        "loaded strictly); default: the demo's own trained weights, random "
                        "for the others")
    parser.add_argument("--images",
                        help="a folder of class sub-folders (ImageNet-style), a CSV of "
                             "path,label, or digits[:train|:test]")
    parser.add_argument("--classes", help="class list (TSV with wnid,name or one per line); "
                        "default: ImageNet's 1,000 classes where they fit (a module:callable "
                        "network's outputs, named 0..K-1, otherwise)")
    parser.add_argument("--out", help="activation table to write (.h5)")
    parser.add_argument("--layers", nargs="+",
                        help="taps to record (default: conv5 fc6 fc7 fc8 prob; "
                             "':pre' for pre-ReLU, e.g. fc6:pre); for torchvision: and "
                             "module:callable networks, module names (layer4, "
                             "blocks.11.mlp.fc2) and 'output', the return value; see "
                             "--list-layers")
    parser.add_argument("--list-layers", action="store_true",
                        help="print the network's layers (name, type, output shape for one "
                             "input) and exit")
    parser.add_argument("--keep", choices=("correct", "all"), default="correct",
                        help="keep only correctly classified images (default) or all")
    parser.add_argument("--preprocess", metavar="NAME|SPEC",
                        help="how images become inputs: for caffenet and bvlc_alexnet "
                             "'authors' (the whole image to 227x227 with Caffe's Python "
                             "Transformer, minus the ILSVRC-2012 mean pixel: how the paper's "
                             "authors recorded CaffeNet) or 'crop' (256x256, then the centre "
                             "227x227, minus (104, 117, 123)); default: authors for caffenet, "
                             "crop for bvlc_alexnet, the network's own for the others. Or a "
                             "spec over the default (torchvision's ImageNet one where the "
                             "network has none): KEY=VALUE,... with size, crop, resize "
                             "(shorter|square), channels (RGB|BGR|L), scale (e.g. 1/255), "
                             "mean and std (/-separated, e.g. 0.485/0.456/0.406), "
                             "interpolation (pil|caffe)")
    parser.add_argument("--reduction", choices=REDUCTIONS, default="max",
                        help="per-channel reduction of conv maps (spatial) and token maps "
                             "(over tokens) (default: max)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, help="image-decoding processes (default: a "
                        "quarter of the cores on CPU, up to 8 with a GPU; 0 decodes here)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    parser.add_argument("--shard", help="record the I-th of N shares of the images, I/N "
                        "(default: RANK/WORLD_SIZE under torchrun, else 0/1)")
    parser.add_argument("--segment-images", type=int, default=16384,
                        help="images per resumable segment (default 16384)")
    parser.add_argument("--join", choices=JOIN_MODES, default="auto",
                        help="how the segments become one table: copy (one file), virtual "
                             "(HDF5 virtual datasets over OUT.parts, no copy) or auto (copy "
                             "up to 2 GB; default)")
    parser.add_argument("--join-only", action="store_true",
                        help="only join the finished segments of OUT.parts into OUT")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.list_layers:
        needed = ["--out"] + ([] if args.join_only else ["--images"])
        missing = [flag for flag in needed if getattr(args, flag[2:]) is None]
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    use_available_cpus()  # training the demo network on first use sets its own count
    try:
        if args.list_layers:
            return _print_layers(args.network, args.weights, args.preprocess)
        if args.join_only:
            path = join_segments(args.out, mode=args.join)
        else:
            device = args.device
            if device is None and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
                device = f"cuda:{os.environ['LOCAL_RANK']}"
            path = record(
                args.network, args.images, args.out, weights=args.weights, layers=args.layers,
                keep=args.keep, reduction=args.reduction, classes=args.classes,
                batch_size=args.batch_size, workers=args.workers, device=device,
                shard=_parse_shard(args.shard), segment_images=args.segment_images,
                join=args.join, progress=not args.quiet, preprocess=args.preprocess,
            )
    except (RecordError, ImageSetError, WeightsError, ValueError, KeyError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}",
              file=sys.stderr)
        return 2
    if path is None:
        print("this shard is done; the table is joined when every shard has finished")
    else:
        print(f"wrote {path}")
    return 0


def _print_layers(network: str, weights: str | None, preprocess: str | None) -> int:
    """``--list-layers``: one line per layer, name, type and output shape; 0."""
    if weights is None:  # shapes do not depend on weights: no training, no warning
        model, spec = build_network(network, preprocess)
        model.eval()
    else:
        model, spec, _ = load_network(network, weights, preprocess=preprocess)
    layers = network_layers(model)
    name_width = max(len(layer.name) for layer in layers)
    type_width = max(len(layer.type) for layer in layers)
    print(f"# {network}: input {tuple(model.input_shape)}; output shapes for one input")
    for layer in layers:
        shape = str(layer.shape) if layer.shape is not None else "-"
        note = "" if layer.calls == 1 and layer.shape is not None else \
            "  (never runs: not a tap)" if layer.calls == 0 else \
            "  (no tensor output: not a tap)" if layer.shape is None else \
            f"  (runs {layer.calls} times: not a tap)"
        print(f"{layer.name:<{name_width}}  {layer.type:<{type_width}}  {shape}{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
