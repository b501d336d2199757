"""A simulated participant who looks at panels with an independent classifier.

The demo study's simulated participants (``python -m server.simulate --rater
generator.rater:demo_rater``) answer the study's question, "Can you identify
multiple examples of an everyday object, place or animal?", from the panel image the
server sends them, as a person would from what they see:

1. The panel is cut into its tiles along the separating lines of the grid
   (:func:`split_grid`; 10x10 for AM panels, 4x5 for practice panels).
2. Each tile is shown to a classifier that is not the network under study (the
   demo's second classifier, :func:`generator.demo.trained_demo_network_b`). A tile
   counts as a recognisable example of class ``c`` only when the classifier is
   confident (``p_c >= confidence``) *and* the tile looks like the real images of
   ``c``: its penultimate-layer features lie within the ``typicality`` quantile of
   the real training images' Mahalanobis distances to the class mean (a shared
   covariance, as in Lee et al. 2018, "A simple unified framework for detecting
   out-of-distribution samples"). A confident label on an image that looks like no
   real digit is what a classifier gives and a person does not.
3. The participant answers yes when the most often recognised class covers at least
   their own share of the tiles (each participant draws a criterion between
   ``min_share`` and ``max_share``), and names it in one of the ways people write a
   digit ("seven", "7", "the number seven"...). With probability ``lapse`` they
   answer at random instead.

:meth:`ClassifierRater.judge` gives the per-panel figures (tiles recognised per
class) and is cached by image content, so many participants cost one look per panel.
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
from PIL import Image
from torch import nn

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


def split_grid(image: np.ndarray, background_min: int = 235) -> list[np.ndarray]:
    """The tiles of a panel drawn by :func:`generator.panels.grid`, row by row.

    Separators are the full-height columns and full-width rows whose pixels are all
    light (>= ``background_min``, allowing for JPEG). A panel without them is one tile.
    """
    gray = image if image.ndim == 2 else image.mean(axis=2)
    light = gray >= background_min

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

    rows = spans(light.all(axis=1))
    cols = spans(light.all(axis=0))
    return [image[r0:r1, c0:c1] for r0, r1 in rows for c0, c1 in cols]


@dataclass(frozen=True)
class Judgement:
    """What the classifier makes of one panel."""

    n_tiles: int
    recognised: tuple[int, ...]  # tiles recognised as each class
    confident: tuple[int, ...]  # tiles the classifier is confident about, typical or not

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
                 feature_tap: str = "fc7", confidence: float = 0.9, typicality: float = 0.99,
                 min_share: float = 0.15, max_share: float = 0.35, lapse: float = 0.02):
        self.classifier = classifier.eval()
        self.to_input = to_input  # list of uint8 tiles -> (N, C, H, W) classifier input
        self.names = [tuple(n) for n in names]
        self.feature_tap = feature_tap
        self.confidence = confidence
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
        self.limits = torch.stack([torch.quantile(own[labels == c], typicality)
                                   for c in range(k)])

    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = self.classifier(x, [self.feature_tap, "prob"])
        return outs[self.feature_tap].flatten(1), outs["prob"]

    def _distances(self, feats: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of each row to each class mean, (N, K)."""
        diff = feats[:, None, :] - self.means[None, :, :]
        return torch.einsum("nkd,de,nke->nk", diff, self.precision, diff).clamp_min(0).sqrt()

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
                feats, prob = self._features(self.to_input(tiles))
                p, cls = prob.max(1)
                dist = self._distances(feats.double())[torch.arange(len(cls)), cls]
                sure = p >= self.confidence
                typical = sure & (dist <= self.limits[cls])
                judgement = Judgement(
                    len(tiles),
                    tuple(int(((cls == c) & typical).sum()) for c in range(k)),
                    tuple(int(((cls == c) & sure).sum()) for c in range(k)))
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


def demo_rater(**settings: Any) -> ClassifierRater:
    """The demo study's rater: the demo's second classifier (another architecture and seed
    than the network under study), with the real training digits as its idea of typical."""
    from .demo import (
        DIGITS_MEAN,
        DIGITS_SIZE,
        DIGITS_STD,
        load_digits_tensors,
        trained_demo_network_b,
    )

    classifier, _ = trained_demo_network_b()

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
