"""Activation-maximization runs with the PPGN sampler: a unit's images and panel on disk,
resumable per unit, and the manifests the study design reads.

    python -m generator.ppgn --network demo --generator demo --layer fc8 --units all --out am/

:func:`load_models` loads a classifier with its generator (the demo pair, or a network of
:mod:`generator.loading` with the DeePSiM generator of :mod:`generator.deepsim`) and an
independent classifier where there is one (the demo's: :func:`generator.digits.
trained_independent_network`), whose verdicts on the images are recorded beside the
network's. :func:`generate` runs the chains of :mod:`generator.sampler` for a layer's units
(as many chains a unit as it takes for its images to pass the threshold, up to a cap on
its chain-steps) and writes, per unit, its images (``units/<layer>_<unit>.npz``), its
panel (``panels/<layer>_<unit>.jpg``) and its figures (``units/<layer>_<unit>.json``,
written last: a unit with it is done); then ``manifest_<layer>.csv`` and
``manifest.csv`` (:func:`write_manifest`). ``settings_<layer>.json`` records the
settings, the seed and the SHA-256 of the weights (a folder made with other settings is
refused), and once the layer is done its pass rate and chain counts. The files and the
manifests' columns (:data:`MANIFEST_COLUMNS`, ``method`` "ppgn" in every row) are those of
every panel method (:mod:`generator.unit_files`; the others: :mod:`generator.am`).

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

from . import digits, digits_generator, unit_files
from .deepsim import crop_to_classifier, load_generator, to_pixels
from .loading import load_network
from .networks import gradient_copy
from .panels import receptive_field
from .sampler import Sample, Sampler, Settings, Target, settings_for
from .threads import available_cpus, torch_threads, use_available_cpus, worker_pool
from .unit_files import (
    MANIFEST_COLUMNS,
    add_unit_options,
    check_settings,
    layer_summary,
    recognition_lines,
    save_unit,
)

__all__ = [
    "Models",
    "load_models",
    "target_for",
    "parse_units",
    "parse_sample",
    "sample_units",
    "TILES",
    "panel_box",
    "CAP_FACTOR",
    "samples_per_chain",
    "chain_budget",
    "generate",
    "MANIFEST_COLUMNS",
    "write_manifest",
    "layer_summary",
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
    code_tap: str = "fc6"  # the classifier's tap of the generator's code (the prior term)

    @property
    def output_tap(self) -> str:
        """The classifier's logits (``fc8`` for the networks by name)."""
        return getattr(self.classifier, "output_tap", "fc8")


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
    if generator == "demo" and network != "demo":
        return _with_condition(load_models("demo", "demo", device=device), network, weights,
                               device)
    if network == "demo" or generator == "demo":
        if (network, generator) != ("demo", "demo"):
            raise ValueError("the demo network goes with the demo generator: "
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


def _with_condition(models: Models, network: str, weights: str | None,
                    device: str | torch.device) -> Models:
    """``models`` (a generator with its own encoder) conditioned on another network: its
    layers' units are the targets, the prior term still reads the code from the
    generator's encoder (:class:`generator.condition.ConditionWithEncoder`). The
    independent classifier stays the demo's, where there is one."""
    from .condition import CODE_TAP, ConditionWithEncoder

    condition, _, net_sum = load_network(network, weights, device=device)
    classifier = ConditionWithEncoder(gradient_copy(condition), models.classifier,
                                      models.code_tap)
    ids = {**models.ids, "network": network, "network_sha256": net_sum,
           "encoder": models.ids.get("network"),
           "encoder_sha256": models.ids.get("network_sha256")}
    return Models(classifier, models.generator, models.crop, models.code_dim,
                  models.to_pixels, ids, models.independent, models.init_codes, CODE_TAP)


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


#: The default cap on a unit's chain-steps (``max_chain_steps``), as a multiple of the
#: chain-steps it takes when every sample passes: 10 chains of 1,000 steps for conv5.
CAP_FACTOR = 10

#: How a panel's samples are chosen (recorded in ``settings_<layer>.json``).
SELECTION = ("the first images_per_unit samples that pass (p_k > threshold; all without "
             "one), in order of chain and step; chains run until they are reached or "
             "max_chain_steps is spent")


def samples_per_chain(settings: Settings) -> int:
    """Samples (passing or not) a chain yields: steps 0, k, 2k ... steps; else its last."""
    return settings.steps // settings.keep_every + 1 if settings.keep_every else 1


def chain_budget(settings: Settings, images_per_unit: int,
                 max_chain_steps: int | None = None) -> tuple[int, int, int]:
    """(chains a unit takes when every sample passes, max_chain_steps, chains it allows).

    The default cap is :data:`CAP_FACTOR` times the chain-steps of the first."""
    min_chains = -(-images_per_unit // samples_per_chain(settings))
    steps = max(1, settings.steps)
    if max_chain_steps is None:
        max_chain_steps = CAP_FACTOR * min_chains * steps
    if max_chain_steps < steps:
        raise ValueError(f"--max-chain-steps {max_chain_steps}: a chain takes {steps} steps")
    return min_chains, max_chain_steps, max_chain_steps // steps


class _UnitRun:
    """A unit's chains as their results come in, taken in chain order: the first
    ``target`` samples that pass, and the counts of the chains taken."""

    def __init__(self, target: int, max_chains: int, per_chain: int):
        self.target, self.max_chains, self.per_chain = target, max_chains, per_chain
        self.kept: list[tuple] = []  # (sample, pixels, top, independent top), in order
        self.passed = 0  # samples of the chains taken that pass (may exceed target)
        self.candidates = 0  # samples of the chains taken
        self.chains = 0  # chains taken: 0 .. chains - 1
        self.scheduled = 0  # chains handed to batches: 0 .. scheduled - 1
        self._ahead: dict[int, tuple[int, list[tuple]]] = {}  # results ahead of their turn

    @property
    def done(self) -> bool:
        return len(self.kept) >= self.target or self.chains >= self.max_chains

    def add(self, chain: int, candidates: int, passed: list[tuple]) -> bool:
        """A chain's results; False when they are not needed (the unit was done)."""
        if self.done:
            return False
        self._ahead[chain] = (candidates, passed)
        while not self.done and self.chains in self._ahead:
            n, ok = self._ahead.pop(self.chains)
            self.chains += 1
            self.candidates += n
            self.passed += len(ok)
            self.kept += ok[:self.target - len(self.kept)]
        return True

    def wanted(self) -> int:
        """Chains to have handed out: those taken, and as many more as the samples still
        missing need at the unit's pass rate so far (every sample passing before its
        first chain is in; all it may run when none has passed)."""
        rate = self.passed / self.chains if self.chains else self.per_chain
        missing = self.target - len(self.kept)
        more = self.max_chains if rate == 0 else math.ceil(missing / rate)
        return min(self.max_chains, self.chains + more)


class _Schedule:
    """Which chains run next: the units in order, each given chains until its samples
    are in (:class:`_UnitRun`). A chain's images do not depend on its batch, so the
    units' panels do not depend on how the chains were batched."""

    def __init__(self, units: Sequence[int], target: int, max_chains: int, per_chain: int,
                 speculate: bool):
        self.queue = deque(units)
        self.active: dict[int, _UnitRun] = {}  # started, not saved; in order
        self.args = (target, max_chains, per_chain)
        self.speculate = speculate
        self.chains_run = 0
        self.chains_unused = 0

    def next_batch(self, size: int) -> list[tuple[int, int]]:
        rows: list[tuple[int, int]] = []

        def give(unit: int, run: _UnitRun, k: int) -> None:
            k = max(0, min(k, size - len(rows), run.max_chains - run.scheduled))
            rows.extend((unit, run.scheduled + i) for i in range(k))
            run.scheduled += k

        for unit, run in self.active.items():
            if len(rows) == size:
                break
            if not run.done:
                give(unit, run, run.wanted() - run.scheduled)
        while self.queue and len(rows) < size:
            unit = self.queue.popleft()
            run = self.active[unit] = _UnitRun(*self.args)
            give(unit, run, run.wanted())
        # a batch runs at its full size anyway (padded): with a threshold, its spare rows
        # run the next chains of units still going, taken if those units need them
        while self.speculate and rows and len(rows) < size:
            spare = [(u, r) for u, r in self.active.items()
                     if not r.done and r.scheduled < r.max_chains]
            if not spare:
                break
            for unit, run in spare:
                give(unit, run, 1)
        self.chains_run += len(rows)
        return rows


#: What a panel's tiles show (``--tile``): see :func:`panel_box`.
TILES = ("crop", "full")


def panel_box(models: Models, target: Target,
              tile: str = "crop") -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of G's image that a panel's tile shows; None: all of it.

    ``tile="crop"``: what the target sees: for a conv unit its receptive field, for an
    fc unit the classifier's input (``Models.crop`` of G's image: CaffeNet's centre 227
    of DeePSiM's 256, as PPGN saves its images). ``"full"``: G's whole image.
    """
    if tile not in TILES:
        raise ValueError(f"tile must be one of {', '.join(TILES)}, not {tile!r}")
    if tile == "full":
        return None
    device = next(models.generator.parameters()).device
    with torch.no_grad():
        shape = models.generator(torch.zeros(1, models.code_dim, device=device)).shape
    if len(shape) != 4:  # not images
        return None
    height, width = shape[-2:]
    where = torch.arange(height * width, dtype=torch.float64).reshape(1, 1, height, width)
    seen = models.crop(where.expand(*shape[:2], height, width))  # the crop of an index map
    dy, dx = divmod(int(seen[0, 0, 0, 0]), width)
    top, left, bottom, right = (0, 0, *seen.shape[-2:])
    if target.location is not None:
        top, left, bottom, right = receptive_field(models.classifier, target.tap,
                                                   target.location)
    return top + dy, left + dx, bottom + dy, right + dx


def _unit_stem(layer: str, unit: int) -> str:
    return f"{layer}_{unit:04d}"


def generate(models: Models, layer: str, units: Sequence[int], out_dir: str | Path, *,
             images_per_unit: int = 100, batch_chains: int = 64, seed: int = 0,
             settings: Settings | None = None, shard: tuple[int, int] = (0, 1),
             amp: bool = False, progress: bool = True, workers: int | None = None,
             record: dict | None = None, max_chain_steps: int | None = None,
             tile: str = "crop") -> Path | None:
    """AM images and a panel for every unit; returns the manifest once all units are done.

    A unit's panel holds the first ``images_per_unit`` samples that pass the settings'
    threshold, in order of chain and step; its chains run until they are in or the
    unit's chain-steps reach ``max_chain_steps`` (default: :func:`chain_budget`). A unit
    that falls short keeps what passed: its figures say so (``short``, ``n_images``,
    ``pass_rate``), its panel leaves the cells it lacks blank, and the run logs it.
    ``tile``: what a panel's tiles show (:func:`panel_box`).

    Chains run in batches of ``batch_chains`` rows (rows no unit needs run throwaway or
    spare chains: a chain's images depend on the batch size, not on its neighbours). On
    the CPU, ``workers`` batches run at once, each in its own thread with one intra-op
    thread (default: one per available CPU, :func:`common.cpus.available_cpus`); the
    images are the same for any number of workers. On a GPU one batch runs at a time
    (``workers`` 1). ``record``: more entries for ``settings_<layer>.json`` (e.g. how units
    were drawn).
    """
    from tqdm.auto import tqdm  # only where a run shows progress: a slow import

    out = Path(out_dir)
    settings = settings or settings_for(layer)
    target = target_for(models.classifier, layer)
    side = math.isqrt(images_per_unit)
    if side * side != images_per_unit:
        raise ValueError(f"images per unit must be a square (100 = 10x10), got {images_per_unit}")
    min_chains, max_chain_steps, max_chains = chain_budget(settings, images_per_unit,
                                                           max_chain_steps)
    box = panel_box(models, target, tile)
    record = {"layer": layer, "target": asdict(target), "settings": asdict(settings),
              "seed": seed, "amp": amp,
              "init": "real codes" if models.init_codes is not None else "N(0,1)",
              "images_per_unit": images_per_unit, "samples_per_chain":
              samples_per_chain(settings), "max_chain_steps": max_chain_steps,
              "max_chains_per_unit": max_chains, "selection": SELECTION, "tile": tile,
              "tile_box": box, **models.ids, **(record or {})}
    (out / "units").mkdir(parents=True, exist_ok=True)
    (out / "panels").mkdir(parents=True, exist_ok=True)
    check_settings(out, layer, record)

    mine = [u for i, u in enumerate(units) if i % shard[1] == shard[0]]
    todo = [u for u in mine if not (out / "units" / f"{_unit_stem(layer, u)}.json").exists()]
    sampler = Sampler(models.generator, models.classifier, target, settings=settings,
                      crop=models.crop, code_dim=models.code_dim, seed=seed, layer_name=layer,
                      init_codes=models.init_codes, amp=amp, code_tap=models.code_tap)
    logits = is_logits(models.classifier, target)
    schedule = _Schedule(todo, images_per_unit, max_chains, samples_per_chain(settings),
                         speculate=settings.threshold is not None)
    on_cpu = next(models.generator.parameters()).device.type == "cpu"
    batches = -(-len(todo) * min_chains // batch_chains)  # at least; more with a threshold
    workers = (workers or available_cpus()) if on_cpu else 1
    workers = max(1, workers if settings.threshold is not None else min(workers, batches))
    blank = _pixel_shape(models)

    def run_batch(rows: list[tuple[int, int]]) -> list[tuple]:
        b_units, b_chains = zip(*rows, strict=True)
        counts = dict.fromkeys(rows, 0)
        passed: dict[tuple[int, int], list[tuple]] = {row: [] for row in rows}
        waiting: list[Sample] = []
        for sample in sampler.run(b_units, b_chains, pad_to=batch_chains):
            counts[sample.unit, sample.chain] += 1
            if sample.passed:
                waiting.append(sample)
            if len(waiting) >= batch_chains:  # pixels now: the float images go
                for item in _collect(models, waiting):
                    passed[item[0].unit, item[0].chain].append(item)
                waiting = []
        for item in _collect(models, waiting):
            passed[item[0].unit, item[0].chain].append(item)
        return [(row, counts[row], passed[row]) for row in rows]

    bar = tqdm(total=len(todo), unit="unit", desc=f"AM {layer}", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    started = time.perf_counter()
    short: list[tuple[int, _UnitRun]] = []
    with ExitStack() as stack:
        stack.callback(bar.close)
        if on_cpu:  # one intra-op thread per worker: the images do not depend on the CPUs
            stack.enter_context(torch_threads(1))
        pool = stack.enter_context(worker_pool(workers, 1 if on_cpu else torch.get_num_threads()))
        pending: deque = deque()
        stack.callback(lambda: [future.cancel() for future in pending])  # on errors
        while True:
            while len(pending) <= workers:  # one batch more than workers: none waits on saving
                rows = schedule.next_batch(batch_chains)
                if not rows:
                    break
                pending.append(pool.submit(run_batch, rows))
            if not pending:
                break
            for (unit, chain), candidates, passed in pending.popleft().result():
                run = schedule.active.get(unit)
                if run is None or not run.add(chain, candidates, passed):
                    schedule.chains_unused += 1
                elif run.done:
                    _save_unit(out, layer, unit, run, side, box, target, settings, blank,
                               logits)
                    del schedule.active[unit]
                    bar.update(1)
                    if len(run.kept) < images_per_unit:
                        short.append((unit, run))
    if todo:
        seconds = time.perf_counter() - started
        chain_steps = schedule.chains_run * settings.steps
        log.info("%s: %d units, %d chains x %d steps in %.1f s (%.0f chain-steps/s; %d "
                 "worker(s)), %d of them spare chains not needed", layer, len(todo),
                 schedule.chains_run, settings.steps, seconds,
                 chain_steps / max(seconds, 1e-9), workers, schedule.chains_unused)
    for unit, run in short:
        log.warning("%s unit %d: %d of %d images pass p > %s within %d chain-steps "
                    "(pass rate %.1f%%): its panel is short", layer, unit, len(run.kept),
                    images_per_unit, settings.threshold, run.chains * settings.steps,
                    100 * run.passed / max(1, run.candidates))
    missing = [u for u in units if not (out / "units" / f"{_unit_stem(layer, u)}.json").exists()]
    if missing:
        log.info("%d unit(s) left to other shards", len(missing))
        return None
    return write_manifest(out, layer, units)


def _pixel_shape(models: Models) -> tuple[int, ...]:
    """The shape of one image's pixels (for the blank cells of a unit with none)."""
    device = next(models.generator.parameters()).device
    with torch.no_grad():
        image = models.generator(torch.zeros(1, models.code_dim, device=device))
    return tuple(models.to_pixels(image.float()).shape[1:])


@torch.inference_mode()
def is_logits(classifier: nn.Module, target: Target) -> bool:
    """Whether ``target`` is the classifier's logits: its output tap (``fc8`` for the
    networks by name), or an fc layer with as many units as the output (a referenced
    network's last ``nn.Linear``, e.g. ResNet's ``fc``). Only then do its images have a
    share classified as the target unit's class."""
    output = getattr(classifier, "output_tap", "fc8")
    if target.tap == output:
        return True
    if target.location is not None:
        return False
    shapes = classifier.layer_shapes([target.tap, output])
    return shapes[target.tap] == shapes[output]


def _collect(models: Models, samples: list[Sample]) -> list[tuple]:
    """(sample, pixels, top class, the independent classifier's top class) for each sample."""
    if not samples:
        return []
    images = torch.stack([s.image for s in samples])
    device = next(models.classifier.parameters()).device
    x = models.crop(images.to(device))
    output = models.output_tap
    top = models.classifier(x, [output])[output].argmax(1).cpu().tolist()
    independent = (models.independent(x, ["fc8"])["fc8"].argmax(1).cpu().tolist()
                   if models.independent is not None else [None] * len(samples))
    pixels = models.to_pixels(images)
    return list(zip(samples, pixels, top, independent, strict=True))


def _save_unit(out: Path, layer: str, unit: int, run: _UnitRun, side: int, box,
               target: Target, settings: Settings, blank: tuple[int, ...],
               logits: bool | None = None) -> None:
    """A unit's files: its images (.npz), its panel (.jpg), then its figures (.json), which
    mark it done; each written atomically (:func:`generator.unit_files.save_unit`).
    ``logits``: whether the target is the network's logits (:func:`is_logits`; None:
    whether it is ``fc8``)."""
    if logits is None:
        logits = target.tap == "fc8"
    kept = run.kept
    pixels = np.stack([s[1] for s in kept]) if kept else np.zeros((0, *blank), np.uint8)
    acts = np.array([s[0].activation for s in kept], dtype=np.float64)
    probs = np.array([s[0].prob for s in kept], dtype=np.float64)
    stem = _unit_stem(layer, unit)
    tops = np.array([s[2] for s in kept])
    info = {
        "panel_id": stem, "layer": layer, "unit": unit, "path": f"panels/{stem}.jpg",
        "n_images": len(kept), "short": len(kept) < side * side,
        "mean_activation": float(acts.mean()) if kept else None,
        "min_activation": float(acts.min()) if kept else None,
        "min_prob": float(probs.min()) if kept else None,
        "top_class": None, "top_class_share": None,
        "target_share": (float((tops == unit).mean()) if logits and kept
                         else None),
        "threshold": settings.threshold, "pass_rate": run.passed / max(1, run.candidates),
        "n_passed": run.passed, "n_candidates": run.candidates, "chains": run.chains,
        "chain_steps": run.chains * settings.steps, "method": "ppgn",
    }
    if kept:
        classes, counts = np.unique(tops, return_counts=True)
        info["top_class"] = int(classes[np.argmax(counts)])
        info["top_class_share"] = float(counts.max() / len(kept))
        if kept[0][3] is not None:
            independent = np.array([s[3] for s in kept])
            info["independent_target_share"] = (float((independent == unit).mean())
                                                if logits else None)
    arrays = {"activations": acts, "probs": probs,
              "chains": np.array([s[0].chain for s in kept], dtype=np.int64),
              "steps": np.array([s[0].step for s in kept], dtype=np.int64)}
    save_unit(out, stem, pixels, arrays, info, side=side, box=box)


def write_manifest(out: Path, layer: str, units: Sequence[int]) -> Path:
    """``manifest_<layer>.csv``: one row per unit (the study design reads it as is); the
    layer's figures (pass rate, chains, short units) into ``settings_<layer>.json``
    (:func:`generator.unit_files.write_manifest`)."""
    return unit_files.write_manifest(Path(out), layer, [_unit_stem(layer, u) for u in units])


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    from analysis.selectivity import parse_shard  # pandas: a slow import for this alone

    parser = argparse.ArgumentParser(
        prog=prog or "python -m generator.ppgn",
        description="Activation-maximization images and 10x10 panels with a PPGN sampler "
                    "(noiseless joint PPGN-h, docs/networks.md). Runs resume per unit.",
    )
    parser.add_argument("--network", required=True,
                        help="caffenet, bvlc_alexnet, alexnet, demo, or a reference "
                             "(torchvision:<name>, module.path:callable, file.py:callable; "
                             "docs/networks.md): with --generator demo, the network whose "
                             "units are the targets, the prior still through the demo "
                             "network's fc6 (generator/condition.py)")
    parser.add_argument("--weights", help="the network's weights (.caffemodel or .pth)")
    parser.add_argument("--generator", required=True,
                        help="DeePSiM fc6 generator weights (.caffemodel or .pth), or demo")
    add_unit_options(parser, "conv5, fc6 or fc8")
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
    parser.add_argument("--threshold", type=_threshold, metavar="P|none",
                        help="a sample passes when the target's softmax probability over "
                             "the layer's units (at its location) exceeds P; none: every "
                             "sample passes (default: 0.98 for conv layers, none for fc)")
    parser.add_argument("--max-chain-steps", type=int, metavar="N",
                        help="cap on a unit's chain-steps: chains run until images-per-unit "
                             "samples pass or this is spent; units that fall short are "
                             f"reported (default: {CAP_FACTOR}x what a unit takes when "
                             "every sample passes: 10,000 for conv5, 200,000 for fc)")
    parser.add_argument("--tile", choices=TILES, default="crop",
                        help="what a panel's tiles show: crop (default), what the classifier "
                             "saw: an fc unit's input crop (CaffeNet: the centre 227 of the "
                             "generator's 256), a conv unit's receptive field; full: the "
                             "generator's whole image")
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
        if overrides.get("threshold") == "none":
            overrides["threshold"] = None
        manifest = generate(models, args.layer, units, args.out,
                            images_per_unit=args.images_per_unit, batch_chains=args.batch_chains,
                            seed=args.seed, settings=settings_for(args.layer, **overrides),
                            shard=shard, amp=args.amp, progress=not args.quiet,
                            workers=workers, record=record,
                            max_chain_steps=args.max_chain_steps, tile=args.tile)
    except (ValueError, KeyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if manifest is None:
        print("this shard is done; the manifest is written when every unit is")
        return 0
    _summarise(manifest)
    return 0


def _threshold(text: str) -> float | str:
    if text.lower() == "none":
        return "none"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability or none, got {text!r}") \
            from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text}")
    return value


def _summarise(manifest: Path) -> None:
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    print(f"wrote {manifest} ({len(rows)} units)")
    if rows:
        steps = [int(r["chain_steps"]) for r in rows]
        chains = [int(r["chains"]) for r in rows]
        passed = sum(int(r["n_passed"]) for r in rows)
        candidates = sum(int(r["n_candidates"]) for r in rows)
        threshold = rows[0]["threshold"]
        print(f"  samples passing p > {threshold}: {passed:,} of {candidates:,} "
              f"({100 * passed / max(1, candidates):.1f}%); chains per unit "
              f"{min(chains)}-{max(chains)}, chain-steps per unit {min(steps):,}-"
              f"{max(steps):,} (mean {sum(steps) / len(steps):,.0f})" if threshold else
              f"  chains per unit {min(chains)}-{max(chains)}, chain-steps per unit "
              f"mean {sum(steps) / len(steps):,.0f} (no threshold: every sample kept)")
        short = [r for r in rows if r["short"] == "True"]
        if short:
            print(f"  {len(short)} unit(s) short of their images (panels with blank cells): "
                  + ", ".join(f"{r['unit']} ({r['n_images']}, pass rate "
                              f"{100 * float(r['pass_rate']):.1f}%)" for r in short[:20])
                  + (" ..." if len(short) > 20 else ""))
    for line in recognition_lines(rows):
        print(line)


if __name__ == "__main__":
    raise SystemExit(main())
