"""PPGN on a network other than the generator's own encoder (generator/condition.py), and
the measured receptive field that referenced networks get (generator.panels.
gradient_field): the demo generator with a ResNet-style condition network given as a
``module:callable`` reference, untrained (no training in the test)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from generator import ppgn
from generator.condition import CODE_TAP, ConditionWithEncoder
from generator.digits import demo_network
from generator.digits_resnet import DigitsResNet
from generator.hooked import HookedNet
from generator.panels import gradient_field, receptive_field
from generator.sampler import Settings, Target


@pytest.mark.parametrize("tap", ["conv1", "conv2", "conv3", "conv5"])
def test_the_measured_field_is_the_walked_one(tap):
    """On a network of steps both ways give the same box, centre, corner and edge."""
    net = demo_network().eval()
    _, height, width = net.layer_shapes([tap])[tap]
    for location in [(height // 2, width // 2), (0, 0), (1, width - 1)]:
        assert gradient_field(net, tap, location) == receptive_field(net, tap, location)


def test_a_referenced_networks_field_is_measured():
    """DigitsResNet: 3x3 convolutions; layer1 (stride 1, 5 convolutions deep: the stem and
    two blocks of two) sees 11x11 pixels around its location, clipped at the border."""
    net = HookedNet(DigitsResNet().eval(), (1, 32, 32))
    assert receptive_field(net, "layer1", (16, 16)) == (11, 11, 22, 22)
    assert receptive_field(net, "layer1", (0, 0)) == (0, 0, 6, 6)


def test_the_condition_network_gives_the_targets_and_the_encoder_the_code():
    torch.manual_seed(0)
    encoder = demo_network().eval()
    condition = HookedNet(DigitsResNet().eval(), (1, 32, 32))
    both = ConditionWithEncoder(condition, encoder)
    x = torch.randn(3, 1, 32, 32)
    out = both(x, ["layer2", "fc", CODE_TAP])
    torch.testing.assert_close(out[CODE_TAP], encoder(x, ["fc6"])["fc6"])
    torch.testing.assert_close(out["fc"], condition.model(x))
    assert both.layer_shapes(["layer2", CODE_TAP]) == {"layer2": (32, 16, 16),
                                                      CODE_TAP: (128,)}
    wrong = HookedNet(DigitsResNet().eval(), (1, 28, 28))
    with pytest.raises(ValueError, match="PPGN feeds both the same image"):
        ConditionWithEncoder(wrong, encoder)


def test_logits_are_the_output_or_an_fc_layer_of_its_size():
    condition = HookedNet(DigitsResNet().eval(), (1, 32, 32))
    assert ppgn.is_logits(condition, Target("fc"))
    assert ppgn.is_logits(condition, Target("output"))
    assert not ppgn.is_logits(condition, Target("layer3", (4, 4)))
    assert ppgn.is_logits(demo_network(), Target("fc8"))
    assert not ppgn.is_logits(demo_network(), Target("fc6:pre"))


@pytest.fixture
def resnet_reference(tmp_path):
    """An untrained DigitsResNet as a user's model file, with the demo's preprocessing."""
    path = tmp_path / "my_resnet.py"
    path.write_text(textwrap.dedent("""
        import torch
        from generator.digits import DEMO_PREPROCESSING
        from generator.digits_resnet import DigitsResNet

        def build():
            torch.manual_seed(3)
            model = DigitsResNet()
            model.preprocessing = DEMO_PREPROCESSING
            return model
    """))
    return f"{path}:build"


def test_ppgn_panels_of_a_referenced_network_with_the_demo_generator(resnet_reference,
                                                                      tmp_path):
    models = ppgn.load_models(resnet_reference, "demo")
    assert models.code_tap == CODE_TAP and models.ids["encoder"] == "demo"
    assert models.ids["network"] == resnet_reference
    target = ppgn.target_for(models.classifier, "layer2")
    assert target == Target("layer2", (8, 8))
    settings = Settings(steps=4, threshold=None)
    for layer in ("fc", "layer2"):
        manifest = ppgn.generate(models, layer, [0, 1], tmp_path, images_per_unit=4,
                                 batch_chains=2, settings=settings, progress=False,
                                 workers=1)
        assert manifest is not None
    info = json.loads((tmp_path / "units" / "fc_0001.json").read_text())
    assert info["n_images"] == 4 and 0 <= info["target_share"] <= 1   # fc: the logits
    conv = json.loads((tmp_path / "units" / "layer2_0000.json").read_text())
    assert conv["target_share"] is None and conv["n_images"] == 4
    images = np.load(tmp_path / "units" / "layer2_0000.npz")["images"]
    settings_file = json.loads((tmp_path / "settings_layer2.json").read_text())
    box = settings_file["tile_box"]
    assert images.shape[1:3] == (32, 32) and box is not None
    # the tile is layer2's measured receptive field at the map's centre
    assert tuple(box) == receptive_field(models.classifier.condition, "layer2", (8, 8))
