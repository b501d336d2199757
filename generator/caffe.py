"""Caffe ``.caffemodel`` weights without Caffe or protobuf (docs/networks.md).

A ``.caffemodel`` is a serialised ``NetParameter`` protobuf. This module reads
the part that holds weights with a small wire-format reader (numpy does the
bulk: packed floats become arrays without a per-float Python loop), writes the
same format for tests, and copies the blobs into a torch model by layer name.

What is read:

* ``NetParameter.layer`` (field 100, ``LayerParameter``: name 1, type 2 (a
  string), blobs 7) and the legacy ``NetParameter.layers`` (field 2,
  ``V1LayerParameter``: name 4, type 5 (an enum, :data:`CAFFE_LEGACY_TYPES`),
  blobs 6; a V0 layer nested in its field 1 (name 1, type 2, blobs 50) too);
* ``BlobProto``: shape 7 (``BlobShape.dim`` 1, packed or not), data 5 (float,
  packed or one per field), double_data 8 (used instead of data when present,
  as Caffe does), legacy num/channels/height/width 1-4 (used when there is no
  shape: then the blob is 4-d, e.g. (1, 1, out, in) for old fc weights).

Everything else (diffs, layer parameters, the net's name, unknown fields) is
skipped. A truncated or corrupt file gives a :class:`WeightsError` naming the
file and the byte offset, never a raw decoding error.

Caffe's blob layouts are torch's: Convolution (out, in/group, kh, kw),
InnerProduct (out, in) and Deconvolution (in, out/group, kh, kw, as
``nn.ConvTranspose2d``) are copied without transposes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .networks import WeightsError

__all__ = [
    "CAFFE_LEGACY_TYPES",
    "CaffeLayer",
    "read_caffe_layers",
    "read_caffemodel",
    "write_caffemodel",
    "load_caffe_weights",
]

log = logging.getLogger(__name__)

#: ``V1LayerParameter.LayerType``: enum value -> name (legacy files store the number).
CAFFE_LEGACY_TYPES: dict[int, str] = {
    0: "NONE", 1: "ACCURACY", 2: "BNLL", 3: "CONCAT", 4: "CONVOLUTION", 5: "DATA",
    6: "DROPOUT", 7: "EUCLIDEAN_LOSS", 8: "FLATTEN", 9: "HDF5_DATA", 10: "HDF5_OUTPUT",
    11: "IM2COL", 12: "IMAGE_DATA", 13: "INFOGAIN_LOSS", 14: "INNER_PRODUCT", 15: "LRN",
    16: "MULTINOMIAL_LOGISTIC_LOSS", 17: "POOLING", 18: "RELU", 19: "SIGMOID",
    20: "SOFTMAX", 21: "SOFTMAX_LOSS", 22: "SPLIT", 23: "TANH", 24: "WINDOW_DATA",
    25: "ELTWISE", 26: "POWER", 27: "SIGMOID_CROSS_ENTROPY_LOSS", 28: "HINGE_LOSS",
    29: "MEMORY_DATA", 30: "ARGMAX", 31: "THRESHOLD", 32: "DUMMY_DATA", 33: "SLICE",
    34: "MVN", 35: "ABSVAL", 36: "SILENCE", 37: "CONTRASTIVE_LOSS", 38: "EXP",
    39: "DECONVOLUTION",
}
_LEGACY_TYPE_NUMBERS = {name: number for number, name in CAFFE_LEGACY_TYPES.items()}

# wire types
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
# field numbers
_NET_LAYER, _NET_LEGACY_LAYERS = 100, 2
_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS = 1, 2, 7
_V1_V0LAYER, _V1_NAME, _V1_TYPE, _V1_BLOBS = 1, 4, 5, 6
_V0_NAME, _V0_TYPE, _V0_BLOBS = 1, 2, 50
_BLOB_LEGACY_DIMS = (1, 2, 3, 4)  # num, channels, height, width
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE_DATA = 5, 7, 8
_SHAPE_DIM = 1
_DATA_TAG = (_BLOB_DATA << 3) | _FIXED32  # 0x2d: one unpacked float


@dataclass
class CaffeLayer:
    """One layer of a ``.caffemodel``: its name, type and blobs (float32, file order).

    ``type`` is the layer's type string (``"Convolution"``) or, in legacy
    files, the V1 enum name (``"CONVOLUTION"``); ``""`` when the file has none.
    """

    name: str
    type: str
    blobs: list[np.ndarray]


# -- wire-format reader -----------------------------------------------------------------


class _WireError(Exception):
    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset
        self.field = None  # the field that runs past the end of its message
        self.where = ""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    start = pos
    while True:
        if pos >= end:
            raise _WireError("truncated varint", start)
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _WireError("varint longer than 10 bytes", start)


def _next_field(buf: bytes, pos: int, end: int) -> tuple[int, int, int, int]:
    """(field, wire type, value, next position); ``value`` is the integer of a
    varint and the start offset of the payload otherwise (length-delimited
    payloads end at the next position)."""
    start = pos
    key, pos = _varint(buf, pos, end)
    field, wire = key >> 3, key & 7
    if field == 0:
        raise _WireError("field number 0", start)
    if wire == _VARINT:
        value, pos = _varint(buf, pos, end)
        return field, wire, value, pos
    if wire == _BYTES:
        length, pos = _varint(buf, pos, end)
        value, pos = pos, pos + length
    elif wire == _FIXED64:
        value, pos = pos, pos + 8
    elif wire == _FIXED32:
        value, pos = pos, pos + 4
    else:
        raise _WireError(f"unsupported wire type {wire} (field {field})", start)
    if pos > end:
        exc = _WireError(f"field {field} needs {pos - end} more byte(s) than its message "
                         f"has (truncated file?)", start)
        exc.field = field
        raise exc
    return field, wire, value, pos


def _string(buf: bytes, start: int, end: int) -> str:
    try:
        return bytes(buf[start:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise _WireError("a name that is not UTF-8", start) from None


def _packed_varints(buf: bytes, start: int, end: int) -> list[int]:
    values = []
    pos = start
    while pos < end:
        value, pos = _varint(buf, pos, end)
        values.append(value)
    return values


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _int32(value: int) -> int:
    # negative int32s are written as 10-byte (64-bit) varints
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _unpacked_floats(buf: bytes, mv: memoryview, pos: int, end: int) -> tuple[np.ndarray, int]:
    """A run of one-float-per-field ``data`` (tag 0x2d + 4 bytes each), read at once."""
    raw = np.frombuffer(mv[pos:end], dtype=np.uint8)
    n_max = len(raw) // 5
    others = np.flatnonzero(raw[: n_max * 5 : 5] != _DATA_TAG)
    n = int(others[0]) if others.size else n_max
    if n == 0:  # a lone tag with fewer than 4 bytes after it
        raise _WireError("field 5 needs more bytes than its message has (truncated file?)",
                         pos)
    values = raw[: n * 5].reshape(n, 5)[:, 1:].copy().view("<f4").ravel()
    return values, pos + 5 * n


def _read_blob(buf: bytes, mv: memoryview, start: int, end: int) -> np.ndarray:
    shape: list[int] | None = None
    legacy: dict[int, int] = {}
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    pos = start
    while pos < end:
        if buf[pos] == _DATA_TAG:
            values, pos = _unpacked_floats(buf, mv, pos, end)
            floats.append(values)
            continue
        at = pos
        field, wire, value, pos = _next_field(buf, pos, end)
        if field == _BLOB_DATA and wire == _BYTES:
            if (pos - value) % 4:
                raise _WireError("packed float data whose length is not a multiple of 4", at)
            floats.append(np.frombuffer(mv[value:pos], dtype="<f4"))
        elif field == _BLOB_DOUBLE_DATA and wire == _BYTES:
            if (pos - value) % 8:
                raise _WireError("packed double data whose length is not a multiple of 8", at)
            doubles.append(np.frombuffer(mv[value:pos], dtype="<f8"))
        elif field == _BLOB_DOUBLE_DATA and wire == _FIXED64:
            doubles.append(np.frombuffer(mv[value:pos], dtype="<f8"))
        elif field == _BLOB_SHAPE and wire == _BYTES:
            shape = [] if shape is None else shape  # repeated fields of a message merge
            shape += _read_shape(buf, value, pos)
        elif field in _BLOB_LEGACY_DIMS and wire == _VARINT:
            legacy[field] = _int32(value)
        # anything else (diff 6, double_diff 9, unknown fields) is skipped
    if shape is None:
        if legacy:  # Caffe's defaults for a missing legacy dimension are 0
            shape = [legacy.get(f, 0) for f in _BLOB_LEGACY_DIMS]
        else:
            shape = [sum(len(a) for a in (doubles or floats))]
    if any(d < 0 for d in shape):
        raise _WireError(f"a blob with a negative dimension {tuple(shape)}", start)
    parts = doubles or floats  # Caffe reads double_data when there is any
    count = sum(len(a) for a in parts)
    if count != math.prod(shape):
        raise _WireError(f"a blob of shape {tuple(shape)} ({math.prod(shape)} values) "
                         f"holding {count} values", start)
    if len(parts) == 1:
        data = parts[0].astype(np.float32)  # a copy: independent of the file's bytes
    else:
        data = np.concatenate(parts).astype(np.float32, copy=False) if parts else \
            np.zeros(0, np.float32)
    return data.reshape(shape)


def _read_shape(buf: bytes, start: int, end: int) -> list[int]:
    dims: list[int] = []
    pos = start
    while pos < end:
        field, wire, value, pos = _next_field(buf, pos, end)
        if field == _SHAPE_DIM and wire == _VARINT:
            dims.append(_int64(value))
        elif field == _SHAPE_DIM and wire == _BYTES:
            dims += [_int64(v) for v in _packed_varints(buf, value, pos)]
    return dims


def _read_layer(buf: bytes, mv: memoryview, start: int, end: int, legacy: bool) -> CaffeLayer:
    name_field, type_field, blobs_field = (
        (_V1_NAME, _V1_TYPE, _V1_BLOBS) if legacy else (_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS))
    name, type_, blobs = "", "", []
    pos = start
    while pos < end:
        field, wire, value, pos = _next_field(buf, pos, end)
        if field == name_field and wire == _BYTES:
            name = _string(buf, value, pos)
        elif field == type_field and legacy and wire == _VARINT:
            type_ = CAFFE_LEGACY_TYPES.get(value, f"V1 type {value}")
        elif field == type_field and not legacy and wire == _BYTES:
            type_ = _string(buf, value, pos)
        elif field == blobs_field and wire == _BYTES:
            blobs.append(_read_blob(buf, mv, value, pos))
        elif legacy and field == _V1_V0LAYER and wire == _BYTES:
            v0 = _read_v0_layer(buf, mv, value, pos)
            name, type_, blobs = name or v0.name, type_ or v0.type, blobs + v0.blobs
    return CaffeLayer(name, type_, blobs)


def _read_v0_layer(buf: bytes, mv: memoryview, start: int, end: int) -> CaffeLayer:
    layer = CaffeLayer("", "", [])
    pos = start
    while pos < end:
        field, wire, value, pos = _next_field(buf, pos, end)
        if field == _V0_NAME and wire == _BYTES:
            layer.name = _string(buf, value, pos)
        elif field == _V0_TYPE and wire == _BYTES:
            layer.type = _string(buf, value, pos)
        elif field == _V0_BLOBS and wire == _BYTES:
            layer.blobs.append(_read_blob(buf, mv, value, pos))
    return layer


def read_caffe_layers(path: str | os.PathLike) -> list[CaffeLayer]:
    """Every layer of a ``.caffemodel`` in file order, with or without blobs."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            buf = fh.read()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    mv = memoryview(buf)
    layers: list[CaffeLayer] = []
    pos, end = 0, len(buf)
    try:
        while pos < end:
            in_layer = False
            try:
                field, wire, value, pos = _next_field(buf, pos, end)
                if wire == _BYTES and field in (_NET_LAYER, _NET_LEGACY_LAYERS):
                    in_layer = True
                    layers.append(_read_layer(buf, mv, value, pos, legacy=field != _NET_LAYER))
            except _WireError as exc:
                in_layer = in_layer or exc.field in (_NET_LAYER, _NET_LEGACY_LAYERS)
                if in_layer:
                    after = f", after {layers[-1].name!r}" if layers else ""
                    exc.where = f" (in layer #{len(layers) + 1}{after})"
                else:
                    after = f"after layer {layers[-1].name!r}" if layers else "before any layer"
                    exc.where = f" (top level, {after})"
                raise
    except _WireError as exc:
        raise WeightsError(f"{path}: not a valid .caffemodel: {exc} at byte {exc.offset}"
                           f"{exc.where}; file size {end} bytes") from None
    if not layers:
        raise WeightsError(f"{path}: not a .caffemodel: no layers (NetParameter field 100 "
                           f"or legacy field 2) in its {end} bytes")
    return layers


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Layer name -> its blobs (float32 arrays in the blobs' shapes), in file order.

    Layers without blobs are left out; two layers with blobs and the same name
    are an error.
    """
    out: dict[str, list[np.ndarray]] = {}
    for layer in read_caffe_layers(path):
        if not layer.blobs:
            continue
        if layer.name in out:
            raise WeightsError(f"{os.fspath(path)}: two layers named {layer.name!r} with blobs")
        out[layer.name] = layer.blobs
    return out


# -- writer (for tests and synthetic files) ----------------------------------------------


def _enc_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _enc_key(field: int, wire: int) -> bytes:
    return _enc_varint((field << 3) | wire)


def _enc_bytes(field: int, payload: bytes) -> bytes:
    return _enc_key(field, _BYTES) + _enc_varint(len(payload)) + payload


def _enc_blob(blob: np.ndarray, *, packed: bool, legacy_shapes: bool) -> bytes:
    data = np.ascontiguousarray(blob, dtype="<f4").ravel()
    parts = []
    if legacy_shapes:
        if np.ndim(blob) > 4:
            raise ValueError(f"a legacy blob has at most 4 dimensions, not {np.shape(blob)}")
        dims = (1,) * (4 - np.ndim(blob)) + tuple(np.shape(blob))
        for field, dim in zip(_BLOB_LEGACY_DIMS, dims, strict=True):
            parts.append(_enc_key(field, _VARINT) + _enc_varint(int(dim)))
    else:
        dims_payload = b"".join(_enc_varint(int(d)) for d in np.shape(blob))
        parts.append(_enc_bytes(_BLOB_SHAPE, _enc_bytes(_SHAPE_DIM, dims_payload)))
    if packed:
        parts.append(_enc_bytes(_BLOB_DATA, data.tobytes()))
    else:
        fields = np.empty((data.size, 5), np.uint8)
        fields[:, 0] = _DATA_TAG
        fields[:, 1:] = data.view(np.uint8).reshape(-1, 4)
        parts.append(fields.tobytes())
    return b"".join(parts)


def write_caffemodel(
    path: str | os.PathLike,
    layers: Mapping[str, Iterable[np.ndarray]],
    *,
    legacy: bool = False,
    packed: bool = True,
    legacy_shapes: bool = False,
    types: Mapping[str, str | int] | None = None,
    name: str | None = None,
) -> None:
    """Write a ``.caffemodel`` holding ``layers`` (name -> blobs), in order.

    ``legacy``: V1 layers (``NetParameter`` field 2, type as an enum: a number
    or a :data:`CAFFE_LEGACY_TYPES` name) instead of current ones (field 100,
    type as a string). ``legacy_shapes``: blob dimensions as the old 4-d
    num/channels/height/width, padded with leading 1s (fc weights (out, in) ->
    (1, 1, out, in)) instead of a ``BlobShape``. ``packed``: float data packed
    (as Caffe writes it) or one float per field (old writers). ``types``: layer
    name -> type; ``name``: the net's name.
    """
    types = dict(types or {})
    out = [_enc_bytes(1, name.encode())] if name is not None else []
    for layer_name, blobs in layers.items():
        if legacy:
            fields = [_enc_bytes(_V1_NAME, layer_name.encode())]
            if layer_name in types:
                type_ = types[layer_name]
                number = type_ if isinstance(type_, int) else _LEGACY_TYPE_NUMBERS.get(type_)
                if number is None:
                    raise ValueError(f"unknown legacy layer type {type_!r}; use one of "
                                     f"{sorted(_LEGACY_TYPE_NUMBERS)}")
                fields.append(_enc_key(_V1_TYPE, _VARINT) + _enc_varint(number))
            blob_field, layer_field = _V1_BLOBS, _NET_LEGACY_LAYERS
        else:
            fields = [_enc_bytes(_LAYER_NAME, layer_name.encode())]
            if layer_name in types:
                fields.append(_enc_bytes(_LAYER_TYPE, str(types[layer_name]).encode()))
            blob_field, layer_field = _LAYER_BLOBS, _NET_LAYER
        for blob in blobs:
            fields.append(_enc_bytes(blob_field, _enc_blob(
                np.asarray(blob), packed=packed, legacy_shapes=legacy_shapes)))
        out.append(_enc_bytes(layer_field, b"".join(fields)))
    with open(path, "wb") as fh:
        for chunk in out:
            fh.write(chunk)


# -- loading into torch ------------------------------------------------------------------


def _strip_ones(shape: Iterable[int]) -> tuple[int, ...]:
    shape = tuple(shape)
    i = 0
    while i < len(shape) - 1 and shape[i] == 1:
        i += 1
    return shape[i:]


def _parameter_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Module path -> module, for every module with parameters of its own."""
    return {path: module for path, module in model.named_modules()
            if path and any(True for _ in module.parameters(recurse=False))}


def _find_module(caffe_name: str, modules: Mapping[str, nn.Module],
                 by_last: Mapping[str, list[str]], layer_map: Mapping[str, str | None],
                 path: str) -> str | None:
    if caffe_name in layer_map:
        target = layer_map[caffe_name]
        if target is not None and target not in modules:
            raise WeightsError(f"{path}: layer_map sends {caffe_name!r} to {target!r}, which is "
                               f"not a module with parameters; the model has {sorted(modules)}")
        return target
    if caffe_name in modules:
        return caffe_name
    candidates = by_last.get(caffe_name, [])
    if len(candidates) > 1:
        raise WeightsError(f"{path}: layer {caffe_name!r} matches several modules {candidates}; "
                           f"say which with layer_map")
    return candidates[0] if candidates else None


def load_caffe_weights(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    layer_map: Mapping[str, str | None] | None = None,
    strict: bool = True,
) -> dict[str, str]:
    """Copy a ``.caffemodel``'s blobs into ``model`` by layer name.

    A Caffe layer goes to the module whose path, or the last component of it,
    is the layer's name; ``layer_map`` (Caffe name -> module path, or None to
    ignore the layer) overrides that. ``blobs[0]`` goes to ``.weight`` and
    ``blobs[1]`` to ``.bias``, without transposes; shapes must agree up to
    legacy leading 1s. With ``strict``, a file layer with blobs but no module
    and a module with parameters but no layer are errors (otherwise warnings).
    Everything is checked before anything is copied. Returns Caffe layer name ->
    module path for what was loaded.
    """
    path = os.fspath(path)
    layer_map = dict(layer_map or {})
    layers = [layer for layer in read_caffe_layers(path) if layer.blobs]
    if not layers:
        raise WeightsError(f"{path}: no layer holds weights (blobs)")
    modules = _parameter_modules(model)
    by_last: dict[str, list[str]] = {}
    for module_path in modules:
        by_last.setdefault(module_path.rsplit(".", 1)[-1], []).append(module_path)

    plan: list[tuple[torch.nn.Parameter, np.ndarray, tuple[int, ...]]] = []
    loaded: dict[str, str] = {}
    unknown: list[str] = []
    for layer in layers:
        if layer.name in loaded:
            raise WeightsError(f"{path}: two layers named {layer.name!r} with blobs")
        target = _find_module(layer.name, modules, by_last, layer_map, path)
        if target is None:
            if layer.name not in layer_map:
                unknown.append(layer.name)
            continue
        if target in loaded.values():
            raise WeightsError(f"{path}: two layers go to module {target!r}")
        module = modules[target]
        kind = f"{layer.name} ({layer.type})" if layer.type else layer.name
        slots = [n for n in ("weight", "bias") if isinstance(getattr(module, n, None), nn.Parameter)]
        if len(layer.blobs) > len(slots):
            raise WeightsError(f"{path}: layer {kind} has {len(layer.blobs)} blobs but module "
                               f"{target!r} ({type(module).__name__}) takes {slots}")
        if strict and len(layer.blobs) < len(slots):
            raise WeightsError(f"{path}: layer {kind} has no blob for {target}."
                               f"{slots[len(layer.blobs)]} (file has {len(layer.blobs)} blob(s))")
        for slot, blob in zip(slots, layer.blobs, strict=False):
            param = getattr(module, slot)
            want = tuple(param.shape)
            if blob.shape != want and not (
                    blob.size == param.numel() and _strip_ones(blob.shape) == _strip_ones(want)):
                raise WeightsError(f"{path}: layer {kind} {slot}: file shape {blob.shape}, "
                                   f"network shape {want} ({target}.{slot})")
            plan.append((param, blob, want))
        loaded[layer.name] = target

    if unknown:
        message = (f"{path}: layer(s) {unknown} have weights but no module of that name; the "
                   f"model's layers are {sorted(modules)} (use layer_map to name them)")
        if strict:
            raise WeightsError(message)
        log.warning("%s; ignored", message)
    missing = [m for m in modules if m not in loaded.values()]
    if missing:
        message = (f"{path}: no weights in the file for layer(s) {missing}; the file's layers "
                   f"with weights are {[layer.name for layer in layers]}")
        if strict:
            raise WeightsError(message)
        log.warning("%s; they keep their current values", message)

    with torch.no_grad():
        for param, blob, want in plan:
            param.copy_(torch.from_numpy(blob).reshape(want))
    n_values = sum(blob.size for _, blob, _ in plan)
    log.info("%s: loaded %d layer(s), %d values: %s", path, len(loaded), n_values,
             ", ".join(f"{k}->{v}" if k != v else k for k, v in loaded.items()))
    return loaded
