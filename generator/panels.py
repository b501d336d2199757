"""Panels: a unit's 100 AM images as a 10x10 grid, and practice panels of real photos.

    python -m generator.panels photos DIR_OR_FILES... --out PANEL.jpg [--rows 4 --cols 5]
    python -m generator.panels practice --photos imagenet-samples/ --out practice/
    python -m generator.panels practice --digits --out practice/

Pure image work (numpy and Pillow): the sampler hands over uint8 images.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from common.files import atomic_path

__all__ = ["grid", "save_jpeg", "photo_panel", "receptive_field", "practice_panels",
           "PRACTICE_GROUPS", "main", "JPEG_QUALITY"]

#: Quality of panel JPEGs: legible 10x10 grids at a fraction of PNG's size.
JPEG_QUALITY = 85


def grid(images: np.ndarray, rows: int, cols: int, gap: int = 2,
         background: int = 255) -> np.ndarray:
    """Tile (N, H, W, C) uint8 images row by row into one image, with ``gap`` pixels between."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    if n > rows * cols:
        raise ValueError(f"{n} images do not fit a {rows}x{cols} grid")
    out = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, c), background,
                  dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        out[r * (h + gap):r * (h + gap) + h, q * (w + gap):q * (w + gap) + w] = images[i]
    return out[..., 0] if c == 1 else out


def save_jpeg(pixels: np.ndarray, path: str | Path, quality: int = JPEG_QUALITY,
              min_cell: int | None = None, cell: int | None = None) -> None:
    """Save uint8 pixels as JPEG, atomically; small images are enlarged (nearest) first."""
    image = Image.fromarray(pixels)
    if min_cell and cell and cell < min_cell:
        factor = -(-min_cell // cell)
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    with atomic_path(path) as tmp:
        image.save(tmp, format="JPEG", quality=quality, optimize=True)


def receptive_field(model, tap: str, location: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the input pixels that ``tap`` at ``location`` sees.

    Walks the network's steps (convolutions and pools) up to the tap, clipped
    to the input.
    """
    from torch import nn  # the practice panels never need torch

    step = model.taps[tap]
    y0 = y1 = location[0]
    x0 = x1 = location[1]
    chain = []
    for name in model._order:
        chain.append(model._modules[name])
        if name == step:
            break
    for module in reversed(chain):
        if isinstance(module, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
            k, s, p = (module.kernel_size, module.stride, module.padding)
            k = k if isinstance(k, int) else k[0]
            s = s if isinstance(s, int) else s[0]
            p = p if isinstance(p, int) else p[0]
            y0, y1 = y0 * s - p, y1 * s - p + k - 1
            x0, x1 = x0 * s - p, x1 * s - p + k - 1
    _, height, width = model.input_shape
    return max(0, y0), max(0, x0), min(height, y1 + 1), min(width, x1 + 1)


def _cover(image: Image.Image, size: int) -> np.ndarray:
    """Resize to fill size x size (shorter side to size) and centre-crop."""
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                         Image.BILINEAR)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)).convert("RGB"))


def photo_panel(paths: Sequence[str | Path], rows: int = 4, cols: int = 5,
                cell: int = 128) -> np.ndarray:
    """A practice panel: ``rows x cols`` real photos, each centre-cropped to a square."""
    if len(paths) != rows * cols:
        raise ValueError(f"a {rows}x{cols} panel needs {rows * cols} photos, got {len(paths)}")
    cells = []
    for p in paths:
        with Image.open(p) as image:
            cells.append(_cover(image, cell))
    return grid(np.stack(cells), rows, cols)


def _photos(items: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in (".jpg", ".jpeg", ".png"))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return out


#: Everyday categories for practice panels, as ILSVRC-2012 class indices (the standard
#: order of ``imagenet1k_classes.tsv``), each with at least 20 classes: a panel shows 20
#: photos of one category, one photo per class.
PRACTICE_GROUPS: dict[str, tuple[int, ...]] = {
    "dog": tuple(range(151, 269)),
    "bird": (*range(7, 25), *range(80, 101), *range(127, 147)),
    "monkey": tuple(range(365, 385)),
    "insect": tuple(range(300, 327)),
    "vehicle": (407, 436, 468, 511, 555, 561, 569, 609, 627, 654, 656, 661, 675, 717, 734, 751,
            757, 779, 803, 817, 864, 866, 867, 874),
    "snake or lizard": tuple(i for i in range(33, 69) if i not in (49, 50, 51)),
}


def practice_panels(out: str | Path, *, photos: str | Path | None = None,
                    groups: dict[str, Sequence[int]] | None = None, per_panel: int = 20,
                    rows: int = 4, cols: int = 5, seed: int = 0) -> Path:
    """Practice panels and their listing ``practice.csv`` (``panel_id, path, label``).

    From ``photos``, a folder of ImageNet photos named ``<wnid>.jpg`` (one per class, as
    the optional data folder's, :mod:`common.data`): one panel per category of ``groups`` (default
    :data:`PRACTICE_GROUPS`), ``per_panel`` photos drawn without replacement by ``seed``.
    Without ``photos``: real digits from scikit-learn's set, one panel per digit 0-5
    (for machines without the photos; the embedded default's own image kind).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    made: list[tuple[str, str, str]] = []
    if photos is not None:
        folder = Path(photos)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder of photos")
        from .images import imagenet_classes  # (which imports torch)

        wnids = imagenet_classes()[0]
        for label, indices in (groups or PRACTICE_GROUPS).items():
            files = [folder / f"{wnids[i]}.jpg" for i in indices]
            files = [f for f in files if f.is_file()]
            if len(files) < per_panel:
                raise ValueError(f"practice panel {label!r}: {len(files)} of its "
                                 f"{len(indices)} classes have a photo in {folder}, "
                                 f"{per_panel} are needed")
            chosen = rng.sample(files, per_panel)
            name = f"practice_{label.replace(' ', '_')}"
            save_jpeg(photo_panel(chosen, rows, cols), out / f"{name}.jpg")
            made.append((name, f"{name}.jpg", label))
    else:
        from sklearn.datasets import load_digits  # a slow import, for this alone

        digits = load_digits()
        for digit in range(6):
            pick = np.flatnonzero(digits.target == digit)
            chosen = sorted(rng.sample(list(pick), per_panel))
            cells = []
            for i in chosen:
                small = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8))
                cells.append(np.asarray(small.resize((64, 64), Image.BILINEAR)))
            name = f"practice_digit_{digit}"
            save_jpeg(grid(np.stack(cells), rows, cols), out / f"{name}.jpg")
            made.append((name, f"{name}.jpg", str(digit)))
    listing = out / "practice.csv"
    with atomic_path(listing) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["panel_id", "path", "label"])
        writer.writerows(made)
    return listing


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog or "python -m generator.panels",
                                     description="Make panels for practice trials.")
    sub = parser.add_subparsers(dest="command", required=True)
    photos = sub.add_parser("photos", help="a panel of real photos (default 4x5 = 20)")
    photos.add_argument("photos", nargs="+", help="photo files or folders (first rows*cols used)")
    photos.add_argument("--out", required=True, help="panel JPEG to write")
    photos.add_argument("--rows", type=int, default=4)
    photos.add_argument("--cols", type=int, default=5)
    photos.add_argument("--cell", type=int, default=128, help="pixels per photo (default 128)")
    practice = sub.add_parser(
        "practice", help="the study's practice panels and practice.csv",
        description="One 4x5 panel per everyday category (dog, bird, monkey, insect, vehicle, "
                    "snake or lizard) from a folder of ImageNet photos named <wnid>.jpg, or "
                    "with --digits, one panel of real digits per digit 0-5.")
    source = practice.add_mutually_exclusive_group(required=True)
    source.add_argument("--photos", help="folder of <wnid>.jpg photos, one per ImageNet class")
    source.add_argument("--digits", action="store_true", help="real digits instead")
    practice.add_argument("--out", required=True, help="folder for the panels and practice.csv")
    practice.add_argument("--seed", type=int, default=0,
                          help="seed of the photos drawn for each panel (default %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "practice":
        try:
            listing = practice_panels(args.out, photos=None if args.digits else args.photos,
                                      seed=args.seed)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {listing}")
        return 0
    try:
        paths = _photos(args.photos)[:args.rows * args.cols]
        pixels = photo_panel(paths, args.rows, args.cols, args.cell)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_jpeg(pixels, args.out)
    print(f"wrote {args.out} ({len(paths)} photos)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
