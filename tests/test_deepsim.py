"""The DeePSiM fc6 generator: shapes (docs/networks.md), Caffe import, pixels, cost.

The full-size network (~56M parameters) is only ever built on the meta device;
everything that computes uses a tiny one with the same layers.
"""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from common.files import sha256_file
from generator.caffe import write_caffemodel
from generator.deepsim import (
    CAFFE_MEAN,
    LAYERS,
    DeePSiMGenerator,
    crop_to_classifier,
    flops_per_image,
    layer_macs,
    load_generator,
    to_pixels,
)
from generator.networks import CAFFE_PREPROCESSING, WeightsError

# -- docs/networks.md, written out: output shape of every layer for one code ---------------------

PAPER_SHAPES = {
    "defc7": (4096,),
    "defc6": (4096,),
    "defc5": (4096,),  # -> reshape 256x4x4
    "deconv5": (256, 8, 8),
    "conv5_1": (512, 8, 8),
    "deconv4": (256, 16, 16),
    "conv4_1": (256, 16, 16),
    "deconv3": (128, 32, 32),
    "conv3_1": (128, 32, 32),
    "deconv2": (64, 64, 64),
    "deconv1": (32, 128, 128),
    "deconv0": (3, 256, 256),
}

#: The blobs of PPGN's generator.caffemodel: InnerProduct (out, in); Deconvolution
#: (in, out, kh, kw), also for conv5_1/conv4_1/conv3_1 (Deconvolution layers there).
REAL_BLOB_SHAPES = {
    "defc7": [(4096, 4096), (4096,)],
    "defc6": [(4096, 4096), (4096,)],
    "defc5": [(4096, 4096), (4096,)],
    "deconv5": [(256, 256, 4, 4), (256,)],
    "conv5_1": [(256, 512, 3, 3), (512,)],
    "deconv4": [(512, 256, 4, 4), (256,)],
    "conv4_1": [(256, 256, 3, 3), (256,)],
    "deconv3": [(256, 128, 4, 4), (128,)],
    "conv3_1": [(128, 128, 3, 3), (128,)],
    "deconv2": [(128, 64, 4, 4), (64,)],
    "deconv1": [(64, 32, 4, 4), (32,)],
    "deconv0": [(32, 3, 4, 4), (3,)],
}

# -- a tiny generator: same layers, every consecutive channel count different ----------------

TINY = {"code_dim": 6, "fc": 10, "channels": (2, 3, 5, 4, 3, 2, 3, 2, 4, 3)}
TINY_KERNELS = {"deconv5": 4, "conv5_1": 3, "deconv4": 4, "conv4_1": 3, "deconv3": 4,
                "conv3_1": 3, "deconv2": 4, "deconv1": 4, "deconv0": 4}


def tiny_blob_shapes() -> dict[str, list[tuple[int, ...]]]:
    fc_sizes = [(TINY["fc"], TINY["code_dim"]), (TINY["fc"], TINY["fc"]),
                (TINY["channels"][0] * 16, TINY["fc"])]
    shapes = {name: [size, size[:1]] for name, size in zip(LAYERS[:3], fc_sizes, strict=True)}
    ch = TINY["channels"]
    for i, name in enumerate(LAYERS[3:]):
        k = TINY_KERNELS[name]
        shapes[name] = [(ch[i], ch[i + 1], k, k), (ch[i + 1],)]
    return shapes


def tiny_blobs(seed=0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {name: [(rng.standard_normal(s) * 0.5).astype(np.float32) for s in shapes]
            for name, shapes in tiny_blob_shapes().items()}


def caffe_types(legacy: bool) -> dict[str, str]:
    if legacy:
        return {n: "INNER_PRODUCT" if n.startswith("defc") else "DECONVOLUTION" for n in LAYERS}
    return {n: "InnerProduct" if n.startswith("defc") else "Deconvolution" for n in LAYERS}


def record_outputs(model):
    """Hook every layer; returns name -> its output (before the activation)."""
    seen = {}
    for name in LAYERS:
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: seen.__setitem__(name, out))
    return seen


# -- shapes ------------------------------------------------------------------------------


def test_full_size_parameters_are_the_caffe_blob_shapes():
    with torch.device("meta"):
        model = DeePSiMGenerator()
    params = dict(model.named_parameters())
    expected = {f"{name}.{slot}": shape for name, shapes in REAL_BLOB_SHAPES.items()
                for slot, shape in zip(("weight", "bias"), shapes, strict=True)}
    assert {k: tuple(p.shape) for k, p in params.items()} == expected
    assert [n for n, _ in model.named_children()] == list(LAYERS)
    assert sum(p.numel() for p in params.values()) == 56_097_891


def test_every_layer_shape_matches_design_on_the_full_size_network():
    with torch.device("meta"):
        model = DeePSiMGenerator()
        seen = record_outputs(model)
        out = model(torch.zeros(2, 4096))
    assert {name: tuple(t.shape[1:]) for name, t in seen.items()} == PAPER_SHAPES
    assert list(seen) == list(LAYERS)  # forward order
    assert tuple(out.shape) == (2, 3, 256, 256)
    assert model.layer_shapes() == PAPER_SHAPES
    assert model.output_shape == (3, 256, 256)
    # spatial sides 4 -> 8 -> 16 -> 32 -> 64 -> 128 -> 256, doubled only by the 4/2/1 deconvs
    sides = [s[1] for s in PAPER_SHAPES.values() if len(s) == 3]
    assert sides == [8, 8, 16, 16, 32, 32, 64, 128, 256]


def test_layer_kinds_and_hyperparameters():
    with torch.device("meta"):
        model = DeePSiMGenerator()
    for name in LAYERS[3:]:
        layer = model.get_submodule(name)
        assert isinstance(layer, torch.nn.ConvTranspose2d), name
        k, s = (3, 1) if name.startswith("conv") else (4, 2)
        assert (layer.kernel_size, layer.stride, layer.padding) == ((k, k), (s, s), (1, 1)), name
    assert all(isinstance(model.get_submodule(n), torch.nn.Linear) for n in LAYERS[:3])


def test_tiny_output_and_crop():
    torch.manual_seed(0)
    model = DeePSiMGenerator(**TINY).eval()
    seen = record_outputs(model)
    with torch.no_grad():
        out = model(torch.rand(2, 6))
    assert tuple(out.shape) == (2, 3, 256, 256)
    assert {n: tuple(t.shape[1:]) for n, t in seen.items()} == model.layer_shapes()
    crop = crop_to_classifier(out)
    assert tuple(crop.shape) == (2, 3, 227, 227)
    assert torch.equal(crop, out[:, :, 14:241, 14:241])
    # the same on numpy, one image, and a generic size
    image = out[0].numpy()
    assert np.array_equal(crop_to_classifier(image), image[:, 14:241, 14:241])
    assert np.array_equal(crop_to_classifier(np.arange(100).reshape(10, 10), 7),
                          np.arange(100).reshape(10, 10)[1:8, 1:8])
    with pytest.raises(ValueError, match="cannot crop 300x300 from 256x256"):
        crop_to_classifier(out, 300)


def test_leaky_relu_is_not_in_place_and_the_output_is_raw():
    torch.manual_seed(1)
    model = DeePSiMGenerator(**TINY).eval()
    seen = record_outputs(model)
    with torch.no_grad():
        out = model(torch.randn(3, 6))
    assert (seen["defc7"] < 0).any()  # the hooked pre-activation survived: nothing in place
    assert (out < 0).any()  # deconv0 has no activation
    assert torch.equal(out, seen["deconv0"])


def test_codes_reach_the_image_with_gradients():
    model, _ = load_generator(None, **TINY)
    h = torch.rand(2, 6, requires_grad=True)
    crop_to_classifier(model(h)).sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    assert tuple(model(torch.rand(2, 6, 1, 1)).shape) == (2, 3, 256, 256)  # fc6 as a 1x1 map
    with pytest.raises(ValueError, match=r"codes of shape \(N, 6\), not \(2, 5\)"):
        model(torch.rand(2, 5))


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="channels must hold 10 counts"):
        DeePSiMGenerator(channels=(256, 3))
    with pytest.raises(ValueError, match="fc must be a positive integer"):
        DeePSiMGenerator(fc=0)


# -- Caffe import ------------------------------------------------------------------------

FORMATS = {  # (legacy, packed, legacy_shapes)
    "current": (False, True, False),
    "legacy": (True, True, True),
    "legacy-unpacked": (True, False, True),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_caffemodel_import_puts_every_blob_in_place(tmp_path, fmt):
    legacy, packed, legacy_shapes = FORMATS[fmt]
    blobs = tiny_blobs()
    path = tmp_path / "generator.caffemodel"
    write_caffemodel(path, blobs, legacy=legacy, packed=packed, legacy_shapes=legacy_shapes,
                     types=caffe_types(legacy))
    model, checksum = load_generator(path, **TINY)
    assert checksum == sha256_file(path)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    for name, (weight, bias) in blobs.items():
        layer = model.get_submodule(name)
        # no transposes: Deconvolution (in, out, kh, kw) is ConvTranspose2d's own layout
        assert tuple(layer.weight.shape) == weight.shape, name
        assert np.array_equal(layer.weight.numpy(), weight), name
        assert np.array_equal(layer.bias.numpy(), bias), name


def leaky(x):
    return np.where(x > 0, x, 0.3 * x)


def deconv_loops(x, w, b, stride, pad):
    """Caffe's Deconvolution, by explicit loops: each input value scatters w[i] into the output."""
    c_in, height, width = x.shape
    _, c_out, k, _ = w.shape
    full = np.zeros((c_out, (height - 1) * stride + k, (width - 1) * stride + k))
    for i in range(c_in):
        for y in range(height):
            for xx in range(width):
                for o in range(c_out):
                    for ky in range(k):
                        for kx in range(k):
                            full[o, y * stride + ky, xx * stride + kx] += x[i, y, xx] * w[i, o, ky, kx]
    out_h, out_w = (height - 1) * stride - 2 * pad + k, (width - 1) * stride - 2 * pad + k
    return full[:, pad:pad + out_h, pad:pad + out_w] + b[:, None, None]


def test_forward_of_the_first_layers_matches_a_hand_computation(tmp_path):
    blobs = {k: [b.astype(np.float64) for b in v] for k, v in tiny_blobs(seed=3).items()}
    path = tmp_path / "g.caffemodel"
    write_caffemodel(path, tiny_blobs(seed=3), types=caffe_types(False))
    model, _ = load_generator(path, **TINY)
    seen = record_outputs(model)
    codes = np.random.default_rng(4).uniform(0, 3, (2, 6))
    with torch.no_grad():
        model(torch.from_numpy(codes).float())
    for n in range(2):
        x = codes[n]
        for name in ("defc7", "defc6", "defc5"):
            weight, bias = blobs[name]
            x = weight @ x + bias
            np.testing.assert_allclose(seen[name][n].numpy(), x, rtol=1e-4, atol=1e-4)
            x = leaky(x)
        x = x.reshape(2, 4, 4)  # Caffe's Reshape: row-major, (C, H, W)
        for name, stride in (("deconv5", 2), ("conv5_1", 1)):
            x = deconv_loops(x, *blobs[name], stride=stride, pad=1)
            np.testing.assert_allclose(seen[name][n].numpy(), x, rtol=1e-4, atol=1e-4)
            x = leaky(x)


def test_wrong_blob_shape_names_the_layer_and_both_shapes(tmp_path):
    blobs = tiny_blobs()
    blobs["deconv4"][0] = np.zeros((4, 5, 4, 4), np.float32)  # (out, in): a transposed layout
    path = tmp_path / "wrong.caffemodel"
    write_caffemodel(path, blobs, types=caffe_types(False))
    with pytest.raises(WeightsError) as info:
        load_generator(path, **TINY)
    message = str(info.value)
    assert "deconv4" in message and "(4, 5, 4, 4)" in message and "(5, 4, 4, 4)" in message


def test_the_full_size_network_refuses_a_tiny_file(tmp_path):
    path = tmp_path / "tiny.caffemodel"
    write_caffemodel(path, tiny_blobs(), types=caffe_types(False))
    with torch.device("meta"), pytest.raises(WeightsError, match=r"defc7.*\(10, 6\).*\(4096, 4096\)"):
        load_generator(path)


def test_state_dict_round_trip_and_errors(tmp_path):
    torch.manual_seed(2)
    source = DeePSiMGenerator(**TINY)
    path = tmp_path / "g.pt"
    torch.save(source.state_dict(), path)
    model, checksum = load_generator(path, **TINY)
    assert checksum == sha256_file(path)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    state = source.state_dict()
    state["conv4_1.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match=r"conv4_1.*\(3, 3, 3, 3\).*\(4, 3, 3, 3\)"):
        load_generator(tmp_path / "bad.pt", **TINY)
    with pytest.raises(WeightsError, match="no such weights file"):
        load_generator(tmp_path / "absent.caffemodel", **TINY)


def test_random_weights_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="generator.deepsim"):
        model, checksum = load_generator(None, **TINY)
    assert checksum == "random"
    assert "random weights" in caplog.text
    assert not model.training


# -- pixels ------------------------------------------------------------------------------


def test_to_pixels_inverts_caffe_preprocessing_on_a_known_pixel():
    rgb = (200, 100, 50)
    tensor = CAFFE_PREPROCESSING(Image.new("RGB", (300, 280), rgb))  # BGR, mean-subtracted
    assert torch.allclose(tensor[:, 0, 0], torch.tensor([50 - 104.0, 100 - 117.0, 200 - 123.0]))
    pixels = to_pixels(tensor)
    assert pixels.shape == (227, 227, 3) and pixels.dtype == np.uint8
    assert (pixels == np.array(rgb, np.uint8)).all()
    batch = to_pixels(torch.stack([tensor, tensor]))
    assert batch.shape == (2, 227, 227, 3) and (batch == np.array(rgb, np.uint8)).all()


def test_to_pixels_clips_rounds_and_maps_ranges():
    bgr = np.zeros((3, 1, 4))
    bgr[0] = [-500, 500, 0.4, -103.6]  # blue channel: clipped low, clipped high, rounded
    pixels = to_pixels(bgr)
    assert pixels[0, :, 2].tolist() == [0, 255, 104, 0]
    assert pixels[0, :, 0].tolist() == [CAFFE_MEAN[2]] * 4  # red from the mean alone
    # PPGN's save_image convention: (-120, 120) -> 0..255, no mean
    ppgn = to_pixels(np.full((3, 1, 3), [-200.0, 0.0, 120.0]), in_range=(-120, 120))
    assert ppgn[0, :, 1].tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="expected BGR images"):
        to_pixels(np.zeros((4, 2, 2)))


# -- cost --------------------------------------------------------------------------------


def test_flops_per_image_counts_multiply_adds():
    with torch.device("meta"):
        model = DeePSiMGenerator()
    macs = layer_macs(model)
    # transposed convolutions counted from the output side: out pixels x c_in x k^2 / stride^2
    expected = {
        "defc7": 4096 * 4096, "defc6": 4096 * 4096, "defc5": 4096 * 4096,
        "deconv5": 256 * 8 * 8 * 256 * 16 // 4,
        "conv5_1": 512 * 8 * 8 * 256 * 9,
        "deconv4": 256 * 16 * 16 * 512 * 16 // 4,
        "conv4_1": 256 * 16 * 16 * 256 * 9,
        "deconv3": 128 * 32 * 32 * 256 * 16 // 4,
        "conv3_1": 128 * 32 * 32 * 128 * 9,
        "deconv2": 64 * 64 * 64 * 128 * 16 // 4,
        "deconv1": 32 * 128 * 128 * 64 * 16 // 4,
        "deconv0": 3 * 256 * 256 * 32 * 16 // 4,
    }
    assert macs == expected
    assert flops_per_image(model) == sum(expected.values()) == 1_006_632_960
    tiny = DeePSiMGenerator(**TINY)
    assert flops_per_image(tiny) == sum(
        int(np.prod(shapes[0])) * (1 if name.startswith("defc") else
                                  int(np.prod(tiny.layer_shapes()[name][1:])) //
                                  (4 if name.startswith("deconv") else 1))
        for name, shapes in tiny_blob_shapes().items())
