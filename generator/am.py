"""Activation-maximization panels by one of three methods, with one set of files
(docs/networks.md, "Panel methods"):

    python -m generator.am --method ppgn --network demo --generator demo --layer fc8 --out am/ppgn
    python -m generator.am --method fourier --network demo --layer fc8 --units all --out am/fourier
    python -m generator.am --method natural --table digits.h5 --network demo --layer conv5 \\
        --out am/natural

* ``ppgn``: :mod:`generator.ppgn` with its own options (this command hands them over to
  ``python -m generator.ppgn``): a PPGN sampler with the DeePSiM prior (the demo's own
  generator for the demo).
* ``fourier``: no generator: :mod:`generator.fourier`, a decorrelated Fourier image
  parameterisation optimised with random transformations (Olah et al. 2017, lucid's
  defaults), ``--images-per-unit`` images a unit, each from its own seed.
  :func:`generate_fourier` writes the files.
* ``natural``: :mod:`generator.natural`, the unit's most activating images of an
  activation table (``--table``), for conv units the window around each image's
  maximum.

Every method writes, in its ``--out`` folder, the files of :mod:`generator.unit_files`:
``units/<stem>.npz``, ``panels/<stem>.jpg``, ``units/<stem>.json`` (last: a unit with it
is done, so a run resumes unit by unit), ``settings_<layer>.json`` (a folder made with
other settings is refused), ``manifest_<layer>.csv`` and ``manifest.csv`` with the same
columns, ``method`` among them. Stems: ``<layer>_<unit:04d>`` for ppgn,
``<method>_<layer>_<unit:04d>`` for the others.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import fourier, natural
from .networks import TappedNet, gradient_copy
from .panels import receptive_field
from .threads import available_cpus, torch_threads, use_available_cpus, worker_pool
from .unit_files import (
    METHODS,
    add_unit_options,
    check_settings,
    recognition_lines,
    save_unit,
    unit_stem,
    write_manifest,
)

__all__ = ["OBJECTIVES", "TILES", "fourier_box", "generate_fourier", "main"]

log = logging.getLogger("generator.am")  # the same name under python -m

#: What a fourier conv unit maximises (``--objective``): its channel at the centre of the
#: map (PPGN's target here) or the channel's mean over the map (lucid's ``channel``).
OBJECTIVES = ("centre", "mean")
#: What a fourier tile shows (``--tile``): ``crop``, what the target sees (a conv unit's
#: receptive field with the centre objective, else the whole input), or ``full``.
TILES = ("crop", "full")


def _for_gradients(net: nn.Module) -> nn.Module:
    """A frozen copy for gradients to the input (a TappedNet's faster one)."""
    if isinstance(net, TappedNet):
        return gradient_copy(net)
    net = net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def fourier_box(net: nn.Module, tap: str, location: tuple[int, int] | None,
                tile: str = "crop") -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of a fourier image that its tile shows (None: all):
    with ``crop`` a conv unit's receptive field at ``location``, as ppgn's conv tiles."""
    if tile not in TILES:
        raise ValueError(f"tile must be one of {', '.join(TILES)}, not {tile!r}")
    if tile == "full" or location is None or not hasattr(net, "_order"):
        return None
    return receptive_field(net, tap, location)


def generate_fourier(net: nn.Module, preprocessing, layer: str, units: Sequence[int],
                     out_dir: str | os.PathLike, *, images_per_unit: int = 100,
                     settings: fourier.Settings | None = None, seed: int = 0,
                     batch: int = 50, objective: str = "centre", tile: str = "crop",
                     independent: nn.Module | None = None,
                     record: dict | None = None, shard: tuple[int, int] = (0, 1),
                     progress: bool = True, workers: int | None = None,
                     device: str | torch.device = "cpu") -> Path | None:
    """Fourier AM images and a panel for each of ``layer``'s ``units``; returns the
    manifest once every unit is done (None while other shards have units left).

    The target is PPGN's (:func:`generator.ppgn.target_for`: fc8's logits, other fc
    layers and conv layers pre-ReLU; a conv unit at the centre of its map, or with
    ``objective="mean"`` its channel mean). Image i of unit u comes from seed (``seed``,
    layer, u, i) (:func:`generator.fourier.image_seed`). Images are optimised in batches
    of ``batch`` rows (several units share one, padded to its size: an image is the same
    whatever shares its batch); with a diversity weight a batch holds one unit's images
    (images ``batch`` apart in a unit's order do not meet), so the images depend on
    ``batch``. On the CPU ``workers`` batches run at once, one intra-op thread each
    (default: one per available CPU; the images do not depend on it).
    ``independent``: a classifier whose verdicts are recorded (fc8).
    """
    from tqdm.auto import tqdm

    from .ppgn import is_logits, target_for

    out = Path(out_dir)
    settings = settings or fourier.Settings()
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
    side = math.isqrt(images_per_unit)
    if side * side != images_per_unit:
        raise ValueError(f"images per unit must be a square (100 = 10x10), got {images_per_unit}")
    if batch < 1:
        raise ValueError(f"--batch {batch}: expected at least 1")
    target = target_for(net, layer)
    logits = is_logits(net, target)
    location = target.location if objective == "centre" else None
    shape = net.layer_shapes([target.tap])[target.tap]
    bad = [u for u in units if not 0 <= u < shape[0]]
    if bad:
        raise ValueError(f"unit(s) {bad[:5]} outside 0..{shape[0] - 1} of {layer}")
    if settings.diversity:
        div_tap = settings.diversity_tap or target.tap
        if div_tap not in net.taps:
            raise ValueError(f"--diversity-layer {div_tap}: no such layer of the network")
        settings = replace(settings, diversity_tap=div_tap)
    channels = net.input_shape[0]
    decorrelate = channels == 3 if settings.decorrelate is None else settings.decorrelate
    box = fourier_box(net, target.tap, location, tile)
    output_tap = getattr(net, "output_tap", "fc8")
    record = {"method": "fourier", "layer": layer, "target": asdict(target) | {
                  "location": location}, "objective": objective,
              "settings": asdict(settings) | {"decorrelate": decorrelate}, "seed": seed,
              "batch": batch if settings.diversity else None,
              "images_per_unit": images_per_unit, "tile": tile, "tile_box": box,
              "input_shape": list(net.input_shape),
              "preprocessing": _preprocessing_record(preprocessing), **(record or {})}
    (out / "units").mkdir(parents=True, exist_ok=True)
    (out / "panels").mkdir(parents=True, exist_ok=True)
    check_settings(out, layer, record)

    def stem(unit: int) -> str:
        return unit_stem("fourier", layer, unit)

    mine = [u for i, u in enumerate(units) if i % shard[1] == shard[0]]
    todo = [u for u in mine if not (out / "units" / f"{stem(u)}.json").exists()]
    if settings.diversity:
        batches = [[(u, i) for i in range(j, min(j + batch, images_per_unit))]
                   for u in todo for j in range(0, images_per_unit, batch)]
    else:
        items = [(u, i) for u in todo for i in range(images_per_unit)]
        batches = [items[j:j + batch] for j in range(0, len(items), batch)]
    model = _for_gradients(net.to(device))
    preprocess = fourier.preprocess_fn(preprocessing)
    on_cpu = torch.device(device).type == "cpu"
    workers = max(1, min(len(batches), (workers or available_cpus()) if on_cpu else 1))

    def run(rows: list[tuple[int, int]]):
        images, acts, probs = fourier.render(model, preprocess, target.tap, location, rows,
                                             layer=layer, seed=seed, settings=settings,
                                             pad_to=batch, device=device)
        with torch.no_grad():
            x = preprocess(images)
            top = (model(x, [output_tap])[output_tap].argmax(1).cpu().tolist()
                   if output_tap in net.taps else [None] * len(rows))
            verdicts = (independent(x, ["fc8"])["fc8"].argmax(1).cpu().tolist()
                        if independent is not None else [None] * len(rows))
        pixels = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return list(zip(rows, pixels, acts.cpu().tolist(), probs.cpu().tolist(), top,
                        verdicts, strict=True))

    done: dict[int, list] = {}
    bar = tqdm(total=len(todo), unit="unit", desc=f"fourier {layer}", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    started = time.perf_counter()
    with ExitStack() as stack:
        stack.callback(bar.close)
        if on_cpu:
            stack.enter_context(torch_threads(1))
        pool = stack.enter_context(worker_pool(workers, 1 if on_cpu else
                                               torch.get_num_threads()))
        pending: deque = deque()
        stack.callback(lambda: [future.cancel() for future in pending])
        queue = deque(batches)
        while queue or pending:
            while queue and len(pending) <= workers:
                pending.append(pool.submit(run, queue.popleft()))
            for result in pending.popleft().result():
                done.setdefault(result[0][0], []).append(result)
            for unit in [u for u, got in done.items() if len(got) == images_per_unit]:
                _save_fourier(out, layer, unit, sorted(done.pop(unit), key=lambda r: r[0][1]),
                              side, box, logits, settings, seed)
                bar.update(1)
    if todo:
        seconds = time.perf_counter() - started
        log.info("%s: %d units, %d images x %d steps in %.1f s (%.1f image-steps/s; %d "
                 "worker(s))", layer, len(todo), len(todo) * images_per_unit, settings.steps,
                 seconds, len(todo) * images_per_unit * settings.steps / max(seconds, 1e-9),
                 workers)
    missing = [u for u in units if not (out / "units" / f"{stem(u)}.json").exists()]
    if missing:
        log.info("%d unit(s) left to other shards", len(missing))
        return None
    return write_manifest(out, layer, [stem(u) for u in units])


def _preprocessing_record(preprocessing) -> dict | None:
    """A preprocessing's settings for the record."""
    import json

    return json.loads(preprocessing.to_json()) if hasattr(preprocessing, "to_json") else None


def _save_fourier(out: Path, layer: str, unit: int, results: list, side: int, box,
                  is_output: bool, settings: fourier.Settings, seed: int) -> None:
    pixels = np.stack([r[1] for r in results])
    acts = np.array([r[2] for r in results], dtype=np.float64)
    probs = np.array([r[3] for r in results], dtype=np.float64)
    n = len(results)
    info = {
        "layer": layer, "unit": unit, "n_images": n, "short": n < side * side,
        "mean_activation": float(acts.mean()), "min_activation": float(acts.min()),
        "min_prob": float(probs.min()), "top_class": None, "top_class_share": None,
        "target_share": None, "independent_target_share": None, "threshold": None,
        "pass_rate": 1.0, "n_passed": n, "n_candidates": n, "chains": n,
        "chain_steps": n * settings.steps, "method": "fourier",
    }
    tops = np.array([r[4] for r in results])
    if results[0][4] is not None:
        classes, counts = np.unique(tops, return_counts=True)
        info["top_class"] = int(classes[np.argmax(counts)])
        info["top_class_share"] = float(counts.max() / n)
        if is_output:
            info["target_share"] = float((tops == unit).mean())
    if results[0][5] is not None and is_output:
        info["independent_target_share"] = float((np.array([r[5] for r in results])
                                                  == unit).mean())
    arrays = {"activations": acts, "probs": probs,
              "index": np.array([r[0][1] for r in results], dtype=np.int64),
              "seeds": np.array([fourier.image_seed(seed, layer, unit, r[0][1])
                                 for r in results], dtype=np.int64)}
    save_unit(out, unit_stem("fourier", layer, unit), pixels, arrays, info, side=side,
              box=box)


# -- the command line -------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, method: str) -> None:
    parser.add_argument("--method", choices=METHODS, default="ppgn",
                        help="ppgn (the default, the paper's: a PPGN sampler with the DeePSiM prior: python -m "
                             "generator.ppgn's options), fourier (a Fourier image "
                             "parameterisation, no generator) or natural (the table's most "
                             "activating images)")
    parser.add_argument("--network", required=method == "fourier",
                        help="caffenet, bvlc_alexnet, alexnet, demo, ..." + (
                            " (default: the network the table was recorded with)"
                            if method == "natural" else ""))
    parser.add_argument("--weights", help="the network's weights (.caffemodel or .pth)")
    add_unit_options(parser, "e.g. conv5, fc6, fc8")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the images (fourier) and --sample's draw (default 0)")
    parser.add_argument("--shard", help="I/N: every N-th unit from the I-th")
    parser.add_argument("--device", help="cpu, cuda ... (default: cuda if present)")
    parser.add_argument("--quiet", action="store_true")


def _parser(method: str | None, prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Activation-maximization panels: 10x10 panels of a unit's "
        "images by PPGN (python -m generator.ppgn's options), a Fourier parameterisation, "
        "or the most activating natural images; the same files and manifests for each "
        "(docs/networks.md, \"Panel methods\"). Runs resume per unit.")
    if method is None:
        parser.add_argument("--method", choices=METHODS, default="ppgn",
                            help="ppgn (the default: the paper's), fourier or natural; "
                                 "--method M --help for its options")
        return parser
    _common(parser, method)
    if method == "fourier":
        defaults = fourier.Settings()
        parser.add_argument("--steps", type=int, default=defaults.steps,
                            help="Adam steps per image (default %(default)s)")
        parser.add_argument("--lr", type=float, default=defaults.lr,
                            help="Adam's learning rate (default %(default)s)")
        parser.add_argument("--batch", type=int, default=50,
                            help="images optimised together (default %(default)s)")
        parser.add_argument("--diversity", type=float, default=0.0, metavar="W",
                            help="weight of lucid's diversity term between a unit's images "
                                 "in a batch (default 0: none; the images then depend on "
                                 "--batch)")
        parser.add_argument("--diversity-layer",
                            help="the layer whose Gram matrices the diversity term compares "
                                 "(default: the target's)")
        parser.add_argument("--objective", choices=OBJECTIVES, default="centre",
                            help="conv units: the channel at the map's centre (default, "
                                 "PPGN's target) or its mean over the map")
        parser.add_argument("--decay-power", type=float, default=defaults.decay_power,
                            help="the spectrum's 1/f^p scaling (default %(default)s)")
        parser.add_argument("--no-transforms", action="store_true",
                            help="no random pad, jitter, scale and rotation")
        parser.add_argument("--tile", choices=TILES, default="crop",
                            help="crop (default): a conv unit's receptive field (centre "
                                 "objective), else the whole image; full: the whole image")
        parser.add_argument("--workers", type=int,
                            help="CPU only: batches run at once, one thread each (default: "
                                 "the CPUs this process may use)")
    else:
        parser.add_argument("--table", required=True, help="the activation table (.h5)")
        parser.add_argument("--one-per-class", action="store_true",
                            help="at most one image per class (the best)")
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    from analysis.selectivity import parse_shard  # pandas: a slow import for this alone

    from . import digits
    from .loading import load_network
    from .ppgn import is_logits, parse_sample, parse_units, sample_units, target_for

    prog = prog or "python -m generator.am"
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", choices=METHODS)
    known, rest = pre.parse_known_args(argv)
    if known.method is None and not {"-h", "--help"} & set(argv):
        known.method = "ppgn"   # the paper's method is the default
    if known.method == "ppgn":
        from . import ppgn

        return ppgn.main(rest, prog=f"{prog} --method ppgn")
    args = _parser(known.method, prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cpus = use_available_cpus()
    try:
        shard = parse_shard(args.shard) if args.shard else (0, 1)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        network_name = args.network
        if args.method == "natural" and not Path(args.table).is_file():
            raise ValueError(f"--table {args.table}: no such activation table (record one "
                             "with python -m generator.record)")
        if args.method == "natural" and network_name is None:
            from analysis.activations import open_table

            with open_table(args.table) as t:
                network_name = t.attrs.get("network")
            if not network_name:
                raise ValueError(f"{args.table} does not name its network: pass --network")
        net, spec, checksum = load_network(network_name, args.weights, device=device)
        independent = None
        if (network_name == "demo" and args.weights is None) or \
                tuple(net.input_shape) == (1, digits.DIGITS_SIZE, digits.DIGITS_SIZE):
            # a network of the demo's digits (the demo's, or a reference such as its
            # ResNet): the demo's independent classifier judges the images too
            independent = digits.trained_independent_network()[0].to(device).eval()
        if args.method == "natural":
            from analysis.activations import open_table

            with open_table(args.table) as t:
                n_units = t.n_units(args.layer)
        else:
            if args.layer not in net.taps and f"{args.layer}:pre" not in net.taps:
                raise ValueError(f"--layer {args.layer}: {network_name} has no such layer; "
                                 f"its layers: {', '.join(net.taps)}")
            target = target_for(net, args.layer)
            n_units = net.layer_shapes([target.tap])[target.tap][0]
        units = parse_units(args.units, n_units)
        record = {"network": network_name, "network_sha256": checksum}
        if args.sample is not None:
            n_selected = len(units)
            k = parse_sample(args.sample, n_selected)
            units = sample_units(units, k, args.seed, args.layer)
            record["sample"] = {"k": k, "of": n_selected, "units": args.units,
                                "asked": args.sample}
        if args.method == "fourier":
            if args.workers is not None and args.workers < 1:
                raise ValueError(f"--workers {args.workers}: expected at least 1")
            settings = fourier.Settings(steps=args.steps, lr=args.lr,
                                        decay_power=args.decay_power,
                                        transforms=not args.no_transforms,
                                        diversity=args.diversity,
                                        diversity_tap=args.diversity_layer)
            manifest = generate_fourier(
                net, spec.preprocessing, args.layer, units, args.out,
                images_per_unit=args.images_per_unit, settings=settings, seed=args.seed,
                batch=args.batch, objective=args.objective, tile=args.tile,
                independent=independent, record=record, shard=shard,
                progress=not args.quiet, workers=args.workers or cpus, device=device)
        else:
            manifest = natural.generate(
                args.table, args.layer, units, args.out, network=net,
                images_per_unit=args.images_per_unit, one_per_class=args.one_per_class,
                independent=independent,
                # natural compares the layer with the logits' tap: an fc layer as wide as
                # the output (a referenced network's last Linear) is the logits too
                output_tap=(args.layer if is_logits(net, target_for(net, args.layer))
                            else getattr(net, "output_tap", "fc8")),
                record=record, shard=shard, progress=not args.quiet, device=device)
    except (ValueError, KeyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if manifest is None:
        print("this shard is done; the manifest is written when every unit is")
        return 0
    _summarise(manifest)
    return 0


def _summarise(manifest: Path) -> None:
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    print(f"wrote {manifest} ({len(rows)} units)")
    short = [r["unit"] for r in rows if r["short"] == "True"]
    if short:
        print(f"  {len(short)} unit(s) short of their images: {', '.join(short[:20])}"
              + (" ..." if len(short) > 20 else ""))
    values = [float(r["mean_activation"]) for r in rows if r["mean_activation"]]
    if values:
        print(f"  mean target activation {sum(values) / len(values):.3g}")
    for line in recognition_lines(rows):
        print(line)


if __name__ == "__main__":
    raise SystemExit(main())
