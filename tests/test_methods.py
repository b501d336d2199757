"""The three panel methods (generator/am.py): the Fourier parameterisation, transforms,
objectives and loop (generator/fourier.py) against hand computations and on the demo
network, whose fc8 images the independent classifier must recognise; natural panels
(generator/natural.py): the top images of a table, ties, one per class, conv crops; and
one file layout and manifest for ppgn, fourier and natural."""

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from analysis.activations import TableWriter
from generator import am, fourier, natural, unit_files
from generator.networks import Preprocessing, TappedNet
from generator.threads import torch_threads

# -- the parameterisation -----------------------------------------------------------------


def test_the_spectrum_is_scaled_by_one_over_f_with_a_floor_at_one_over_the_side():
    h, w = 6, 8
    scale = fourier.spectrum_scale(h, w)
    freqs = fourier.rfft2d_freqs(h, w)
    assert scale.shape == (6, 5) and freqs.shape == (6, 5)
    # the constant term and frequencies at or below 1/max(h, w) = 1/8 get 8
    assert scale[0, 0] == pytest.approx(8.0)
    assert freqs[0, 1] == pytest.approx(1 / 8) and scale[0, 1] == pytest.approx(8.0)
    # above the floor: exactly 1/f (fy = 1/6 at row 1; fx = 2/8 at column 2)
    assert scale[1, 0] == pytest.approx(6.0)
    assert scale[1, 2] == pytest.approx(1 / math.hypot(1 / 6, 2 / 8))
    assert scale[0, 4] == pytest.approx(2.0)  # the Nyquist frequency 1/2
    torch.testing.assert_close(fourier.spectrum_scale(h, w, decay_power=2), scale ** 2)


def test_a_constant_spectrum_term_gives_a_flat_image_by_hand():
    params, image = fourier.fft_image((1, 1, 8, 8), sd=0.0)
    with torch.no_grad():
        params[0][0, 0, 0, 0, 0] = 2.0  # the real part of the constant term
    # scale 8 (the floor), orthonormal inverse FFT: 2 * 8 / sqrt(64) = 2, divided by 4
    torch.testing.assert_close(image(), torch.full((1, 1, 8, 8), 0.5))


def test_the_colour_matrix_maps_decorrelated_channels_to_rgb():
    m = fourier.COLOR_CORRELATION_NORMALIZED
    norm = math.sqrt(0.26 ** 2 + 0.27 ** 2 + 0.27 ** 2)  # the largest column norm
    np.testing.assert_allclose(m[:, 0], [0.26 / norm, 0.27 / norm, 0.27 / norm], rtol=1e-6)
    assert np.linalg.norm(m, axis=0).max() == pytest.approx(1.0)
    d = torch.zeros(1, 3, 2, 2)
    d[:, 0] = 1.0  # the first decorrelated channel: about equal parts of R, G and B
    rgb = fourier.decorrelate_colors(d)
    torch.testing.assert_close(rgb[0, :, 1, 1], torch.tensor(m[:, 0]))
    d = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(fourier.decorrelate_colors(d),
                               torch.einsum("ij,bjhw->bihw", torch.tensor(m), d))


def test_grey_images_are_not_decorrelated_and_colour_ones_are():
    rngs = [torch.Generator().manual_seed(1)]
    _, grey = fourier.image_param((1, 1, 8, 8), rngs)
    rngs = [torch.Generator().manual_seed(1)]
    params, raw = fourier.fft_image((1, 1, 8, 8), rngs)
    torch.testing.assert_close(grey(), torch.sigmoid(raw()))
    rngs = [torch.Generator().manual_seed(1)]
    _, colour = fourier.image_param((1, 3, 8, 8), rngs)
    rngs = [torch.Generator().manual_seed(1)]
    _, raw = fourier.fft_image((1, 3, 8, 8), rngs)
    torch.testing.assert_close(colour(), torch.sigmoid(fourier.decorrelate_colors(raw())))
    assert 0 < float(colour().detach().min()) and float(colour().detach().max()) < 1
    with pytest.raises(ValueError, match="needs 3 channels"):
        fourier.image_param((1, 1, 8, 8), decorrelate=True)


def test_the_networks_preprocessing_is_applied_differentiably():
    caffe = Preprocessing(size=256, resize="square", crop=227, channels="BGR", scale=1.0,
                          mean=(104.0, 117.0, 123.0))
    x = torch.zeros(1, 3, 1, 1)
    x[0, 0] = 1.0  # pure red in [0, 1]
    torch.testing.assert_close(fourier.preprocess_fn(caffe)(x).flatten(),
                               torch.tensor([-104.0, -117.0, 255.0 - 123.0]))
    from generator.digits import DEMO_PREPROCESSING, DIGITS_MEAN, DIGITS_STD

    grey = torch.full((1, 1, 2, 2), 0.5, requires_grad=True)
    y = fourier.preprocess_fn(DEMO_PREPROCESSING)(grey)
    torch.testing.assert_close(y, torch.full((1, 1, 2, 2), (0.5 - DIGITS_MEAN) / DIGITS_STD))
    y.sum().backward()
    assert grey.grad is not None


def test_transforms_keep_the_size_and_jitter_moves_whole_pixels():
    x = torch.zeros(3, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0
    rngs = [torch.Generator().manual_seed(k) for k in range(3)]
    moved = fourier.jitter(3, fill=0.0)(x, rngs)
    assert moved.shape == x.shape
    for image in moved:  # the one bright pixel, at most one pixel away, intact
        (y, x_), = torch.nonzero(image[0] == 1.0).tolist()
        assert abs(y - 4) <= 1 and abs(x_ - 4) <= 1 and float(image.sum()) == 1.0
    same = fourier.compose([fourier.random_scale([1.0]), fourier.random_rotate([0])])(x, rngs)
    torch.testing.assert_close(same, x, atol=1e-6, rtol=0)
    turned = fourier.random_rotate([90], fill=0.0)(torch.arange(9.0).view(1, 1, 3, 3),
                                                   rngs[:1])
    assert turned[0, 0, 1, 1] == pytest.approx(4.0)  # the centre stays
    assert fourier.standard_transforms((32, 32))(torch.rand(3, 1, 32, 32), rngs).shape \
        == (3, 1, 32, 32)


def test_objectives_by_hand():
    conv = torch.arange(2 * 3 * 3 * 3, dtype=torch.float32).view(2, 3, 3, 3)
    units = torch.tensor([2, 0])
    centre = fourier.unit_objective("c", units, (1, 1))({"c": conv})
    torch.testing.assert_close(centre, torch.stack([conv[0, 2, 1, 1], conv[1, 0, 1, 1]]))
    mean = fourier.unit_objective("c", units, None)({"c": conv})
    torch.testing.assert_close(mean, torch.stack([conv[0, 2].mean(), conv[1, 0].mean()]))
    fc = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    torch.testing.assert_close(fourier.unit_objective("f", torch.tensor([1, 0]))({"f": fc}),
                               torch.tensor([2.0, 3.0]))
    # diversity: identical images of one unit are maximally similar (cosine 1)
    same = torch.ones(3, 2, 2, 2)
    value = fourier.diversity("c", torch.tensor([0, 0, 1]))({"c": same})
    assert float(value) == pytest.approx(-2 / 3)  # one pair, both orders, over 3 rows
    apart = torch.zeros(2, 2, 1, 1)
    apart[0, 0] = apart[1, 1] = 1.0  # orthogonal Gram matrices
    assert float(fourier.diversity("c", torch.tensor([0, 0]))({"c": apart})) == 0.0


def test_the_loop_neither_saves_nor_prints(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    net = TappedNet([("fc", nn.Sequential(nn.Flatten(), nn.Linear(16, 3)))], {"fc": "fc"},
                    (1, 4, 4)).eval()
    rngs = [torch.Generator().manual_seed(k) for k in range(2)]
    params, image = fourier.image_param((2, 1, 4, 4), rngs)
    before = image().detach()
    out = fourier.optimise(net, fourier.combine((1.0, fourier.unit_objective(
        "fc", torch.tensor([0, 1])))), ["fc"], params, image,
        transform=lambda x, _: x, preprocess=lambda x: x, rngs=rngs, steps=5)
    assert out.shape == (2, 1, 4, 4) and not out.requires_grad
    logits = net(out, ["fc"])["fc"]
    assert logits[0, 0] > net(before, ["fc"])["fc"][0, 0]  # the target went up
    assert os.listdir(tmp_path) == []
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


# -- fourier on the demo network -------------------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    from generator.digits import trained_independent_network
    from generator.loading import load_network
    from generator.networks import gradient_copy

    net, spec, _ = load_network("demo")
    independent, _ = trained_independent_network()
    return net, gradient_copy(net), spec.preprocessing, independent


def test_the_seed_reproduces_an_image_whatever_shares_its_batch(demo):
    _, fast, preprocessing, _ = demo
    pre = fourier.preprocess_fn(preprocessing)
    settings = fourier.Settings(steps=4)
    alone, _, _ = fourier.render(fast, pre, "fc8", None, [(3, 0)], layer="fc8",
                                 settings=settings, pad_to=4)
    mixed, _, _ = fourier.render(fast, pre, "fc8", None, [(1, 0), (3, 0), (3, 1)],
                                 layer="fc8", settings=settings, pad_to=4)
    assert torch.equal(alone[0], mixed[1])
    assert not torch.equal(mixed[1], mixed[2])  # another seed, another image
    other, _, _ = fourier.render(fast, pre, "fc8", None, [(3, 0)], layer="fc8", seed=1,
                                 settings=settings, pad_to=4)
    assert not torch.equal(alone[0], other[0])


#: The acceptance settings: every fc8 unit, 4 images each, 64 steps (of lucid's 512).
RECOGNITION_STEPS = 64
RECOGNITION_IMAGES = 4


def test_the_independent_classifier_recognises_the_digit_in_fourier_fc8_images(demo):
    """Measured on a 2-core AMD EPYC: 40 of 40 images (100%) with the cached demo pair;
    with two other pairs of training seeds (5/6 and 7/8, trained on the same machine)
    100% and 95% (93% each at 32 steps). The bar is 60%: far below, so the weights other
    machines train pass too."""
    _, fast, preprocessing, independent = demo
    pre = fourier.preprocess_fn(preprocessing)
    items = [(u, i) for u in range(10) for i in range(RECOGNITION_IMAGES)]
    with torch_threads(1):  # one thread: fast beside other work on the same cores
        images, _, probs = fourier.render(fast, pre, "fc8", None, items, layer="fc8",
                                          settings=fourier.Settings(steps=RECOGNITION_STEPS))
    pixels = (images * 255).round() / 255  # as saved
    with torch.no_grad():
        verdict = independent(pre(pixels), ["fc8"])["fc8"].argmax(1)
    target = torch.tensor([u for u, _ in items])
    rate = float((verdict == target).float().mean())
    print(f"independent classifier recognises {100 * rate:.0f}% of fourier fc8 images")
    assert rate >= 0.6
    assert float(probs.mean()) > 0.9  # the network itself: its own target, confidently


# -- natural panels ---------------------------------------------------------------------------


def write_table(path, labels, layers, paths, preprocessing, layer_attrs=None, predictions=None):
    extra_int = ["predictions"] if predictions is not None else []
    with TableWriter(path, [str(d) for d in range(int(max(labels)) + 1)],
                     {k: v.shape[1] for k, v in layers.items()}, n_images=len(labels),
                     attrs={"network": "test", "preprocessing": preprocessing.to_json()},
                     layer_attrs=layer_attrs, extra_string_columns=["image_paths"],
                     extra_int_columns=extra_int) as w:
        extra = {"image_paths": paths}
        if predictions is not None:
            extra["predictions"] = predictions
        w.append(labels, layers, extra)
    return path


@pytest.fixture
def tied_table(tmp_path):
    """300 digits; unit 0's activations are whole numbers 0-19, so many tie."""
    from generator.digits import DEMO_PREPROCESSING, load_digits_raw

    _, labels = load_digits_raw()
    rng = np.random.default_rng(3)
    values = rng.integers(0, 20, (300, 2)).astype(np.float32)
    path = write_table(tmp_path / "t.h5", labels[:300], {"fc8": values},
                       [f"digits:all/{i:04d}" for i in range(300)], DEMO_PREPROCESSING,
                       predictions=labels[:300])
    return path, values, labels[:300]


def test_natural_panels_are_exactly_the_100_highest_ties_by_index(tied_table, tmp_path):
    path, values, labels = tied_table
    v = values[:, 0]
    expected = sorted(range(300), key=lambda i: (-v[i], i))[:100]
    assert list(natural.top_k(v, 100)) == expected
    boundary = v[expected[-1]]
    assert (v[expected] >= boundary).all() and (np.delete(v, expected) <= boundary).all()
    tied = np.flatnonzero(v == boundary)
    assert 1 < np.isin(tied, expected).sum() < len(tied)  # the cut falls inside a tie
    manifest = natural.generate(path, "fc8", [0, 1], tmp_path / "out", progress=False)
    unit = np.load(tmp_path / "out" / "units" / "natural_fc8_0000.npz")
    assert list(unit["image_index"]) == expected
    np.testing.assert_array_equal(unit["activations"], v[expected])
    np.testing.assert_array_equal(unit["labels"], labels[expected])
    from generator.digits import load_digits_tensors, to_unit_range

    x = load_digits_tensors("all")[0][expected[:3]]
    np.testing.assert_array_equal(unit["images"][:3, :, :, 0],
                                  (to_unit_range(x[:, 0]) * 255).round().byte().numpy())
    assert manifest.read_text().count("natural") > 0


def test_one_per_class_keeps_each_class_best_image(tied_table, tmp_path):
    path, values, labels = tied_table
    v = values[:, 1]
    rows = natural.top_k(v, 100, labels, one_per_class=True)
    assert len(rows) == 10 and sorted(labels[rows]) == list(range(10))
    order = sorted(range(300), key=lambda i: (-v[i], i))
    for r in rows:  # the first of its class in the order
        assert r == next(i for i in order if labels[i] == labels[r])
    assert list(rows) == sorted(rows, key=list(order).index)
    natural.generate(path, "fc8", [1], tmp_path / "out", one_per_class=True, progress=False)
    info = json.loads((tmp_path / "out" / "units" / "natural_fc8_0001.json").read_text())
    assert info["n_images"] == 10 and info["short"] and info["method"] == "natural"


def bright_pixel_net():
    """Input 1x16x16 -> conv1 (3x3, the identity) -> max pool 2/2 -> conv2 (3x3: channel 0
    the identity, channel 1 its negative), a map 8x8: channel 0 peaks where the image's
    brightest pixel is, at half the resolution."""
    conv1, conv2 = nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 2, 3, padding=1)
    with torch.no_grad():
        for conv in (conv1, conv2):
            conv.weight.zero_()
            conv.bias.zero_()
        conv1.weight[0, 0, 1, 1] = 1.0
        conv2.weight[0, 0, 1, 1] = 1.0
        conv2.weight[1, 0, 1, 1] = -1.0
    steps = [("conv1", conv1), ("pool1", nn.MaxPool2d(2)), ("conv2", conv2)]
    return TappedNet(steps, {"conv2": "conv2"}, (1, 16, 16)).eval()


def test_a_conv_units_crop_is_centred_on_its_maximum(tmp_path):
    net = bright_pixel_net()
    pre = Preprocessing(size=16, resize="square", crop=16, channels="L", scale=1 / 255,
                        mean=(0.0,), std=(1.0,))
    spots = [(9, 5), (6, 10), (1, 1), (14, 8)]
    paths, images = [], []
    for k, (y, x) in enumerate(spots):
        pixels = np.full((16, 16), 40, np.uint8)
        pixels[y, x] = 250
        Image.fromarray(pixels).save(tmp_path / f"{k}.png")
        paths.append(f"{k}.png")  # relative: found beside the table
        images.append(torch.from_numpy(pixels / 255.0).float()[None])
    with torch.no_grad():
        maps = net(torch.stack(images), ["conv2"])["conv2"]
    values = maps.amax(dim=(2, 3)).numpy()
    attrs = {"conv2": {"reduction": "max", "spatial_shape": [8, 8]}}
    table = write_table(tmp_path / "t.h5", np.arange(4) % 2, {"conv2": values}, paths, pre,
                        attrs)
    natural.generate(table, "conv2", [0], tmp_path / "out", network=net, images_per_unit=4,
                     progress=False)
    unit = np.load(tmp_path / "out" / "units" / "natural_conv2_0000.npz")
    # the receptive field of the map's centre (4, 4): rows 5..12, 8 pixels a side
    assert unit["images"].shape == (4, 8, 8, 1)
    for row, (y0, x0, y1, x1), (ly, lx) in zip(unit["image_index"], unit["boxes"],
                                               unit["locations"], strict=True):
        y, x = spots[row]
        assert (ly, lx) == (y // 2, x // 2)  # the bright pixel's cell of the map
        assert (y1 - y0, x1 - x0) == (8, 8)
        if 3 <= y <= 12 and 3 <= x <= 12:  # inside: the window is centred on the pixel
            assert abs((y0 + y1 - 1) / 2 - y) <= 0.5 and abs((x0 + x1 - 1) / 2 - x) <= 0.5
        else:  # at the border: moved inside the image, the pixel still in it
            assert 0 <= y0 and y1 <= 16 and 0 <= x0 and x1 <= 16
            assert y0 <= y < y1 and x0 <= x < x1
    k = list(unit["image_index"]).index(0)
    tile = unit["images"][k, :, :, 0]
    y0, x0 = unit["boxes"][k][:2]
    assert tile[9 - y0, 5 - x0] == 250 and (tile == 250).sum() == 1
    # the negative channel's maxima: any location; a table that does not match is refused
    bad = write_table(tmp_path / "bad.h5", np.arange(4) % 2, {"conv2": values * 2}, paths,
                      pre, attrs)
    with pytest.raises(ValueError, match="recorded with another network"):
        natural.generate(bad, "conv2", [0], tmp_path / "bad", network=net,
                         images_per_unit=4, progress=False)


# -- one layout for the three methods --------------------------------------------------------


def test_the_three_methods_write_the_same_files_and_manifests(tmp_path):
    import pandas as pd

    from experiment.design import read_panels
    from generator.record import record

    table = record("demo", "digits:test", tmp_path / "digits.h5", progress=False,
                   layers=("conv5", "fc8"))
    common = ["--network", "demo", "--units", "2,7", "--images-per-unit", "4", "--quiet"]
    runs = {
        "ppgn": ["--generator", "demo", "--steps", "3"],
        "fourier": ["--steps", "6", "--batch", "8", "--workers", "1"],
        "natural": ["--table", str(table)],
    }
    panels, read = {}, {}
    for method, extra in runs.items():
        for layer in ("fc8", "conv5"):
            out = tmp_path / method
            more = ["--threshold", "none"] if method == "ppgn" and layer == "conv5" else []
            assert am.main(["--method", method, "--layer", layer, "--out", str(out), *common,
                            *extra, *more]) == 0
        for name in ("manifest.csv", "manifest_fc8.csv", "manifest_conv5.csv",
                     "settings_fc8.json", "settings_conv5.json"):
            assert (out / name).is_file(), (method, name)
        frame = pd.read_csv(out / "manifest.csv")
        assert list(frame.columns) == unit_files.MANIFEST_COLUMNS
        assert set(frame["method"]) == {method} and len(frame) == 4
        for row in frame.itertuples():
            stem = unit_files.unit_stem(method, row.layer, row.unit)
            assert row.panel_id == stem and row.path == f"panels/{stem}.jpg"
            assert row.n_images == 4
            data = np.load(out / "units" / f"{stem}.npz")
            assert data["images"].dtype == np.uint8 and data["images"].ndim == 4
            assert data["activations"].shape == (4,)
            info = json.loads((out / "units" / f"{stem}.json").read_text())
            assert info["method"] == method and info["panel_id"] == stem
            with Image.open(out / row.path) as image:
                panels[method, row.layer] = image.size
        read[method] = read_panels(out / "manifest.csv")
        assert list(read[method]["panel_id"]) == list(frame["panel_id"])
    for layer in ("fc8", "conv5"):  # the same tiles, so the same panels
        assert len({size for (_, lay), size in panels.items() if lay == layer}) == 1
    ids = [pid for frame in read.values() for pid in frame["panel_id"]]
    assert len(ids) == len(set(ids)) == 12  # no two methods share a panel id


def test_fourier_runs_resume_to_the_same_images_and_refuse_other_settings(tmp_path, demo):
    net, _, preprocessing, _ = demo
    settings = fourier.Settings(steps=3)
    kw = dict(images_per_unit=4, settings=settings, batch=8, progress=False, workers=1)
    whole = am.generate_fourier(net, preprocessing, "fc8", [0, 1], tmp_path / "a", **kw)
    am.generate_fourier(net, preprocessing, "fc8", [1], tmp_path / "b", **kw)
    resumed = am.generate_fourier(net, preprocessing, "fc8", [0, 1], tmp_path / "b", **kw)
    for unit in (0, 1):
        a = np.load(tmp_path / "a" / "units" / f"fourier_fc8_{unit:04d}.npz")
        b = np.load(tmp_path / "b" / "units" / f"fourier_fc8_{unit:04d}.npz")
        np.testing.assert_array_equal(a["images"], b["images"])
    assert whole.read_text() == resumed.read_text()
    with pytest.raises(ValueError, match="other settings"):
        am.generate_fourier(net, preprocessing, "fc8", [0, 1], tmp_path / "a",
                            **(kw | {"settings": fourier.Settings(steps=4)}))


def test_cli_errors_say_what_and_how_to_fix(tmp_path, capsys):
    assert am.main(["--method", "natural", "--table", str(tmp_path / "none.h5"),
                    "--layer", "fc8", "--out", str(tmp_path / "o")]) == 2
    assert "no such activation table" in capsys.readouterr().err
    assert am.main(["--method", "fourier", "--network", "demo", "--layer", "fc9",
                    "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--layer fc9" in err and "fc8" in err


def test_diversity_runs_a_units_images_together(tmp_path, demo):
    net, _, preprocessing, _ = demo
    settings = fourier.Settings(steps=2, diversity=1.0, diversity_tap="conv5")
    manifest = am.generate_fourier(net, preprocessing, "fc8", [4, 5], tmp_path, batch=4,
                                   images_per_unit=4, settings=settings, progress=False,
                                   workers=1)
    recorded = json.loads((tmp_path / "settings_fc8.json").read_text())
    assert recorded["batch"] == 4 and recorded["settings"]["diversity_tap"] == "conv5"
    assert [line.rsplit(",", 1)[1] for line in manifest.read_text().splitlines()[1:]] \
        == ["fourier", "fourier"]
    with pytest.raises(ValueError, match="--diversity-layer nope"):
        am.generate_fourier(net, preprocessing, "fc8", [4], tmp_path / "x", batch=4,
                            images_per_unit=4, progress=False, workers=1,
                            settings=fourier.Settings(steps=1, diversity=1.0,
                                                      diversity_tap="nope"))


def test_the_method_defaults_to_the_papers(capsys):
    """Without --method the command is PPGN's (its options, its errors)."""
    from generator import am

    with pytest.raises(SystemExit) as exited:
        am.main(["--layer", "fc8"])
    assert exited.value.code == 2
    assert "--method ppgn: error" in capsys.readouterr().err
