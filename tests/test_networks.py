"""The networks: blob shapes, step order, taps, torchvision weights and preprocessing."""


import numpy as np
import pytest
import torch
from PIL import Image
from system_deps import SHARED_PHOTOS
from torch import nn

from generator.loading import load_weights
from generator.networks import (
    CAFFE_PREPROCESSING,
    TORCHVISION_PREPROCESSING,
    TappedNet,
    WeightsError,
    bvlc_alexnet,
    caffenet,
    torchvision_alexnet,
)

# The optional photos (docs/data.md) are not part of the repository: without them these
# skip (even under CI=true).
SAMPLES = SHARED_PHOTOS
needs_samples = pytest.mark.needs_system("shared_data")


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    caffe = caffenet().eval()
    alex = bvlc_alexnet().eval()
    alex.load_state_dict(caffe.state_dict())
    return caffe, alex


@pytest.fixture(scope="module")
def image_batch():
    # two images on CaffeNet's input scale (BGR, 0-255 less the mean)
    return torch.from_numpy(np.random.default_rng(0).uniform(-120, 130, (2, 3, 227, 227))
                            .astype(np.float32))


# -- shapes and structure ---------------------------------------------------------------


def test_caffenet_blob_shapes_at_227(nets):
    caffe, alex = nets
    expected = {
        "conv1": (96, 55, 55), "conv2": (256, 27, 27), "conv3": (384, 13, 13),
        "conv4": (384, 13, 13), "conv5": (256, 13, 13), "pool5": (256, 6, 6),
        "fc6": (4096,), "fc7": (4096,), "fc8": (1000,), "prob": (1000,),
    }
    for net in (caffe, alex):
        shapes = net.layer_shapes()
        for tap, shape in expected.items():
            assert shapes[tap] == shape, tap
        for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
            assert shapes[f"{layer}:pre"] == expected[layer]
        assert net.input_shape == (3, 227, 227)


def test_layer_shapes_probe_the_device_the_weights_are_on():
    # Found on a GPU: a probe built on the CPU failed against CUDA weights. The "meta"
    # device (shapes without storage) shows the same mismatch on any machine.
    net = caffenet().to("meta")
    assert net.layer_shapes(["conv5", "fc6"]) == {"conv5": (256, 13, 13), "fc6": (4096,)}


def test_torchvision_alexnet_shapes_at_224():
    net = torchvision_alexnet()
    assert net.input_shape == (3, 224, 224)
    assert net.layer_shapes() == {
        "conv1": (64, 55, 55), "conv1:pre": (64, 55, 55), "conv2": (192, 27, 27),
        "conv2:pre": (192, 27, 27), "conv3": (384, 13, 13), "conv3:pre": (384, 13, 13),
        "conv4": (256, 13, 13), "conv4:pre": (256, 13, 13), "conv5": (256, 13, 13),
        "conv5:pre": (256, 13, 13), "fc6": (4096,), "fc6:pre": (4096,), "fc7": (4096,),
        "fc7:pre": (4096,), "pool5": (256, 6, 6), "fc8": (1000,), "prob": (1000,),
    }
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in net.modules())
    assert all(m.groups == 1 for m in net.modules() if isinstance(m, nn.Conv2d))


def test_lrn_before_pooling_in_bvlc_alexnet_after_in_caffenet(nets, image_batch):
    caffe, alex = nets
    for i in (1, 2):
        assert caffe._order.index(f"pool{i}") < caffe._order.index(f"norm{i}")
        assert alex._order.index(f"norm{i}") < alex._order.index(f"pool{i}")
        assert caffe._order.index(f"relu{i}") < caffe._order.index(f"pool{i}")
        assert alex._order.index(f"relu{i}") < alex._order.index(f"norm{i}")
    assert not any(f"norm{i}" in caffe._order for i in (3, 4, 5))
    assert [m.groups for m in caffe.modules() if isinstance(m, nn.Conv2d)] == [1, 2, 1, 2, 2]
    lrn = caffe.norm1
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 1.0)
    assert all(m.ceil_mode for m in caffe.modules() if isinstance(m, nn.MaxPool2d))
    with torch.no_grad():
        a = caffe(image_batch, ["conv1", "conv2", "fc8"])
        b = alex(image_batch, ["conv1", "conv2", "fc8"])
    assert torch.equal(a["conv1"], b["conv1"])  # same weights, same first layer...
    assert not torch.allclose(a["conv2"], b["conv2"], rtol=1e-3)  # ...then the order tells
    assert not torch.allclose(a["fc8"], b["fc8"], rtol=1e-3)


# -- taps ---------------------------------------------------------------------------------


def test_pre_and_post_relu_taps_and_no_in_place_spoiling(nets, image_batch):
    caffe, _ = nets
    taps = ["conv1", "conv5:pre", "conv5", "pool5", "fc6:pre", "fc6", "fc7", "fc8", "prob"]
    x = image_batch[:1]
    with torch.no_grad():
        together = caffe(x, taps)
        alone = {t: caffe(x, [t])[t] for t in ["conv1", "conv5:pre", "conv5", "fc6:pre", "prob"]}
    assert set(together) == set(taps)
    pre = together["conv5:pre"]
    assert (pre < 0).any() and (pre > 0).any()
    assert torch.equal(together["conv5"], torch.relu(pre))
    assert torch.equal(together["fc6"], torch.relu(together["fc6:pre"]))
    assert (together["fc6:pre"] < 0).any()
    for t, value in alone.items():
        assert torch.equal(together[t], value), t
    torch.testing.assert_close(together["prob"], torch.softmax(together["fc8"], dim=1))


def test_forward_stops_at_the_deepest_requested_tap(nets, image_batch):
    caffe, _ = nets
    ran = []
    handles = [getattr(caffe, name).register_forward_hook(lambda m, i, o, name=name: ran.append(name))
               for name in caffe._order]
    try:
        with torch.no_grad():
            caffe(image_batch[:1], ["conv1"])
            assert ran == ["conv1", "relu1"]
            ran.clear()
            caffe(image_batch[:1], ["conv5:pre", "conv2"])
            assert ran[-1] == "conv5" and "relu5" not in ran and "fc6" not in ran
    finally:
        for h in handles:
            h.remove()


def test_unknown_tap_names_the_taps(nets, image_batch):
    with pytest.raises(KeyError, match="conv6.*conv5:pre"):
        nets[0](image_batch, ["conv6"])


# -- PyTorch weights --------------------------------------------------------------------


class TorchvisionAlexNet(nn.Module):
    """torchvision.models.AlexNet, written out (torchvision is not installed here)."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(p=0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def test_torchvision_state_dict_loads_with_identical_parameters(tmp_path):
    torch.manual_seed(1)
    reference = TorchvisionAlexNet().eval()
    state = reference.state_dict()
    assert "features.0.weight" in state and "classifier.6.bias" in state
    path = tmp_path / "alexnet.pth"
    torch.save(state, path)
    ours = torchvision_alexnet().eval()
    load_weights(ours, path)
    mine = ours.state_dict()
    renamed = {"features.0": "conv1", "features.3": "conv2", "features.6": "conv3",
               "features.8": "conv4", "features.10": "conv5", "classifier.1": "fc6",
               "classifier.4": "fc7", "classifier.6": "fc8"}
    assert len(mine) == len(state)
    for key, value in state.items():
        prefix, leaf = key.rsplit(".", 1)
        assert torch.equal(mine[f"{renamed[prefix]}.{leaf}"], value), key
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, ["fc8"])["fc8"], reference(x))


def small_net():
    steps = [("conv1", nn.Conv2d(3, 4, 3)), ("relu1", nn.ReLU()),
             ("conv2", nn.Conv2d(4, 6, 3, groups=2)), ("flatten", nn.Flatten()),
             ("fc8", nn.Linear(6 * 4 * 4, 5))]
    return TappedNet(steps, {"conv2": "conv2", "fc8": "fc8"}, (3, 8, 8))


def test_pth_with_a_wrong_shape_names_the_layer_and_both_shapes(tmp_path):
    state = small_net().state_dict()
    state["conv2.weight"] = torch.zeros(6, 4, 3, 3)  # no groups: (6, 2, 3, 3) expected
    torch.save({"state_dict": state}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError) as err:
        load_weights(small_net(), tmp_path / "bad.pth")
    message = str(err.value)
    assert "bad.pth" in message and "conv2" in message
    assert "(6, 4, 3, 3)" in message and "(6, 2, 3, 3)" in message


def test_pth_round_trip_and_unreadable_file(tmp_path):
    net, other = small_net(), small_net()
    torch.save(net.state_dict(), tmp_path / "w.pth")
    load_weights(other, tmp_path / "w.pth")
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), other.parameters(), strict=True))
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(WeightsError, match=r"junk\.pth: not a PyTorch state dict"):
        load_weights(other, tmp_path / "junk.pth")


# -- preprocessing ------------------------------------------------------------------------


def caffe_reference(image):
    resized = np.asarray(image.convert("RGB").resize((256, 256), Image.BILINEAR), np.float32)
    crop = resized[14:241, 14:241]
    bgr = crop[:, :, ::-1]
    return (bgr - np.array([104, 117, 123], np.float32)).transpose(2, 0, 1)


def torchvision_reference(image):
    image = image.convert("RGB")
    w, h = image.size
    size = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)  # transforms.Resize
    resized = np.asarray(image.resize(size, Image.BILINEAR), np.float64)
    top = int(round((size[1] - 224) / 2.0))  # transforms.CenterCrop
    left = int(round((size[0] - 224) / 2.0))
    crop = resized[top:top + 224, left:left + 224] / 255.0  # ToTensor
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((crop - mean) / std).transpose(2, 0, 1)


def sample_images():
    names = ["n01440764.jpg",  # 341x256, landscape (odd margin: crop offset rounds)
             "n01494475.jpg",  # 256x384, portrait
             "n01773549.jpg"]  # 256x256
    images = {name: Image.open(SAMPLES / name) for name in names}
    first = images[names[0]]
    # sizes the torchvision path must actually resize
    images["300x200"] = first.resize((300, 200), Image.BILINEAR)
    images["181x403"] = first.resize((181, 403), Image.BILINEAR)
    return images


@needs_samples
def test_caffe_preprocessing_of_real_photos_matches_numpy():
    for name, image in sample_images().items():
        out = CAFFE_PREPROCESSING(image)
        assert out.dtype == torch.float32 and tuple(out.shape) == (3, 227, 227), name
        np.testing.assert_array_equal(out.numpy(), caffe_reference(image), err_msg=name)


@needs_samples
def test_torchvision_preprocessing_of_real_photos_matches_numpy():
    for name, image in sample_images().items():
        out = TORCHVISION_PREPROCESSING(image)
        assert out.dtype == torch.float32 and tuple(out.shape) == (3, 224, 224), name
        np.testing.assert_allclose(out.numpy(), torchvision_reference(image), atol=1e-5,
                                   err_msg=name)


def test_caffe_channel_0_is_blue_and_torchvision_channel_0_is_red():
    blue = Image.new("RGB", (300, 280), (0, 0, 255))
    out = CAFFE_PREPROCESSING(blue).numpy()
    assert out.shape == (3, 227, 227)
    assert (out[0] == 255 - 104).all() and (out[1] == -117).all() and (out[2] == -123).all()
    red = TORCHVISION_PREPROCESSING(Image.new("RGB", (300, 280), (255, 0, 0))).numpy()
    np.testing.assert_allclose(red[:, 0, 0], [(1 - 0.485) / 0.229, -0.456 / 0.224,
                                              -0.406 / 0.225], rtol=1e-6)
    gray = CAFFE_PREPROCESSING(Image.new("L", (256, 256), 200)).numpy()  # grey -> 3 channels
    np.testing.assert_array_equal(gray[:, 0, 0], [96, 83, 77])


def test_crop_offsets_follow_torchvision_rounding():
    assert TORCHVISION_PREPROCESSING.crop_box(341, 256) == (58, 16, 282, 240)  # round(58.5)
    assert CAFFE_PREPROCESSING.crop_box(256, 256) == (14, 14, 241, 241)
    assert TORCHVISION_PREPROCESSING.resized_size(300, 200) == (384, 256)
    assert TORCHVISION_PREPROCESSING.resized_size(181, 403) == (256, 569)  # int(), as torchvision
