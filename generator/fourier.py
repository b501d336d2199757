"""Activation maximization without a generator: a decorrelated Fourier image
parameterisation, random transformations each step, Adam (Olah, Mordvintsev & Schubert,
"Feature Visualization", Distill 2017). The panel method ``--method fourier`` of
:mod:`generator.am` (docs/networks.md, "Panel methods").

Small composable callables, as in lucid (``tensorflow/lucid``, ``lucid/optvis``) and its
PyTorch port lucent (``greentfrapp/lucent``, ``lucent/optvis``), whose choices are kept
where they fix one:

* **the parameterisation** (:func:`image_param`; lucent ``param/spatial.py``
  ``fft_image`` and ``param/color.py`` ``to_valid_rgb``). An image is its 2-d real
  spectrum (``(B, C, H, W // 2 + 1)`` complex numbers, stored as real and imaginary
  parts, drawn N(0, 0.01^2)), each frequency ``f`` (cycles per pixel,
  ``sqrt(fx^2 + fy^2)``) scaled by ``1 / max(f, 1 / max(H, W)) ** decay_power``
  (:func:`spectrum_scale`: 1/f, with the constant term and the lowest frequencies
  floored at ``1 / max(H, W)``, so they get ``max(H, W)``; ``decay_power`` 1), turned
  into pixels by the orthonormal inverse real FFT and divided by 4 (lucid's constant).
  For odd widths lucid keeps one frequency more and crops a pixel; here the inverse
  FFT is told the width, which spans the same images. Then, for RGB networks, the
  colour decorrelation: each pixel's three values ``d`` (decorrelated channels) become
  ``rgb = M d`` with ``M`` = :data:`COLOR_CORRELATION_SVD_SQRT` (the square root of
  ImageNet's colour correlation matrix, lucid's ``color_correlation_svd_sqrt``) divided
  by its largest column norm (:data:`COLOR_CORRELATION_NORMALIZED`): ``d = (1, 0, 0)``,
  the first decorrelated channel, is close to equal parts of R, G and B (brightness).
  One-channel networks (the demo's digits) get no colour decorrelation: there is no
  colour to decorrelate. Finally a sigmoid maps to [0, 1]: the image, RGB (or grey),
  as it is saved and shown.
* **the transforms** (:func:`standard_transforms`; lucent ``transform.py``
  ``standard_transforms``): pad 12 px with 0.5, jitter 8 px, scale by one of
  0.90, 0.92, ..., 1.10, rotate by one of -10 ... 10 degrees (0 five times more often),
  jitter 4 px; pixel sizes are lucid's for 224-px inputs, scaled by ``input size / 224``
  (at least one pixel of padding and two jitter positions: the demo's 32 px get pad 2,
  jitter 2 and 2). Unlike lucid, every transform keeps the canvas size (translations,
  scaling and rotation about the centre, filling with the pad value 0.5), and the
  network sees the centre window of its input size (:func:`centre_crop`): lucid's
  networks took any size, ours have fixed fully connected layers. Every random choice is
  drawn per image from the image's own generator (lucid draws one per batch), so an
  image does not depend on the images beside it in a batch.
* **the network's own preprocessing**, applied differentiably (:func:`preprocess_fn`:
  0-255 times its scale, RGB to BGR where the network wants it, minus its mean, divided
  by its standard deviation), as lucent applies torchvision's normalisation.
* **objectives** (lucent ``objectives.py``): :func:`unit_objective`, a unit's value per
  image: an fc unit's value, a conv unit's channel at one location (PPGN's convention
  here: the centre of the map, pre-ReLU, :func:`generator.ppgn.target_for`) or its
  channel mean (``location=None``); :func:`diversity`, lucid's diversity term: minus the
  cosine similarity of the Gram matrices of a layer's activations, summed over pairs of
  images of the same unit, divided by the batch size; :func:`combine` weighs them.
* **the loop** (:func:`optimise`; lucent ``render.render_vis``): Adam (lr 0.05) on the
  spectrum for 512 steps, maximising the objective's sum over the batch (the rows do not
  interact, except through the diversity term); it neither saves nor prints, and returns
  the images (B, C, H, W) in [0, 1].

:func:`render` puts these together for images of given (unit, index) pairs, each from
its own seed (:func:`image_seed`); :mod:`generator.am` writes the files.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "COLOR_CORRELATION_SVD_SQRT",
    "COLOR_CORRELATION_NORMALIZED",
    "LUCID_SIZE",
    "rfft2d_freqs",
    "spectrum_scale",
    "fft_image",
    "decorrelate_colors",
    "to_valid_image",
    "image_param",
    "Transform",
    "pad",
    "jitter",
    "random_scale",
    "random_rotate",
    "centre_crop",
    "compose",
    "standard_transforms",
    "preprocess_fn",
    "unit_objective",
    "unit_probability",
    "diversity",
    "combine",
    "optimise",
    "image_seed",
    "Settings",
    "render",
]

#: lucid's ``color_correlation_svd_sqrt`` (rows R, G, B): the square root of the colour
#: correlation matrix of ImageNet's pixels, from its singular value decomposition.
COLOR_CORRELATION_SVD_SQRT = np.asarray([[0.26, 0.09, 0.02],
                                         [0.27, 0.00, -0.05],
                                         [0.27, -0.09, 0.03]], dtype=np.float32)
#: :data:`COLOR_CORRELATION_SVD_SQRT` divided by its largest column norm: the matrix that
#: maps a pixel's decorrelated values ``d`` to RGB, ``rgb = M @ d``.
COLOR_CORRELATION_NORMALIZED = (COLOR_CORRELATION_SVD_SQRT
                                / np.max(np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0)))
#: The input size lucid's pixel sizes are for (pad, jitter): GoogLeNet's 224.
LUCID_SIZE = 224
#: lucid's constant: the inverse FFT's output is divided by it ("reduces saturation").
_FFT_DIVISOR = 4.0

ImageFn = Callable[[], torch.Tensor]
Rngs = Sequence[torch.Generator]
#: A transform: images (B, C, H, W) and one generator per image -> images.
Transform = Callable[[torch.Tensor, Rngs], torch.Tensor]
#: An objective: the taps' activations {tap: (B, ...)} -> a scalar to maximise.
Objective = Callable[[dict], torch.Tensor]


# -- the parameterisation ---------------------------------------------------------------


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """(h, w // 2 + 1): each frequency of a real 2-d FFT, in cycles per pixel."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def spectrum_scale(h: int, w: int, decay_power: float = 1.0) -> torch.Tensor:
    """(h, w // 2 + 1): ``1 / max(f, 1 / max(h, w)) ** decay_power`` (lucid's 1/f scaling:
    every frequency f at or below the floor ``1 / max(h, w)``, the constant term among
    them, gets ``max(h, w) ** decay_power``)."""
    floor = 1.0 / max(h, w)
    return torch.from_numpy(1.0 / np.maximum(rfft2d_freqs(h, w), floor) ** decay_power).float()


def fft_image(shape: tuple[int, int, int, int], rngs: Rngs | None = None, *,
              sd: float = 0.01, decay_power: float = 1.0,
              device: str | torch.device = "cpu") -> tuple[list[torch.Tensor], ImageFn]:
    """([spectrum], image function): images (B, C, H, W) from a scaled spectrum.

    The spectrum (B, C, H, W // 2 + 1, 2: real and imaginary parts) is drawn N(0, sd^2),
    row b from ``rngs[b]`` (torch's global generator without ``rngs``)."""
    b, c, h, w = shape
    size = (c, h, w // 2 + 1, 2)
    if rngs is None:
        init = torch.randn(b, *size)
    else:
        if len(rngs) != b:
            raise ValueError(f"{len(rngs)} generators for a batch of {b}")
        init = torch.stack([torch.randn(*size, generator=g) for g in rngs])
    spectrum = (init * sd).to(device).requires_grad_(True)
    scale = spectrum_scale(h, w, decay_power).to(device)[None, None, :, :, None]

    def image() -> torch.Tensor:
        scaled = torch.view_as_complex((scale * spectrum).contiguous())
        return torch.fft.irfftn(scaled, s=(h, w), dim=(-2, -1), norm="ortho") / _FFT_DIVISOR

    return [spectrum], image


def decorrelate_colors(t: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) decorrelated channels -> RGB: ``rgb = M @ d`` per pixel with ``M`` =
    :data:`COLOR_CORRELATION_NORMALIZED`."""
    m = torch.as_tensor(COLOR_CORRELATION_NORMALIZED, dtype=t.dtype, device=t.device)
    return torch.einsum("ij,bjhw->bihw", m, t)


def to_valid_image(image: ImageFn, decorrelate: bool) -> ImageFn:
    """lucid's ``to_valid_rgb``: colour decorrelation (when asked), then a sigmoid."""

    def valid() -> torch.Tensor:
        t = image()
        return torch.sigmoid(decorrelate_colors(t) if decorrelate else t)

    return valid


def image_param(shape: tuple[int, int, int, int], rngs: Rngs | None = None, *,
                decorrelate: bool | None = None, decay_power: float = 1.0, sd: float = 0.01,
                device: str | torch.device = "cpu") -> tuple[list[torch.Tensor], ImageFn]:
    """(parameters, image function): lucid's default image, a decorrelated Fourier
    parameterisation with a sigmoid, images (B, C, H, W) in [0, 1].
    ``decorrelate`` None: colour decorrelation for 3 channels, none for 1."""
    channels = shape[1]
    if decorrelate is None:
        decorrelate = channels == 3
    if decorrelate and channels != 3:
        raise ValueError(f"colour decorrelation needs 3 channels, not {channels}")
    params, image = fft_image(shape, rngs, sd=sd, decay_power=decay_power, device=device)
    return params, to_valid_image(image, decorrelate)


# -- transforms ---------------------------------------------------------------------------


def _randint(rngs: Rngs, n: int, device) -> torch.Tensor:
    """(B,) integers in [0, n), each from its image's generator."""
    return torch.cat([torch.randint(n, (1,), generator=g) for g in rngs]).to(device)


def pad(width: int, value: float = 0.5) -> Transform:
    """Pad ``width`` pixels on every side with ``value`` (lucid: 12 px of 0.5)."""

    def transform(x: torch.Tensor, rngs: Rngs) -> torch.Tensor:
        return F.pad(x, [width] * 4, mode="constant", value=value) if width > 0 else x

    return transform


def jitter(d: int, fill: float = 0.5) -> Transform:
    """Shift each image by whole pixels, dx and dy each one of ``d`` positions around
    none (-(d // 2) ... (d - 1) // 2: lucid's random crop of ``size - d + 1``, centred),
    keeping the size, filling with ``fill``."""

    def transform(x: torch.Tensor, rngs: Rngs) -> torch.Tensor:
        if d <= 1:
            return x
        h, w = x.shape[-2:]
        m = d // 2
        padded = F.pad(x, [m, d - 1 - m] * 2, mode="constant", value=fill)
        shift = torch.stack([_randint(rngs, d, "cpu") for _ in range(2)], 1).tolist()
        return torch.stack([p[:, dy:dy + h, dx:dx + w] for p, (dy, dx) in zip(padded, shift,
                                                                             strict=True)])

    return transform


def _affine(x: torch.Tensor, matrices: torch.Tensor, fill: float) -> torch.Tensor:
    """Resample each image (bilinear) at ``matrices`` (B, 2, 3) applied to the output's
    coordinates (normalised, about the centre), outside the image ``fill``."""
    grid = F.affine_grid(matrices.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) + fill


def random_scale(scales: Sequence[float], fill: float = 0.5) -> Transform:
    """Scale each image about its centre by one of ``scales`` (lucid: 0.90 ... 1.10),
    keeping the size (a larger image is cropped, a smaller one surrounded by ``fill``)."""
    values = torch.tensor([float(s) for s in scales])

    def transform(x: torch.Tensor, rngs: Rngs) -> torch.Tensor:
        s = values[_randint(rngs, len(values), "cpu")].to(x.device)
        eye = torch.zeros(len(x), 2, 3, device=x.device)
        eye[:, 0, 0] = eye[:, 1, 1] = 1 / s
        return _affine(x, eye, fill)

    return transform


def random_rotate(angles: Sequence[float], fill: float = 0.5) -> Transform:
    """Rotate each image about its centre by one of ``angles`` (degrees; lucid: -10 ...
    10, with 0 five times more), keeping the size, corners filled with ``fill``."""
    values = torch.tensor([float(a) for a in angles]) * (math.pi / 180)

    def transform(x: torch.Tensor, rngs: Rngs) -> torch.Tensor:
        a = values[_randint(rngs, len(values), "cpu")]
        cos, sin = torch.cos(a), torch.sin(a)
        h, w = x.shape[-2:]
        m = torch.zeros(len(x), 2, 3)
        # normalised coordinates: x in [-1, 1] spans w pixels, y spans h; rotate in pixels
        m[:, 0, 0], m[:, 0, 1] = cos, -sin * h / w
        m[:, 1, 0], m[:, 1, 1] = sin * w / h, cos
        return _affine(x, m.to(x.device), fill)

    return transform


def centre_crop(h: int, w: int) -> Transform:
    """The centre ``h`` x ``w`` window (what a fixed-size network sees)."""

    def transform(x: torch.Tensor, rngs: Rngs) -> torch.Tensor:
        top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
        if top < 0 or left < 0:
            raise ValueError(f"cannot crop {h}x{w} from {tuple(x.shape[-2:])}")
        return x[..., top:top + h, left:left + w]

    return transform


def compose(transforms: Sequence[Transform]) -> Transform:
    """The transforms one after the other."""

    def transform(x: torch.Tensor, rngs: Rngs) -> torch.Tensor:
        for t in transforms:
            x = t(x, rngs)
        return x

    return transform


def standard_transforms(size: tuple[int, int], fill: float = 0.5) -> Transform:
    """lucid's ``standard_transforms`` scaled to an input of ``size`` (h, w) (module
    docstring), then the centre window of ``size``."""
    h, w = size
    k = max(h, w) / LUCID_SIZE
    width = max(1, round(12 * k))
    return compose([
        pad(width, fill),
        jitter(max(2, round(8 * k)), fill),
        random_scale([1 + (i - 5) / 50 for i in range(11)], fill),
        random_rotate(list(range(-10, 11)) + 5 * [0], fill),
        jitter(max(2, round(4 * k)), fill),
        centre_crop(h, w),
    ])


# -- the network's preprocessing ----------------------------------------------------------


def preprocess_fn(preprocessing) -> Callable[[torch.Tensor], torch.Tensor]:
    """Images in [0, 1] (RGB or grey) -> the network's input, differentiably: times 255
    times ``preprocessing.scale``, in its channel order, minus its mean, divided by its
    standard deviation (a :class:`generator.networks.Preprocessing`; its resizing and
    cropping are for files and do not apply)."""
    scale = 255.0 * float(preprocessing.scale)
    bgr = preprocessing.channels == "BGR"
    channels = 1 if preprocessing.channels == "L" else 3
    mean = torch.tensor(_per_channel(preprocessing.mean, channels)).view(1, -1, 1, 1)
    std = torch.tensor(_per_channel(preprocessing.std, channels)).view(1, -1, 1, 1)

    def preprocess(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != channels:
            raise ValueError(f"the network takes {channels} channel(s), the images have "
                             f"{x.shape[1]}")
        x = x * scale
        if bgr:
            x = x.flip(1)
        return (x - mean.to(x)) / std.to(x)

    return preprocess


def _per_channel(values, channels: int) -> list[float]:
    values = [float(v) for v in values]
    return values[:channels] if len(values) >= channels else values * channels


# -- objectives ---------------------------------------------------------------------------


def _at(t: torch.Tensor, location: tuple[int, int] | None) -> torch.Tensor:
    """(B, U) of an fc tap; a conv tap (B, C, H, W) at ``location`` or its spatial mean."""
    if t.ndim == 2:
        return t
    if t.ndim != 4:
        raise ValueError(f"cannot target a tap of shape {tuple(t.shape)}")
    if location is None:
        return t.mean(dim=(2, 3))
    return t[:, :, location[0], location[1]]


def unit_objective(tap: str, units: torch.Tensor,
                   location: tuple[int, int] | None = None) -> Callable[[dict], torch.Tensor]:
    """acts -> (B,): each row's target, unit ``units[row]`` of ``tap``: an fc unit's
    value; a conv channel at ``location`` (PPGN's: the centre), or with None its mean
    over the map (lucid's ``channel``)."""

    def value(acts: dict) -> torch.Tensor:
        t = _at(acts[tap], location)
        return t[torch.arange(len(t), device=t.device), units.to(t.device)]

    return value


def unit_probability(tap: str, units: torch.Tensor,
                     location: tuple[int, int] | None = None) -> Callable[[dict], torch.Tensor]:
    """acts -> (B,): the softmax of each row's target over the layer's units (over the
    channels at ``location``, or of the channel means): PPGN's ``p_k``."""

    def value(acts: dict) -> torch.Tensor:
        t = torch.softmax(_at(acts[tap], location).float(), dim=1)
        return t[torch.arange(len(t), device=t.device), units.to(t.device)]

    return value


def diversity(tap: str, groups: torch.Tensor) -> Callable[[dict], torch.Tensor]:
    """acts -> scalar: lucid's diversity term, minus the summed cosine similarity of the
    Gram matrices (channels x channels, over positions) of ``tap``'s activations for
    every ordered pair of different images of one group (``groups``: (B,) ids, a unit's
    images), divided by the batch size. An fc tap's Gram matrix is the outer product."""

    def value(acts: dict) -> torch.Tensor:
        t = acts[tap]
        flat = t.reshape(len(t), t.shape[1], -1)
        grams = flat @ flat.transpose(1, 2)
        grams = F.normalize(grams.reshape(len(t), -1), p=2, dim=1)
        similarity = grams @ grams.T
        g = groups.to(t.device)
        pairs = (g[:, None] == g[None, :]) & ~torch.eye(len(t), dtype=torch.bool,
                                                        device=t.device)
        return -(similarity * pairs).sum() / len(t)

    return value


def combine(*weighted: tuple[float, Callable[[dict], torch.Tensor]]) -> Objective:
    """The sum of ``weight * term(acts)``, a per-row term averaged over the batch (as
    lucid's objectives average over it: a diversity weight means what it means there)."""

    def value(acts: dict) -> torch.Tensor:
        return sum(w * (t.mean() if (t := term(acts)).ndim else t) for w, term in weighted)

    return value


# -- the loop -----------------------------------------------------------------------------


def optimise(net: nn.Module, objective: Objective, taps: Sequence[str],
             params: Sequence[torch.Tensor], image: ImageFn, *, transform: Transform,
             preprocess: Callable[[torch.Tensor], torch.Tensor], rngs: Rngs,
             steps: int = 512, lr: float = 0.05) -> torch.Tensor:
    """Maximise ``objective`` of ``net``'s ``taps`` over ``params`` with Adam for ``steps``
    steps, each on ``preprocess(transform(image(), rngs))``; returns the images
    (``image()``, untransformed, detached). Saves and prints nothing."""
    optimizer = torch.optim.Adam(params, lr=lr)
    taps = list(dict.fromkeys(taps))
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        acts = net(preprocess(transform(image(), rngs)), taps)
        (-objective(acts)).backward()
        optimizer.step()
    with torch.no_grad():
        return image().detach()


def image_seed(seed: int, layer: str, unit: int, index: int) -> int:
    """A 63-bit seed for one image (its spectrum and its transforms), independent of
    batching: from the SHA-256 of (seed, layer, unit, index)."""
    digest = hashlib.sha256(f"{seed}/fourier/{layer}/{unit}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class Settings:
    """A fourier run's settings (defaults: lucid's; recorded in ``settings_<layer>.json``)."""

    steps: int = 512
    lr: float = 0.05
    decay_power: float = 1.0
    sd: float = 0.01
    decorrelate: bool | None = None  # None: for RGB networks, not for grey ones
    transforms: bool = True  # lucid's standard transforms (scaled to the input size)
    fill: float = 0.5  # the transforms' padding and fill value
    diversity: float = 0.0  # weight of the diversity term (0: none)
    diversity_tap: str | None = None


def render(net: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor], tap: str,
           location: tuple[int, int] | None, items: Sequence[tuple[int, int]], *,
           layer: str, seed: int = 0, settings: Settings | None = None,
           pad_to: int | None = None, device: str | torch.device = "cpu",
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images of ``items`` ((unit, index) pairs) optimised together: (images (B, C, H, W)
    in [0, 1], their targets' activations (B,) and probabilities (B,), measured on the
    final, untransformed images).

    Image (unit, i) starts from, and draws its transforms from, :func:`image_seed`
    (seed, layer, unit, i). Without diversity the rows never meet: the batch is padded
    to ``pad_to`` rows (throwaway images), so an image is the same whatever shares its
    batch. With ``settings.diversity`` the images of one unit in the batch push apart."""
    if not items:
        raise ValueError("no images to render")
    settings = settings or Settings()
    channels, h, w = net.input_shape
    rows = list(items)
    if pad_to is not None and len(rows) < pad_to:
        rows += [(-1, k) for k in range(pad_to - len(rows))]  # throwaway rows
    rngs = [torch.Generator().manual_seed(image_seed(seed, layer, u, i)) for u, i in rows]
    units = torch.tensor([max(u, 0) for u, _ in rows], device=device)
    params, image = image_param((len(rows), channels, h, w), rngs,
                                decorrelate=settings.decorrelate,
                                decay_power=settings.decay_power, sd=settings.sd,
                                device=device)
    terms = [(1.0, unit_objective(tap, units, location))]
    taps = [tap]
    if settings.diversity:
        div_tap = settings.diversity_tap or tap
        groups = torch.tensor([u for u, _ in rows])
        groups = torch.where(groups < 0, -1 - torch.arange(len(rows)), groups)  # pads alone
        terms.append((settings.diversity, diversity(div_tap, groups)))
        taps.append(div_tap)
    transform = standard_transforms((h, w), settings.fill) if settings.transforms \
        else (lambda x, _: x)
    images = optimise(net, combine(*terms), taps, params, image, transform=transform,
                      preprocess=preprocess, rngs=rngs, steps=settings.steps, lr=settings.lr)
    images = images[:len(items)]
    with torch.no_grad():
        acts = net(preprocess(images), [tap])
        activation = unit_objective(tap, units[:len(items)], location)(acts)
        prob = unit_probability(tap, units[:len(items)], location)(acts)
    return images, activation.detach(), prob.detach()
