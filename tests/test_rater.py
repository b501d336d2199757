"""The classifier-based simulated rater (generator/rater.py): tiles, judgements, answers.

The demo's independent classifier is trained on first use, and its weights differ between
CPU kinds (generator/digits.py): the tests that use it assert properties that any
reasonably trained instance has, with bounds taken from what the property means (the
participants' criteria, the checks' calibration), not from one set of weights; the
slow test checks them for three training seeds.
"""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from generator.digits import load_digits_raw
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


@pytest.mark.parametrize("quality", [85, 50])
def test_split_grid_sees_through_jpeg_ringing(quality):
    # dark tiles on white separators, as AM panels are: JPEG darkens a few separator
    # pixels next to the tiles (to 234 at quality 85); every tile keeps its size
    rng = np.random.default_rng(0)
    for tiles in (digit_tiles([7] * 100), rng.integers(0, 256, (100, 32, 32), dtype=np.uint8)):
        found = split_grid(np.asarray(Image.open(io.BytesIO(jpeg(grid(tiles, 10, 10), quality)))))
        assert [t.shape for t in found] == [(32, 32)] * 100


def test_split_grid_of_an_image_without_separators_is_one_tile():
    image = np.zeros((40, 50, 3), np.uint8)
    assert [t.shape for t in split_grid(image)] == [(40, 50, 3)]


@pytest.fixture(scope="module")
def rater() -> ClassifierRater:
    return demo_rater(lapse=0.0)


def noise_panel(seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    return jpeg(grid(rng.integers(0, 256, size=(100, 32, 32), dtype=np.uint8), 10, 10))


def mixed_panel() -> bytes:
    return jpeg(grid(digit_tiles([d for d in range(10) for _ in range(10)]), 10, 10))


def sevens_panel() -> bytes:
    return jpeg(grid(digit_tiles([7] * 100), 10, 10))


def halves_panel() -> bytes:
    """The top halves of real sevens: confidently called nines, but no real nine."""
    sevens = digit_tiles([7] * 100)
    return jpeg(grid(np.concatenate([sevens[:, :16], np.zeros_like(sevens[:, 16:])], axis=1),
                     10, 10))


def assert_real_sevens_are_sevens(rater: ClassifierRater) -> None:
    judgement = rater.judge(sevens_panel())
    assert judgement.n_tiles == 100 and judgement.best == 7, judgement
    # Every participant says "seven" when the share reaches their criterion (at most
    # max_share, 0.35); asked: twice that. Each check keeps 99% of the training digits
    # by construction; these are held-out sevens through 8-bit and JPEG, 100 draws from
    # only 36 distinct ones: the six sets of weights tried (seeds 1-3, trained with 1
    # and 2 threads) counted 84-100 of them.
    assert judgement.share >= 2 * rater.max_share, judgement


def assert_noise_and_mixtures_are_not_interpretable(rater: ClassifierRater) -> None:
    noise = rater.judge(noise_panel())
    # Check (c) depends on the data, not on the weights: every noise tile lies far outside
    # the real digits (at least 16 times the limit), so none can count, on any machine,
    # whatever the classifier says (the weights tried called 0-45 of them "eight").
    assert noise.on_ground == 0 and sum(noise.recognised) == 0, noise
    # The property that matters: no participant's criterion (>= min_share) is met.
    assert noise.share < rater.min_share, noise
    mixed = rater.judge(mixed_panel())
    # Ten of each digit: one digit fills 10% of the panel, plus what the classifier
    # confuses; no participant's criterion is met (the weights tried: 10-11%).
    assert mixed.share < rater.min_share, mixed
    assert sum(mixed.recognised) >= 50, mixed  # real digits are still seen, just not one


def assert_atypical_tiles_mostly_do_not_count(rater: ClassifierRater) -> None:
    halves = rater.judge(halves_panel())
    assert halves.n_tiles == 100
    # The classifier must be confident on enough halves for the test to test anything
    # (15, the lowest criterion; the six sets of weights tried: 50-95)
    assert sum(halves.confident) >= 100 * rater.min_share, halves
    # The typicality checks turn away a good share of the confidently labelled halves:
    # at most three quarters count. Without the checks all would. (The seven sets of
    # weights tried counted 19-65%: 19-44% for the six trained on an Intel Xeon with
    # AVX-512, 65% for seed 3 trained on an AMD EPYC, the same recipe rounding otherwise.)
    assert sum(halves.recognised) <= 0.75 * sum(halves.confident), halves


def test_a_panel_of_real_sevens_is_recognised(rater):
    assert_real_sevens_are_sevens(rater)
    yes, text = rater({"index": 0, "panel_id": "p"}, sevens_panel(), random.Random(0))
    assert yes and text in DIGIT_WORDS[7]


def test_noise_and_mixtures_are_not_interpretable(rater):
    assert_noise_and_mixtures_are_not_interpretable(rater)
    answers = [rater({"index": 0}, noise_panel(), random.Random(s))[0] for s in range(20)]
    assert not any(answers)


def test_noise_has_no_digit_ground_for_any_classifier(rater):
    """Check (c) alone: it uses no trained weights, so this holds on every machine."""
    rng = np.random.default_rng(3)

    def upsampled(side: int, high: int) -> np.ndarray:  # noise drawn at a coarser grain
        return np.asarray(Image.fromarray(rng.integers(0, high, (side, side), dtype=np.uint8))
                          .resize((32, 32), Image.BILINEAR))

    kinds = {
        "pixel noise": rng.integers(0, 256, size=(50, 32, 32), dtype=np.uint8),
        "dark pixel noise": rng.integers(0, 60, size=(50, 32, 32), dtype=np.uint8),
        "8x8 noise": np.stack([upsampled(8, 256) for _ in range(50)]),
        "dark 8x8 noise": np.stack([upsampled(8, 100) for _ in range(50)]),
    }
    for kind, tiles in kinds.items():
        ratio = rater.ground_distances(rater.to_input(list(tiles))) / rater.ground_limit
        # The limit is the 99th percentile of the real digits' distances. Noise is no
        # digit: every tile beyond it, clearly (by a quarter; the least far, measured:
        # 16.8, 4.0, 8.3 and 3.2 times). No trained weights enter: same on every machine.
        assert ratio.min() > 1.25, (kind, ratio.min())
    real = digit_tiles([d for d in range(10) for _ in range(5)], seed=4)
    ratio = rater.ground_distances(rater.to_input(list(real))) / rater.ground_limit
    # calibrated to keep 99% of the training digits; these are held-out ones
    assert (ratio <= 1).double().mean() >= 0.9


def test_confident_but_atypical_images_do_not_count(rater):
    """A classifier labels anything confidently; the typicality checks keep a person's
    judgement: the top halves of sevens are confidently called nines, but they do not
    look like real nines, and most of them are not counted. Without the checks, all
    would be, and the assertions above would fail."""
    assert_atypical_tiles_mostly_do_not_count(rater)
    unchecked = demo_rater(lapse=0.0, typicality=None)
    judgement = unchecked.judge(halves_panel())
    assert judgement.recognised == judgement.confident
    with pytest.raises(AssertionError):
        assert_atypical_tiles_mostly_do_not_count(unchecked)


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


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_properties_hold_for_other_training_seeds(seed):
    """Each seed of the second classifier is another set of weights, as another CPU kind
    gives (seed 1 trained with 2 threads called a third of the noise tiles "eight");
    the decision must not depend on which. Trains the seeds not yet cached (about 12 s
    each on a quiet 2-core machine)."""
    rater = demo_rater(seed=seed, lapse=0.0)
    assert_real_sevens_are_sevens(rater)
    assert_noise_and_mixtures_are_not_interpretable(rater)
    assert_atypical_tiles_mostly_do_not_count(rater)


def test_judgements_are_cached_by_image(rater):
    image = jpeg(grid(digit_tiles([3] * 9), 3, 3))
    assert rater.judge(image) is rater.judge(image)


def test_the_rater_needs_the_image(rater):
    with pytest.raises(ValueError, match="fetch_images"):
        rater({"index": 0}, None, random.Random(0))


@pytest.mark.needs_system("wordnet")   # skips without WordNet; fails under CI=true
def test_every_way_of_writing_a_digit_codes_to_that_digit_only():
    from analysis.coding import Coder, class_senses_from_names

    coder = Coder()
    classes = class_senses_from_names([str(d) for d in range(10)], coder)
    for digit, forms in enumerate(DIGIT_WORDS):
        for text in forms:
            senses = coder.code(text).senses
            matched = [c for c, s in classes.items() if senses & s]
            assert matched == [digit], (text, matched)


def test_the_rater_runs_torch_on_the_cpus_its_process_may_use(monkeypatch, rater):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("SELECTIVITY_CPUS", "1")
    try:
        demo_rater()  # the trained classifier comes from the cache the fixture filled
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
