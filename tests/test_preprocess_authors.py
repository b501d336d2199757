"""The authors' preprocessing of CaffeNet (``--preprocess authors``, docs/networks.md):
Caffe's Python Transformer on ``caffe.io.load_image``, as the paper's authors recorded
the activations, checked against a step-by-step reference written here with numpy."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from system_deps import SHARED_PHOTOS

from generator.loading import CAFFE_PREPROCESSINGS, NETWORKS
from generator.networks import (
    AUTHORS_PREPROCESSING,
    CAFFE_PREPROCESSING,
    caffe_resize,
)
from generator.record import main, record

#: ``np.load("python/caffe/imagenet/ilsvrc_2012_mean.npy").mean(1).mean(1)``, as Caffe's
#: classification example prints it (B, G, R).
MEAN_PIXEL = np.array([104.0069879317889, 116.66876761696767, 122.6789143406786])


def authors_reference(image: Image.Image, size: int = 227) -> np.ndarray:
    """The authors' steps one by one, in float64 (their set_up_caffe_net.py and
    Caffe_AlexNet2.py; Caffe's python/caffe/io.py; scikit-image's resize before 0.15)."""
    # caffe.io.load_image: RGB floats in [0, 1] (grey repeated, alpha dropped)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    # Transformer.preprocess -> caffe.io.resize_image: the whole image to size x size,
    # rescaled to [0, 1] by its own minimum and maximum for scikit-image's resize(order=1)
    low, high = rgb.min(), rgb.max()
    if high == low:
        resized = np.full((size, size, 3), low)
    else:
        unit = (rgb - low) / (high - low)
        h, w = unit.shape[:2]
        padded = np.pad(unit, ((1, 1), (1, 1), (0, 0)))   # mode="constant", cval=0
        y = (np.arange(size) + 0.5) * h / size - 0.5       # pixel centres
        x = (np.arange(size) + 0.5) * w / size - 0.5
        y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
        dy, dx = (y - y0)[:, None, None], (x - x0)[None, :, None]
        rows, cols = (y0 + 1)[:, None], (x0 + 1)[None, :]   # indices into the padded image
        top = (1 - dx) * padded[rows, cols] + dx * padded[rows, cols + 1]
        bottom = (1 - dx) * padded[rows + 1, cols] + dx * padded[rows + 1, cols + 1]
        resized = ((1 - dy) * top + dy * bottom) * (high - low) + low
    chw = resized.transpose(2, 0, 1)            # set_transpose('data', (2, 0, 1))
    bgr = chw[[2, 1, 0]]                        # set_channel_swap('data', (2, 1, 0))
    scaled = bgr * 255.0                        # set_raw_scale('data', 255)
    return scaled - MEAN_PIXEL[:, None, None]   # set_mean('data', mu)


def generated_images() -> dict[str, Image.Image]:
    """Images of every shape the recorder meets, made here (no data needed)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    smooth = np.stack([128 + 100 * np.sin(yy / 17.0), 128 + 90 * np.cos(xx / 23.0),
                       (yy + xx) % 256], axis=-1)
    noisy = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    landscape = Image.fromarray(noisy)                               # 500x375: shrunk
    return {
        "500x375": landscape,
        "180x120": landscape.resize((180, 120), Image.BILINEAR),      # enlarged, not square
        "227x227": landscape.crop((0, 0, 227, 227)),                  # already the size
        "grey 300x260": landscape.convert("L").resize((300, 260), Image.BILINEAR),
        "rgba 240x330": landscape.resize((240, 330), Image.BILINEAR).convert("RGBA"),
        "narrow 40x375": Image.fromarray(np.ascontiguousarray(noisy[:, :40])),
    }


def test_authors_preprocessing_of_generated_images_matches_the_reference():
    for name, image in generated_images().items():
        out = AUTHORS_PREPROCESSING(image)
        assert out.dtype == torch.float32 and tuple(out.shape) == (3, 227, 227), name
        # float32 arithmetic against float64 (0-255 scale): well under a grey level
        np.testing.assert_allclose(out.numpy(), authors_reference(image), atol=2e-3,
                                   err_msg=name)


def test_a_plain_colour_is_itself_minus_the_mean_pixel_and_enlarged_borders_fade():
    colour = np.array([10, 200, 255])
    bgr = colour[::-1] - MEAN_PIXEL
    shrunk = AUTHORS_PREPROCESSING(Image.new("RGB", (300, 260), tuple(colour))).numpy()
    np.testing.assert_allclose(shrunk, np.broadcast_to(bgr[:, None, None], shrunk.shape),
                               atol=1e-4)
    grey = AUTHORS_PREPROCESSING(Image.new("L", (100, 80), 77)).numpy()   # a constant image
    np.testing.assert_allclose(grey, np.broadcast_to((77 - MEAN_PIXEL)[:, None, None],
                                                     grey.shape), atol=1e-4)
    # enlarged 200 -> 227 rows: the first and last rows reach outside the image, which
    # Caffe's resize fills with the image's minimum over all channels (10, here)
    taller = AUTHORS_PREPROCESSING(Image.new("RGB", (300, 200), tuple(colour))).numpy()
    outside = 0.5 - 0.5 * 200 / 227
    edge = colour[::-1] - outside * (colour[::-1] - 10) - MEAN_PIXEL
    for row in (0, -1):
        np.testing.assert_allclose(taller[:, row], np.broadcast_to(edge[:, None], (3, 227)),
                                   atol=1e-3)
    np.testing.assert_allclose(taller[:, 1:-1], np.broadcast_to(bgr[:, None, None],
                                                                (3, 225, 227)), atol=1e-4)


def test_caffe_resize_is_bilinear_at_pixel_centres_with_the_minimum_outside():
    # scipy's order-1 map_coordinates with "grid-constant" (interpolating into the
    # constant beyond the edge, as scikit-image's warp did) is a third implementation
    rng = np.random.default_rng(1)
    for shape in [(375, 500, 3), (100, 80, 3), (60, 300)]:
        pixels = rng.integers(20, 240, shape).astype(np.uint8)
        low = float(pixels.min())
        y = (np.arange(227) + 0.5) * shape[0] / 227 - 0.5
        x = (np.arange(227) + 0.5) * shape[1] / 227 - 0.5
        grid = np.meshgrid(y, x, indexing="ij")
        planes = [pixels] if pixels.ndim == 2 else [pixels[..., c] for c in range(shape[2])]
        want = np.stack([ndimage.map_coordinates(p.astype(np.float64) - low, grid, order=1,
                                                 mode="grid-constant", cval=0.0,
                                                 prefilter=False) + low for p in planes], -1)
        got = caffe_resize(pixels, 227, 227)
        assert got.dtype == np.float32 and got.shape == (227, 227) + shape[2:]
        np.testing.assert_allclose(got, want.reshape(got.shape), atol=1e-3, err_msg=str(shape))
    # shrinking by exactly 2 averages each 2x2 block: no smoothing beyond it
    block = rng.integers(0, 256, (454, 454, 3)).astype(np.uint8)
    np.testing.assert_allclose(caffe_resize(block, 227, 227),
                               block.reshape(227, 2, 227, 2, 3).mean(axis=(1, 3)), atol=1e-3)


@pytest.mark.needs_system("shared_data")   # skips without the optional photos (docs/data.md)
def test_authors_preprocessing_of_real_photos_matches_the_reference():
    names = ["n01440764.jpg",  # 341x256, landscape
             "n01494475.jpg",  # 256x384, portrait
             "n01773549.jpg",  # 256x256
             "n02085620.jpg", "n03028079.jpg", "n07753592.jpg"]
    for name in names:
        with Image.open(SHARED_PHOTOS / name) as image:
            image.load()
            out = AUTHORS_PREPROCESSING(image).numpy()
            np.testing.assert_allclose(out, authors_reference(image), atol=2e-3, err_msg=name)
            # not the other preprocessing: the whole photo, not its centre
            assert np.abs(out - CAFFE_PREPROCESSING(image).numpy()).mean() > 1, name


def test_caffenet_records_the_authors_way_unless_asked_otherwise():
    assert NETWORKS["caffenet"].preprocessing is AUTHORS_PREPROCESSING
    assert NETWORKS["bvlc_alexnet"].preprocessing is CAFFE_PREPROCESSING
    assert CAFFE_PREPROCESSINGS == {"authors": AUTHORS_PREPROCESSING,
                                    "crop": CAFFE_PREPROCESSING}
    spec = NETWORKS["caffenet"]
    assert spec.preprocessing_named("crop") is CAFFE_PREPROCESSING
    assert spec.preprocessing_name(spec.preprocessing_named(None)) == "authors"
    with pytest.raises(ValueError, match="alexnet has no preprocessing 'authors'; choose one "
                                         "of torchvision"):
        NETWORKS["alexnet"].preprocessing_named("authors")
    # the project's earlier preprocessing is written as before (old segments still match)
    assert json.loads(CAFFE_PREPROCESSING.to_json()) == {
        "channels": "BGR", "crop": 227, "mean": [104.0, 117.0, 123.0], "resize": "square",
        "scale": 1.0, "size": 256, "std": [1.0, 1.0, 1.0]}
    assert json.loads(AUTHORS_PREPROCESSING.to_json())["interpolation"] == "caffe"


def test_recording_takes_the_named_preprocessing(tmp_path):
    # generated photos, so that CI always records through both preprocessings
    images = generated_images()
    lines = ["path,label"]
    for k, image in enumerate(images.values()):
        path = tmp_path / f"img{k}.png"
        image.save(path)
        lines.append(f"{path},n01440764")
    (tmp_path / "images.csv").write_text("\n".join(lines) + "\n")
    from analysis.activations import open_table
    from generator.loading import load_network

    fast = dict(keep="all", batch_size=4, workers=0, progress=False, layers=("fc6",))
    for preprocess, used in ((None, AUTHORS_PREPROCESSING), ("crop", CAFFE_PREPROCESSING)):
        out = tmp_path / f"{preprocess}.h5"
        torch.manual_seed(0)
        record("caffenet", str(tmp_path / "images.csv"), out, preprocess=preprocess, **fast)
        with open_table(out) as table:
            assert table.attrs["preprocess"] == (preprocess or "authors")
            assert json.loads(table.attrs["preprocessing"]) == json.loads(used.to_json())
            fc6 = table.read_units("fc6", 0, 4096)
        torch.manual_seed(0)
        model, _, _ = load_network("caffenet")
        x = torch.stack([used(image) for image in images.values()])
        with torch.inference_mode():
            direct = model(x, ["fc6"])["fc6"].numpy()
        np.testing.assert_allclose(fc6, direct, rtol=1e-4, atol=1e-4)


def test_an_unknown_preprocessing_is_refused(tmp_path, capsys):
    (tmp_path / "images.csv").write_text("path,label\n")
    status = main(["--network", "caffenet", "--preprocess", "squash", "--images",
                   str(tmp_path / "images.csv"), "--out", str(tmp_path / "t.h5")])
    assert status == 2
    assert "caffenet has no preprocessing 'squash'; choose one of authors, crop" in \
        capsys.readouterr().err
    assert not (tmp_path / "t.h5").exists()
