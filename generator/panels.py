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
           "PRACTICE_GROUPS", "MIXED_GROUPS", "PRACTICE_MIXED", "main", "JPEG_QUALITY"]

#: Quality of panel JPEGs: legible 10x10 grids at a fraction of PNG's size.
JPEG_QUALITY = 85


def grid(images: np.ndarray, rows: int, cols: int, gap: int = 2,
         background: int = 255) -> np.ndarray:
    """Tile (N, H, W, C) uint8 images row by row into one image, with ``gap`` pixels between.

    Fewer than ``rows * cols`` images (an AM unit short of its images) leave the last
    cells in the ``background``: visibly blank, never filled with repeats."""
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


#: Everyday categories for the one-category practice panels, as ILSVRC-2012 class indices
#: (the standard order of ``imagenet1k_classes.tsv``), each with at least 20 classes: a
#: panel shows 20 photos of one category, one photo per class.
PRACTICE_GROUPS: dict[str, tuple[int, ...]] = {
    "dog": tuple(range(151, 269)),
    "bird": (*range(7, 25), *range(80, 101), *range(127, 147)),
    "vehicle": (407, 436, 468, 511, 555, 561, 569, 609, 627, 654, 656, 661, 675, 717, 734, 751,
                757, 779, 803, 817, 864, 866, 867, 874),
    "insect": tuple(range(300, 327)),
}

#: Unrelated categories for the mixed practice panels (ILSVRC-2012 class indices, no class
#: in two of them): a mixed panel shows one photo from each of 20 of them, so that no
#: everyday object, place or animal is there more than once. Related kinds share one
#: category (every animal is "animal"; road vehicles, boats and aircraft are "vehicle";
#: fruit, vegetables and dishes "food"; garments, shoes and hats "clothing").
MIXED_GROUPS: dict[str, tuple[int, ...]] = {
    "animal": tuple(range(0, 398)),
    "vehicle": (407, 436, 468, 511, 555, 561, 569, 609, 627, 654, 656, 661, 675, 717, 734, 751,
                757, 779, 803, 817, 864, 866, 867, 874,      # road
                472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 833, 871, 914,   # water
                404, 405, 812, 895),                           # air
    "food": (*range(924, 929), *range(930, 936), *range(936, 946), *range(948, 958),
             959, 962, 963, 964, 965),
    "clothing": (399, 474, 568, 608, 610, 614, 834, 841, 869,
                 502, 514, 630, 770, 774,                     # shoes
                 452, 515, 667, 808),                         # hats
    "musical instrument": (401, 402, 420, 432, 486, 513, 546, 558, 566, 579, 593, 594, 642,
                           683, 776, 875, 881, 889),
    "ball": (429, 430, 522, 574, 722, 768, 805, 852, 890),
    "building": (425, 437, 483, 497, 663, 668, 698),
    "landscape": (970, 972, 974, 975, 976, 978, 979, 980),
    "furniture": (423, 453, 526, 532, 559, 564, 765, 831, 857),
    "tool": (587, 596, 726, 740, 784, 792),
    "computer": (508, 527, 590, 620, 664, 673, 681),
    "clock": (409, 530, 531, 892),
    "cooking pot or pan": (469, 544, 567, 849, 909),
    "bottle": (440, 720, 737, 898, 907),
    "mushroom": (947, 992, 993, 994, 995, 996, 997),
    "flower": (985, 986),
    "bridge": (821, 839, 888),
    "lamp": (470, 619, 846),
    "bag": (414, 636, 728, 748, 893),
    "fence": (489, 716, 825, 912),
    "home appliance": (534, 651, 760, 859, 882, 897),
    "camera": (732, 759),
    "telephone": (487, 528, 707),
}

#: How many of the practice panels are mixed (the others one category each): of the
#: study's six, four one-category panels and two mixed ones.
PRACTICE_MIXED = 2


def _mixed_positions(total: int, mixed: int) -> set[int]:
    """Where the mixed panels go among ``total``: spread evenly, never first when there is
    room (6 panels, 2 mixed: the 2nd and the 5th)."""
    return {int((k + 0.5) * total / mixed) for k in range(mixed)} if mixed else set()


def practice_panels(out: str | Path, *, photos: str | Path | None = None,
                    groups: dict[str, Sequence[int]] | None = None, per_panel: int = 20,
                    rows: int = 4, cols: int = 5, seed: int = 0,
                    mixed: int = PRACTICE_MIXED,
                    mixed_groups: dict[str, Sequence[int]] | None = None) -> Path:
    """Practice panels, their listing ``practice.csv`` (``panel_id, path, label, expected``)
    and what each shows, ``practice_contents.csv`` (``panel_id, position, photo, group``).

    The panels vary in how interpretable they are, as the paper's practice trials did:
    one panel per category of ``groups`` (``expected`` "yes", ``label`` the category) and
    ``mixed`` panels of unrelated photos (``expected`` "no", no label), spread among
    them (the default six: one-category, mixed, one-category, one-category, mixed,
    one-category).

    From ``photos``, a folder of ImageNet photos named ``<wnid>.jpg`` (one per class, as
    the optional data folder's, :mod:`common.data`): a one-category panel shows
    ``per_panel`` photos of its category of ``groups`` (default :data:`PRACTICE_GROUPS`),
    one per class; a mixed panel shows one photo from each of ``per_panel`` categories of
    ``mixed_groups`` (default :data:`MIXED_GROUPS`). No photo is in two panels; all drawn
    by ``seed``. Without ``photos``: real digits from scikit-learn's set (for machines
    without the photos; the embedded default's own image kind), a one-digit panel per
    digit 0, 1, 2, ... and mixed panels with every digit equally often (twice in 20).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    single: list[tuple[str, str, np.ndarray, list[tuple[str, str]]]] = []
    mixes: list[tuple[str, str, np.ndarray, list[tuple[str, str]]]] = []
    if photos is not None:
        folder = Path(photos)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder of photos")
        from .images import imagenet_classes  # (which imports torch)

        wnids = imagenet_classes()[0]
        used: set[Path] = set()
        for label, indices in (groups or PRACTICE_GROUPS).items():
            files = [folder / f"{wnids[i]}.jpg" for i in indices]
            files = [f for f in files if f.is_file()]
            if len(files) < per_panel:
                raise ValueError(f"practice panel {label!r}: {len(files)} of its "
                                 f"{len(indices)} classes have a photo in {folder}, "
                                 f"{per_panel} are needed")
            chosen = rng.sample(files, per_panel)
            used.update(chosen)
            single.append((f"practice_{label.replace(' ', '_')}", label,
                           photo_panel(chosen, rows, cols),
                           [(f.name, label) for f in chosen]))
        pools = {name: [f for f in (folder / f"{wnids[i]}.jpg" for i in indices)
                        if f.is_file()] for name, indices in (mixed_groups or MIXED_GROUPS).items()}
        for k in range(mixed):
            open_groups = sorted(g for g, files in pools.items() if set(files) - used)
            if len(open_groups) < per_panel:
                raise ValueError(f"mixed practice panel {k + 1}: {len(open_groups)} unrelated "
                                 f"categories have an unused photo in {folder}, {per_panel} "
                                 "are needed (one photo from each)")
            contents = []
            for group in rng.sample(open_groups, per_panel):
                photo = rng.choice(sorted(set(pools[group]) - used))
                used.add(photo)
                contents.append((photo, group))
            mixes.append((f"practice_mixed_{k + 1}", "",
                          photo_panel([p for p, _ in contents], rows, cols),
                          [(p.name, g) for p, g in contents]))
    else:
        from sklearn.datasets import load_digits  # a slow import, for this alone

        digits = load_digits()
        free = {d: list(np.flatnonzero(digits.target == d)) for d in range(10)}

        def cells(chosen) -> np.ndarray:
            tiles = []
            for i in chosen:
                small = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8))
                tiles.append(np.asarray(small.resize((64, 64), Image.BILINEAR)))
            return grid(np.stack(tiles), rows, cols)

        for digit in range(len(groups or PRACTICE_GROUPS)):
            chosen = sorted(rng.sample(free[digit], per_panel))
            free[digit] = [i for i in free[digit] if i not in chosen]
            single.append((f"practice_digit_{digit}", str(digit), cells(chosen),
                           [(f"digits:{i}", str(digit)) for i in chosen]))
        for k in range(mixed):
            chosen = []
            for position in range(per_panel):
                digit = position % 10
                pick = rng.choice(free[digit])
                free[digit].remove(pick)
                chosen.append(int(pick))
            rng.shuffle(chosen)
            mixes.append((f"practice_mixed_digits_{k + 1}", "", cells(chosen),
                          [(f"digits:{i}", str(int(digits.target[i]))) for i in chosen]))
    total = len(single) + len(mixes)
    at = _mixed_positions(total, len(mixes))
    ordered = []
    singles, mixed_ones = iter(single), iter(mixes)
    for position in range(total):
        ordered.append(next(mixed_ones) if position in at else next(singles))
    made, contents_rows = [], []
    for name, label, pixels, contents in ordered:
        save_jpeg(pixels, out / f"{name}.jpg")
        made.append((name, f"{name}.jpg", label, "yes" if label else "no"))
        contents_rows += [(name, i, photo, group) for i, (photo, group) in enumerate(contents)]
    with atomic_path(out / "practice_contents.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["panel_id", "position", "photo", "group"])
        writer.writerows(contents_rows)
    listing = out / "practice.csv"
    with atomic_path(listing) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["panel_id", "path", "label", "expected"])
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
        description="Six 4x5 panels from a folder of ImageNet photos named <wnid>.jpg: four "
                    "of one everyday category each (dog, bird, vehicle, insect; expected "
                    "answer yes) and two mixed panels of 20 unrelated photos (expected "
                    "answer no), in the order dog, mixed, bird, vehicle, mixed, insect. With "
                    "--digits, the same of real digits: one digit each (0, 1, 2, 3) and two "
                    "mixed panels with every digit twice. Writes practice.csv (panel_id, "
                    "path, label, expected) and practice_contents.csv (what each panel shows).")
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
