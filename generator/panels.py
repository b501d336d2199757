"""Panels: a unit's 100 AM images as a 10x10 grid; practice and catch panels of real photos.

    python -m generator.panels photos DIR_OR_FILES... --out PANEL.jpg [--rows 4 --cols 5]
    python -m generator.panels practice --photos imagenet-samples/ --out practice/
    python -m generator.panels practice --digits --out practice/
    python -m generator.panels catch --photos imagenet-samples/ --out catch/ \
        [--avoid practice/practice_contents.csv] [--untrained MANIFEST]
    python -m generator.panels catch --digits --out catch/

Pure image work (numpy and Pillow): the sampler hands over uint8 images.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common.files import atomic_path

__all__ = ["grid", "save_jpeg", "photo_panel", "receptive_field", "practice_panels",
           "PRACTICE_GROUPS", "MIXED_GROUPS", "PRACTICE_MIXED", "main", "JPEG_QUALITY",
           "catch_panels", "catch_geometry", "CATCH_POSITIVE", "CATCH_NEGATIVE", "CATCH_SIDE",
           "gradient_field", "unclipped_field"]

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
    to the input; for a network that is no list of steps (a referenced network,
    :class:`generator.hooked.HookedNet`), measured instead: :func:`gradient_field`.
    """
    if not hasattr(model, "_order"):
        return gradient_field(model, tap, location)
    top, left, bottom, right = unclipped_field(model, tap, location)
    _, height, width = model.input_shape
    return max(0, top), max(0, left), min(height, bottom), min(width, right)


def unclipped_field(model, tap: str, location: tuple[int, int]) -> tuple[int, int, int, int]:
    """:func:`receptive_field` before it is clipped to the input (it may begin before 0
    and end after the input's side, in the padding), for a network of steps; measured
    (and so clipped) for any other network."""
    from torch import nn  # the practice panels never need torch

    if not hasattr(model, "_order"):
        return gradient_field(model, tap, location)
    step = model.taps[tap]
    y0 = y1 = location[0]
    x0 = x1 = location[1]
    chain = []
    for name in model._order:
        chain.append(model._modules[name])
        if name == step:
            break

    def first(v) -> int:
        return v if isinstance(v, int) else v[0]

    for module in reversed(chain):
        if isinstance(module, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
            k, s, p = first(module.kernel_size), first(module.stride), first(module.padding)
            y0, y1 = y0 * s - p, y1 * s - p + k - 1
            x0, x1 = x0 * s - p, x1 * s - p + k - 1
    return y0, x0, y1 + 1, x1 + 1


def gradient_field(model, tap: str, location: tuple[int, int], trials: int = 4,
                   seed: int = 0) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the input pixels that ``tap`` at ``location`` depends
    on, measured: the bounding box of the input's nonzero gradient of the tap's channels
    summed at that location, over ``trials`` random inputs (a ReLU closed on one input is
    open on another). Exact for any feed-forward network whose functions are nonzero
    almost everywhere in their inputs (convolutions, pools, ReLUs, batch norm); a network
    that mixes all positions (attention, global pooling before the tap) sees the whole
    input, as it should."""
    import torch

    param = next(model.parameters(), None)
    device = param.device if param is not None else None
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((trials, *model.input_shape), generator=generator).to(device)
    x.requires_grad_(True)
    with torch.enable_grad():
        out = model(x, [tap])[tap]
        y, x0 = location
        (grad,) = torch.autograd.grad(out[:, :, y, x0].sum(), x)
    seen = grad.abs().sum(dim=(0, 1)) > 0
    rows = torch.nonzero(seen.any(dim=1)).flatten()
    cols = torch.nonzero(seen.any(dim=0)).flatten()
    if len(rows) == 0:    # no gradient at all (a dead unit on every trial): the whole input
        _, height, width = model.input_shape
        return 0, 0, height, width
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


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


# -- catch panels ---------------------------------------------------------------------------

#: How many catch panels of each kind :func:`catch_panels` makes by default: positive ones
#: (one category, expected answer yes) and negative ones (unrelated photos, expected no).
CATCH_POSITIVE = 4
CATCH_NEGATIVE = 4

#: A catch panel is an AM panel's grid: 10x10 tiles.
CATCH_SIDE = 10

#: The AM images' pixels a catch panel's tiles match by default: CaffeNet's fc tiles (its
#: 227-pixel input crop) for photos, the demo generator's 32x32 images for digits.
CATCH_CELL_PHOTOS = 227
CATCH_CELL_DIGITS = 32

#: The smallest tile of a saved AM panel (generator.ppgn enlarges smaller images to it).
AM_MIN_CELL = 64


def catch_geometry(cell: int, side: int = CATCH_SIDE) -> tuple[int, int, int]:
    """(tile, gap, panel width) of the saved AM panel of ``side`` x ``side`` images of
    ``cell`` pixels: :func:`grid`'s 2-pixel gaps, the whole enlarged (nearest) by the
    smallest whole factor that makes a tile at least :data:`AM_MIN_CELL` pixels, as
    ``generator.ppgn`` saves it (32-pixel digits: 64-pixel tiles, 4-pixel gaps, 676
    pixels)."""
    if cell < 1:
        raise ValueError(f"cell {cell}: a tile needs at least one pixel")
    factor = -(-AM_MIN_CELL // cell) if cell < AM_MIN_CELL else 1
    tile, gap = cell * factor, 2 * factor
    return tile, gap, side * tile + (side - 1) * gap


def _avoided(paths: Sequence[str | Path]) -> set[str]:
    """The ``photo`` column of CSVs such as ``practice_contents.csv``: file names
    (``<wnid>.jpg``) or ``digits:<index>``."""
    out: set[str] = set()
    for path in paths:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if "photo" not in (reader.fieldnames or ()):
                raise ValueError(f"{path}: no 'photo' column (expected a practice_contents.csv "
                                 "or catch_contents.csv)")
            out.update(row["photo"] for row in reader if row["photo"])
    return out


def _preferring_unused(items: Sequence, used: set[str], key, rng: random.Random) -> list:
    """``items`` in a seeded order, those whose ``key`` is not in ``used`` first."""
    fresh = [i for i in items if key(i) not in used]
    stale = [i for i in items if key(i) in used]
    rng.shuffle(fresh)
    rng.shuffle(stale)
    return fresh + stale


def _photo_tile(path: Path, tile: int, view: int, rng: random.Random) -> np.ndarray:
    """A photo as a ``tile`` x ``tile`` cell: view 0 the whole photo centre-cropped; a
    repeat (view 1, 2, ...) a square of 70-90% of its shorter side at a seeded place,
    mirrored on odd views, so that a photo shown twice in a panel is two views of it."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        if view == 0:
            return _cover(image, tile)
        w, h = image.size
        size = max(1, round(min(w, h) * rng.uniform(0.7, 0.9)))
        left, top = rng.randint(0, w - size), rng.randint(0, h - size)
        crop = image.crop((left, top, left + size, top + size)).resize((tile, tile),
                                                                       Image.BILINEAR)
        if view % 2:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        return np.asarray(crop)


def _with_repeats(distinct: Sequence, n: int) -> list[tuple[Any, int]]:
    """``n`` (item, view) pairs: every item once (view 0), then again (views 1, 2, ...)
    until there are ``n``."""
    if not distinct:
        raise ValueError("no photos to fill the panel")
    return [(distinct[i % len(distinct)], i // len(distinct)) for i in range(n)]


def _round_robin(pools: dict[str, list], n: int, rng: random.Random,
                 where: str) -> list[tuple[Any, str]]:
    """``n`` (item, group) pairs spread over the groups as evenly as their sizes allow:
    in passes, each group with items left gives its next one (groups in a new seeded
    order every pass), so no group gives more than one beyond any other that still
    has items."""
    left = {g: list(items) for g, items in pools.items() if items}
    total = sum(len(items) for items in left.values())
    if total < n:
        raise ValueError(f"{where}: {total} photos in {len(left)} unrelated categories, "
                         f"{n} are needed (one photo a class)")
    chosen: list[tuple[Any, str]] = []
    while len(chosen) < n:
        order = sorted(left)
        rng.shuffle(order)
        for group in order:
            if len(chosen) == n:
                break
            if left[group]:
                chosen.append((left[group].pop(0), group))
    return chosen


def catch_panels(out: str | Path, *, photos: str | Path | None = None,
                 positive: int = CATCH_POSITIVE, negative: int = CATCH_NEGATIVE,
                 seed: int = 0, cell: int | None = None, side: int = CATCH_SIDE,
                 avoid: Sequence[str | Path] = (), untrained: str | Path | None = None,
                 groups: dict[str, Sequence[int]] | None = None,
                 mixed_groups: dict[str, Sequence[int]] | None = None) -> Path:
    """Catch panels (docs/study-design.md, "Catch trials"), their listing ``catch.csv``
    (``panel_id, path, expected, label``) and what each shows, ``catch_contents.csv``
    (``panel_id, position, photo, group, view``).

    A catch panel looks like an AM panel, ``side`` x ``side`` tiles laid out as
    ``generator.ppgn`` saves a unit's panel of ``cell``-pixel images
    (:func:`catch_geometry`), but its answer is known:

    - ``positive`` panels of one category each (``expected`` yes, ``label`` the
      category), categories in turn from ``groups`` (default :data:`PRACTICE_GROUPS`:
      dog, bird, vehicle, insect): one photo a class of the category; a category with
      fewer classes than tiles shows its photos again as other views (another crop,
      mirrored on odd repeats);
    - ``negative`` panels of unrelated photos (``expected`` no, no label): one photo a
      class, spread over the categories of ``mixed_groups`` (default
      :data:`MIXED_GROUPS`) as evenly as they allow (with every class's photo, at most 5
      of 100 from one category);
    - and, with ``untrained`` (a ``generator.ppgn`` manifest of AM panels drawn for an
      untrained copy of the network), each of its panels copied as a negative catch
      (panels with no image left out).

    ``photos``: a folder of ImageNet photos named ``<wnid>.jpg`` (one per class, as the
    optional data folder's). Without it, scikit-learn's real digits: a positive panel of
    one digit (digits whose images ``avoid`` lists least first), a negative panel of
    every digit ten times (in 100). Photos (or digits) listed in the ``photo`` column of
    the CSVs ``avoid`` names (the practice panels' ``practice_contents.csv``) are used only
    where a panel would otherwise lack photos, and so are those of earlier catch panels.
    Everything is drawn by ``seed``.
    """
    out = Path(out)
    if positive < 0 or negative < 0:
        raise ValueError("the numbers of positive and negative catch panels must be 0 or more")
    if positive + negative == 0 and untrained is None:
        raise ValueError("no catch panels asked for (--positive 0 --negative 0)")
    cell = cell or (CATCH_CELL_PHOTOS if photos is not None else CATCH_CELL_DIGITS)
    tile, gap, _ = catch_geometry(cell, side)
    n = side * side
    rng = random.Random(seed)
    used = _avoided(avoid)
    made: list[tuple[str, np.ndarray | Path, str]] = []   # (panel id, pixels or file, label)
    contents: list[tuple] = []
    counts: Counter = Counter()

    def name(label: str) -> str:
        counts[label] += 1
        return f"catch_{label.replace(' ', '_')}_{counts[label]}"

    if photos is not None:
        folder = Path(photos)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder of photos")
        from .images import imagenet_classes  # (which imports torch)

        wnids = imagenet_classes()[0]

        def files(indices: Sequence[int]) -> list[Path]:
            return [f for f in (folder / f"{wnids[i]}.jpg" for i in indices) if f.is_file()]

        categories = list((groups or PRACTICE_GROUPS).items())
        for k in range(positive):
            label, indices = categories[k % len(categories)]
            pool = _preferring_unused(files(indices), used, lambda f: f.name, rng)
            if not pool:
                raise ValueError(f"catch panel {label!r}: none of its {len(indices)} classes "
                                 f"has a photo in {folder}")
            cells = _with_repeats(pool[:n], n)
            rng.shuffle(cells)
            pid = name(label)
            used.update(f.name for f, _ in cells)
            made.append((pid, grid(np.stack([_photo_tile(f, tile, view, rng)
                                             for f, view in cells]), side, side, gap), label))
            contents += [(pid, i, f.name, label, view) for i, (f, view) in enumerate(cells)]
        pools = {g: _preferring_unused(files(indices), used, lambda f: f.name, rng)
                 for g, indices in (mixed_groups or MIXED_GROUPS).items()}
        for _ in range(negative):
            pid = name("mixed")
            chosen = _round_robin(pools, n, rng, f"catch panel {pid}")
            rng.shuffle(chosen)
            used.update(f.name for f, _ in chosen)
            pools = {g: _preferring_unused(items, used, lambda f: f.name, rng)
                     for g, items in pools.items()}
            made.append((pid, grid(np.stack([_photo_tile(f, tile, 0, rng) for f, _ in chosen]),
                                   side, side, gap), ""))
            contents += [(pid, i, f.name, g, 0) for i, (f, g) in enumerate(chosen)]
    elif positive or negative:
        from sklearn.datasets import load_digits  # a slow import, for this alone

        digits = load_digits()
        by_digit = {d: [int(i) for i in np.flatnonzero(digits.target == d)] for d in range(10)}

        def key(i: int) -> str:
            return f"digits:{i}"

        def cells_of(chosen: Sequence[int]) -> np.ndarray:
            small = [Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8))
                     for i in chosen]
            panel = grid(np.stack([np.asarray(im.resize((cell, cell), Image.BILINEAR))
                                   for im in small]), side, side)
            factor = tile // cell
            return panel.repeat(factor, 0).repeat(factor, 1) if factor > 1 else panel

        rank = list(range(10))
        rng.shuffle(rank)
        order = sorted(range(10), key=lambda d: (sum(key(i) in used for i in by_digit[d]),
                                                 rank[d]))
        for k in range(positive):
            digit = order[k % 10]
            chosen = _preferring_unused(by_digit[digit], used, key, rng)[:n]
            if len(chosen) < n:
                raise ValueError(f"catch panel of digit {digit}: {len(chosen)} images, "
                                 f"{n} are needed")
            used.update(key(i) for i in chosen)
            pid = name(f"digit {digit}")
            made.append((pid, cells_of(chosen), str(digit)))
            contents += [(pid, i, key(d), str(digit), 0) for i, d in enumerate(chosen)]
        for _ in range(negative):
            chosen = []
            for digit in range(10):
                chosen += _preferring_unused(by_digit[digit], used, key, rng)[
                    :n // 10 + (digit < n % 10)]
            rng.shuffle(chosen)
            used.update(key(i) for i in chosen)
            pid = name("mixed digits")
            made.append((pid, cells_of(chosen), ""))
            contents += [(pid, i, key(d), str(int(digits.target[d])), 0)
                         for i, d in enumerate(chosen)]
    if untrained is not None:
        made += _untrained_panels(Path(untrained), contents)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for pid, pixels, label in made:
        target = out / f"{pid}.jpg"
        if isinstance(pixels, Path):
            with atomic_path(target) as tmp:
                shutil.copyfile(pixels, tmp)
        else:
            save_jpeg(pixels, target)
        rows.append((pid, target.name, "yes" if label else "no", label))
    with atomic_path(out / "catch_contents.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["panel_id", "position", "photo", "group", "view"])
        writer.writerows(contents)
    listing = out / "catch.csv"
    with atomic_path(listing) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["panel_id", "path", "expected", "label"])
        writer.writerows(rows)
    return listing


def _untrained_panels(manifest: Path, contents: list) -> list[tuple[str, Path, str]]:
    """The AM panels of a ``generator.ppgn`` manifest (``panel_id, path``, paths relative
    to it; rows with ``n_images`` 0 left out) as negative catch panels."""
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no such manifest of untrained AM panels")
    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"panel_id", "path"} <= set(rows[0]):
        raise ValueError(f"{manifest}: expected a generator.ppgn manifest (panel_id, path, ...) "
                         "with at least one row")
    made = []
    for row in rows:
        if row.get("n_images", "").strip() in ("0", "0.0"):
            continue
        source = manifest.parent / row["path"]
        if not source.is_file():
            raise FileNotFoundError(f"{manifest}: panel {row['panel_id']!r}: no such file "
                                    f"{source}")
        pid = f"catch_untrained_{row['panel_id']}"
        made.append((pid, source, ""))
        contents.append((pid, "", str(source), "untrained AM", ""))
    return made


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog or "python -m generator.panels",
                                     description="Make panels for practice and catch trials.")
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
    catch = sub.add_parser(
        "catch", help="catch panels, catch.csv and catch_contents.csv",
        description="Catch panels (docs/study-design.md, \"Catch trials\"): 10x10 panels laid "
                    "out as an AM panel, whose answer is known. Positive ones show one "
                    "category (a photo of each of its classes: dog, bird, vehicle, insect in "
                    "turn; expected answer yes, with the category); negative ones show "
                    "unrelated photos, one a class, spread over 23 unrelated categories "
                    "(expected no). With --digits, real digits: one digit, or every digit ten "
                    "times. Writes catch.csv (panel_id, path, expected, label) and "
                    "catch_contents.csv (what each panel shows). experiment.design --catch K "
                    "--catch-panels catch.csv puts K of them into every list.")
    source = catch.add_mutually_exclusive_group(required=True)
    source.add_argument("--photos", help="folder of <wnid>.jpg photos, one per ImageNet class")
    source.add_argument("--digits", action="store_true", help="real digits instead")
    catch.add_argument("--out", required=True, help="folder for the panels and catch.csv")
    catch.add_argument("--positive", type=int, default=CATCH_POSITIVE, metavar="N",
                       help="positive catch panels, one category each (default %(default)s)")
    catch.add_argument("--negative", type=int, default=CATCH_NEGATIVE, metavar="N",
                       help="negative catch panels of unrelated photos (default %(default)s)")
    catch.add_argument("--cell", type=int, metavar="PIXELS",
                       help="pixels of the AM images whose panels the catch panels match "
                            f"(default {CATCH_CELL_PHOTOS} for photos, CaffeNet's fc tiles; "
                            f"{CATCH_CELL_DIGITS} for digits, the demo's; the demo's panels "
                            "of photos want 32)")
    catch.add_argument("--avoid", action="append", default=[], metavar="CSV",
                       help="a practice_contents.csv (or any CSV with a photo column): its "
                            "photos are used only where a panel lacks others; repeatable")
    catch.add_argument("--untrained", metavar="MANIFEST",
                       help="a generator.ppgn manifest of AM panels of an untrained copy of "
                            "the network: each panel becomes a negative catch panel too")
    catch.add_argument("--seed", type=int, default=0,
                       help="seed of everything drawn (default %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "catch":
        try:
            listing = catch_panels(args.out, photos=None if args.digits else args.photos,
                                   positive=args.positive, negative=args.negative,
                                   seed=args.seed, cell=args.cell, avoid=args.avoid,
                                   untrained=args.untrained)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {listing}")
        return 0
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
