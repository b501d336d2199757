"""The optional data folder beside a checkout: the ImageNet photos and class list.

Nothing in the project needs it (the embedded default is scikit-learn's digits). Where
it exists, the demo's practice panels are real photos, and the tests and benchmarks
of real photos run. It is looked for, in order (docs/data.md):

1. ``$SELECTIVITY_DATA``, a folder;
2. ``shared/data`` in the folder that holds the checkout (``../shared/data`` seen from
   the project root).

It may hold ``imagenet-samples/`` (one ``<wnid>.jpg`` per ILSVRC-2012 class) and
``imagenet1k_classes.tsv``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV", "data_dir", "imagenet_photos"]

#: The variable that names the data folder.
DATA_ENV = "SELECTIVITY_DATA"

#: What a ``--help`` says of the default instead of a path of the machine it runs on.
DESCRIPTION = f"the optional data folder (${DATA_ENV}, else shared/data beside the checkout)"


def data_dir() -> Path | None:
    """The data folder, or None where there is none."""
    env = os.environ.get(DATA_ENV)
    folder = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return folder if folder.is_dir() else None


def imagenet_photos() -> Path | None:
    """The folder of ImageNet photos (``<wnid>.jpg``) in the data folder, or None."""
    root = data_dir()
    photos = root / "imagenet-samples" if root is not None else None
    return photos if photos is not None and photos.is_dir() else None
