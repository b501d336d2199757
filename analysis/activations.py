"""Activation tables: one HDF5 file per network and image set (docs/activation-table.md).

Layout (the minimal contract; more datasets and attributes are allowed)::

    /labels             int32   (N,)    class index of each image (ground truth)
    /class_names        utf-8   (K,)    class names, by index
    /layers/<layer>     float32 (N, U)  activation of each unit (rows: images)

Rows are images and columns units, in the same row order in every layer. The
writer chunks each layer as (R rows, W units) with W <= 64 and chunks of about
4 MB, so that a block of W units (or a multiple) read across all rows touches
whole chunks only, at close to sequential disk speed. Readers should ask for
blocks aligned to :attr:`ActivationTable.chunk_units`.

Everything that can go wrong with a user's file raises
:class:`ActivationTableError` with the file, the dataset and what is wrong.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import h5py
import numpy as np

__all__ = [
    "ActivationTable",
    "ActivationTableError",
    "TableWriter",
    "open_table",
    "write_table",
    "unit_chunk_width",
]

log = logging.getLogger("analysis.activations")  # the same name under python -m

#: Target size of one HDF5 chunk, in bytes.
CHUNK_BYTES = 4 * 1024 * 1024
#: Widest chunk, in units.
MAX_CHUNK_UNITS = 64


class ActivationTableError(ValueError):
    """A file is not a valid activation table (the message says where and why)."""


def unit_chunk_width(n_units: int) -> int:
    """Units per chunk for a layer of ``n_units`` units."""
    return max(1, min(MAX_CHUNK_UNITS, n_units))


def _chunk_shape(n_rows_hint: int, n_units: int, itemsize: int = 4) -> tuple[int, int]:
    # The same row count for every layer, so one flush fills whole chunks everywhere.
    width = unit_chunk_width(n_units)
    rows = CHUNK_BYTES // (MAX_CHUNK_UNITS * itemsize)
    if n_rows_hint > 0:
        rows = min(rows, n_rows_hint)
    return rows, width


@dataclass(frozen=True)
class LayerInfo:
    name: str
    n_units: int
    dtype: np.dtype
    chunks: tuple[int, int] | None
    attrs: dict


class ActivationTable:
    """A validated, read-only activation table.

    Use as a context manager, or call :meth:`close`::

        with open_table("acts.h5") as table:
            for start, block in table.iter_blocks("fc6"):
                ...  # block: float32 (N, B), units start .. start + B - 1

    Structure (datasets, shapes, dtypes, label range) is checked on opening;
    activation values are checked for non-finite entries as blocks are read
    (or all at once with :meth:`check_values`), so opening a 30 GB table is
    instant.
    """

    def __init__(self, path: str | os.PathLike, *, cache_bytes: int = 0):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise ActivationTableError(f"{self.path}: no such file")
        try:
            # No chunk cache by default: blocks are read whole-chunk, and a
            # cache only costs a copy. Writers and random readers can ask.
            self._file = h5py.File(self.path, "r", rdcc_nbytes=cache_bytes)
        except OSError as exc:
            raise ActivationTableError(
                f"{self.path}: cannot be opened as an HDF5 file ({exc})"
            ) from None
        try:
            self._validate_structure()
        except Exception:
            self._file.close()
            raise

    # -- structure -------------------------------------------------------
    def _err(self, where: str, what: str) -> ActivationTableError:
        return ActivationTableError(f"{self.path}: {where}: {what}")

    def _validate_structure(self) -> None:
        f = self._file
        for name in ("labels", "class_names", "layers"):
            if name not in f:
                raise self._err(
                    f"/{name}",
                    "missing; an activation table needs /labels, /class_names and "
                    "/layers/<layer> (see docs/activation-table.md)",
                )
        labels = f["labels"]
        if not isinstance(labels, h5py.Dataset) or labels.ndim != 1:
            raise self._err("/labels", "must be a 1-d dataset of class indices")
        if labels.dtype.kind not in "iu":
            raise self._err("/labels", f"must hold integers, found dtype {labels.dtype}")
        self.labels = labels[()].astype(np.int32, copy=False)
        names = f["class_names"]
        if not isinstance(names, h5py.Dataset) or names.ndim != 1:
            raise self._err("/class_names", "must be a 1-d dataset of strings")
        raw = names[()]
        try:
            self.class_names = [
                v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in raw
            ]
        except UnicodeDecodeError as exc:
            raise self._err("/class_names", f"not valid utf-8 ({exc})") from None
        if names.dtype.kind not in "SOU":
            raise self._err("/class_names", f"must hold strings, found dtype {names.dtype}")
        n, k = len(self.labels), len(self.class_names)
        if n == 0:
            raise self._err("/labels", "is empty: the table holds no images")
        if k == 0:
            raise self._err("/class_names", "is empty: the table names no classes")
        lo, hi = int(self.labels.min()), int(self.labels.max())
        if lo < 0 or hi >= k:
            bad = int(np.flatnonzero((self.labels < 0) | (self.labels >= k))[0])
            raise self._err(
                "/labels",
                f"label {int(self.labels[bad])} at row {bad} is out of range: "
                f"/class_names has {k} classes (valid labels 0..{k - 1})",
            )
        group = f["layers"]
        if not isinstance(group, h5py.Group) or len(group) == 0:
            raise self._err("/layers", "must be a group holding at least one layer")
        order = [v.decode() if isinstance(v, bytes) else str(v)
                 for v in group.attrs.get("order", [])]
        names = [n for n in order if n in group] + sorted(n for n in group if n not in order)
        self._layers: dict[str, LayerInfo] = {}
        for name in names:
            ds = group[name]
            where = f"/layers/{name}"
            if not isinstance(ds, h5py.Dataset):
                raise self._err(where, "must be a dataset (images x units)")
            if ds.ndim != 2:
                raise self._err(where, f"must be 2-d (images x units), found shape {ds.shape}")
            if ds.dtype.kind != "f":
                raise self._err(where, f"must hold floats, found dtype {ds.dtype}")
            if ds.shape[0] != n:
                raise self._err(
                    where,
                    f"has {ds.shape[0]} rows but /labels has {n}: every layer needs "
                    "one row per image, in the same order",
                )
            if ds.shape[1] == 0:
                raise self._err(where, "has no units")
            self._layers[name] = LayerInfo(
                name, ds.shape[1], ds.dtype, ds.chunks, dict(ds.attrs.items())
            )

    # -- accessors -------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        """Layer names, in file order."""
        return list(self._layers)

    @property
    def n_images(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def attrs(self) -> dict:
        return dict(self._file.attrs.items())

    def layer_info(self, layer: str) -> LayerInfo:
        try:
            return self._layers[layer]
        except KeyError:
            raise ActivationTableError(
                f"{self.path}: /layers/{layer}: no such layer; the table has "
                f"{', '.join(self._layers)}"
            ) from None

    def n_units(self, layer: str) -> int:
        return self.layer_info(layer).n_units

    def chunk_units(self, layer: str) -> int:
        """Units per chunk: read blocks whose width is a multiple of this."""
        info = self.layer_info(layer)
        if info.chunks:
            return info.chunks[1]
        # contiguous or virtual datasets: the writer's hint, else the default width
        return max(1, min(int(info.attrs.get("chunk_units", MAX_CHUNK_UNITS)), info.n_units))

    def dataset(self, name: str) -> h5py.Dataset:
        """Any other dataset of the file (e.g. ``image_paths``), or a clear error."""
        if name not in self._file:
            raise self._err(f"/{name}", "missing")
        return self._file[name]

    def read_units(self, layer: str, start: int, stop: int, *, check: bool = True) -> np.ndarray:
        """Activations of units ``start..stop-1`` over all images, float32 (N, B)."""
        info = self.layer_info(layer)
        if not 0 <= start < stop <= info.n_units:
            raise ValueError(
                f"{self.path}: /layers/{layer}: unit range {start}..{stop - 1} is outside "
                f"0..{info.n_units - 1}"
            )
        ds = self._file["layers"][layer]
        block = np.empty((self.n_images, stop - start), dtype=np.float32)
        ds.read_direct(block, np.s_[:, start:stop])
        if check:
            self._check_finite(layer, start, block)
        return block

    def _check_finite(self, layer: str, start: int, block: np.ndarray) -> None:
        if np.isfinite(block).all():
            return
        rows, cols = np.nonzero(~np.isfinite(block))
        raise self._err(
            f"/layers/{layer}",
            f"{len(rows)} non-finite value(s) (NaN or inf), the first at image row "
            f"{int(rows[0])}, unit {start + int(cols[0])} ({block[rows[0], cols[0]]}); "
            "re-record the layer or repair these entries",
        )

    def block_ranges(
        self, layer: str, block_units: int | None = None, units: tuple[int, int] | None = None
    ) -> list[tuple[int, int]]:
        """Chunk-aligned ``(start, stop)`` unit ranges covering ``units`` (default: all)."""
        n = self.n_units(layer)
        lo, hi = units if units is not None else (0, n)
        if not 0 <= lo <= hi <= n:
            raise ValueError(f"unit range {lo}..{hi} outside 0..{n}")
        width = self.chunk_units(layer)
        if block_units is None:
            block_units = width
        block_units = max(width, (block_units // width) * width)
        edges = []
        start = lo
        while start < hi:
            # align the end of each block to the chunk grid
            stop = min(hi, ((start // width) * width) + block_units)
            if stop <= start:
                stop = min(hi, start + block_units)
            edges.append((start, stop))
            start = stop
        return edges

    def iter_blocks(
        self,
        layer: str,
        block_units: int | None = None,
        units: tuple[int, int] | None = None,
        *,
        check: bool = True,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_unit, block)`` with block float32 (N, B), chunk-aligned."""
        for start, stop in self.block_ranges(layer, block_units, units):
            yield start, self.read_units(layer, start, stop, check=check)

    def check_values(self, layers: Sequence[str] | None = None) -> None:
        """Read every value once and raise on the first non-finite block."""
        for layer in layers or self.layers:
            for _ in self.iter_blocks(layer, block_units=256):
                pass

    # -- lifetime ----------------------------------------------------------
    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ActivationTable:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        layers = ", ".join(f"{k}[{v.n_units}]" for k, v in self._layers.items())
        return (
            f"ActivationTable({self.path!r}: {self.n_images} images, "
            f"{self.n_classes} classes, layers {layers})"
        )


def open_table(path: str | os.PathLike, **kwargs) -> ActivationTable:
    """Open and validate an activation table."""
    return ActivationTable(path, **kwargs)


class TableWriter:
    """Write an activation table by appending blocks of rows.

    Rows are buffered and flushed in whole row-chunks, so that callers may
    append any number of rows at a time (a batch of images) without partial
    chunk writes. ``n_images`` (when known) sizes the chunks for small tables.
    The file is valid once :meth:`close` returns; a file left by a crash is
    missing the ``complete`` attribute.

        with TableWriter(path, class_names, {"fc6": 4096, "fc8": 1000}) as w:
            w.append(labels_batch, {"fc6": a6, "fc8": a8})
    """

    def __init__(
        self,
        path: str | os.PathLike,
        class_names: Sequence[str],
        layer_units: Mapping[str, int],
        *,
        n_images: int | None = None,
        attrs: Mapping[str, object] | None = None,
        layer_attrs: Mapping[str, Mapping[str, object]] | None = None,
        extra_string_columns: Sequence[str] = (),
        extra_int_columns: Sequence[str] = (),
        compression: str | None = None,
    ):
        if not layer_units:
            raise ValueError("an activation table needs at least one layer")
        if len(class_names) == 0:
            raise ValueError("an activation table needs at least one class name")
        self.path = os.fspath(path)
        self._layer_units = dict(layer_units)
        self._file = h5py.File(self.path, "w")
        f = self._file
        f.attrs["complete"] = False
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        f.create_dataset(
            "class_names", data=np.array(list(class_names), dtype=object),
            dtype=h5py.string_dtype("utf-8"),
        )
        hint = n_images or 0
        self._rows_per_chunk = None
        f.create_dataset("labels", shape=(0,), maxshape=(None,), dtype="i4",
                         chunks=(min(max(hint, 1), 1 << 16),))
        self._str_cols = list(extra_string_columns)
        self._int_cols = list(extra_int_columns)
        for name in self._str_cols:
            f.create_dataset(name, shape=(0,), maxshape=(None,),
                             dtype=h5py.string_dtype("utf-8"), chunks=(4096,))
        for name in self._int_cols:
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype="i8",
                             chunks=(min(max(hint, 1), 1 << 16),))
        group = f.create_group("layers")
        # HDF5 lists a group's members alphabetically: keep the writer's order.
        group.attrs["order"] = np.array(list(self._layer_units), dtype=object)
        rows = []
        for name, units in self._layer_units.items():
            chunks = _chunk_shape(hint, units)
            rows.append(chunks[0])
            ds = group.create_dataset(
                name, shape=(0, units), maxshape=(None, units), dtype="f4",
                chunks=chunks, compression=compression,
            )
            for key, value in ((layer_attrs or {}).get(name) or {}).items():
                ds.attrs[key] = value
        self._flush_rows = rows[0]  # identical for every layer
        self._buffer: list[tuple[np.ndarray, dict[str, np.ndarray], dict]] = []
        self._buffered = 0
        self.n_written = 0

    def append(
        self,
        labels: np.ndarray,
        activations: Mapping[str, np.ndarray],
        extra: Mapping[str, Sequence] | None = None,
    ) -> None:
        labels = np.asarray(labels)
        n = len(labels)
        if set(activations) != set(self._layer_units):
            raise ValueError(
                f"append needs every layer ({', '.join(self._layer_units)}), "
                f"got {', '.join(activations)}"
            )
        acts = {}
        for name, a in activations.items():
            a = np.asarray(a, dtype=np.float32)
            if a.shape != (n, self._layer_units[name]):
                raise ValueError(
                    f"layer {name}: expected shape ({n}, {self._layer_units[name]}), got {a.shape}"
                )
            acts[name] = a
        extra = dict(extra or {})
        missing = set(self._str_cols + self._int_cols) - set(extra)
        if missing:
            raise ValueError(f"append needs the extra columns {sorted(missing)}")
        self._buffer.append((labels.astype(np.int32), acts, extra))
        self._buffered += n
        if self._buffered >= self._flush_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        f = self._file
        labels = np.concatenate([b[0] for b in self._buffer])
        start, stop = self.n_written, self.n_written + len(labels)
        f["labels"].resize((stop,))
        f["labels"][start:stop] = labels
        for name in self._layer_units:
            block = np.concatenate([b[1][name] for b in self._buffer])
            ds = f["layers"][name]
            ds.resize((stop, ds.shape[1]))
            ds.write_direct(np.ascontiguousarray(block), dest_sel=np.s_[start:stop])
        for name in self._str_cols + self._int_cols:
            values = [v for b in self._buffer for v in b[2][name]]
            ds = f[name]
            ds.resize((stop,))
            ds[start:stop] = values if name in self._str_cols else np.asarray(values, "i8")
        self.n_written = stop
        self._buffer.clear()
        self._buffered = 0

    def close(self) -> None:
        if not self._file:
            return
        self._flush()
        k = len(self._file["class_names"])
        labels = self._file["labels"][()]
        if labels.size and (labels.min() < 0 or labels.max() >= k):
            self._file.close()
            raise ActivationTableError(
                f"{self.path}: /labels: values outside 0..{k - 1} were written"
            )
        self._file.attrs["complete"] = True
        self._file.close()

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:  # keep what was written; the file stays marked incomplete
            self._file.close()


def write_table(
    path: str | os.PathLike,
    labels: np.ndarray,
    class_names: Sequence[str],
    layers: Mapping[str, np.ndarray],
    *,
    attrs: Mapping[str, object] | None = None,
    layer_attrs: Mapping[str, Mapping[str, object]] | None = None,
) -> None:
    """Write a whole activation table at once (tests, examples, benchmarks)."""
    labels = np.asarray(labels)
    with TableWriter(
        path, class_names, {k: np.shape(v)[1] for k, v in layers.items()},
        n_images=len(labels), attrs=attrs, layer_attrs=layer_attrs,
    ) as writer:
        step = writer._flush_rows
        for i in range(0, len(labels), step):
            writer.append(labels[i:i + step], {k: v[i:i + step] for k, v in layers.items()})


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m analysis.activations",
        description="Describe and validate an activation table (docs/activation-table.md).",
    )
    parser.add_argument("table", help="activation table (.h5)")
    parser.add_argument("--check-values", action="store_true",
                        help="also read every value and fail on NaN or inf (reads the whole file)")
    args = parser.parse_args(argv)
    try:
        with open_table(args.table) as t:
            print(t)
            counts = np.bincount(t.labels, minlength=t.n_classes)
            print(f"images per class: min {counts.min()}, max {counts.max()}, "
                  f"empty classes {int((counts == 0).sum())}")
            for name in t.layers:
                info = t.layer_info(name)
                print(f"  {name}: {info.n_units} units, chunks {info.chunks}, "
                      f"attrs {info.attrs or {}}")
            if args.check_values:
                t.check_values()
                print("all values finite")
    except ActivationTableError as exc:
        print(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
