"""Activation maximization with a Plug-and-Play Generative Network (noiseless joint PPGN-h).

The update of docs/networks.md, for a batch of chains (one row each)::

    d_h = eps1 * (E(G(h)) - h)               # prior: the code of G's image, back towards h
        + eps2 * (1 - p_k) * d a_k / d h     # condition: the target unit k, softmax-weighted
        + N(0, eps3)                         # noise
    h  += lr / mean|d_h| * d_h;   h = clip(h, 0, h_max)

G is the generator, E the classifier up to its code layer (fc6, post-ReLU), a_k
the target unit (fc8 logit, pre-ReLU fc6, or pre-ReLU conv5 at one location)
and p_k its softmax over the layer's units at that location.

The terms are small named callables (:func:`prior`, :func:`condition`,
:func:`noise`), summed by :func:`ppgn_update`. :class:`Sampler` runs chains and
yields samples; it neither saves nor displays (:func:`generate` and the CLI
below it do). Everything per chain is per row: step
normalisation, softmax, threshold, resets and random numbers, drawn from a
generator seeded by (seed, layer, unit, chain); so a unit's images do not
depend on which other units share its batch.

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
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "Settings",
    "settings_for",
    "Target",
    "Batch",
    "prior",
    "condition",
    "noise",
    "ppgn_update",
    "chain_seed",
    "Sampler",
    "Sample",
    "Models",
    "load_models",
    "target_for",
    "parse_sample",
    "sample_units",
    "generate",
    "write_manifest",
    "main",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """Sampler settings (defaults: docs/networks.md, fc8)."""

    steps: int = 200
    eps1: float = 1e-5
    eps2: float = 1.0
    eps3: float = 1e-17
    lr: float = 1.0
    h_max: float = 30.0
    h_init: float = 1.0  # h0 = h_init * |N(0, 1)|, clipped to [0, h_max]
    reset_every: int | None = None  # re-draw h and eps1 every so many steps (conv5: 100)
    eps1_range: tuple[float, float] | None = None  # eps1 ~ U(lo, hi) at each draw (conv5)
    keep_every: int | None = None  # keep a sample every so many steps (conv5: 10); else the last
    threshold: float = 0.0  # kept samples must reach this target activation (with keep_every)


def settings_for(layer: str, **overrides) -> Settings:
    """The paper's schedule for ``layer``: conv layers 1,000 steps with resets, else 200."""
    if layer.startswith("conv"):
        base = Settings(steps=1000, reset_every=100, eps1_range=(1e-6, 1e-2), keep_every=10)
    else:
        base = Settings()
    return replace(base, **overrides)


@dataclass(frozen=True)
class Target:
    """What the chains maximise: a tap, and a spatial location for conv taps."""

    tap: str  # e.g. "fc8", "fc6:pre", "conv5:pre"
    location: tuple[int, int] | None = None


def chain_seed(seed: int, layer: str, unit: int, chain: int) -> int:
    """A 63-bit seed for one chain, independent of batching."""
    digest = hashlib.sha256(f"{seed}/{layer}/{unit}/{chain}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


#: Most float32 numbers a batch draws ahead for its noise term (16 MiB).
NOISE_BUFFER = 1 << 22


@dataclass
class Batch:
    """The state of a batch of chains: one row per chain."""

    h: torch.Tensor  # (B, D) codes
    units: torch.Tensor  # (B,) target unit of each chain
    eps1: torch.Tensor  # (B,) prior weight of each chain
    rngs: list[torch.Generator]  # one per chain (CPU)
    steps_ahead: int = 1  # steps of noise each chain may draw at once (until its next reset)
    _normals: torch.Tensor | None = field(default=None, repr=False)  # (B, k, D) drawn ahead

    @property
    def size(self) -> int:
        return len(self.units)

    def plan_noise(self, steps: int) -> None:
        """The next ``steps`` steps draw only noise from the chains' generators (no reset
        in between): they may be drawn at once. Drops what was drawn ahead."""
        self.steps_ahead, self._normals = max(1, int(steps)), None

    def standard_normal(self) -> torch.Tensor:
        """(B, D) N(0, 1) draws for one step, each row from its chain's generator.

        Drawn per chain for up to :attr:`steps_ahead` steps at once (one call instead
        of one per step): a generator's stream is the same as one draw per step when D
        is a multiple of 16 (torch's vectorised normal sampler works in blocks of 16).
        """
        if self._normals is None or len(self._normals) == 0:
            d = self.h.shape[1]
            k = max(1, min(self.steps_ahead, NOISE_BUFFER // max(1, self.size * d)))
            if d % 16:  # draws of other sizes split the stream otherwise: one step at a time
                k = 1
            draws = torch.stack([torch.randn(k, d, generator=g) for g in self.rngs], 1)
            self._normals = draws.to(self.h.device, self.h.dtype)  # (k, B, D)
            self.steps_ahead = max(1, self.steps_ahead - k)
        out, self._normals = self._normals[0], self._normals[1:]
        return out


@dataclass
class Forward:
    """One pass through G and the classifier, for the terms to read."""

    image: torch.Tensor  # G(h), (B, C, H, W)
    code: torch.Tensor  # E(G(h)), detached, (B, D)
    activation: torch.Tensor  # a_k per row, detached, (B,)
    grad: torch.Tensor  # (1 - p_k) * d a_k / d h, (B, D)


# -- the terms ---------------------------------------------------------------------------

Term = Callable[[Batch, Forward], torch.Tensor]


def prior(batch: Batch, fwd: Forward) -> torch.Tensor:
    """eps1 * (E(G(h)) - h): the reconstruction prior of noiseless joint PPGN-h."""
    return batch.eps1[:, None] * (fwd.code - batch.h)


def condition(eps2: float) -> Term:
    """eps2 * (1 - p_k) * d a_k / d h."""

    def term(batch: Batch, fwd: Forward) -> torch.Tensor:
        return eps2 * fwd.grad

    return term


def noise(eps3: float) -> Term:
    """N(0, eps3) per chain, from each chain's own generator (nothing when eps3 is 0)."""

    def term(batch: Batch, fwd: Forward) -> torch.Tensor:
        if eps3 == 0:
            return torch.zeros_like(batch.h)
        return eps3 * batch.standard_normal()

    return term


def ppgn_update(batch: Batch, fwd: Forward, terms: Sequence[Term], lr: float,
                h_max: float) -> torch.Tensor:
    """The new h: the terms' sum, normalised per row by its mean magnitude, then clipped."""
    d_h = sum(term(batch, fwd) for term in terms)
    scale = d_h.abs().mean(dim=1, keepdim=True)
    step = torch.where(scale > 0, lr / scale.clamp_min(torch.finfo(d_h.dtype).tiny) * d_h,
                       torch.zeros_like(d_h))
    return (batch.h + step).clamp(0.0, h_max)


# -- the sampler --------------------------------------------------------------------------


@dataclass
class Sample:
    unit: int
    chain: int
    step: int
    activation: float
    image: torch.Tensor  # G(h) of that step, (C, H, W), on the CPU
    above: bool = True  # the activation reached the threshold (kept samples)


class Sampler:
    """Runs PPGN chains for target units of one layer.

    ``generator``: h -> image; ``classifier``: a TappedNet; ``crop``: image ->
    classifier input (e.g. the centre 227 of DeePSiM's 256); ``code_tap``: the
    layer h lives in (post-ReLU fc6).
    """

    def __init__(self, generator: nn.Module, classifier: nn.Module, target: Target, *,
                 settings: Settings, crop: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 code_tap: str = "fc6", code_dim: int | None = None, seed: int = 0,
                 layer_name: str | None = None, init_codes: torch.Tensor | None = None,
                 amp: bool = False):
        self.generator = generator
        self.classifier = classifier
        self.target = target
        self.settings = settings
        self.crop = crop or (lambda x: x)
        self.code_tap = code_tap
        self.seed = seed
        self.layer_name = layer_name or target.tap
        self.code_dim = code_dim
        self.init_codes = None if init_codes is None else init_codes.detach().cpu()
        self.amp = amp  # bfloat16 autocast for G and the classifier (h and updates stay fp32)
        s = settings
        self.terms: list[Term] = [prior, condition(s.eps2), noise(s.eps3)]

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def _draw_h(self, rngs: list[torch.Generator]) -> torch.Tensor:
        """Starting codes: each element from a random real code when ``init_codes`` (N, D)
        are given (a code of no real image, in the range of real ones), else
        ``h_init * |N(0, 1)|``; clipped to [0, h_max]."""
        bank = self.init_codes
        if bank is not None:
            columns = torch.arange(bank.shape[1])
            h = torch.stack([bank[torch.randint(0, len(bank), (bank.shape[1],), generator=g),
                                  columns] for g in rngs])
        else:
            h = self.settings.h_init * torch.stack(
                [torch.randn(self.code_dim, generator=g).abs() for g in rngs])
        return h.clamp(0.0, self.settings.h_max).to(self.device)

    def _draw_eps1(self, rngs: list[torch.Generator]) -> torch.Tensor:
        s = self.settings
        if s.eps1_range is None:
            return torch.full((len(rngs),), s.eps1, device=self.device)
        lo, hi = s.eps1_range
        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in rngs])
        return (lo + (hi - lo) * u).float().to(self.device)

    def start(self, units: Sequence[int], chains: Sequence[int]) -> Batch:
        rngs = [torch.Generator().manual_seed(chain_seed(self.seed, self.layer_name, u, c))
                for u, c in zip(units, chains, strict=True)]
        batch = Batch(self._draw_h(rngs), torch.as_tensor(list(units), device=self.device),
                      self._draw_eps1(rngs), rngs)
        batch.plan_noise(self._steps_to_reset(0))
        return batch

    def _steps_to_reset(self, step: int) -> int:
        """Steps after ``step`` until the next reset of h and eps1 (or the end)."""
        s = self.settings
        end = s.steps if not s.reset_every else min(s.steps, (step // s.reset_every + 1)
                                                    * s.reset_every)
        return max(1, end - step)

    def forward(self, batch: Batch) -> Forward:
        h = batch.h.detach().requires_grad_(True)
        with torch.enable_grad(), self._autocast():
            image = self.generator(h)
            outs = self.classifier(self.crop(image), [self.target.tap, self.code_tap])
            layer = outs[self.target.tap]
            if self.target.location is not None:
                y, x = self.target.location
                layer = layer[:, :, y, x]
            rows = torch.arange(batch.size, device=layer.device)
            act = layer[rows, batch.units]
            p_k = torch.softmax(layer.detach().float(), dim=1)[rows, batch.units]
            (grad,) = torch.autograd.grad((act * (1.0 - p_k)).sum(), h)
        return Forward(image.detach().float(), outs[self.code_tap].detach().flatten(1).float(),
                       act.detach().float(), grad.float())

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def run(self, units: Sequence[int], chains: Sequence[int],
            pad_to: int | None = None) -> Iterator[Sample]:
        """Yield the samples of each chain (row) as the chains advance.

        ``pad_to``: run batches of exactly this many rows, filling with throwaway
        chains. Matrix products and reductions pick their kernels by shape, so
        a fixed shape makes each chain's arithmetic independent of its batch
        (bit for bit, as the tests check).
        """
        if self.code_dim is None:
            raise ValueError("code_dim is needed to draw h")
        units, chains = list(units), list(chains)
        real = len(units)
        if pad_to is not None and real < pad_to:
            units += [units[0]] * (pad_to - real)
            chains += [-1 - k for k in range(pad_to - real)]
        yield from (x for x in self._run(units, chains) if x.chain >= 0)

    def _run(self, units: list[int], chains: list[int]) -> Iterator[Sample]:
        s = self.settings
        batch = self.start(units, chains)
        for step in range(1, s.steps + 1):
            fwd = self.forward(batch)
            batch.h = ppgn_update(batch, fwd, self.terms, s.lr, s.h_max)
            if s.keep_every and step % s.keep_every == 0:
                # every row's sample, marked: consumers prefer those above the threshold
                image, act = self.forward_image(batch)
                for row in range(batch.size):
                    yield Sample(int(units[row]), int(chains[row]), step, float(act[row]),
                                 image[row].cpu(), bool(act[row] >= s.threshold))
            if s.reset_every and step % s.reset_every == 0 and step < s.steps:
                batch.h = self._draw_h(batch.rngs)
                batch.eps1 = self._draw_eps1(batch.rngs)
                batch.plan_noise(self._steps_to_reset(step))
        if not s.keep_every:
            image, act = self.forward_image(batch)
            for row in range(batch.size):
                yield Sample(int(units[row]), int(chains[row]), s.steps, float(act[row]),
                             image[row].cpu())

    @torch.inference_mode()
    def forward_image(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """G(h) and the target activation for the current h, without gradients."""
        with self._autocast():
            image = self.generator(batch.h).float()
            layer = self.classifier(self.crop(image), [self.target.tap])[self.target.tap].float()
        if self.target.location is not None:
            y, x = self.target.location
            layer = layer[:, :, y, x]
        rows = torch.arange(batch.size, device=layer.device)
        return image, layer[rows, batch.units]


# -- runs: models, units in batches, files, resume ------------------------------------------

# The sampler above never touches files; what follows runs it for the CLI.


@dataclass
class Models:
    """A classifier with its generator, and how to show the generator's images."""

    classifier: nn.Module
    generator: nn.Module
    crop: Callable[[torch.Tensor], torch.Tensor]
    code_dim: int
    to_pixels: Callable[[torch.Tensor], np.ndarray]  # (B, C, H, W) -> uint8 (B, H, W, C)
    ids: dict = field(default_factory=dict)  # names and checksums, for the record
    second: nn.Module | None = None  # an independent classifier (recognisability)
    init_codes: torch.Tensor | None = None  # real codes to draw starting points from


def _for_sampling(generator: nn.Module, classifier: nn.Module,
                  device: str | torch.device) -> tuple[nn.Module, nn.Module]:
    """The generator and classifier as the sampler wants them: frozen, on ``device``,
    channels-last, the classifier a :func:`~generator.networks.gradient_copy`."""
    from .networks import gradient_copy

    generator = generator.to(device).eval()
    for p in generator.parameters():
        p.requires_grad_(False)
    return (generator.to(memory_format=torch.channels_last),
            gradient_copy(classifier.to(device)))


def load_models(network: str, generator: str, *, weights: str | None = None,
                device: str | torch.device = "cpu") -> Models:
    """``demo``/``demo`` is the embedded default; otherwise a network and a DeePSiM file.

    The classifier and generator are prepared for the sampler (:func:`_for_sampling`):
    the same functions, faster gradients to the input.
    """
    from .networks import load_network

    if network == "demo" or generator == "demo":
        if (network, generator) != ("demo", "demo"):
            raise ValueError("the demo generator goes with the demo network: "
                             "--network demo --generator demo")
        from .demo import load_digits_tensors, to_unit_range, trained_demo_network_b
        from .demo_generator import trained_demo_generator

        classifier, _, net_sum = load_network("demo", device=device)
        gen, gen_sum = trained_demo_generator(network=(classifier, net_sum))
        second, second_sum = trained_demo_network_b()

        def to_pixels(x: torch.Tensor) -> np.ndarray:
            return (to_unit_range(x).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu()\
                .numpy()

        code_dim = classifier.layer_shapes(["fc6"])["fc6"][0]
        train, _ = load_digits_tensors("train")
        with torch.no_grad():
            codes = classifier(train.to(device), ["fc6"])["fc6"]
        gen, classifier = _for_sampling(gen, classifier, device)
        return Models(classifier, gen, lambda x: x, code_dim, to_pixels,
                      {"network": "demo", "network_sha256": net_sum, "generator": "demo",
                       "generator_sha256": gen_sum, "second_sha256": second_sum},
                      second.to(device).eval().to(memory_format=torch.channels_last), codes)
    from .deepsim import crop_to_classifier, load_generator, to_pixels

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

    def add(self, sample: Sample, pixels: np.ndarray, top: int, second: int | None,
            above: bool) -> None:
        self.samples.append((not above, -sample.activation, sample.chain, sample.step,
                             sample.activation, pixels, top, second))
        if len(self.samples) > 2 * self.keep:
            self.samples.sort(key=lambda s: s[:4])
            del self.samples[self.keep:]

    def best(self) -> list[tuple]:
        return sorted(self.samples, key=lambda s: s[:4])[:self.keep]


def panel_box(models: Models, target: Target) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of G's image that a conv target sees, or None for fc.

    The receptive field is in the classifier's input, the centre crop of G's image.
    """
    from .panels import receptive_field

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
    from tqdm.auto import tqdm

    from .threads import available_cpus, torch_threads, worker_pool

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
        settings_file.write_text(json.dumps(record, indent=2))

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
    from .panels import grid, save_jpeg

    for sample, px, t, t2 in future.result():
        collectors[sample.unit].add(sample, px, t, t2, sample.above)
    bar.update(len(batch))
    for u, _ in batch:
        chains_left[u] -= 1
    for u in dict.fromkeys(u for u, _ in batch):
        if chains_left[u] == 0:
            _save_unit(out, layer, u, collectors.pop(u), side, box, target, settings,
                       grid, save_jpeg)


@torch.inference_mode()
def _collect(models: Models, samples: list[Sample]) -> list[tuple]:
    """(sample, pixels, top class, the second classifier's top class) for each sample."""
    if not samples:
        return []
    images = torch.stack([s.image for s in samples])
    device = next(models.classifier.parameters()).device
    x = models.crop(images.to(device))
    top = models.classifier(x, ["fc8"])["fc8"].argmax(1).cpu().tolist()
    second = (models.second(x, ["fc8"])["fc8"].argmax(1).cpu().tolist()
              if models.second is not None else [None] * len(samples))
    pixels = models.to_pixels(images)
    return list(zip(samples, pixels, top, second, strict=True))


def _save_unit(out: Path, layer: str, unit: int, collector: _UnitCollector, side: int, box,
               target: Target, settings: Settings, grid, save_jpeg) -> None:
    best = collector.best()
    pixels = np.stack([s[5] for s in best])
    acts = np.array([s[4] for s in best])
    stem = _unit_stem(layer, unit)
    np.savez_compressed(out / "units" / f"{stem}.npz", images=pixels, activations=acts,
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
        second = np.array([s[7] for s in best])
        info["second_target_share"] = (float((second == unit).mean())
                                       if target.tap == "fc8" else None)
    tmp = out / "units" / f".{stem}.json.tmp"
    tmp.write_text(json.dumps(info))
    os.replace(tmp, out / "units" / f"{stem}.json")


MANIFEST_COLUMNS = ["panel_id", "layer", "unit", "path", "mean_activation", "min_activation",
                    "top_class", "top_class_share", "target_share", "second_target_share",
                    "n_above_threshold"]


def write_manifest(out: Path, layer: str, units: Sequence[int]) -> Path:
    """``manifest_<layer>.csv``: one row per unit (the study design reads it as is)."""
    import csv

    path = out / f"manifest_{layer}.csv"
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, MANIFEST_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for u in units:
            info = json.loads((out / "units" / f"{_unit_stem(layer, u)}.json").read_text())
            writer.writerow({k: ("" if info.get(k) is None else info.get(k))
                             for k in MANIFEST_COLUMNS})
    os.replace(tmp, path)
    _combine_manifests(out)
    return path


def _combine_manifests(out: Path) -> None:
    """``manifest.csv``: the finished layers' manifests, one after the other."""
    layers = sorted(out.glob("manifest_*.csv"))
    lines = [layers[0].read_text().splitlines()[0]] if layers else []
    for layer_file in layers:
        lines += layer_file.read_text().splitlines()[1:]
    tmp = out / ".manifest.csv.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out / "manifest.csv")


def main(argv: Sequence[str] | None = None) -> int:
    from analysis.selectivity import parse_shard

    parser = argparse.ArgumentParser(
        prog="python -m generator.ppgn",
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
    from .threads import use_available_cpus

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
    import csv

    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    print(f"wrote {manifest} ({len(rows)} units)")
    for key, label in (("target_share", "classified as the target by the network"),
                       ("second_target_share", "by the independent classifier")):
        values = [float(r[key]) for r in rows if r.get(key)]
        if values:
            print(f"  images {label}: {100 * sum(values) / len(values):.1f}%")


if __name__ == "__main__":
    raise SystemExit(main())
