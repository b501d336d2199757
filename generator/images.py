"""Labelled image sets for recording: an ImageNet-style folder, a CSV, or the digits.

* a folder with one sub-folder per class. When the sub-folders are WordNet ids
  of ImageNet classes, labels are the standard ILSVRC-2012 indices (the order
  of CaffeNet's outputs, from ``imagenet1k_classes.tsv``); otherwise the classes
  are the sorted sub-folder names, or the order of ``classes`` when given;
* a CSV with columns ``path,label`` (label: a class index, a WordNet id or a
  class name; relative paths are relative to the CSV's folder);
* ``digits``, ``digits:train`` or ``digits:test``: scikit-learn's digits, the
  demo's images (already preprocessed tensors).
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .digits import DIGIT_CLASS_NAMES, load_digits_tensors

__all__ = [
    "ImageSet",
    "ImageSetError",
    "imagenet_classes",
    "load_image_set",
    "read_class_list",
    "IMAGE_SUFFIXES",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
_IMAGENET_TSV = Path(__file__).with_name("imagenet1k_classes.tsv")


class ImageSetError(ValueError):
    """An image set that cannot be read (the message says where and why)."""


def imagenet_classes() -> tuple[list[str], list[str]]:
    """(WordNet ids, short names) of the 1,000 ILSVRC-2012 classes, in index order."""
    return read_class_list(_IMAGENET_TSV)


def read_class_list(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """A class list: a TSV with ``wnid`` and ``name`` columns, or one name per line.

    Returns (ids, names); for a plain list the ids are the names.
    """
    path = Path(path)
    if not path.exists():
        raise ImageSetError(f"{path}: no such class list")
    lines = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line.strip()]
    if lines and "\t" in lines[0]:
        header = lines[0].split("\t")
        if "name" not in header:
            raise ImageSetError(f"{path}: a TSV class list needs a 'name' column")
        rows = [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:]]
        names = [r["name"] for r in rows]
        ids = [r.get("wnid") or r["name"] for r in rows]
        return ids, names
    return list(lines), list(lines)


@dataclass
class ImageSet:
    """Images with labels; ``tensors`` holds preprocessed images for in-memory sets."""

    source: str
    class_names: list[str]
    labels: np.ndarray
    paths: list[str]
    tensors: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path, label in zip(self.paths, self.labels.tolist(), strict=True):
            digest.update(f"{path}\t{label}\n".encode())
        return digest.hexdigest()

    def dataset(self, preprocess) -> Dataset:
        if self.tensors is not None:
            return _Tensors(self.tensors)
        return _Files(self.paths, preprocess)


class _Tensors(Dataset):
    def __init__(self, tensors: torch.Tensor):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, index: int):
        return self.tensors[index], index, None


class _Files(Dataset):
    """Decodes and preprocesses one file; a file that cannot be read gives None."""

    def __init__(self, paths: list[str], preprocess):
        self.paths = paths
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            with Image.open(self.paths[index]) as image:
                image.load()
                return self.preprocess(image), index, None
        except Exception as exc:  # noqa: BLE001 - a corrupt file is skipped, never fatal
            return None, index, f"{type(exc).__name__}: {exc}"


def collate(batch):
    """Stack the decodable images; list the others as (index, error)."""
    good = [(t, i) for t, i, err in batch if err is None]
    bad = [(i, err) for _, i, err in batch if err is not None]
    images = torch.stack([t for t, _ in good]) if good else None
    indices = torch.tensor([i for _, i in good], dtype=torch.int64)
    return images, indices, bad


def _folder(root: Path, classes: str | None) -> ImageSet:
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not subdirs:
        raise ImageSetError(f"{root}: no class sub-folders (expected <root>/<class>/<image>)")
    if classes:
        ids, names = read_class_list(classes)
    else:
        ids, names = imagenet_classes()
        if not set(subdirs) <= set(ids):
            ids, names = subdirs, subdirs
    index = {c: i for i, c in enumerate(ids)}
    unknown = [d for d in subdirs if d not in index]
    if unknown:
        raise ImageSetError(f"{root}: sub-folders {unknown[:5]} are not in the class list "
                            f"{classes or '(sub-folder names)'}")
    paths, labels = [], []
    for d in subdirs:
        files = sorted(p for p in (root / d).iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        paths += [str(p) for p in files]
        labels += [index[d]] * len(files)
    if not paths:
        raise ImageSetError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return ImageSet(str(root), list(names), np.asarray(labels, np.int64), paths)


def _csv(path: Path, classes: str | None) -> ImageSet:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise ImageSetError(f"{path}: needs the columns path,label (found "
                                f"{reader.fieldnames})")
        rows = list(reader)
    if not rows:
        raise ImageSetError(f"{path}: no rows")
    if classes:
        ids, names = read_class_list(classes)
    else:
        ids, names = imagenet_classes()
    lookup = {c: i for i, c in enumerate(ids)} | {n: i for i, n in enumerate(names)}
    paths, labels = [], []
    for line, row in enumerate(rows, start=2):
        label = row["label"].strip()
        if label.lstrip("-").isdigit():
            value = int(label)
        elif label in lookup:
            value = lookup[label]
        else:
            raise ImageSetError(f"{path}, line {line}: label {label!r} is neither an index "
                                "nor a class of the class list")
        if not 0 <= value < len(names):
            raise ImageSetError(f"{path}, line {line}: label {value} outside 0..{len(names) - 1}")
        p = Path(row["path"].strip())
        paths.append(str(p if p.is_absolute() else path.parent / p))
        labels.append(value)
    return ImageSet(str(path), list(names), np.asarray(labels, np.int64), paths)


def _digits(spec: str) -> ImageSet:
    split = spec.partition(":")[2] or "all"
    if split not in ("all", "train", "test"):
        raise ImageSetError(f"{spec}: the digits splits are all, train and test")
    images, labels = load_digits_tensors(split)
    paths = [f"digits:{split}/{i:04d}" for i in range(len(labels))]
    return ImageSet(spec, list(DIGIT_CLASS_NAMES), labels.numpy().astype(np.int64), paths,
                    tensors=images)


def load_image_set(spec: str, classes: str | None = None) -> ImageSet:
    """The image set named by ``spec`` (a folder, a CSV file or ``digits[:split]``)."""
    if spec == "digits" or spec.startswith("digits:"):
        return _digits(spec)
    path = Path(spec)
    if path.is_dir():
        return _folder(path, classes)
    if path.suffix.lower() == ".csv" and path.is_file():
        return _csv(path, classes)
    raise ImageSetError(f"{spec}: not a folder of class sub-folders, a .csv of path,label, "
                        "or 'digits'")
