"""Activation-maximization runs with the PPGN sampler: a unit's images and panel on disk,
resumable per unit, and the manifests the study design reads.

    python -m generator.ppgn --network demo --generator demo --layer fc8 --units all --out am/

:func:`load_models` loads a classifier with its generator (the demo pair, or a network of
:mod:`generator.loading` with the DeePSiM generator of :mod:`generator.deepsim`) and an
independent classifier where there is one (the demo's: :func:`generator.digits.
trained_independent_network`), whose verdicts on the images are recorded beside the
network's. :func:`generate` runs the chains of :mod:`generator.sampler` for a layer's units
and writes, per unit, its images (``units/<layer>_<unit>.npz``), its panel
(``panels/<layer>_<unit>.jpg``) and its figures (``units/<layer>_<unit>.json``, written
last: a unit with it is done); then ``manifest_<layer>.csv`` and ``manifest.csv``
(:func:`write_manifest`). ``settings_<layer>.json`` records the settings, the seed and the
SHA-256 of the weights; a folder made with other settings is refused.

Speed on the CPU (``benchmarks/ppgn.py`` measures it): :func:`load_models`
gives the sampler copies of the networks made for gradients to the input
(:func:`generator.networks.gradient_copy`: channels-last layouts, a faster local
response normalisation and first convolution, the same functions), and
:func:`generate` runs one batch per CPU in as many threads, each with one intra-op
thread (:mod:`generator.threads`), so the images depend on the seed and the batch size
(``batch_chains``) but not on the number of CPUs.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.files import atomic_path, atomic_write_text

from . import digits, digits_generator
from .deepsim import crop_to_classifier, load_generator, to_pixels
from .loading import load_network
from .networks import gradient_copy
from .panels import grid, receptive_field, save_jpeg
from .sampler import Sample, Sampler, Settings, Target, settings_for
from .threads import available_cpus, torch_threads, use_available_cpus, worker_pool

__all__ = [
    "Models",
    "load_models",
    "target_for",
    "parse_units",
    "parse_sample",
    "sample_units",
    "panel_box",
    "generate",
    "MANIFEST_COLUMNS",
    "write_manifest",
    "main",
]

log = logging.getLogger("generator.ppgn")  # the same name under python -m


@dataclass
class Models:
    """A classifier with its generator, and how to show the generator's images."""

    classifier: nn.Module
    generator: nn.Module
    crop: Callable[[torch.Tensor], torch.Tensor]
    code_dim: int
    to_pixels: Callable[[torch.Tensor], np.ndarray]  # (B, C, H, W) -> uint8 (B, H, W, C)
    ids: dict = field(default_factory=dict)  # names and checksums, for the record
    independent: nn.Module | None = None  # an independent classifier (recognisability)
    init_codes: torch.Tensor | None = None  # real codes to draw starting points from


def _for_sampling(generator: nn.Module, classifier: nn.Module,
                  device: str | torch.device) -> tuple[nn.Module, nn.Module]:
    """The generator and classifier as the sampler wants them: frozen, on ``device``,
    channels-last, the classifier a :func:`~generator.networks.gradient_copy`."""
    generator = generator.to(device).eval()
    for p in generator.parameters():
        p.requires_grad_(False)
    return (generator.to(memory_format=torch.channels_last),
            gradient_copy(classifier.to(device)))


def load_models(network: str, generator: str, *, weights: str | None = None,
                device: str | torch.device = "cpu") -> Models:
    """``demo``/``demo`` is the embedded default; otherwise a network and a DeePSiM file.

    The classifier and generator are prepared for the sampler (:func:`_for_sampling`):
    the same functions, faster gradients to the input. The demo pair comes with the
    demo's independent classifier (:attr:`Models.independent`).
    """
    if network == "demo" or generator == "demo":
        if (network, generator) != ("demo", "demo"):
            raise ValueError("the demo generator goes with the demo network: "
                             "--network demo --generator demo")
        classifier, _, net_sum = load_network("demo", device=device)
        gen, gen_sum = digits_generator.trained_demo_generator(network=(classifier, net_sum))
        independent, independent_sum = digits.trained_independent_network()

        def digit_pixels(x: torch.Tensor) -> np.ndarray:
            return (digits.to_unit_range(x).clamp(0, 1) * 255).round().byte()\
                .permute(0, 2, 3, 1).cpu().numpy()

        code_dim = classifier.layer_shapes(["fc6"])["fc6"][0]
        train, _ = digits.load_digits_tensors("train")
        with torch.no_grad():
            codes = classifier(train.to(device), ["fc6"])["fc6"]
        gen, classifier = _for_sampling(gen, classifier, device)
        return Models(classifier, gen, lambda x: x, code_dim, digit_pixels,
                      {"network": "demo", "network_sha256": net_sum, "generator": "demo",
                       "generator_sha256": gen_sum, "independent_sha256": independent_sum},
                      independent.to(device).eval().to(memory_format=torch.channels_last),
                      codes)
    classifier, spec, net_sum = load_network(network, weights, device=device)
    gen, gen_sum = load_generator(generator)
    crop_size = spec.preprocessing.crop
    gen, classifier = _for_sampling(gen, classifier, device)
    return Models(classifier, gen,
                  lambda x: crop_to_classifier(x, crop_size),
                  classifier.layer_shapes(["fc6"])["fc6"][0],
                  # as PPGN saves its images: clip to +-120 around the mean, stretch to 0-255
                  lambda x: to_pixels(x.detach().cpu(), in_range=(-120, 120)),
                  {"network": network, "network_sha256": net_sum, "generator": generator,
                   "generator_sha256": gen_sum})


def target_for(classifier: nn.Module, layer: str) -> Target:
    """fc8: the logits; fc6 (and other fc): pre-ReLU; conv: pre-ReLU at the map's centre."""
    if layer in ("fc8", "prob"):
        return Target("fc8")
    tap = f"{layer}:pre" if f"{layer}:pre" in classifier.taps else layer
    shape = classifier.layer_shapes([tap])[tap]
    if len(shape) == 3:
        return Target(tap, (shape[1] // 2, shape[2] // 2))
    return Target(tap)


def parse_units(text: str, n_units: int) -> list[int]:
    """'0-255', '3,7,9' or 'all' -> unit indices, checked against the layer's size."""
    if text == "all":
        return list(range(n_units))
    units: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"units must look like 0-255 or 3,7,9 or all, got {text!r}") \
                from None
        units += range(a, b + 1)
    bad = [u for u in units if not 0 <= u < n_units]
    if bad:
        raise ValueError(f"unit(s) {bad[:5]} outside 0..{n_units - 1}")
    return sorted(set(units))


def parse_sample(text: str, n_units: int) -> int:
    """``--sample``: "K" units, or "P%" of ``n_units`` (rounded half up, at least 1)."""
    try:
        if text.endswith("%"):
            share = float(text[:-1])
            if not 0 < share <= 100:
                raise ValueError
            return max(1, math.floor(n_units * share / 100 + 0.5))
        return int(text)
    except ValueError:
        raise ValueError(f"--sample {text}: expected a number of units (64) or a share of "
                         "them (50%)") from None


def sample_units(units: Sequence[int], k: int, seed: int, layer: str) -> list[int]:
    """``k`` of ``units`` drawn at random, reproducibly from ``seed``, sorted.

    Each unit gets a rank from the SHA-256 of (seed, layer, unit) and the ``k`` of lowest
    rank are drawn: the same seed draws the same units on any machine, a smaller ``k``
    draws a subset of a larger one's, and whether a unit is drawn does not depend on the
    order of ``units``. (The paper rated 2,048 of CaffeNet's 4,096 fc6 units.)
    """
    if not 0 < k <= len(units):
        raise ValueError(f"--sample {k}: expected 1..{len(units)} (the units selected)")

    def rank(unit: int) -> bytes:
        return hashlib.sha256(f"{seed}/{layer}/{unit}/sample".encode()).digest()

    return sorted(sorted(set(units), key=rank)[:k])


class _UnitCollector:
    """A unit's samples: every chain's final image, or the best kept ones."""

    def __init__(self, keep: int):
        self.keep = keep
        self.samples: list[tuple] = []

    def add(self, sample: Sample, pixels: np.ndarray, top: int, independent_top: int | None,
            above: bool) -> None:
        self.samples.append((not above, -sample.activation, sample.chain, sample.step,
                             sample.activation, pixels, top, independent_top))
        if len(self.samples) > 2 * self.keep:
            self.samples.sort(key=lambda s: s[:4])
            del self.samples[self.keep:]

    def best(self) -> list[tuple]:
        return sorted(self.samples, key=lambda s: s[:4])[:self.keep]


def panel_box(models: Models, target: Target) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of G's image that a conv target sees, or None for fc.

    The receptive field is in the classifier's input, the centre crop of G's image.
    """
    if target.location is None:
        return None
    top, left, bottom, right = receptive_field(models.classifier, target.tap, target.location)
    device = next(models.generator.parameters()).device
    with torch.no_grad():
        full = models.generator(torch.zeros(1, models.code_dim, device=device)).shape[-2:]
    _, in_h, in_w = models.classifier.input_shape
    dy, dx = (full[0] - in_h) // 2, (full[1] - in_w) // 2
    return top + dy, left + dx, bottom + dy, right + dx


def _unit_stem(layer: str, unit: int) -> str:
    return f"{layer}_{unit:04d}"


def generate(models: Models, layer: str, units: Sequence[int], out_dir: str | Path, *,
             images_per_unit: int = 100, batch_chains: int = 64, seed: int = 0,
             settings: Settings | None = None, shard: tuple[int, int] = (0, 1),
             amp: bool = False, progress: bool = True, workers: int | None = None,
             record: dict | None = None) -> Path | None:
    """AM images and a panel for every unit; returns the manifest once all units are done.

    Chains run in batches of ``batch_chains`` rows (the last one padded: a chain's
    images depend on the batch size, not on its neighbours). On the CPU, ``workers``
    batches run at once, each in its own thread with one intra-op thread (default: one
    per available CPU, :func:`common.cpus.available_cpus`); the images are the same for
    any number of workers. On a GPU one batch runs at a time (``workers`` 1).
    ``record``: more entries for ``settings_<layer>.json`` (e.g. how units were drawn).
    """
    from tqdm.auto import tqdm  # only where a run shows progress: a slow import

    out = Path(out_dir)
    settings = settings or settings_for(layer)
    target = target_for(models.classifier, layer)
    side = math.isqrt(images_per_unit)
    if side * side != images_per_unit:
        raise ValueError(f"images per unit must be a square (100 = 10x10), got {images_per_unit}")
    if settings.keep_every:
        per_chain = settings.steps // settings.keep_every
        chains_per_unit = max(1, -(-images_per_unit // per_chain))
    else:
        chains_per_unit = images_per_unit
    record = {"layer": layer, "target": asdict(target), "settings": asdict(settings),
              "seed": seed, "amp": amp,
              "init": "real codes" if models.init_codes is not None else "|N(0,1)|", "images_per_unit": images_per_unit,
              "chains_per_unit": chains_per_unit, **models.ids, **(record or {})}
    (out / "units").mkdir(parents=True, exist_ok=True)
    (out / "panels").mkdir(parents=True, exist_ok=True)
    settings_file = out / f"settings_{layer}.json"
    if settings_file.exists():
        old = json.loads(settings_file.read_text())
        if old != json.loads(json.dumps(record)):
            diff = sorted(k for k in record if old.get(k) != json.loads(json.dumps(record))[k])
            raise ValueError(f"{out} holds {layer} panels made with other settings "
                             f"({', '.join(diff)}); use another --out")
    else:
        atomic_write_text(settings_file, json.dumps(record, indent=2))

    mine = [u for i, u in enumerate(units) if i % shard[1] == shard[0]]
    todo = [u for u in mine if not (out / "units" / f"{_unit_stem(layer, u)}.json").exists()]
    rows = [(u, c) for u in todo for c in range(chains_per_unit)]
    box = panel_box(models, target)
    sampler = Sampler(models.generator, models.classifier, target, settings=settings,
                      crop=models.crop, code_dim=models.code_dim, seed=seed, layer_name=layer,
                      init_codes=models.init_codes, amp=amp)
    collectors = {u: _UnitCollector(images_per_unit) for u in todo}
    chains_left = {u: chains_per_unit for u in todo}
    batches = [rows[b:b + batch_chains] for b in range(0, len(rows), batch_chains)]
    on_cpu = next(models.generator.parameters()).device.type == "cpu"
    workers = max(1, min(len(batches), (workers or available_cpus()) if on_cpu else 1))

    def run_batch(batch: list[tuple[int, int]]) -> list[tuple]:
        b_units, b_chains = zip(*batch, strict=True)
        samples = list(sampler.run(b_units, b_chains, pad_to=batch_chains))
        return _collect(models, samples)

    bar = tqdm(total=len(rows), unit="chain", desc=f"AM {layer}", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    started = time.perf_counter()
    with ExitStack() as stack:
        stack.callback(bar.close)
        if on_cpu:  # one intra-op thread per worker: the images do not depend on the CPUs
            stack.enter_context(torch_threads(1))
        pool = stack.enter_context(worker_pool(workers, 1 if on_cpu else torch.get_num_threads()))
        pending: deque = deque()
        stack.callback(lambda: [future.cancel() for _, future in pending])  # on errors
        for i, batch in enumerate(batches + [None] * workers):
            if batch is not None:  # in order: `workers` batches run while one is saved
                pending.append((batch, pool.submit(run_batch, batch)))
            if i >= workers and pending:
                _finish(*pending.popleft(), collectors, chains_left, bar, out, layer, side,
                        box, target, settings)
    if rows:
        seconds = time.perf_counter() - started
        log.info("%s: %d chains x %d steps in %.1f s (%.0f chain-steps/s; %d worker(s))",
                 layer, len(rows), settings.steps, seconds,
                 len(rows) * settings.steps / max(seconds, 1e-9), workers)
    missing = [u for u in units if not (out / "units" / f"{_unit_stem(layer, u)}.json").exists()]
    if missing:
        log.info("%d unit(s) left to other shards", len(missing))
        return None
    return write_manifest(out, layer, units)


def _finish(batch, future, collectors, chains_left, bar, out, layer, side, box, target,
            settings) -> None:
    """A batch's samples into their units' collectors; save the units it completes."""
    for sample, px, top, independent_top in future.result():
        collectors[sample.unit].add(sample, px, top, independent_top, sample.above)
    bar.update(len(batch))
    for u, _ in batch:
        chains_left[u] -= 1
    for u in dict.fromkeys(u for u, _ in batch):
        if chains_left[u] == 0:
            _save_unit(out, layer, u, collectors.pop(u), side, box, target, settings)


@torch.inference_mode()
def _collect(models: Models, samples: list[Sample]) -> list[tuple]:
    """(sample, pixels, top class, the independent classifier's top class) for each sample."""
    if not samples:
        return []
    images = torch.stack([s.image for s in samples])
    device = next(models.classifier.parameters()).device
    x = models.crop(images.to(device))
    top = models.classifier(x, ["fc8"])["fc8"].argmax(1).cpu().tolist()
    independent = (models.independent(x, ["fc8"])["fc8"].argmax(1).cpu().tolist()
                   if models.independent is not None else [None] * len(samples))
    pixels = models.to_pixels(images)
    return list(zip(samples, pixels, top, independent, strict=True))


def _save_unit(out: Path, layer: str, unit: int, collector: _UnitCollector, side: int, box,
               target: Target, settings: Settings) -> None:
    """A unit's files: its images (.npz), its panel (.jpg), then its figures (.json), which
    mark it done; each written atomically."""
    best = collector.best()
    pixels = np.stack([s[5] for s in best])
    acts = np.array([s[4] for s in best])
    stem = _unit_stem(layer, unit)
    with atomic_path(out / "units" / f"{stem}.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, images=pixels, activations=acts,
                            chains=np.array([s[2] for s in best]),
                            steps=np.array([s[3] for s in best]))
    cells = pixels if box is None else pixels[:, box[0]:box[2], box[1]:box[3]]
    panel = grid(cells, side, side)
    save_jpeg(panel, out / "panels" / f"{stem}.jpg", min_cell=64, cell=cells.shape[1])
    tops = np.array([s[6] for s in best])
    classes, counts = np.unique(tops, return_counts=True)
    info = {
        "panel_id": stem, "layer": layer, "unit": unit, "path": f"panels/{stem}.jpg",
        "mean_activation": float(acts.mean()), "min_activation": float(acts.min()),
        "top_class": int(classes[np.argmax(counts)]), "top_class_share": float(counts.max()
                                                                               / len(best)),
        "target_share": float((tops == unit).mean()) if target.tap == "fc8" else None,
        "n_above_threshold": int(sum(1 for s in best if not s[0])),
    }
    if best[0][7] is not None:
        independent = np.array([s[7] for s in best])
        info["independent_target_share"] = (float((independent == unit).mean())
                                            if target.tap == "fc8" else None)
    atomic_write_text(out / "units" / f"{stem}.json", json.dumps(info))


MANIFEST_COLUMNS = ["panel_id", "layer", "unit", "path", "mean_activation", "min_activation",
                    "top_class", "top_class_share", "target_share", "independent_target_share",
                    "n_above_threshold"]


def write_manifest(out: Path, layer: str, units: Sequence[int]) -> Path:
    """``manifest_<layer>.csv``: one row per unit (the study design reads it as is)."""
    path = out / f"manifest_{layer}.csv"
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, MANIFEST_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for u in units:
            info = json.loads((out / "units" / f"{_unit_stem(layer, u)}.json").read_text())
            writer.writerow({k: ("" if info.get(k) is None else info.get(k))
                             for k in MANIFEST_COLUMNS})
    _combine_manifests(out)
    return path


def _combine_manifests(out: Path) -> None:
    """``manifest.csv``: the finished layers' manifests, one after the other."""
    layers = sorted(out.glob("manifest_*.csv"))
    lines = [layers[0].read_text().splitlines()[0]] if layers else []
    for layer_file in layers:
        lines += layer_file.read_text().splitlines()[1:]
    atomic_write_text(out / "manifest.csv", "\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    from analysis.selectivity import parse_shard  # pandas: a slow import for this alone

    parser = argparse.ArgumentParser(
        prog=prog or "python -m generator.ppgn",
        description="Activation-maximization images and 10x10 panels with a PPGN sampler "
                    "(noiseless joint PPGN-h, docs/networks.md). Runs resume per unit.",
    )
    parser.add_argument("--network", required=True, help="caffenet, bvlc_alexnet, alexnet, demo")
    parser.add_argument("--weights", help="the network's weights (.caffemodel or .pth)")
    parser.add_argument("--generator", required=True,
                        help="DeePSiM fc6 generator weights (.caffemodel or .pth), or demo")
    parser.add_argument("--layer", required=True, help="conv5, fc6 or fc8")
    parser.add_argument("--units", default="all", help="e.g. 0-255, 3,7,9 or all (default)")
    parser.add_argument("--sample", metavar="K|P%",
                        help="only K (or P%%, rounded) of the units that --units selects, "
                             "drawn at random (reproducibly from --seed; fewer draw a subset)")
    parser.add_argument("--images-per-unit", type=int, default=100)
    parser.add_argument("--out", required=True, help="output folder (panels, units, manifest)")
    parser.add_argument("--batch-chains", type=int, default=64,
                        help="chains run together (several units share a batch; the images "
                             "depend on it; default 64)")
    parser.add_argument("--workers", type=int,
                        help="CPU only: batches run at once, one thread each (default: the "
                             "CPUs this process may use; the images do not depend on it)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds every chain's random numbers and --sample's draw "
                             "(default 0)")
    parser.add_argument("--steps", type=int, help="override the layer's default step count")
    parser.add_argument("--eps1", type=float)
    parser.add_argument("--eps2", type=float)
    parser.add_argument("--eps3", type=float)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--shard", default=None, help="I/N: every N-th unit from the I-th")
    parser.add_argument("--device", help="cpu, cuda ... (default: cuda if present; "
                        "cuda:LOCAL_RANK under torchrun)")
    parser.add_argument("--amp", action="store_true",
                        help="bfloat16 autocast for the networks (faster on recent GPUs)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cpus = use_available_cpus()  # loading (and training on first use) sets its own count
    try:
        shard = parse_shard(args.shard) if args.shard else (
            (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
            if "RANK" in os.environ and "WORLD_SIZE" in os.environ else (0, 1))
        device = args.device or (
            (f"cuda:{os.environ['LOCAL_RANK']}" if "LOCAL_RANK" in os.environ else "cuda")
            if torch.cuda.is_available() else "cpu")
        models = load_models(args.network, args.generator, weights=args.weights, device=device)
        target = target_for(models.classifier, args.layer)
        n_units = models.classifier.layer_shapes([target.tap])[target.tap][0]
        units = parse_units(args.units, n_units)
        record = {}
        if args.sample is not None:
            n_selected = len(units)
            k = parse_sample(args.sample, n_selected)
            units = sample_units(units, k, args.seed, args.layer)
            record["sample"] = {"k": k, "of": n_selected, "units": args.units,
                                "asked": args.sample}
            log.info("%s: %d of %d units drawn (seed %d)", args.layer, len(units),
                     n_selected, args.seed)
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers {args.workers}: expected at least 1")
        workers = args.workers or cpus
        if torch.device(device).type == "cpu":
            log.info("%d worker(s) on %d available CPU(s), one thread each", workers, cpus)
        overrides = {k: getattr(args, k) for k in ("steps", "eps1", "eps2", "eps3", "lr",
                                                    "threshold") if getattr(args, k) is not None}
        manifest = generate(models, args.layer, units, args.out,
                            images_per_unit=args.images_per_unit, batch_chains=args.batch_chains,
                            seed=args.seed, settings=settings_for(args.layer, **overrides),
                            shard=shard, amp=args.amp, progress=not args.quiet,
                            workers=workers, record=record)
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
    for key, label in (("target_share", "classified as the target by the network"),
                       ("independent_target_share", "by the independent classifier")):
        values = [float(r[key]) for r in rows if r.get(key)]
        if values:
            print(f"  images {label}: {100 * sum(values) / len(values):.1f}%")


if __name__ == "__main__":
    raise SystemExit(main())
