"""The PPGN sampler: activation maximization with a Plug-and-Play Generative Network
(noiseless joint PPGN-h), for a batch of chains; it never touches files (runs, with
their files, are :mod:`generator.ppgn`'s).

The update of docs/networks.md, for a batch of chains (one row each)::

    d_h = eps1 * (E(G(h)) - h)               # prior: the code of G's image, back towards h
        + eps2 * (1 - p_k) * d a_k / d h     # condition: the target unit k, softmax-weighted
        + N(0, eps3)                         # noise
    h  += lr / mean|d_h| * d_h;   h = clip(h, 0, h_max)

G is the generator, E the classifier up to its code layer (fc6, post-ReLU), a_k
the target unit (fc8 logit, pre-ReLU fc6, or pre-ReLU conv5 at one location)
and p_k its softmax over the layer's units at that location.

A chain runs as PPGN's ``sampler.py`` does: at step i (0 ... steps) the forward pass
of G(h_i) gives the image and p_k of that step (a sample when i is a multiple of
``keep_every``, or the last step for fc layers), then h takes its update. After
the update of a step that is a positive multiple of ``reset_every``, h is drawn
anew (``h_init * N(0, 1)``, unclipped: the next update clips it) and eps1 from
``eps1_range``; eps1 is ``Settings.eps1`` until the first reset. A sample
*passes* when p_k > ``threshold`` (PPGN's ``prob > threshold``; None: every
sample passes).

The terms are small named callables (:func:`prior`, :func:`condition`,
:func:`noise`), summed by :func:`ppgn_update`. :class:`Sampler` runs chains and
yields samples; it neither saves nor displays (:func:`generator.ppgn.generate`
and the command line do). Everything per chain is per row: step
normalisation, softmax, threshold, resets and random numbers, drawn from a
generator seeded by (seed, layer, unit, chain) (:func:`chain_seed`); so a unit's
images do not depend on which other units share its batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

__all__ = [
    "Settings",
    "settings_for",
    "Target",
    "chain_seed",
    "NOISE_BUFFER",
    "Batch",
    "Forward",
    "Term",
    "prior",
    "condition",
    "noise",
    "ppgn_update",
    "Sample",
    "Sampler",
]


@dataclass(frozen=True)
class Settings:
    """Sampler settings (defaults: docs/networks.md, fc8)."""

    steps: int = 200
    eps1: float = 1e-5
    eps2: float = 1.0
    eps3: float = 1e-17
    lr: float = 1.0
    h_max: float = 30.0
    h_init: float = 1.0  # h0 (and each reset) = h_init * N(0, 1), clipped by the update
    reset_every: int | None = None  # re-draw h and eps1 every so many steps (conv5: 100)
    eps1_range: tuple[float, float] | None = None  # eps1 ~ U(lo, hi) at each reset (conv5)
    keep_every: int | None = None  # a sample at steps 0, k, 2k ... (conv5: 10); else the last
    threshold: float | None = None  # a sample passes when p_k > threshold (conv5: 0.98)


def settings_for(layer: str, **overrides) -> Settings:
    """The paper's schedule for ``layer``: conv layers PPGN's hidden-unit recipe (1,000
    steps, resets every 100, a sample every 10 that passes when p_k > 0.98), else 200
    steps and the last image of each chain (no threshold)."""
    if layer.startswith("conv"):
        base = Settings(steps=1000, reset_every=100, eps1_range=(1e-6, 1e-2), keep_every=10,
                        threshold=0.98)
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
    prob: torch.Tensor  # p_k per row, (B,)


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
    """One image of one chain, as :meth:`Sampler.run` yields it."""

    unit: int
    chain: int
    step: int
    activation: float
    image: torch.Tensor  # G(h) of that step, (C, H, W), on the CPU
    prob: float = 1.0  # p_k: the target's softmax over the layer's units (at its location)
    passed: bool = True  # p_k > the threshold (always, without one)


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
        """Starting (and restart) codes: each element from a random real code when
        ``init_codes`` (N, D) are given (a code of no real image, in the range of real
        ones; clipped to [0, h_max]), else ``h_init * N(0, 1)`` as PPGN draws them, not
        clipped (G sees the drawn code; the update clips it)."""
        bank = self.init_codes
        if bank is not None:
            columns = torch.arange(bank.shape[1])
            h = torch.stack([bank[torch.randint(0, len(bank), (bank.shape[1],), generator=g),
                                  columns] for g in rngs])
            return h.clamp(0.0, self.settings.h_max).to(self.device)
        h = self.settings.h_init * torch.stack(
            [torch.randn(self.code_dim, generator=g) for g in rngs])
        return h.to(self.device)

    def _draw_eps1(self, rngs: list[torch.Generator]) -> torch.Tensor:
        """eps1 at a reset: U(eps1_range) per chain (``Settings.eps1`` without a range)."""
        s = self.settings
        if s.eps1_range is None:
            return torch.full((len(rngs),), s.eps1, device=self.device)
        lo, hi = s.eps1_range
        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in rngs])
        return (lo + (hi - lo) * u).float().to(self.device)

    def start(self, units: Sequence[int], chains: Sequence[int]) -> Batch:
        rngs = [torch.Generator().manual_seed(chain_seed(self.seed, self.layer_name, u, c))
                for u, c in zip(units, chains, strict=True)]
        eps1 = torch.full((len(rngs),), self.settings.eps1, device=self.device)
        batch = Batch(self._draw_h(rngs), torch.as_tensor(list(units), device=self.device),
                      eps1, rngs)  # eps1 is Settings.eps1 until the first reset (PPGN's)
        batch.plan_noise(self._updates_to_reset(0))
        return batch

    def _updates_to_reset(self, step: int) -> int:
        """Updates from the one of ``step`` on that draw noise before the next reset's
        draws: up to the update of the next reset step (it is made, then replaced) or
        the last update (of step ``steps - 1``)."""
        s = self.settings
        last = s.steps - 1
        if s.reset_every:
            last = min(last, max(1, -(-step // s.reset_every)) * s.reset_every)
        return max(1, last - step + 1)

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
                       act.detach().float(), grad.float(), p_k)

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
        for step in range(s.steps + 1):
            last = step == s.steps
            if last:  # no update follows: no gradient needed
                image, act, prob = self.forward_image(batch)
            else:
                fwd = self.forward(batch)
                image, act, prob = fwd.image, fwd.activation, fwd.prob
            if (step % s.keep_every == 0) if s.keep_every else last:
                image, acts, probs = image.cpu(), act.tolist(), prob.tolist()
                for row in range(batch.size):
                    if chains[row] >= 0:  # not a throwaway row (run's pad_to)
                        p = probs[row]
                        yield Sample(int(units[row]), int(chains[row]), step, acts[row],
                                     image[row], p, s.threshold is None or p > s.threshold)
            if last:
                break
            batch.h = ppgn_update(batch, fwd, self.terms, s.lr, s.h_max)
            if s.reset_every and step > 0 and step % s.reset_every == 0:
                batch.h = self._draw_h(batch.rngs)
                batch.eps1 = self._draw_eps1(batch.rngs)
                batch.plan_noise(self._updates_to_reset(step + 1))

    @torch.inference_mode()
    def forward_image(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """G(h), the target activation and p_k for the current h, without gradients."""
        with self._autocast():
            image = self.generator(batch.h).float()
            layer = self.classifier(self.crop(image), [self.target.tap])[self.target.tap].float()
        if self.target.location is not None:
            y, x = self.target.location
            layer = layer[:, :, y, x]
        rows = torch.arange(batch.size, device=layer.device)
        prob = torch.softmax(layer, dim=1)[rows, batch.units]
        return image, layer[rows, batch.units], prob
