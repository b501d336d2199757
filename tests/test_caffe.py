"""The .caffemodel reader, writer and loader, on small synthetic files."""

import logging
import struct
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from generator.caffe import (
    CAFFE_LEGACY_TYPES,
    load_caffe_weights,
    read_caffe_layers,
    read_caffemodel,
    write_caffemodel,
)
from generator.loading import load_weights
from generator.networks import TappedNet, WeightsError, caffenet

# -- a tiny CaffeNet: the same layer names and kinds, a grouped conv, ceil-mode pools ------


def tiny_caffenet() -> TappedNet:
    def pool():
        return nn.MaxPool2d(3, 2, ceil_mode=True)

    def lrn():
        return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)

    steps = [
        ("conv1", nn.Conv2d(3, 4, 3)), ("relu1", nn.ReLU()), ("pool1", pool()), ("norm1", lrn()),
        ("conv2", nn.Conv2d(4, 6, 3, padding=1, groups=2)), ("relu2", nn.ReLU()),
        ("pool2", pool()), ("norm2", lrn()), ("flatten", nn.Flatten()),
        ("fc6", nn.Linear(6 * 3 * 3, 10)), ("relu6", nn.ReLU()),
        ("fc7", nn.Linear(10, 10)), ("relu7", nn.ReLU()),
        ("fc8", nn.Linear(10, 7)),
    ]
    taps = {"conv1:pre": "conv1", "conv1": "relu1", "pool1": "pool1", "norm1": "norm1",
            "conv2": "relu2", "norm2": "norm2", "fc6": "relu6", "fc8": "fc8"}
    return TappedNet(steps, taps, (3, 14, 14))


TINY_SHAPES = {
    "conv1": [(4, 3, 3, 3), (4,)],
    "conv2": [(6, 2, 3, 3), (6,)],
    "fc6": [(10, 54), (10,)],
    "fc7": [(10, 10), (10,)],
    "fc8": [(7, 10), (7,)],
}
TINY_TYPES = {"conv1": "Convolution", "conv2": "Convolution", "fc6": "InnerProduct",
              "fc7": "InnerProduct", "fc8": "InnerProduct"}
LEGACY_TYPES = {"conv1": "CONVOLUTION", "conv2": "CONVOLUTION", "fc6": "INNER_PRODUCT",
                "fc7": "INNER_PRODUCT", "fc8": "INNER_PRODUCT"}


def tiny_weights(seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    return {name: [(rng.standard_normal(s) * scale).astype(np.float32) for s in shapes]
            for name, shapes in TINY_SHAPES.items()}


FORMATS = {  # (legacy, packed, legacy_shapes)
    "current": (False, True, False),
    "current-unpacked": (False, False, False),
    "current-legacy-shapes": (False, True, True),
    "legacy": (True, True, True),
    "legacy-unpacked": (True, False, True),
    "legacy-blobshape": (True, True, False),
    "legacy-blobshape-unpacked": (True, False, False),
    "current-legacy-shapes-unpacked": (False, False, True),
}


def write(path, weights, fmt="current", **kw):
    legacy, packed, legacy_shapes = FORMATS[fmt]
    types = LEGACY_TYPES if legacy else TINY_TYPES
    write_caffemodel(path, weights, legacy=legacy, packed=packed, legacy_shapes=legacy_shapes,
                     types={k: v for k, v in types.items() if k in weights}, **kw)
    return path


# -- reading and writing ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_every_format(tmp_path, fmt):
    weights = tiny_weights()
    weights["extra"] = [np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 7.5]
    path = write(tmp_path / "w.caffemodel", weights, fmt)
    got = read_caffemodel(path)
    assert list(got) == list(weights)  # file order
    legacy_shapes = FORMATS[fmt][2]
    for name, blobs in weights.items():
        assert len(got[name]) == len(blobs)
        for mine, theirs in zip(blobs, got[name], strict=True):
            assert theirs.dtype == np.float32
            want = (1,) * (4 - mine.ndim) + mine.shape if legacy_shapes else mine.shape
            assert theirs.shape == want
            np.testing.assert_array_equal(theirs.reshape(mine.shape), mine)
            assert theirs.flags.writeable and theirs.flags.c_contiguous


def test_layer_types_and_blobless_layers(tmp_path):
    weights = {"conv1": tiny_weights()["conv1"], "relu1": []}
    write_caffemodel(tmp_path / "a.caffemodel", weights, types={"conv1": "Convolution",
                                                                "relu1": "ReLU"})
    layers = read_caffe_layers(tmp_path / "a.caffemodel")
    assert [(la.name, la.type, len(la.blobs)) for la in layers] == [
        ("conv1", "Convolution", 2), ("relu1", "ReLU", 0)]
    assert list(read_caffemodel(tmp_path / "a.caffemodel")) == ["conv1"]  # no blobs, left out

    write_caffemodel(tmp_path / "b.caffemodel", weights, legacy=True,
                     types={"conv1": "CONVOLUTION", "relu1": 18})
    layers = read_caffe_layers(tmp_path / "b.caffemodel")
    assert [(la.name, la.type) for la in layers] == [("conv1", "CONVOLUTION"), ("relu1", "RELU")]
    assert CAFFE_LEGACY_TYPES[4] == "CONVOLUTION" and CAFFE_LEGACY_TYPES[14] == "INNER_PRODUCT"
    assert CAFFE_LEGACY_TYPES[39] == "DECONVOLUTION"


def test_legacy_fc_shapes_are_caffes_old_4d(tmp_path):
    write_caffemodel(tmp_path / "w.caffemodel", {"fc6": tiny_weights()["fc6"]}, legacy=True,
                     legacy_shapes=True)
    weight, bias = read_caffemodel(tmp_path / "w.caffemodel")["fc6"]
    assert weight.shape == (1, 1, 10, 54) and bias.shape == (1, 1, 1, 10)


# An independent, by-hand encoder for the fields write_caffemodel never writes.
def _v(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _k(field, wire):
    return _v(field << 3 | wire)


def _ld(field, payload):
    return _k(field, 2) + _v(len(payload)) + payload


def _floats(values):
    return struct.pack(f"<{len(values)}f", *values)


def test_hand_encoded_file_with_unknown_fields_and_every_encoding(tmp_path):
    conv_w = np.arange(12, dtype=np.float32).reshape(2, 1, 2, 3) / 4
    blob1 = (
        _ld(7, _k(1, 0) + _v(2) + _k(1, 0) + _v(1) + _ld(1, _v(2) + _v(3)))  # dims: unpacked, packed
        + _ld(5, _floats(conv_w.ravel()[:5]))  # data in two packed chunks...
        + _ld(6, _floats([9.0] * 12))  # ...with a diff between them (skipped)
        + _ld(5, _floats(conv_w.ravel()[5:]))
        + _k(99, 0) + _v(123456789)  # unknown varint
    )
    blob2 = (  # double_data wins over data, as in Caffe
        _ld(7, _ld(1, _v(2))) + _ld(5, _floats([7.0, 7.0]))
        + _ld(8, struct.pack("<2d", 0.5, -1.25))
    )
    layer = (
        _ld(1, b"conv1") + _ld(2, b"Convolution") + _ld(3, b"data") + _ld(4, b"conv1")
        + _k(10, 0) + _v(1)  # phase
        + _ld(6, _k(2, 5) + struct.pack("<f", 1.0))  # a ParamSpec message
        + _ld(7, blob1) + _ld(7, blob2)
        + _k(1001, 1) + struct.pack("<d", 3.0)  # unknown fixed64
    )
    v1_blob = (  # legacy dims, one float per field, a negative-free legacy (1, 1, 2, 3)
        _k(1, 0) + _v(1) + _k(2, 0) + _v(1) + _k(3, 0) + _v(2) + _k(4, 0) + _v(3)
        + b"".join(_k(5, 5) + struct.pack("<f", x) for x in range(6))
    )
    v1_layer = (
        _ld(2, b"pool5") + _ld(3, b"fc6") + _ld(4, b"fc6") + _k(5, 0) + _v(14)
        + _ld(6, v1_blob) + _k(7, 5) + struct.pack("<f", 1.0)  # blobs_lr: a float field 7
    )
    v0_layer = _ld(1, _ld(1, b"fc7") + _ld(2, b"innerproduct")
                   + _ld(50, _ld(7, _ld(1, _v(3))) + _ld(5, _floats([1, 2, 3]))))
    net = (
        _ld(1, b"tiny") + _ld(3, b"data") + _k(4, 0) + _v(10)
        + _k(77, 1) + b"\x00" * 8 + _k(78, 5) + b"\x00" * 4
        + _ld(100, layer) + _ld(100, _ld(1, b"relu1") + _ld(2, b"ReLU"))
        + _ld(2, v1_layer) + _ld(2, v0_layer)
    )
    path = tmp_path / "hand.caffemodel"
    path.write_bytes(net)
    layers = read_caffe_layers(path)
    assert [(la.name, la.type, len(la.blobs)) for la in layers] == [
        ("conv1", "Convolution", 2), ("relu1", "ReLU", 0), ("fc6", "INNER_PRODUCT", 1),
        ("fc7", "innerproduct", 1)]
    np.testing.assert_array_equal(layers[0].blobs[0], conv_w)
    np.testing.assert_array_equal(layers[0].blobs[1], np.array([0.5, -1.25], np.float32))
    np.testing.assert_array_equal(layers[2].blobs[0],
                                  np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3))
    np.testing.assert_array_equal(layers[3].blobs[0], np.array([1, 2, 3], np.float32))


def test_duplicate_layer_names_are_an_error(tmp_path):
    path = tmp_path / "dup.caffemodel"
    one = (tmp_path / "one.caffemodel")
    write_caffemodel(one, {"conv1": tiny_weights()["conv1"]})
    path.write_bytes(one.read_bytes() * 2)
    with pytest.raises(WeightsError, match=r"dup\.caffemodel.*two layers named 'conv1'"):
        read_caffemodel(path)


def test_blob_count_not_matching_its_shape(tmp_path):
    blob = _ld(7, _ld(1, _v(2) + _v(3))) + _ld(5, _floats([1.0] * 5))
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(_ld(100, _ld(1, b"conv1") + _ld(7, blob)))
    with pytest.raises(WeightsError, match=r"bad\.caffemodel.*shape \(2, 3\).*holding 5 values"):
        read_caffemodel(path)


# -- loading into torch -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["current", "legacy", "legacy-unpacked", "current-unpacked"])
def test_every_tensor_lands_where_it_should(tmp_path, fmt, caplog):
    weights = tiny_weights(seed=1)
    path = write(tmp_path / "w.caffemodel", weights, fmt)
    model = tiny_caffenet()
    with caplog.at_level(logging.INFO, logger="generator.caffe"):
        load_weights(model, path)  # dispatches on the suffix
    assert load_caffe_weights(tiny_caffenet(), path) == {name: name for name in TINY_SHAPES}
    assert "loaded 5 layer(s)" in caplog.text and "w.caffemodel" in caplog.text
    for name, (weight, bias) in weights.items():
        module = getattr(model, name)
        assert torch.equal(module.weight, torch.from_numpy(weight))
        assert torch.equal(module.bias, torch.from_numpy(bias))


def test_deep_module_names_and_layer_map(tmp_path):
    weights = tiny_weights()
    path = write(tmp_path / "w.caffemodel", {k: weights[k] for k in ("conv1", "fc8")})
    model = nn.Sequential(OrderedDict(
        features=nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 4, 3))),
        head=nn.Linear(10, 7)))
    with pytest.raises(WeightsError, match="fc8.*no module of that name"):
        load_caffe_weights(model, path)
    loaded = load_caffe_weights(model, path, layer_map={"fc8": "head"})
    assert loaded == {"conv1": "features.conv1", "fc8": "head"}
    assert torch.equal(model.head.weight, torch.from_numpy(weights["fc8"][0]))
    assert torch.equal(model.features.conv1.bias, torch.from_numpy(weights["conv1"][1]))
    # None: ignore a file layer (e.g. a classifier with other classes)
    other = nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 4, 3)))
    assert load_caffe_weights(other, path, layer_map={"fc8": None}) == {"conv1": "conv1"}


# numpy references, written out loop by loop


def np_conv(x, w, b, stride=1, pad=0, groups=1):
    c, h, wd = x.shape
    o, _, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    cg, og = c // groups, o // groups
    out = np.zeros((o, ho, wo))
    for g in range(groups):
        xs, ws = x[g * cg:(g + 1) * cg], w[g * og:(g + 1) * og]
        for i in range(ho):
            for j in range(wo):
                patch = xs[:, i * stride:i * stride + kh, j * stride:j * stride + kw]
                out[g * og:(g + 1) * og, i, j] = np.einsum("chw,ochw->o", patch, ws)
    return out + b[:, None, None]


def np_maxpool_caffe(x, k=3, s=2):
    c, h, w = x.shape
    ho, wo = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1  # Caffe rounds up
    out = np.empty((c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            out[:, i, j] = x[:, i * s:min(i * s + k, h), j * s:min(j * s + k, w)].max(axis=(1, 2))
    return out


def np_lrn(a, n=5, alpha=1e-4, beta=0.75, k=1.0):
    out = np.empty_like(a)
    for c in range(a.shape[0]):
        window = a[max(0, c - n // 2):min(a.shape[0], c + n // 2 + 1)]
        out[c] = a[c] / (k + alpha / n * (window ** 2).sum(axis=0)) ** beta
    return out


def relu(a):
    return np.maximum(a, 0)


def test_forward_matches_a_hand_computation(tmp_path):
    weights = tiny_weights(seed=2, scale=1.0)
    for name in ("fc6", "fc7", "fc8"):
        weights[name][0] *= 0.05
    model = tiny_caffenet()
    load_caffe_weights(model, write(tmp_path / "w.caffemodel", weights, "legacy"))
    x = np.random.default_rng(3).uniform(-120, 130, (3, 14, 14)).astype(np.float32)
    with torch.no_grad():
        out = {k: v[0].double().numpy() for k, v in
               model(torch.from_numpy(x)[None], model.tap_names).items()}

    w = {k: [b.astype(np.float64) for b in v] for k, v in weights.items()}
    conv1 = np_conv(x.astype(np.float64), *w["conv1"])
    pool1 = np_maxpool_caffe(relu(conv1))
    norm1 = np_lrn(pool1)
    conv2 = relu(np_conv(norm1, *w["conv2"], pad=1, groups=2))
    norm2 = np_lrn(np_maxpool_caffe(conv2))
    fc6 = relu(w["fc6"][0] @ norm2.ravel() + w["fc6"][1])
    fc8 = w["fc8"][0] @ relu(w["fc7"][0] @ fc6 + w["fc7"][1]) + w["fc8"][1]

    assert pool1.shape == (4, 6, 6) and norm2.shape == (6, 3, 3)  # both pools round up
    assert np.abs(norm1 - pool1).max() > 1e-2 * np.abs(pool1).max()  # LRN does something
    for tap, ref in [("conv1:pre", conv1), ("conv1", relu(conv1)), ("pool1", pool1),
                     ("norm1", norm1), ("conv2", conv2), ("norm2", norm2), ("fc6", fc6),
                     ("fc8", fc8)]:
        np.testing.assert_allclose(out[tap], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(),
                                   err_msg=tap)


def test_caffenet_parameters_are_the_real_caffe_blob_shapes():
    caffe_blobs = {  # bvlc_reference_caffenet.caffemodel, as Caffe stores them
        "conv1": [(96, 3, 11, 11), (96,)], "conv2": [(256, 48, 5, 5), (256,)],
        "conv3": [(384, 256, 3, 3), (384,)], "conv4": [(384, 192, 3, 3), (384,)],
        "conv5": [(256, 192, 3, 3), (256,)], "fc6": [(4096, 9216), (4096,)],
        "fc7": [(4096, 4096), (4096,)], "fc8": [(1000, 4096), (1000,)],
    }
    with torch.device("meta"):
        net = caffenet()
    ours = {name: [tuple(m.weight.shape), tuple(m.bias.shape)]
            for name, m in net.named_children() if hasattr(m, "weight")}
    assert ours == caffe_blobs


# -- errors --------------------------------------------------------------------------------


def test_shape_mismatch_names_the_layer_and_both_shapes(tmp_path):
    weights = tiny_weights()
    weights["conv2"][0] = np.zeros((6, 4, 3, 3), np.float32)  # forgot the groups
    path = write(tmp_path / "w.caffemodel", weights)
    model = tiny_caffenet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        load_caffe_weights(model, path)
    message = str(err.value)
    assert "w.caffemodel" in message and "conv2" in message and "Convolution" in message
    assert "(6, 4, 3, 3)" in message and "(6, 2, 3, 3)" in message
    # nothing was copied: the check comes first
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_same_count_but_a_real_shape_difference_is_not_reshaped(tmp_path):
    weights = tiny_weights()
    weights["fc7"][0] = weights["fc7"][0].reshape(1, 100)  # same count, not leading 1s alone
    weights["fc8"][0] = weights["fc8"][0].T.copy()  # transposed: (10, 7) for (7, 10)
    for bad in ("fc7", "fc8"):
        good = tiny_weights()
        good[bad] = weights[bad]
        with pytest.raises(WeightsError, match=bad):
            load_caffe_weights(tiny_caffenet(), write(tmp_path / f"{bad}.caffemodel", good))


def test_unknown_layer(tmp_path):
    weights = tiny_weights()
    weights["fc9"] = [np.zeros((3, 7), np.float32)]
    path = write(tmp_path / "w.caffemodel", weights)
    with pytest.raises(WeightsError) as err:
        load_caffe_weights(tiny_caffenet(), path)
    assert "fc9" in str(err.value) and "conv1" in str(err.value) and "fc8" in str(err.value)
    model = tiny_caffenet()
    assert "fc9" not in load_caffe_weights(model, path, strict=False)
    assert torch.equal(model.fc8.weight, torch.from_numpy(weights["fc8"][0]))


def test_missing_layer(tmp_path):
    weights = tiny_weights()
    del weights["fc8"]
    path = write(tmp_path / "w.caffemodel", weights)
    with pytest.raises(WeightsError, match=r"no weights in the file for layer\(s\) \['fc8'\]"):
        load_caffe_weights(tiny_caffenet(), path)
    model = tiny_caffenet()
    load_caffe_weights(model, path, strict=False)
    assert torch.equal(model.fc7.weight, torch.from_numpy(weights["fc7"][0]))


def test_missing_bias_blob(tmp_path):
    weights = tiny_weights()
    weights["conv1"] = weights["conv1"][:1]
    with pytest.raises(WeightsError, match=r"conv1.*no blob for conv1\.bias"):
        load_caffe_weights(tiny_caffenet(), write(tmp_path / "w.caffemodel", weights))


@pytest.mark.parametrize("fmt", ["current", "legacy-unpacked"])
def test_every_truncation_gives_a_clear_error(tmp_path, fmt):
    whole = write(tmp_path / "w.caffemodel", tiny_weights(), fmt).read_bytes()
    model = tiny_caffenet()  # loading checks everything first, so a failure changes nothing
    for n in range(len(whole)):
        path = tmp_path / f"cut{n}.caffemodel"  # (rewriting one file is slow on some disks)
        path.write_bytes(whole[:n])
        with pytest.raises(WeightsError, match=rf"cut{n}\.caffemodel"):
            load_caffe_weights(model, path)
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(WeightsError, match=r"truncated file.*at byte \d+ \(in layer #\d"):
        read_caffemodel(path)


def test_garbage_files_give_a_clear_error(tmp_path):
    path = tmp_path / "junk.caffemodel"
    rng = np.random.default_rng(0)
    payloads = [b"", b"name: 'CaffeNet'\nlayer { name: 'conv1' }\n", b"\x89PNG\r\n\x1a\n" * 40,
                b"\xff" * 64] + [rng.bytes(int(n)) for n in rng.integers(1, 3000, 60)]
    for payload in payloads:
        path.write_bytes(payload)
        with pytest.raises(WeightsError, match=r"junk\.caffemodel"):
            load_caffe_weights(tiny_caffenet(), path)
    with pytest.raises(WeightsError, match="no such weights file"):
        load_weights(tiny_caffenet(), tmp_path / "absent.caffemodel")


# -- Deconvolution: Caffe's (in, out/group, kh, kw) is ConvTranspose2d's layout ------------


def np_deconv(x, w, b, stride, groups):
    cin, h, wd = x.shape
    _, og, kh, kw = w.shape
    cg = cin // groups
    out = np.zeros((og * groups, (h - 1) * stride + kh, (wd - 1) * stride + kw))
    for c in range(cin):  # Caffe: col2im of W^T x, each input pixel scatters its kernel
        g = c // cg
        for i in range(h):
            for j in range(wd):
                out[g * og:(g + 1) * og, i * stride:i * stride + kh,
                    j * stride:j * stride + kw] += x[c, i, j] * w[c]
    return out + b[:, None, None]


def test_deconvolution_copies_without_transpose(tmp_path):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)  # in 4, out 6 in 2 groups
    b = rng.standard_normal(6).astype(np.float32)
    model = nn.Sequential(OrderedDict(deconv1=nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)))
    path = tmp_path / "d.caffemodel"
    write_caffemodel(path, {"deconv1": [w, b]}, types={"deconv1": "Deconvolution"})
    load_caffe_weights(model, path)
    assert torch.equal(model.deconv1.weight, torch.from_numpy(w))
    x = rng.standard_normal((4, 5, 5)).astype(np.float32)
    with torch.no_grad():
        got = model(torch.from_numpy(x)[None])[0].double().numpy()
    np.testing.assert_allclose(got, np_deconv(x.astype(np.float64), w, b, 2, 2), atol=1e-5)

    # a convolution's (out, in/group, kh, kw) layout is not silently accepted
    write_caffemodel(path, {"deconv1": [np.zeros((6, 2, 3, 3), np.float32), b]},
                     types={"deconv1": "Deconvolution"})
    with pytest.raises(WeightsError, match=r"deconv1 \(Deconvolution\).*\(6, 2, 3, 3\).*"
                                           r"\(4, 3, 3, 3\)"):
        load_caffe_weights(model, path)
