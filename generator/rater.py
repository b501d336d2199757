"""A simulated participant who looks at panels with an independent classifier.

The demo study's simulated participants (``selectivity simulate --rater
generator.rater:demo_rater``, i.e. ``python -m experiment.simulate``) answer the study's question, "Can you identify
multiple examples of an everyday object, place or animal?", from the panel image the
server sends them, as a person would from what they see:

1. The panel is cut into its tiles along the separating lines of the grid
   (:func:`split_grid`; 10x10 for AM panels, 4x5 for practice panels).
2. Each tile is shown to a classifier that is not the network under study (the
   demo's independent classifier, :func:`generator.digits.trained_independent_network`). A tile
   counts as a recognisable example of class ``c`` only when all three hold:

   a. the classifier is confident: ``p_c >= confidence``;
   b. the tile looks like the real images of ``c`` to the classifier: its
      penultimate-layer (``fc7``) features lie within the ``typicality`` quantile of
      the real training images' Mahalanobis distances to the class mean (a shared
      covariance, as in Lee et al. 2018, "A simple unified framework for detecting
      out-of-distribution samples");
   c. the tile is a figure on a digit's ground: its pixels, averaged to the digits'
      own 8x8 resolution (``ground_resolution``) and sorted, have a darker half (the
      ground, wherever it lies) within the ``typicality`` quantile of the real
      training images' Mahalanobis distances to their mean (one Gaussian for all
      digits, its covariance shrunk towards ``ground_shrinkage`` times the mean
      variance).

   A confident label on an image that looks like no real digit is what a classifier
   gives and a person does not.
3. The participant answers yes when the most often recognised class covers at least
   their own share of the tiles (each participant draws a criterion between
   ``min_share`` and ``max_share``), and names it in one of the ways people write a
   digit ("seven", "7", "the number seven"...). With probability ``lapse`` they
   answer at random instead.

:meth:`ClassifierRater.judge` gives the per-panel figures (tiles recognised per
class) and is cached by image content, so many participants cost one look per panel.

Why three checks, and (c) in pixel space. (a) and (b) are properties of one set of
trained weights, and the weights differ between CPU kinds and thread counts (see
:mod:`generator.digits`). With the default seed's weights trained on one machine (2
threads, AVX-512) 35-43% of random-noise tiles are a confident "eight" that passes
(b); on a 2-core AMD EPYC its own weights called 29% so; other weights 0-20%.
(b) cannot see noise with any weights tried: the deep features of noise are weak
(``fc7`` norm about 14, against 34-62 for the class means of real digits), so noise
lies near the origin, nearest the class with the weakest features (eight), and closer
to its mean than most real eights (about 0.8 of the class's 99th-percentile distance,
for every seed tried). A distance to a class mean cannot tell "little evidence of
anything" from "a typical eight": only the classifier's lack of confidence rejected
noise, with the weights where it did.

A person first sees whether a tile is a figure on a ground at all. (c) asks that of
the pixels, with the real digits as the reference and no trained weights, so its
answer is the same on every machine and for every seed. It looks only at the darker
half of the tile, so the figure may be bolder, thinner, shifted or textured (as AM
images are), and only at the digits' resolution, so JPEG ringing and a generator's
fine texture do not count; noise of any grain or brightness has no clean ground.
Measured, in multiples of the limit (the least far tile): uniform pixel noise 16.8,
pixel noise in 0-60 3.9, noise drawn at 8x8 and upsampled 6.6 (in 0-100: 2.9). Real
held-out digits through 8-bit and JPEG pass (98-99%, as the training digits do by
construction), and so do the demo's AM images that (a) and (b) accept: fc8 97%,
fc6 87%, conv5 94%. Measured and not taken: a Gaussian of the full-resolution pixels
rejects every AM image (the generator's fine texture); one of the unsorted 8x8 pixels,
or of the whole sorted profile, rejects 40-80% of the bold AM digits of fc6 units (more
ink than real digits have); a stricter or held-out quantile in (b), the pre-ReLU
``fc7``, or a floor on the features' strength leaves most noise inside; statistics of the
first convolution's maps reject noise too but depend on the weights again.
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .digits import (
    DIGITS_MEAN,
    DIGITS_SIZE,
    DIGITS_STD,
    load_digits_tensors,
    trained_independent_network,
)
from .threads import use_available_cpus

__all__ = ["Judgement", "ClassifierRater", "split_grid", "demo_rater", "DIGIT_WORDS"]

#: How people write each digit (answers are coded against the class names with WordNet;
#: not "number one", which WordNet takes as the idiom: oneself, the best).
DIGIT_WORDS = (
    ("zero", "0", "the number zero", "zeros", "number 0"),
    ("one", "1", "ones", "a one", "the digit 1"),
    ("two", "2", "the number two", "twos", "number 2"),
    ("three", "3", "the number three", "threes", "number 3"),
    ("four", "4", "the number four", "fours", "number 4"),
    ("five", "5", "the number five", "fives", "number 5"),
    ("six", "6", "the number six", "sixes", "number 6"),
    ("seven", "7", "the number seven", "sevens", "number 7"),
    ("eight", "8", "the number eight", "eights", "number 8"),
    ("nine", "9", "the number nine", "nines", "number 9"),
)


def split_grid(image: np.ndarray, background_min: int = 235,
               separator_min: int = 128) -> list[np.ndarray]:
    """The tiles of a panel drawn by :func:`generator.panels.grid`, row by row.

    Separators are the full-height columns and full-width rows that are light: on
    average ``>= background_min`` and nowhere darker than ``separator_min``. Both
    allow for JPEG, whose ringing next to dark tiles darkens a few separator pixels
    (to 230 at quality 85, 180 at 50): a tile that took in such a line would be seen
    with a white bar along its edge. A panel without separators is one tile.
    """
    gray = image if image.ndim == 2 else image.mean(axis=2)

    def light(axis: int) -> np.ndarray:
        return (gray.mean(axis=axis) >= background_min) & (gray.min(axis=axis) >= separator_min)

    def spans(is_gap: np.ndarray) -> list[tuple[int, int]]:
        out, start = [], None
        for i, gap in enumerate(is_gap):
            if not gap and start is None:
                start = i
            elif gap and start is not None:
                out.append((start, i))
                start = None
        if start is not None:
            out.append((start, len(is_gap)))
        return out

    rows = spans(light(1))
    cols = spans(light(0))
    return [image[r0:r1, c0:c1] for r0, r1 in rows for c0, c1 in cols]


@dataclass(frozen=True)
class Judgement:
    """What the classifier makes of one panel."""

    n_tiles: int
    recognised: tuple[int, ...]  # tiles recognised as each class
    confident: tuple[int, ...]  # tiles the classifier is confident about, typical or not
    on_ground: int = 0  # tiles that are a figure on a digit's ground (check c), any class

    @property
    def best(self) -> int:
        """The most often recognised class (lowest index on ties)."""
        return int(np.argmax(self.recognised))

    @property
    def share(self) -> float:
        """Share of the tiles recognised as :attr:`best`."""
        return self.recognised[self.best] / self.n_tiles if self.n_tiles else 0.0


class ClassifierRater:
    """``rater(panel, image_bytes, rng) -> (yes, text)`` for :mod:`server.simulate`."""

    def __init__(self, classifier: nn.Module, to_input, real_images: torch.Tensor,
                 real_labels: torch.Tensor, names: Sequence[Sequence[str]], *,
                 feature_tap: str = "fc7", confidence: float = 0.9,
                 typicality: float | None = 0.99, ground_resolution: int = 8,
                 ground_shrinkage: float = 0.1,
                 min_share: float = 0.15, max_share: float = 0.35, lapse: float = 0.02):
        """``typicality`` None: no typicality checks, (b) and (c) of the module docstring:
        a tile counts whenever the classifier is confident (for tests and comparisons)."""
        self.classifier = classifier.eval()
        self.to_input = to_input  # list of uint8 tiles -> (N, C, H, W) classifier input
        self.names = [tuple(n) for n in names]
        self.feature_tap = feature_tap
        self.confidence = confidence
        self.typicality = typicality
        self.min_share, self.max_share, self.lapse = min_share, max_share, lapse
        self._lock = threading.Lock()
        self._cache: dict[str, Judgement] = {}
        feats = self._features(real_images)[0].double()
        labels = real_labels.long()
        k = len(self.names)
        self.means = torch.stack([feats[labels == c].mean(0) for c in range(k)])
        centred = feats - self.means[labels]
        cov = centred.T @ centred / len(feats)
        cov += 1e-3 * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)
        self.precision = torch.linalg.inv(cov)
        own = self._distances(feats)[torch.arange(len(feats)), labels]
        q = 1.0 if typicality is None else typicality
        self.limits = torch.stack([torch.quantile(own[labels == c], q) for c in range(k)])
        # (c): one Gaussian of the real images' grounds, the covariance shrunk
        self.ground_resolution = ground_resolution
        ground = self.grounds(real_images)
        self.ground_mean = ground.mean(0)
        centred = ground - self.ground_mean
        cov = centred.T @ centred / len(ground)
        cov += ground_shrinkage * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)
        self.ground_precision = torch.linalg.inv(cov)
        self.ground_limit = torch.quantile(self.ground_distances(real_images), q)

    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = self.classifier(x, [self.feature_tap, "prob"])
        return outs[self.feature_tap].flatten(1), outs["prob"]

    def _distances(self, feats: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of each row to each class mean, (N, K)."""
        diff = feats[:, None, :] - self.means[None, :, :]
        return torch.einsum("nkd,de,nke->nk", diff, self.precision, diff).clamp_min(0).sqrt()

    def grounds(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier inputs (N, C, H, W) -> the darker half of their pixels averaged to
        ``ground_resolution`` squared (and over channels), sorted: (N, side ** 2 // 2)."""
        side = self.ground_resolution
        coarse = F.adaptive_avg_pool2d(x.double().mean(1, keepdim=True), side)
        return coarse.flatten(1).sort(dim=1).values[:, :side * side // 2]

    def ground_distances(self, x: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of each input's ground to the real digits' mean, (N,):
        check (c) passes within :attr:`ground_limit`. It depends on the data, not on the
        classifier's weights."""
        diff = self.grounds(x) - self.ground_mean
        return torch.einsum("nd,de,ne->n", diff, self.ground_precision, diff).clamp_min(0).sqrt()

    def judge(self, image_bytes: bytes) -> Judgement:
        key = hashlib.sha256(image_bytes).hexdigest()
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            with Image.open(io.BytesIO(image_bytes)) as im:
                pixels = np.asarray(im.convert("RGB"))
            tiles = split_grid(pixels)
            k = len(self.names)
            if not tiles:
                judgement = Judgement(0, (0,) * k, (0,) * k)
            else:
                x = self.to_input(tiles)
                feats, prob = self._features(x)
                p, cls = prob.max(1)
                dist = self._distances(feats.double())[torch.arange(len(cls)), cls]
                sure = p >= self.confidence
                on_ground = self.ground_distances(x) <= self.ground_limit
                if self.typicality is None:
                    typical = sure
                else:
                    typical = sure & (dist <= self.limits[cls]) & on_ground
                judgement = Judgement(
                    len(tiles),
                    tuple(int(((cls == c) & typical).sum()) for c in range(k)),
                    tuple(int(((cls == c) & sure).sum()) for c in range(k)),
                    int(on_ground.sum()))
            self._cache[key] = judgement
            return judgement

    def __call__(self, panel: dict[str, Any], image: bytes | None,
                 rng: random.Random) -> tuple[bool, str | None]:
        if image is None:
            raise ValueError("the classifier rater needs the panel images (fetch_images)")
        judgement = self.judge(image)
        if rng.random() < self.lapse:
            c = rng.randrange(len(self.names))
            return (rng.random() < 0.5), rng.choice(self.names[c])
        criterion = rng.uniform(self.min_share, self.max_share)
        if judgement.share >= criterion:
            return True, rng.choice(self.names[judgement.best])
        return False, None


def demo_rater(seed: int | None = None, cache_dir: str | None = None,
               **settings: Any) -> ClassifierRater:
    """The demo study's rater: the demo's independent classifier (another architecture and
    seed than the network under study), with the real training digits as its idea of typical.

    ``seed``: the independent classifier's training seed (None: its default);
    ``cache_dir``: where it is cached (None: :func:`common.files.cache_dir`);
    ``settings``: :class:`ClassifierRater`'s keywords."""
    # the process that loads the rater (experiment.simulate's) runs torch on the CPUs it may
    # use, as the command-line tools do, never on os.cpu_count()'s
    use_available_cpus()
    if seed is None:
        classifier, _ = trained_independent_network(cache_dir=cache_dir)
    else:
        classifier, _ = trained_independent_network(seed, cache_dir=cache_dir)

    def to_input(tiles: list[np.ndarray]) -> torch.Tensor:
        rows = []
        for tile in tiles:
            gray = Image.fromarray(tile).convert("L").resize((DIGITS_SIZE, DIGITS_SIZE),
                                                             Image.BILINEAR)
            rows.append(torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0))
        x = torch.stack(rows)[:, None]
        return (x - DIGITS_MEAN) / DIGITS_STD

    images, labels = load_digits_tensors("train")
    return ClassifierRater(classifier, to_input, images, labels, DIGIT_WORDS, **settings)
