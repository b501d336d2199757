"""The embedded default: scikit-learn's digits and two small classifiers, trained
once and cached (docs/data.md). The demo's generator is :mod:`generator.digits_generator`.

Data: the 1,797 8x8 digits of :func:`sklearn.datasets.load_digits` (values 0-16,
labels 0-9) scaled to [0, 1] (``/ 16``), upsampled to 32x32 (bilinear,
``align_corners=False``, which is what PIL's bilinear upscaling computes too),
one channel, normalised with :data:`DIGITS_MEAN` and :data:`DIGITS_STD` (the mean
and standard deviation of every pixel of the 1,797 upsampled images, computed once
and hard-coded). The held-out split is stratified: 20% of each class, drawn from
a seed (:data:`SPLIT_SEED` unless told), the same for every network.

Networks (same step and tap names as CaffeNet, :mod:`generator.networks`):

* :func:`demo_network`: CaffeNet in miniature for 1x32x32 inputs: conv1 16 5x5
  -> ReLU -> pool 3/2 -> LRN; conv2 32 5x5 -> ReLU -> pool -> LRN; conv3 48,
  conv4 48, conv5 32 (3x3) -> ReLU -> pool5; fc6 128, fc7 128, fc8 10, prob.
  The map sizes follow AlexNet's (55-27-13-6 becomes 28-14-7-3): conv5 is 7x7
  with its centre at (3, 3), pool5 3x3.
* :func:`independent_network`: an independent second classifier (other
  architecture, other seed) that judges the recognisability of generated images
  (the sampler's record and the simulated rater, :mod:`generator.rater`): 3x3
  kernels, 2x2 pooling, no LRN, conv 12-24-32-32-24 on maps 32-16-8, fc 96.

:func:`train_demo_network` trains one from a seed, deterministically (fixed
thread count, deterministic algorithms, its own random streams; the caller's
torch random state, thread count and determinism flag are restored).
:func:`trained_demo_network` / :func:`trained_independent_network` train on first
use and cache the state dict under :func:`common.files.cache_dir` (``demo/``), with a JSON
of the training figures beside it; later calls load the cache. A cache whose
JSON names another architecture (a fingerprint of the layers) or whose weights
do not fit is trained again; a change of the training recipe alone is not
detected (delete ``<cache>/demo``).

Trained weights are deterministic per machine, not across machines. The same seed,
settings (the thread count among them), torch build and kind of CPU give
bit-identical weights (two clones on one machine cache files with the same SHA-256),
but another instruction set (AVX-512 or only AVX2, another CPU vendor's math-library
code path) rounds the floating-point sums differently, and 460 optimizer steps
amplify those last-bit differences into other weights: of about the same accuracy,
but with other decisions on inputs far from the digits (random noise, say). So a
test or a result must hold for any reasonably trained network, not for one set of
weights (see :mod:`generator.rater`). The JSON beside each cached network records
what trained it, under ``"trained_on"`` (:func:`training_environment`: torch and its
CPU capability, the CPU model and SIMD features, the Python and NumPy versions, the
thread count); caches written before that key existed load as before.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from common.files import atomic_write_bytes, atomic_write_text, cache_dir, file_lock

from .digits_resnet import DigitsResNet
from .networks import Preprocessing, TappedNet, WeightsError, load_state, taps_for
from .threads import TRAINING_THREADS

__all__ = [
    "DIGIT_CLASS_NAMES",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "DIGITS_SIZE",
    "SPLIT_SEED",
    "TEST_FRACTION",
    "DEMO_PREPROCESSING",
    "load_digits_raw",
    "preprocess_digits",
    "load_digits_tensors",
    "to_unit_range",
    "to_pil_image",
    "demo_network",
    "independent_network",
    "train_demo_network",
    "evaluate",
    "random_shifts",
    "cached_weights_path",
    "deterministic",
    "architecture_id",
    "read_metrics",
    "load_cached",
    "save_cached",
    "trained_demo_network",
    "trained_independent_network",
    "trained_digits_resnet",
    "logits_of",
    "training_environment",
]

log = logging.getLogger(__name__)

#: Class names by index: the digit itself.
DIGIT_CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
#: Side of the network input (the 8x8 digits upsampled 4x).
DIGITS_SIZE = 32
#: Mean and standard deviation of all pixels of the 1,797 upsampled digits in
#: [0, 1] (0.30526, 0.32363), rounded; fixed so that inputs never depend on a split.
DIGITS_MEAN = 0.3053
DIGITS_STD = 0.3236
#: The seed of the held-out split that every network uses by default.
SPLIT_SEED = 0
#: Share of each class held out.
TEST_FRACTION = 0.2

#: An image file -> the demo input: grayscale, 32x32, [0, 1], normalised. A PNG
#: of a 32x32 digit (``to_unit_range`` * 255, rounded) gives back the tensor up to
#: 8-bit rounding; a PNG of a raw 8x8 digit gives it up to PIL's 8-bit resampling.
DEMO_PREPROCESSING = Preprocessing(
    size=DIGITS_SIZE, resize="square", crop=DIGITS_SIZE, channels="L", scale=1.0 / 255,
    mean=(DIGITS_MEAN,), std=(DIGITS_STD,),
)

_LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
_RELUS = {f"conv{i}": f"relu{i}" for i in range(1, 6)} | {"fc6": "relu6", "fc7": "relu7"}
_EXTRA_TAPS = {"pool5": "pool5", "fc8": "fc8", "prob": "prob"}


# -- data --------------------------------------------------------------------------------


def _split_indices(labels: np.ndarray, seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: ``round(test_fraction * n_c)`` of each class held out."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test.append(rng.permutation(members)[:int(round(test_fraction * len(members)))])
    is_test = np.zeros(len(labels), bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def load_digits_raw(split: str = "all", seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The digits as scikit-learn ships them: (images float64 (N, 8, 8) in 0-16, labels int64).

    ``split``: "all", "train" or "test" (the stratified split drawn from ``seed``);
    images keep their original order within a split.
    """
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', not {split!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError("the demo data are scikit-learn's digits: pip install scikit-learn") from None
    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float64)
    labels = np.asarray(digits.target, dtype=np.int64)
    if split != "all":
        train, test = _split_indices(labels, seed, TEST_FRACTION)
        keep = train if split == "train" else test
        images, labels = images[keep], labels[keep]
    return images, labels


def preprocess_digits(raw: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Raw digits (N, 8, 8) in 0-16 -> network input float32 (N, 1, 32, 32)."""
    x = torch.as_tensor(np.asarray(raw), dtype=torch.float32)
    if x.ndim == 2:
        x = x[None]
    x = (x / 16.0)[:, None]
    x = F.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    return ((x - DIGITS_MEAN) / DIGITS_STD).contiguous()


def load_digits_tensors(split: str = "all", seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 (N, 1, 32, 32) preprocessed as the networks expect, labels int64 (N,))."""
    raw, labels = load_digits_raw(split, seed)
    return preprocess_digits(raw), torch.from_numpy(labels)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Network input -> pixel values in [0, 1] (clipped), for display or saving."""
    return (images * DIGITS_STD + DIGITS_MEAN).clamp(0.0, 1.0)


def to_pil_image(image: torch.Tensor) -> Image.Image:
    """One network input (1, H, W) or (H, W) -> an 8-bit grayscale image (rounded)."""
    pixels = to_unit_range(image.detach().cpu().reshape(image.shape[-2:])) * 255
    return Image.fromarray(pixels.round().to(torch.uint8).numpy())  # uint8 (H, W): mode "L"


# -- networks ----------------------------------------------------------------------------


def demo_network() -> TappedNet:
    """CaffeNet in miniature for 1x32x32 digits (conv 16-32-48-48-32, fc 128-128-10)."""

    def pool():
        return nn.MaxPool2d(3, 2, ceil_mode=True)  # as CaffeNet: 28 -> 14 -> 7 -> 3

    def lrn():
        return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)

    steps = [
        ("conv1", nn.Conv2d(1, 16, 5)), ("relu1", nn.ReLU()),             # 28x28
        ("pool1", pool()), ("norm1", lrn()),                              # 14x14
        ("conv2", nn.Conv2d(16, 32, 5, padding=2)), ("relu2", nn.ReLU()),
        ("pool2", pool()), ("norm2", lrn()),                              # 7x7
        ("conv3", nn.Conv2d(32, 48, 3, padding=1)), ("relu3", nn.ReLU()),
        ("conv4", nn.Conv2d(48, 48, 3, padding=1)), ("relu4", nn.ReLU()),
        ("conv5", nn.Conv2d(48, 32, 3, padding=1)), ("relu5", nn.ReLU()),  # 7x7, centre (3, 3)
        ("pool5", pool()), ("flatten", nn.Flatten()),                     # 32x3x3
        ("fc6", nn.Linear(32 * 3 * 3, 128)), ("relu6", nn.ReLU()), ("drop6", nn.Dropout(0.25)),
        ("fc7", nn.Linear(128, 128)), ("relu7", nn.ReLU()), ("drop7", nn.Dropout(0.25)),
        ("fc8", nn.Linear(128, len(DIGIT_CLASS_NAMES))), ("prob", nn.Softmax(dim=1)),
    ]
    return TappedNet(steps, taps_for(_LAYERS, _RELUS, _EXTRA_TAPS), (1, DIGITS_SIZE, DIGITS_SIZE))


def independent_network() -> TappedNet:
    """The independent classifier: 3x3 kernels, 2x2 pools, no LRN, conv 12-24-32-32-24."""
    steps = [
        ("conv1", nn.Conv2d(1, 12, 3, padding=1)), ("relu1", nn.ReLU()),  # 32x32
        ("pool1", nn.MaxPool2d(2)),                                        # 16x16
        ("conv2", nn.Conv2d(12, 24, 3, padding=1)), ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),                                        # 8x8
        ("conv3", nn.Conv2d(24, 32, 3, padding=1)), ("relu3", nn.ReLU()),
        ("conv4", nn.Conv2d(32, 32, 3, padding=1)), ("relu4", nn.ReLU()),
        ("conv5", nn.Conv2d(32, 24, 3, padding=1)), ("relu5", nn.ReLU()),  # 8x8
        ("pool5", nn.MaxPool2d(2)), ("flatten", nn.Flatten()),             # 24x4x4
        ("fc6", nn.Linear(24 * 4 * 4, 96)), ("relu6", nn.ReLU()), ("drop6", nn.Dropout(0.25)),
        ("fc7", nn.Linear(96, 96)), ("relu7", nn.ReLU()), ("drop7", nn.Dropout(0.25)),
        ("fc8", nn.Linear(96, len(DIGIT_CLASS_NAMES))), ("prob", nn.Softmax(dim=1)),
    ]
    return TappedNet(steps, taps_for(_LAYERS, _RELUS, _EXTRA_TAPS), (1, DIGITS_SIZE, DIGITS_SIZE))


class _Variant(NamedTuple):
    build: Callable[[], TappedNet]
    stem: str  # cache file name stem
    seed: int  # default seed
    epochs: int  # default training length
    label: str  # what the logs call it


_VARIANTS: dict[str, _Variant] = {
    "a": _Variant(demo_network, "demo_net", 0, 20, "demo network"),
    "b": _Variant(independent_network, "demo_net_b", 1, 20,  # the stem of older caches
                  "independent network"),
    "resnet": _Variant(lambda: DigitsResNet(), "digits_resnet", 2, 10, "digits ResNet"),
}


def _variant(name: str) -> _Variant:
    try:
        return _VARIANTS[name]
    except KeyError:
        raise ValueError(f"variant must be one of {sorted(_VARIANTS)}, not {name!r}") from None


# -- training ----------------------------------------------------------------------------


def random_shifts(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels each way, filling with background."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    background = (0.0 - DIGITS_MEAN) / DIGITS_STD
    padded = F.pad(x, (max_shift,) * 4, value=background)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]   # (n, h, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]   # (n, 1, w)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A classifier's logits: a :class:`TappedNet`'s ``fc8`` tap, else what the module
    returns (a plain ``nn.Module`` such as :class:`generator.digits_resnet.DigitsResNet`)."""
    if isinstance(model, TappedNet):
        return model(x, taps=("fc8",))["fc8"]
    return model(x)


@torch.no_grad()
def evaluate(model: TappedNet, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 512) -> float:
    """Share of ``images`` that ``model`` classifies as ``labels`` (eval mode, restored after)."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        logits = logits_of(model, images[i:i + batch_size])
        correct += int((logits.argmax(1) == labels[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, len(images))


def train_demo_network(
    seed: int | None = None, *, variant: str = "a", epochs: int | None = None, steps: int | None = None,
    batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 1e-4, max_shift: int = 2,
    threads: int = TRAINING_THREADS, split_seed: int = SPLIT_SEED,
) -> tuple[TappedNet, dict]:
    """Train a demo classifier on the training split; returns (model in eval mode, metrics).

    ``variant``: "a" (:func:`demo_network`, default seed 0), "b"
    (:func:`independent_network`, default seed 1), 20 epochs by default for both, or
    "resnet" (:class:`generator.digits_resnet.DigitsResNet`, seed 2, 10 epochs).
    ``steps`` overrides ``epochs`` (optimizer steps in all; for tests). AdamW
    with a one-cycle schedule, random shifts of up to ``max_shift`` pixels. The same seed, settings, torch build
    and CPU give identical weights (``threads`` is fixed for that: the split of
    reductions across threads changes the rounding; the default,
    :data:`generator.threads.TRAINING_THREADS` = 1, is what every machine has, so the
    weights never depend on the CPU count and training never oversubscribes).
    """
    spec = _variant(variant)
    seed = spec.seed if seed is None else int(seed)
    train_x, train_y = load_digits_tensors("train", split_seed)
    test_x, test_y = load_digits_tensors("test", split_seed)
    per_epoch = -(-len(train_x) // batch_size)
    total = int(steps) if steps is not None else (epochs or spec.epochs) * per_epoch

    start = time.perf_counter()
    with deterministic(threads):
        torch.manual_seed(seed)  # initial weights and dropout
        data_rng = torch.Generator().manual_seed(seed)  # batches and shifts
        model = spec.build()
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total)
        done, loss = 0, torch.tensor(float("nan"))
        while done < total:
            order = torch.randperm(len(train_x), generator=data_rng)
            for i in range(0, len(order), batch_size):
                if done == total:
                    break
                idx = order[i:i + batch_size]
                x = random_shifts(train_x[idx], max_shift, data_rng)
                loss = F.cross_entropy(logits_of(model, x), train_y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                done += 1
            log.debug("demo %s: step %d/%d, loss %.4f", variant, done, total, loss.item())
        model.eval()
        seconds = time.perf_counter() - start
        accuracy = evaluate(model, test_x, test_y)
        train_accuracy = evaluate(model, train_x, train_y)
    metrics = {
        "variant": variant, "seed": seed, "split_seed": split_seed,
        "held_out_accuracy": accuracy, "train_accuracy": train_accuracy,
        "n_train": len(train_x), "n_test": len(test_x), "steps": total,
        "epochs": round(total / per_epoch, 3), "batch_size": batch_size, "lr": lr,
        "weight_decay": weight_decay, "max_shift": max_shift, "threads": threads,
        "seconds": round(seconds, 3), "final_loss": loss.item(), "torch_version": torch.__version__,
        "architecture": architecture_id(model),
    }
    log.info("%s (seed %d): held-out accuracy %.2f%% after %d steps in %.1f s",
             _variant(variant).label, seed, 100 * accuracy, total, seconds)
    return model, metrics


# -- the cache ---------------------------------------------------------------------------


def cached_weights_path(variant: str = "a", seed: int | None = None,
                        root: str | os.PathLike | None = None) -> Path:
    """Where the weights of a trained demo network are cached: ``<root>/demo/<stem>_seed<seed>.pt``
    (``root`` None: :func:`common.files.cache_dir`)."""
    spec = _variant(variant)
    seed = spec.seed if seed is None else int(seed)
    return Path(root if root is not None else cache_dir()) / "demo" / f"{spec.stem}_seed{seed}.pt"


@contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Fixed thread count, deterministic algorithms and a forked random state for the
    block; the caller's thread count, flag and random state come back afterwards."""
    old_threads = torch.get_num_threads()
    old_deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.set_num_threads(old_threads)
            torch.use_deterministic_algorithms(old_deterministic)


#: The /proc/cpuinfo flags that decide which SIMD code paths torch and its math libraries take.
_SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw",
               "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
               "amx_int8", "asimd", "sve", "sve2")


def _cpuinfo(path: str | os.PathLike = "/proc/cpuinfo") -> tuple[str | None, list[str] | None]:
    """(CPU model name, the SIMD flags among :data:`_SIMD_FLAGS`) from ``/proc/cpuinfo``;
    (None, None) where it cannot be read (not Linux)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None, None
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if model is None and key in ("model name", "cpu model", "hardware"):
            model = value.strip() or None
        elif flags is None and key in ("flags", "features"):
            present = set(value.split())
            flags = [f for f in _SIMD_FLAGS if f in present]
    return model, flags


def training_environment(threads: int | None = None) -> dict:
    """What a network was trained on, for the JSON beside cached weights: training is
    deterministic per machine but not across CPU kinds (see the module docstring).

    ``threads``: the intra-op thread count the training used (None: torch's current one).
    Keys: ``torch_version``, ``cpu_capability`` (the SIMD level torch dispatches to,
    e.g. "AVX512", "AVX2"), ``machine``, ``cpu_model`` and ``cpu_flags`` (from
    /proc/cpuinfo; null where unreadable), ``python_version``, ``numpy_version``,
    ``threads``.
    """
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):  # pragma: no cover - torch < 2.1
        capability = None
    model, flags = _cpuinfo()
    return {
        "torch_version": torch.__version__,
        "cpu_capability": capability,
        "machine": platform.machine(),
        "cpu_model": model or platform.processor() or None,
        "cpu_flags": flags,
        "python_version": platform.python_version(),
        "numpy_version": np.__version__,
        "threads": int(threads) if threads is not None else torch.get_num_threads(),
        "platform": sys.platform,
    }


def architecture_id(model: nn.Module) -> str:
    """A short fingerprint of a network's layers (its repr): stale caches are retrained."""
    return hashlib.sha256(repr(model).encode()).hexdigest()[:16]


def read_metrics(path: Path) -> dict:
    """The JSON beside cached weights (empty when missing or unreadable)."""
    try:
        return json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}


def load_cached(path: Path, build: Callable[[], nn.Module],
                expect: Mapping[str, str] | None = None) -> tuple[nn.Module, str]:
    """Cached weights into a fresh ``build()``; (model, sha256 of the file).

    Raises WeightsError (a cache miss) when the recorded architecture or any
    ``expect`` entry of the JSON differs, or when the file cannot be read.
    """
    model = build()
    metrics = read_metrics(path)
    wanted = {"architecture": architecture_id(model), **(expect or {})}
    for key, value in wanted.items():
        if metrics.get(key) not in (None, value):
            raise WeightsError(f"{path}: made for another {key} ({metrics[key]}, now {value})")
    blob = path.read_bytes()  # one read: the checksum is that of the weights loaded
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a cache miss
        raise WeightsError(f"{path}: not a PyTorch state dict ({exc})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict")
    load_state(model, state, str(path))
    return model, hashlib.sha256(blob).hexdigest()


def save_cached(path: Path, model: nn.Module, metrics: Mapping) -> str:
    """Cache ``model``'s state dict at ``path`` and ``metrics`` as the JSON beside it (each
    written atomically, the JSON first); returns the sha256 of the weights file."""
    buffer = io.BytesIO()  # not torch.save(path): the archive name would follow the file name
    torch.save(model.state_dict(), buffer)
    blob = buffer.getvalue()
    atomic_write_text(path.with_suffix(".json"), json.dumps(metrics, indent=2, sort_keys=True)
                      + "\n")
    atomic_write_bytes(path, blob)
    return hashlib.sha256(blob).hexdigest()  # the bytes just written: no second read


def _trained(variant: str, seed: int | None, root: str | os.PathLike | None) -> tuple[TappedNet, str]:
    spec = _variant(variant)
    seed = spec.seed if seed is None else int(seed)
    path = cached_weights_path(variant, seed, root)
    with file_lock(path):   # another process training the same network: wait, then load
        return _trained_locked(spec, variant, seed, path)


def _trained_locked(spec: _Variant, variant: str, seed: int, path: Path
                    ) -> tuple[TappedNet, str]:
    if path.exists():
        try:
            # a cache trained with another thread count is another network: train again
            model, checksum = load_cached(path, spec.build, {"threads": TRAINING_THREADS})
        except WeightsError as exc:
            log.warning("%s: cached weights unusable, training again: %s", spec.label, exc)
        else:
            accuracy = read_metrics(path).get("held_out_accuracy", float("nan"))
            log.info("%s (seed %d): loaded cached weights %s (held-out accuracy %.2f%%)",
                     spec.label, seed, path, 100 * accuracy)
            return model.eval(), checksum
    log.info("%s (seed %d): no cached weights, training (cached at %s)", spec.label, seed,
             path)
    model, metrics = train_demo_network(seed, variant=variant)
    metrics = {**metrics, "trained_on": training_environment(metrics.get("threads"))}
    return model.eval(), save_cached(path, model, metrics)


def trained_demo_network(seed: int = 0, cache_dir: str | os.PathLike | None = None,
                         ) -> tuple[TappedNet, str]:
    """The trained :func:`demo_network` in eval mode and the sha256 of its cached weights file.

    Trains on first use (:func:`train_demo_network`) and caches the state dict
    and a JSON of the training figures and of what trained it (``"trained_on"``,
    :func:`training_environment`); later calls load the cache, with or without
    that key.
    ``cache_dir`` None: :func:`common.files.cache_dir`.
    """
    return _trained("a", seed, cache_dir)


def trained_independent_network(seed: int = 1, cache_dir: str | os.PathLike | None = None,
                                ) -> tuple[TappedNet, str]:
    """The trained :func:`independent_network` (the independent classifier), as above."""
    return _trained("b", seed, cache_dir)


def trained_digits_resnet(seed: int = 2, cache_dir: str | os.PathLike | None = None,
                                  ) -> nn.Module:
    """The trained :class:`generator.digits_resnet.DigitsResNet` (10 epochs of the same
    recipe; trained on first use, then cached), in eval mode, with the attributes a
    network reference reads: ``preprocessing`` (:data:`DEMO_PREPROCESSING`) and
    ``weights_sha256`` (its cached weights file's)."""
    model, checksum = _trained("resnet", seed, cache_dir)
    model.preprocessing = DEMO_PREPROCESSING
    model.weights_sha256 = checksum
    return model
