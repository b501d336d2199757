"""The classifier-based simulated rater (generator/rater.py): tiles, judgements, answers."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from generator.demo import load_digits_raw
from generator.panels import grid
from generator.rater import DIGIT_WORDS, ClassifierRater, demo_rater, split_grid


def jpeg(pixels: np.ndarray, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def digit_tiles(digits: list[int], seed: int = 0) -> np.ndarray:
    """Real held-out digits, as the AM panels draw them: 32x32, white on black."""
    raw, labels = load_digits_raw("test")
    rng = np.random.default_rng(seed)
    tiles = []
    for d in digits:
        i = rng.choice(np.flatnonzero(labels == d))
        small = Image.fromarray((np.asarray(raw[i]).reshape(8, 8) * 255 / 16).astype(np.uint8))
        tiles.append(np.asarray(small.resize((32, 32), Image.BILINEAR)))
    return np.stack(tiles)


def test_split_grid_recovers_every_tile_in_order():
    # dark tiles (as AM images are), each its own level with a smooth gradient: the light
    # separators stand out, and the order shows in the levels
    ramp = np.linspace(0, 30, 30)[None, :, None]
    tiles = np.stack([np.broadcast_to(15 * k + ramp, (20, 30, 3)) for k in range(12)])
    tiles = tiles.astype(np.uint8)
    panel = grid(tiles, 3, 4)
    found = split_grid(np.asarray(Image.open(io.BytesIO(jpeg(panel, 95))).convert("RGB")))
    assert len(found) == 12
    for original, tile in zip(tiles, found, strict=True):
        assert tile.shape == original.shape
        assert np.abs(tile.astype(int) - original.astype(int)).mean() < 3  # JPEG's loss


def test_split_grid_of_an_image_without_separators_is_one_tile():
    image = np.zeros((40, 50, 3), np.uint8)
    assert [t.shape for t in split_grid(image)] == [(40, 50, 3)]


@pytest.fixture(scope="module")
def rater() -> ClassifierRater:
    return demo_rater(lapse=0.0)


def test_a_panel_of_real_sevens_is_recognised(rater):
    panel = grid(digit_tiles([7] * 100), 10, 10)
    judgement = rater.judge(jpeg(panel))
    assert judgement.n_tiles == 100
    assert judgement.best == 7 and judgement.share >= 0.8
    yes, text = rater({"index": 0, "panel_id": "p"}, jpeg(panel), random.Random(0))
    assert yes and text in DIGIT_WORDS[7]


def test_noise_and_mixtures_are_not_interpretable(rater):
    rng = np.random.default_rng(1)
    noise = grid(rng.integers(0, 256, size=(100, 32, 32), dtype=np.uint8), 10, 10)
    assert rater.judge(jpeg(noise)).share < 0.15
    mixed = grid(digit_tiles([d for d in range(10) for _ in range(10)]), 10, 10)
    judgement = rater.judge(jpeg(mixed))
    assert judgement.share <= 0.12  # ten of each digit: no one object repeats enough
    answers = [rater({"index": 0}, jpeg(noise), random.Random(s))[0] for s in range(20)]
    assert not any(answers)


def test_confident_but_atypical_images_do_not_count(rater):
    """A classifier labels anything confidently; the typicality test keeps a person's
    judgement: the top halves of sevens are confidently called nines, but they do not
    look like real nines, and most of them are not counted."""
    sevens = digit_tiles([7] * 100)
    halves = np.concatenate([sevens[:, :16], np.zeros_like(sevens[:, 16:])], axis=1)
    judgement = rater.judge(jpeg(grid(halves, 10, 10)))
    assert judgement.n_tiles == 100
    assert sum(judgement.confident) >= 80
    assert sum(judgement.recognised) <= 35


def test_each_participant_has_their_own_criterion(rater):
    # 25 sevens among 75 noise tiles: a share between the criteria's bounds (0.15-0.35)
    rng = np.random.default_rng(2)
    tiles = np.concatenate([digit_tiles([7] * 25), rng.integers(0, 60, (75, 32, 32),
                                                                 dtype=np.uint8)])
    image = jpeg(grid(tiles, 10, 10))
    share = rater.judge(image).share
    assert 0.15 < share < 0.35
    answers = [rater({"index": 0}, image, random.Random(s))[0] for s in range(200)]
    assert 0.1 < np.mean(answers) < 0.9


def test_judgements_are_cached_by_image(rater):
    image = jpeg(grid(digit_tiles([3] * 9), 3, 3))
    assert rater.judge(image) is rater.judge(image)


def test_the_rater_needs_the_image(rater):
    with pytest.raises(ValueError, match="fetch_images"):
        rater({"index": 0}, None, random.Random(0))


def test_every_way_of_writing_a_digit_codes_to_that_digit_only():
    from analysis.coding import Coder, WordNetError, class_senses_from_names

    try:
        coder = Coder()
    except WordNetError as exc:
        pytest.skip(f"WordNet is not installed: {exc}")
    classes = class_senses_from_names([str(d) for d in range(10)], coder)
    for digit, forms in enumerate(DIGIT_WORDS):
        for text in forms:
            senses = coder.code(text).senses
            matched = [c for c, s in classes.items() if senses & s]
            assert matched == [digit], (text, matched)
