"""PPGN's hidden-unit recipe in generator/ppgn.py's runs: samples kept when the target's
softmax probability exceeds the threshold, chains until a unit's images are in or its cap
on chain-steps is spent (then reported short, never padded), fc tiles as the classifier
saw them, and every threshold, pass rate and chain count on file."""

import csv
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from generator import ppgn
from generator.deepsim import crop_to_classifier
from generator.ppgn import Models, generate
from generator.sampler import settings_for


@pytest.fixture(scope="module")
def demo_models():
    """The demo pair as the command line loads it (trained on first use, then cached)."""
    return ppgn.load_models("demo", "demo")


def small_conv5(**overrides):
    """PPGN's conv5 recipe, shortened: 60 steps, resets every 20, a sample every 5."""
    return settings_for("conv5", **{"steps": 60, "reset_every": 20, "keep_every": 5,
                                    **overrides})


def unit_files(out, layer, unit):
    stem = f"{layer}_{unit:04d}"
    return (np.load(out / "units" / f"{stem}.npz"),
            json.loads((out / "units" / f"{stem}.json").read_text()))


def manifest_rows(out, layer):
    with open(out / f"manifest_{layer}.csv", newline="") as fh:
        return {int(r["unit"]): r for r in csv.DictReader(fh)}


def test_conv5_on_the_demo_pair_keeps_only_samples_above_the_threshold(tmp_path, demo_models):
    settings = small_conv5()
    assert settings.threshold == 0.98
    units = [0, 5, 9]
    # 4 images a unit from chains of 13 samples; up to 8 chains a unit
    generate(demo_models, "conv5", units, tmp_path, images_per_unit=4, batch_chains=4,
             settings=settings, max_chain_steps=480, progress=False, workers=1)
    rows = manifest_rows(tmp_path, "conv5")
    for unit in units:
        files, info = unit_files(tmp_path, "conv5", unit)
        assert len(files["images"]) == len(files["probs"]) == info["n_images"]
        assert (files["probs"] > 0.98).all(), (unit, files["probs"])  # read back from file
        assert info["min_prob"] == (pytest.approx(files["probs"].min()) if info["n_images"]
                                    else None)
        assert info["threshold"] == 0.98
        assert info["n_candidates"] == 13 * info["chains"]
        assert info["pass_rate"] == pytest.approx(info["n_passed"] / info["n_candidates"])
        assert info["chain_steps"] == 60 * info["chains"] <= 480
        assert info["short"] == (info["n_images"] < 4)
        # in order of chain and step, and only from the chains counted
        order = list(zip(files["chains"], files["steps"], strict=True))
        assert order == sorted(order) and all(files["chains"] < info["chains"])
        assert set(files["steps"]) <= set(range(0, 61, 5))
        row = rows[unit]
        assert float(row["threshold"]) == 0.98 and int(row["chains"]) == info["chains"]
        assert float(row["pass_rate"]) == pytest.approx(info["pass_rate"])
    # A unit stops once its 4 images pass, or falls short only after its whole budget
    # (8 chains of 60 steps). Which units pass often depends on the trained weights
    # (unit 5 got its 4 images on an Intel Xeon, 3 on an AMD EPYC), so no unit is named;
    # but the threshold lets samples through on any reasonably trained pair (the
    # machines tried: 3-4 images a unit).
    for unit in units:
        info = unit_files(tmp_path, "conv5", unit)[1]
        assert info["n_images"] == 4 or info["chains"] == 8, (unit, info)
        assert info["n_images"] == min(4, info["n_passed"]), (unit, info)
    assert sum(unit_files(tmp_path, "conv5", u)[1]["n_images"] for u in units) >= 4
    recorded = json.loads((tmp_path / "settings_conv5.json").read_text())
    assert recorded["settings"]["threshold"] == 0.98 and recorded["max_chain_steps"] == 480
    summary = recorded["summary"]
    infos = [unit_files(tmp_path, "conv5", u)[1] for u in units]
    assert summary["chains"] == sum(i["chains"] for i in infos)
    assert summary["pass_rate"] == pytest.approx(sum(i["n_passed"] for i in infos)
                                                 / sum(i["n_candidates"] for i in infos))


def test_a_unit_that_cannot_reach_its_images_is_reported_short_not_padded(tmp_path,
                                                                          demo_models,
                                                                          caplog):
    # 100 images wanted; 2 chains of 20 steps (5 samples each) at most: 10 candidates
    settings = small_conv5(steps=20)
    with caplog.at_level(logging.WARNING, logger="generator.ppgn"):
        manifest = generate(demo_models, "conv5", [14], tmp_path, images_per_unit=100,
                            batch_chains=4, settings=settings, max_chain_steps=40,
                            progress=False, workers=1)
    files, info = unit_files(tmp_path, "conv5", 14)
    assert info["short"] is True and info["chains"] == 2 and info["n_candidates"] == 10
    assert 0 < info["n_images"] == info["n_passed"] == len(files["images"]) <= 10  # no pad
    assert (files["probs"] > 0.98).all()
    assert info["pass_rate"] == pytest.approx(info["n_passed"] / 10)
    row = manifest_rows(tmp_path, "conv5")[14]
    assert row["short"] == "True" and int(row["n_images"]) == info["n_images"]
    summary = json.loads((tmp_path / "settings_conv5.json").read_text())["summary"]
    assert summary["short_units"] == [{"unit": 14, "n_images": info["n_images"],
                                       "pass_rate": info["pass_rate"], "chains": 2}]
    assert f"conv5 unit 14: {info['n_images']} of 100 images pass p > 0.98 within 40 " \
           "chain-steps" in caplog.text
    assert manifest is not None
    # the panel is a 10x10 grid of the receptive field whose missing cells are blank
    top, left, bottom, right = ppgn.panel_box(demo_models, ppgn.target_for(
        demo_models.classifier, "conv5"))
    cell = bottom - top
    factor = -(-64 // cell)  # cells under 64 pixels are enlarged
    panel = np.asarray(Image.open(tmp_path / info["path"]).convert("L"))
    assert panel.shape == (factor * (10 * cell + 18),) * 2
    assert panel[-factor * cell:, :].min() > 240  # the last row of cells: white


def padded_pair():
    """The demo architectures (random weights) with a generator whose 40x40 image the
    classifier sees the centre 32 of, as CaffeNet sees DeePSiM's 256."""
    from generator.digits import demo_network
    from generator.digits_generator import demo_generator

    torch.manual_seed(0)

    class Padded(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = demo_generator().eval()

        def forward(self, h):
            return nn.functional.pad(self.inner(h), (4, 4, 4, 4), value=-1.0)

    def pixels(x):
        return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()

    gen, net = ppgn._for_sampling(Padded(), demo_network().eval(), "cpu")
    return Models(net, gen, lambda x: crop_to_classifier(x, 32), 128, pixels)


def panel_size(out, layer, unit):
    """The side of a unit's (square) panel, in pixels."""
    with Image.open(out / "panels" / f"{layer}_{unit:04d}.jpg") as image:
        width, height = image.size
    assert width == height
    return width


def test_fc_tiles_are_the_classifiers_crop_by_default_and_full_on_request(tmp_path,
                                                                          monkeypatch):
    models = padded_pair()
    monkeypatch.setattr(ppgn, "load_models", lambda *args, **kwargs: models)
    common = ["--network", "demo", "--generator", "demo", "--layer", "fc8", "--units", "1",
              "--images-per-unit", "4", "--steps", "2", "--quiet"]
    assert ppgn.main([*common, "--out", str(tmp_path / "crop")]) == 0
    assert ppgn.main([*common, "--tile", "full", "--out", str(tmp_path / "full")]) == 0
    # 2x2 cells with a gap of 2, cells under 64 pixels enlarged 2x
    assert panel_size(tmp_path / "crop", "fc8", 1) == 2 * (2 * 32 + 2)
    assert panel_size(tmp_path / "full", "fc8", 1) == 2 * (2 * 40 + 2)
    files, _ = unit_files(tmp_path / "crop", "fc8", 1)
    assert files["images"].shape[1:3] == (40, 40)  # the unit's file keeps whole images
    for name, box in (("crop", [4, 4, 36, 36]), ("full", None)):
        recorded = json.loads((tmp_path / name / "settings_fc8.json").read_text())
        assert recorded["tile"] == name and recorded["tile_box"] == box


def test_fc_tiles_of_the_demo_pair_are_the_classifiers_input(tmp_path, demo_models):
    generate(demo_models, "fc8", [2], tmp_path, images_per_unit=4,
             settings=settings_for("fc8", steps=3), progress=False, workers=1)
    _, height, width = demo_models.classifier.input_shape
    assert height == width == 32  # the demo's classifier sees the generator's whole image
    files, info = unit_files(tmp_path, "fc8", 2)
    assert files["images"].shape[1:3] == (height, width)
    assert panel_size(tmp_path, "fc8", 2) == 2 * (2 * width + 2)
    assert info["threshold"] is None and info["chains"] == 4 and not info["short"]


# -- the chains a unit takes, with a threshold ------------------------------------------------


def tiny_models():
    """G: h (4) -> x (3); classifier fc6 (3 -> 4) and fc8 (4 -> 2): fast chains."""
    from generator.networks import TappedNet

    torch.manual_seed(0)
    gen = nn.Linear(4, 3)
    steps = [("fc6", nn.Linear(3, 4)), ("relu6", nn.ReLU()), ("fc8", nn.Linear(4, 2))]
    net = TappedNet(steps, {"fc6": "relu6", "fc6:pre": "fc6", "fc8": "fc8"}, (3,)).eval()

    def to_pixels(x):
        return (x.clamp(-1, 1) * 127 + 128).byte().reshape(len(x), 1, 3, 1).numpy()

    return Models(net, gen, lambda x: x, 4, to_pixels)


def tiny_conv(**overrides):
    return settings_for("conv5", **{"steps": 12, "reset_every": 4, "keep_every": 2,
                                    "eps3": 1e-3, "threshold": 0.3, **overrides})


def npz_files(out, layer, units):
    return {u: {k: v.copy() for k, v in np.load(out / "units" / f"{layer}_{u:04d}.npz")
                .items()} for u in units}


def test_the_panels_do_not_depend_on_batches_workers_or_spare_chains(tmp_path):
    """Chains run until each unit's images pass, some batched with other units' and spare
    chains; what a unit keeps is the first images that pass, in chain order, whatever
    ran beside them."""
    models = tiny_models()
    units = [0, 1, 2, 3]
    runs = {}
    for name, kwargs, subset in (("w1", {"workers": 1}, units), ("w3", {"workers": 3}, units),
                                 ("alone", {"workers": 1}, [2])):
        out = tmp_path / name
        generate(models, "fc6", subset, out, images_per_unit=9, batch_chains=5,
                 settings=tiny_conv(), progress=False, **kwargs)
        runs[name] = (npz_files(out, "fc6", subset), manifest_rows(out, "fc6"))
    infos = runs["w1"][1]
    assert {infos[u]["short"] for u in units} == {"True", "False"}
    assert any(0 < float(infos[u]["pass_rate"]) < 1 and int(infos[u]["chains"]) > 2
               for u in units)  # more chains than it takes without a threshold
    for name in ("w3", "alone"):
        files, rows = runs[name]
        for unit in files:
            for key in ("images", "probs", "chains", "steps"):
                np.testing.assert_array_equal(files[unit][key], runs["w1"][0][unit][key])
            assert rows[unit] == infos[unit]


def test_resume_with_a_threshold_gives_the_same_files(tmp_path, monkeypatch):
    models = tiny_models()
    kwargs = {"images_per_unit": 9, "batch_chains": 5, "settings": tiny_conv(),
              "progress": False, "workers": 1}
    whole = generate(models, "fc6", [0, 1, 2], tmp_path / "whole", **kwargs)
    original = ppgn._save_unit
    calls = {"n": 0}

    def crash_on_second(*args, **kw):
        if calls["n"] == 1:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(*args, **kw)

    monkeypatch.setattr(ppgn, "_save_unit", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        generate(models, "fc6", [0, 1, 2], tmp_path / "resumed", **kwargs)
    monkeypatch.setattr(ppgn, "_save_unit", original)
    resumed = generate(models, "fc6", [0, 1, 2], tmp_path / "resumed", **kwargs)
    assert whole.read_text() == resumed.read_text()
    a, b = npz_files(tmp_path / "whole", "fc6", [0, 1, 2]), npz_files(tmp_path / "resumed",
                                                                       "fc6", [0, 1, 2])
    for unit in a:
        np.testing.assert_array_equal(a[unit]["images"], b[unit]["images"])
    settings = [json.loads((tmp_path / n / "settings_fc6.json").read_text())
                for n in ("whole", "resumed")]
    assert settings[0] == settings[1] and "summary" in settings[0]
    # a finished folder is resumed (its summary is not a setting); another cap is refused
    assert generate(models, "fc6", [0, 1, 2], tmp_path / "whole", **kwargs) is not None
    with pytest.raises(ValueError, match="max_chain_steps"):
        generate(models, "fc6", [0, 1, 2], tmp_path / "whole", max_chain_steps=24, **kwargs)


def test_fc_keeps_independent_chains_and_may_take_a_threshold(tmp_path):
    models = tiny_models()
    generate(models, "fc6", [1, 2], tmp_path / "plain", images_per_unit=4,
             settings=settings_for("fc6", steps=3), progress=False, workers=1)
    generate(models, "fc6", [1, 2], tmp_path / "thresh", images_per_unit=4,
             settings=settings_for("fc6", steps=3, eps3=1e-3, threshold=0.3),
             progress=False, workers=1)
    for unit in (1, 2):
        files, info = unit_files(tmp_path / "plain", "fc6", unit)
        assert info["chains"] == 4 and list(files["chains"]) == [0, 1, 2, 3]
        assert list(files["steps"]) == [3] * 4 and info["pass_rate"] == 1
        files, info = unit_files(tmp_path / "thresh", "fc6", unit)
        assert (files["probs"] > 0.3).all() and info["n_candidates"] == info["chains"]
        assert list(files["steps"]) == [3] * len(files["steps"])


def test_cli_threshold_cap_and_tile_options(tmp_path, monkeypatch, capsys):
    models = tiny_models()
    monkeypatch.setattr(ppgn, "load_models", lambda *args, **kwargs: models)
    common = ["--network", "demo", "--generator", "demo", "--layer", "fc6", "--units", "0",
              "--images-per-unit", "4", "--steps", "4", "--quiet"]
    assert ppgn.main([*common, "--threshold", "none", "--out", str(tmp_path / "a")]) == 0
    assert ppgn.main([*common, "--threshold", "0.99", "--max-chain-steps", "8",
                      "--out", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert "1 unit(s) short of their images" in printed or "passing p > 0.99" in printed
    recorded = json.loads((tmp_path / "b" / "settings_fc6.json").read_text())
    assert recorded["settings"]["threshold"] == 0.99 and recorded["max_chain_steps"] == 8
    assert json.loads((tmp_path / "a" / "settings_fc6.json").read_text())["settings"][
        "threshold"] is None
    with pytest.raises(SystemExit):
        ppgn.main([*common, "--threshold", "high", "--out", str(tmp_path / "c")])
    assert ppgn.main([*common, "--max-chain-steps", "3", "--out", str(tmp_path / "d")]) == 2
    assert "a chain takes 4 steps" in capsys.readouterr().err
