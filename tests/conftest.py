"""Shared fixtures: where the shared data lives (DESIGN.md §8)."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLES = SHARED_DATA / "imagenet-samples"


@pytest.fixture(scope="session")
def sample_photos() -> list[Path]:
    """The real ImageNet photos of ../shared/data (one per class), sorted by WordNet id."""
    if not SAMPLES.is_dir():
        pytest.skip(f"{SAMPLES} is absent: the shared data folder sits beside the checkout")
    return sorted(SAMPLES.glob("*.jpg"))
