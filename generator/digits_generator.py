"""The embedded default's generator G for PPGN (docs/networks.md, docs/data.md).

G inverts the demo network's ``fc6`` code (post-ReLU, 128-d; the sampler keeps
h in [0, 30]) into a 1x32x32 image in the demo network's input space (normalised
as :func:`generator.digits.load_digits_tensors` gives). It is DeePSiM's fc6
generator in miniature: fc 128 -> 256 -> 1024, reshape 64x4x4, three transposed
convolutions 4/2/1 (4 -> 8 -> 16 -> 32), leaky ReLU 0.3 after every layer but
the last; the last is squashed by a sigmoid onto [:data:`OUTPUT_LOW`,
:data:`OUTPUT_HIGH`], the range of real pixels (0 and 1 normalised).

:func:`train_demo_generator` trains it on the digits' training split with E =
the demo network up to ``fc6`` (frozen, eval mode): image reconstruction
``|G(h') - x|^2`` plus fc6 feature reconstruction ``|E(G(h')) - h|^2 / mean(h^2)``,
where ``h = E(x)`` for a randomly shifted training image x. Two options aim at
codes of no real digit, where the sampler goes; both are off by default because
they did not measurably help (the plain recipe already gives AM images that both
classifiers recognise; the bounded output is what helps most far from real codes;
see :func:`evaluate_am`):

* ``perturbed_share``: part of each batch takes perturbed codes h' (per-unit
  multiplicative noise, additive noise on random units, an overall gain) with
  h and x still the targets, so that G learns to denoise codes (this made AM
  images of one class nearly identical);
* ``adversarial_weight``: a small discriminator on 32x32 images tells real
  digits from G's images of off-manifold codes (mixtures of two codes, per-unit
  resampled codes, codes with random units pushed up).

Training is deterministic (fixed thread count, deterministic algorithms, its
own random streams; the caller's torch random state, thread count and
determinism flag are restored). :func:`trained_demo_generator` trains on first
use and caches the state dict at ``<cache>/demo/demo_generator_seed<seed>.pt``
with a JSON of the training figures beside it (the sha256 of the demo network's
weights it was trained against among them: a cache trained against other
weights, or for another architecture, is trained again).

:func:`evaluate_am` measures what the PPGN sampler will need: activation
maximisation of the 10 ``fc8`` units with a minimal noiseless PPGN-h update,
and the share of the final images that the demo network and an independent
second classifier (``second_network``, by default
:func:`generator.digits.trained_independent_network`) assign to the target class.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common.files import cache_dir, file_lock

from . import digits
from .digits import DIGITS_MEAN, DIGITS_SIZE, DIGITS_STD, SPLIT_SEED, load_digits_tensors
from .networks import TappedNet, WeightsError, gradient_copy
from .threads import TRAINING_THREADS, available_cpus, torch_threads, worker_pool

__all__ = [
    "CODE_SIZE",
    "CODE_MAX",
    "OUTPUT_LOW",
    "OUTPUT_HIGH",
    "DemoGenerator",
    "demo_generator",
    "demo_discriminator",
    "train_demo_generator",
    "evaluate_reconstruction",
    "evaluate_am",
    "cached_generator_path",
    "trained_demo_generator",
    "warm_cache",
]

log = logging.getLogger(__name__)

#: Size of the demo network's fc6 code, G's input.
CODE_SIZE = 128
#: The sampler's clip of h: [0, CODE_MAX].
CODE_MAX = 30.0
#: G's output range: pixel values 0 and 1 normalised as the demo network's input.
OUTPUT_LOW = (0.0 - DIGITS_MEAN) / DIGITS_STD
OUTPUT_HIGH = (1.0 - DIGITS_MEAN) / DIGITS_STD

_SLOPE = 0.3  # DeePSiM's leaky ReLU


class DemoGenerator(nn.Module):
    """fc6 code (N, 128) -> image (N, 1, 32, 32) in the demo network's input space."""

    code_size = CODE_SIZE
    output_shape = (1, DIGITS_SIZE, DIGITS_SIZE)
    output_range = (OUTPUT_LOW, OUTPUT_HIGH)

    def __init__(self) -> None:
        super().__init__()
        self.defc6 = nn.Linear(CODE_SIZE, 256)
        self.defc5 = nn.Linear(256, 64 * 4 * 4)
        self.deconv3 = nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1)  # 8x8
        self.deconv2 = nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1)  # 16x16
        self.deconv1 = nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1)   # 32x32

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.defc6(h), _SLOPE)
        x = F.leaky_relu(self.defc5(x), _SLOPE).reshape(-1, 64, 4, 4)
        x = F.leaky_relu(self.deconv3(x), _SLOPE)
        x = F.leaky_relu(self.deconv2(x), _SLOPE)
        return OUTPUT_LOW + (OUTPUT_HIGH - OUTPUT_LOW) * torch.sigmoid(self.deconv1(x))


def demo_generator() -> DemoGenerator:
    """A fresh (untrained) :class:`DemoGenerator`."""
    return DemoGenerator()


def demo_discriminator() -> nn.Sequential:
    """A small discriminator on 1x32x32 images (a logit per image), for training G only."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.LeakyReLU(0.2),   # 16x16
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 8x8
        nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 4x4
        nn.Flatten(), nn.Linear(64 * 4 * 4, 1),
    )


# -- codes -------------------------------------------------------------------------------


def _perturbed_codes(h: torch.Tensor, rng: torch.Generator, noise: float) -> torch.Tensor:
    """Perturbations of real codes whose target stays the image they came from."""
    n, d = h.shape
    scale = h.mean().clamp_min(1e-6)
    gain = torch.empty(n, 1).uniform_(0.7, 2.0, generator=rng)
    mult = 1.0 + noise * torch.randn(n, d, generator=rng)
    extra = (torch.rand(n, d, generator=rng) < 0.1) * torch.rand(n, d, generator=rng) * 3 * scale
    return (h * gain * mult + noise * extra).clamp(0.0, CODE_MAX)


def _off_manifold_codes(h: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Codes of no real digit: mixtures, per-unit resampled codes, boosted units."""
    n, d = h.shape
    kind = torch.randint(0, 3, (n, 1), generator=rng)
    other = h[torch.randperm(n, generator=rng)]
    lam = torch.rand(n, 1, generator=rng)
    mixed = lam * h + (1 - lam) * other
    resampled = h[torch.randint(0, n, (n, d), generator=rng), torch.arange(d)]
    boost = (torch.rand(n, d, generator=rng) < 0.15) * torch.rand(n, d, generator=rng) * CODE_MAX
    boosted = h * torch.empty(n, 1).uniform_(0.5, 2.5, generator=rng) + boost
    out = torch.where(kind == 0, mixed, torch.where(kind == 1, resampled, boosted))
    return out.clamp(0.0, CODE_MAX)


# -- training ----------------------------------------------------------------------------


@torch.no_grad()
def _code_of(network: TappedNet, x: torch.Tensor) -> torch.Tensor:
    return network(x, taps=("fc6",))["fc6"]


@torch.no_grad()
def evaluate_reconstruction(generator: nn.Module, network: TappedNet, images: torch.Tensor,
                            labels: torch.Tensor, second_network: TappedNet | None = None,
                            batch_size: int = 512) -> dict:
    """Reconstruct ``images`` through G(E(x)); the share classified as ``labels``, and the MSE.

    Returns ``accuracy`` (by ``network``), ``accuracy_second`` (by
    ``second_network``, if given), ``image_mse`` and ``code_rel_mse``
    (``|E(G(h)) - h|^2 / |h|^2``). Modes are restored.
    """
    nets = [m for m in (generator, network, second_network) if m is not None]
    modes = [m.training for m in nets]
    correct = correct2 = 0
    sq = code_sq = code_norm = 0.0
    try:
        for m in nets:
            m.eval()
        for i in range(0, len(images), batch_size):
            x, y = images[i:i + batch_size], labels[i:i + batch_size]
            h = network(x, taps=("fc6",))["fc6"]
            recon = generator(h)
            out = network(recon, taps=("fc6", "fc8"))
            correct += int((out["fc8"].argmax(1) == y).sum())
            if second_network is not None:
                correct2 += int((second_network(recon, taps=("fc8",))["fc8"].argmax(1) == y).sum())
            sq += float(((recon - x) ** 2).sum())
            code_sq += float(((out["fc6"] - h) ** 2).sum())
            code_norm += float((h ** 2).sum())
    finally:
        for m, mode in zip(nets, modes, strict=True):
            m.train(mode)
    n = max(1, len(images))
    result = {"accuracy": correct / n, "image_mse": sq / (n * images[0].numel()),
              "code_rel_mse": code_sq / max(code_norm, 1e-12)}
    if second_network is not None:
        result["accuracy_second"] = correct2 / n
    return result


def train_demo_generator(
    seed: int = 0, *, network: TappedNet | None = None, steps: int = 1200, batch_size: int = 64,
    lr: float = 1e-3, feature_weight: float = 0.1, noise: float = 0.3, perturbed_share: float = 0.0,
    adversarial_weight: float = 0.0, adversarial_start: int = 200, max_shift: int = 2,
    threads: int = TRAINING_THREADS, split_seed: int = SPLIT_SEED, am_chains_per_class: int = 20,
    second_network: TappedNet | None = None, batch_parts: int = 2, workers: int | None = None,
) -> tuple[DemoGenerator, dict]:
    """Train G on the digits' training split; returns (G in eval mode, metrics).

    ``network``: the classifier whose fc6 G inverts (default
    :func:`generator.digits.trained_demo_network`); it is copied and frozen.
    Each step takes ``batch_size`` randomly shifted training images x, their codes
    h = E(x), and replaces a ``perturbed_share`` of the codes with perturbed ones
    (noise level ``noise``); loss = image MSE + ``feature_weight`` * fc6 MSE
    (relative to mean h^2) + ``adversarial_weight`` * the non-saturating GAN loss
    on off-manifold codes (from step ``adversarial_start``; 0 turns it off).
    Adam with cosine decay.

    Each batch is cut into ``batch_parts`` equal parts whose gradients are computed
    apart (``workers`` at once, each part in its own thread with ``threads`` intra-op
    threads; default: as many as the process has CPUs, at most ``batch_parts``) and
    summed in order: the loss is the whole batch's, and the weights do not depend on
    ``workers``. The frozen copy of the network is a
    :func:`generator.networks.gradient_copy` (the same function, faster gradients).
    The same seed, settings, torch build and CPU kind give
    identical weights. The metrics hold the held-out reconstruction figures
    (:func:`evaluate_reconstruction`) and, unless ``am_chains_per_class`` is 0,
    those of :func:`evaluate_am` with its defaults (``second_network``: default
    :func:`generator.digits.trained_independent_network`; never used in training).
    """
    seed = int(seed)
    network_sha = None
    if network is None:
        network, network_sha = digits.trained_demo_network()
    train_x, _ = load_digits_tensors("train", split_seed)
    test_x, test_y = load_digits_tensors("test", split_seed)

    if batch_size % batch_parts:
        raise ValueError(f"batch_size {batch_size} is not a multiple of batch_parts {batch_parts}")
    workers = max(1, min(batch_parts, workers or available_cpus()))
    parts = [slice(i * batch_size // batch_parts, (i + 1) * batch_size // batch_parts)
             for i in range(batch_parts)]

    start = time.perf_counter()
    with digits.deterministic(threads), worker_pool(workers, threads) as pool:
        torch.manual_seed(seed)  # initial weights
        rng = torch.Generator().manual_seed(seed)  # batches, shifts, perturbations
        enc = gradient_copy(network)
        gen = demo_generator().train()
        params = list(gen.parameters())
        opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.999))
        if adversarial_weight > 0:
            disc = demo_discriminator().train()
            opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_g, T_max=steps)
        n_pert = int(round(perturbed_share * batch_size))
        order = torch.randperm(len(train_x), generator=rng)
        pos = 0
        losses: dict[str, float] = {}
        for step in range(steps):
            if pos + batch_size > len(order):
                order, pos = torch.randperm(len(train_x), generator=rng), 0
            idx = order[pos:pos + batch_size]
            pos += batch_size
            x = digits.random_shifts(train_x[idx], max_shift, rng)
            h = torch.cat(list(pool.map(lambda rows, x=x: _code_of(enc, x[rows]), parts)))
            h_in = h.clone()
            if n_pert:
                h_in[:n_pert] = _perturbed_codes(h[:n_pert], rng, noise)
            adversarial = adversarial_weight > 0 and step >= adversarial_start
            off = _off_manifold_codes(h, rng) if adversarial else None
            # mean losses over the whole batch, as sums over each part over the batch's size
            code_scale = (h ** 2).mean().clamp_min(1e-6)

            def part(rows: slice, x=x, h=h, h_in=h_in, off=off, adversarial=adversarial,
                     code_scale=code_scale):
                out = gen(h_in[rows])
                image_loss = F.mse_loss(out, x[rows], reduction="sum") / x.numel()
                feat = enc(out, taps=("fc6",))["fc6"]
                feature_loss = (F.mse_loss(feat, h[rows], reduction="sum") / h.numel()
                                / code_scale)
                loss = image_loss + feature_weight * feature_loss
                fake = g_adv = None
                if adversarial:
                    fake = gen(off[rows])
                    g_adv = F.softplus(-disc(torch.cat([fake, out]))).sum() / (2 * len(x))
                    loss = loss + adversarial_weight * g_adv
                grads = torch.autograd.grad(loss, params)
                return (grads, out.detach(), None if fake is None else fake.detach(),
                        image_loss.detach(), feature_loss.detach(),
                        None if g_adv is None else g_adv.detach())

            results = list(pool.map(part, parts))
            for i, p in enumerate(params):
                grad = results[0][0][i]
                for r in results[1:]:
                    grad = grad + r[0][i]
                p.grad = grad
            out = torch.cat([r[1] for r in results])
            image_loss = sum(r[3] for r in results)
            feature_loss = sum(r[4] for r in results)
            opt_g.step()
            sched.step()
            if adversarial:
                fake = torch.cat([r[2] for r in results])
                g_adv = sum(r[5] for r in results)
                d_real = disc(x)
                d_fake = disc(torch.cat([fake, out]).detach())
                d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
                losses["discriminator"] = d_loss.item()
                losses["adversarial"] = g_adv.item()
            losses["image"] = image_loss.item()
            losses["feature"] = feature_loss.item()
            if (step + 1) % 100 == 0:
                log.debug("demo generator: step %d/%d, %s", step + 1, steps,
                          ", ".join(f"{k} {v:.4f}" for k, v in sorted(losses.items())))
        gen.eval()
        seconds = time.perf_counter() - start
        recon = evaluate_reconstruction(gen, enc, test_x, test_y)
        am = None
        if am_chains_per_class > 0:
            if second_network is None:
                second_network, _ = digits.trained_independent_network()
            # a frozen channels-last copy of G: the same function, faster gradients to h
            am = evaluate_am(gradient_copy(gen), enc, second_network,
                             chains_per_class=am_chains_per_class,
                             seed=seed, threads=threads, split_seed=split_seed,
                             workers=workers)
            am.pop("images")
    metrics = {
        "seed": seed, "split_seed": split_seed, "steps": steps, "batch_size": batch_size,
        "lr": lr, "feature_weight": feature_weight, "noise": noise,
        "perturbed_share": perturbed_share, "adversarial_weight": adversarial_weight,
        "adversarial_start": adversarial_start, "max_shift": max_shift, "threads": threads,
        "batch_parts": batch_parts,
        "seconds": round(seconds, 3), "final_losses": losses,
        "held_out_reconstruction_accuracy": recon["accuracy"],
        "held_out_image_mse": recon["image_mse"], "held_out_code_rel_mse": recon["code_rel_mse"],
        "n_train": len(train_x), "n_test": len(test_x), "torch_version": torch.__version__,
        "architecture": digits.architecture_id(gen), "network_sha256": network_sha, "am": am,
    }
    log.info("demo generator (seed %d): held-out reconstructions %.2f%% right after %d steps "
             "in %.1f s", seed, 100 * recon["accuracy"], steps, seconds)
    if am is not None:
        log.info("demo generator (seed %d): fc8 AM images recognised %.1f%% (demo network), "
                 "%.1f%% (second classifier)", seed, 100 * am["agreement"],
                 100 * am["agreement_second"])
    return gen, metrics


# -- activation maximisation (a measurement; the sampler proper is generator.sampler) -------


def _code_marginals(network: TappedNet, split_seed: int = SPLIT_SEED) -> torch.Tensor:
    """fc6 codes of the training digits (N, 128), for drawing starting points."""
    x, _ = load_digits_tensors("train", split_seed)
    with torch.no_grad():
        return network(x, taps=("fc6",))["fc6"]


def _within_class_distance(images: torch.Tensor, per_class: int) -> float:
    """Mean RMS pixel difference (pixels in [0, 1]) between two images of the same class."""
    if per_class < 2:
        return float("nan")
    unit = digits.to_unit_range(images).reshape(-1, per_class, images[0].numel())
    d = torch.cdist(unit, unit) / images[0].numel() ** 0.5  # (classes, k, k)
    return float(d.sum() / (d.shape[0] * per_class * (per_class - 1)))


_INITS = ("marginal", "uniform", "box", "zero")


def _initial_codes(init: str, n: int, codes: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    if init == "marginal":  # each unit's value from a random training digit
        return codes[torch.randint(0, len(codes), (n, CODE_SIZE), generator=rng),
                     torch.arange(CODE_SIZE)].clone()
    if init == "uniform":  # U(0, the unit's largest value over the training digits)
        return torch.rand(n, CODE_SIZE, generator=rng) * codes.max(0).values
    if init == "box":  # U(0, 30): the sampler's whole box, far from real codes
        return torch.rand(n, CODE_SIZE, generator=rng) * CODE_MAX
    return torch.zeros(n, CODE_SIZE)


def evaluate_am(
    generator: nn.Module, network: TappedNet, second_network: TappedNet, steps: int = 200,
    chains_per_class: int = 20, eps1: float = 1e-5, eps2: float = 1.0, lr: float = 1.0,
    seed: int = 0, init: str = "marginal", threads: int = TRAINING_THREADS,
    split_seed: int = SPLIT_SEED, batch_parts: int = 2, workers: int | None = None,
) -> dict:
    """Activation maximisation of the 10 fc8 units through G; how recognisable the results are.

    ``chains_per_class`` chains per unit, in ``batch_parts`` batches of (nearly) equal
    size (``workers`` at once, one thread each with ``threads`` intra-op threads; the
    results do not depend on ``workers``), start from codes drawn from ``seed``:
    ``init`` "marginal" (default: each unit's value taken from a random training
    digit's fc6 code, a code of no real digit in the range of real ones), "uniform"
    (U(0, the unit's largest real value)), "box" (U(0, 30)) or "zero". Each takes
    ``steps`` noiseless PPGN-h steps:
    ``d_h = eps1 * (E(G(h)) - h) + eps2 * (1 - p_t) * d a_t / dh`` (E = fc6,
    a_t the target logit, p_t its softmax, all of ``network``), ``h += lr /
    mean|d_h| * d_h`` per chain, h clipped to [0, 30].

    Returns ``agreement`` (share of the final images G(h) that ``network``
    classifies as the target), ``agreement_second`` (the same for
    ``second_network``), both per class (``*_per_class``), the mean final target
    probability, ``diversity`` (mean RMS pixel difference, pixels in [0, 1],
    between two images of the same unit; about 0.21 for real digits), the
    settings, ``seconds`` and ``images`` (N, 1, 32, 32; chains of unit k at
    rows ``k * chains_per_class ...``). The caller's modes, torch random
    state and thread count are kept.
    """
    if init not in _INITS:
        raise ValueError(f"init must be one of {_INITS}, not {init!r}")
    n_classes = len(digits.DIGIT_CLASS_NAMES)
    nets = (generator, network, second_network)
    modes = [m.training for m in nets]
    start = time.perf_counter()

    def climb(h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(len(h))
        for _ in range(steps):
            h.requires_grad_(True)
            out = network(generator(h), taps=("fc6", "fc8"))
            logits = out["fc8"]
            (grad,) = torch.autograd.grad(logits[rows, target].sum(), h)
            with torch.no_grad():
                p = torch.softmax(logits, 1)[rows, target]
                d_h = eps1 * (out["fc6"] - h) + eps2 * (1 - p)[:, None] * grad
                scale = lr / d_h.abs().mean(1, keepdim=True).clamp_min(1e-30)
                h = (h + scale * d_h).clamp(0.0, CODE_MAX)
        return h.detach()

    try:
        for m in nets:
            m.eval()
        with torch_threads(threads):
            rng = torch.Generator().manual_seed(int(seed))
            n = n_classes * chains_per_class
            target = torch.arange(n_classes).repeat_interleave(chains_per_class)
            rows = torch.arange(n)
            h = _initial_codes(init, n, _code_marginals(network, split_seed), rng)
            groups = [g for g in torch.arange(n).tensor_split(max(1, batch_parts)) if len(g)]
            with worker_pool(min(len(groups), workers or available_cpus()), threads) as pool:
                h = torch.cat(list(pool.map(lambda g: climb(h[g], target[g]), groups)))
            with torch.no_grad():
                images = generator(h)
                logits = network(images, taps=("fc8",))["fc8"]
                first = logits.argmax(1) == target
                second = second_network(images, taps=("fc8",))["fc8"].argmax(1) == target
                p_final = torch.softmax(logits, 1)[rows, target]
                diversity = _within_class_distance(images, chains_per_class)
    finally:
        for m, mode in zip(nets, modes, strict=True):
            m.train(mode)
    return {
        "agreement": float(first.float().mean()),
        "agreement_second": float(second.float().mean()),
        "agreement_per_class": first.reshape(n_classes, -1).float().mean(1).tolist(),
        "agreement_second_per_class": second.reshape(n_classes, -1).float().mean(1).tolist(),
        "mean_target_probability": float(p_final.mean()),
        "diversity": diversity,
        "steps": steps, "chains_per_class": chains_per_class, "eps1": eps1, "eps2": eps2,
        "lr": lr, "seed": seed, "init": init, "seconds": round(time.perf_counter() - start, 3),
        "images": images,
    }


# -- the cache ---------------------------------------------------------------------------


def cached_generator_path(seed: int = 0, root: str | os.PathLike | None = None) -> Path:
    """Where a trained demo generator is cached: ``<root>/demo/demo_generator_seed<seed>.pt``."""
    return Path(root if root is not None else cache_dir()) / "demo" / f"demo_generator_seed{int(seed)}.pt"


def _load_cached(path: Path, network_sha: str) -> tuple[DemoGenerator, str]:
    # trained against other weights, or with another thread count or split: train again
    return digits.load_cached(path, demo_generator, {"network_sha256": network_sha,
                                                     "threads": TRAINING_THREADS,
                                                     "batch_parts": 2})


def trained_demo_generator(seed: int = 0, cache_dir: str | os.PathLike | None = None, *,
                           network: tuple[TappedNet, str] | None = None,
                           ) -> tuple[DemoGenerator, str]:
    """The trained demo generator in eval mode and the sha256 of its cached weights file.

    Trains on first use (:func:`train_demo_generator`, against
    :func:`generator.digits.trained_demo_network` from the same ``cache_dir``)
    and caches the state dict and a JSON of the training figures; later calls
    load the cache. ``cache_dir`` None: :func:`common.files.cache_dir`.
    ``network``: that network and the sha256 of its weights, when the caller has
    loaded them already.
    """
    path = cached_generator_path(seed, cache_dir)
    network, network_sha = network or digits.trained_demo_network(cache_dir=cache_dir)
    with file_lock(path):   # another process training it: wait, then load its file
        return _trained_generator(seed, cache_dir, path, network, network_sha)


def _trained_generator(seed: int, cache_dir: str | os.PathLike | None, path: Path,
                       network: TappedNet, network_sha: str) -> tuple[DemoGenerator, str]:
    if path.exists():
        try:
            model, checksum = _load_cached(path, network_sha)
        except WeightsError as exc:
            log.warning("demo generator: cached weights unusable, training again: %s", exc)
        else:
            accuracy = digits.read_metrics(path).get("held_out_reconstruction_accuracy", float("nan"))
            log.info("demo generator (seed %d): loaded cached weights %s (held-out "
                     "reconstructions %.2f%% right)", seed, path, 100 * accuracy)
            return model.eval(), checksum
    log.info("demo generator (seed %d): no cached weights, training (cached at %s)", seed, path)
    independent, _ = digits.trained_independent_network(cache_dir=cache_dir)
    model, metrics = train_demo_generator(seed, network=network, second_network=independent)
    metrics["network_sha256"] = network_sha
    metrics["trained_on"] = digits.training_environment(metrics.get("threads"))
    return model.eval(), digits.save_cached(path, model, metrics)


def warm_cache(cache_dir: str | os.PathLike | None = None, *, rater_seeds=(2, 3)) -> None:
    """Train (or find cached) every network the demo and the tests use: the demo network,
    the independent classifier (and its other seeds, ``rater_seeds``, which the rater's
    tests use), the demo generator and the digits ResNet. Each under its file lock, so a
    process that asks for one meanwhile waits for it instead of training it again
    (``tests/conftest.py`` runs this in the background while the first tests run)."""
    digits.trained_demo_network(cache_dir=cache_dir)
    digits.trained_independent_network(cache_dir=cache_dir)
    trained_demo_generator(cache_dir=cache_dir)
    digits.trained_digits_resnet(cache_dir=cache_dir)
    for seed in rater_seeds:
        digits.trained_independent_network(seed, cache_dir=cache_dir)
