"""The PPGN sampler (generator/sampler.py) and its runs (generator/ppgn.py): one step
against a hand computation, batch independence, resume, the conv schedule, receptive
fields and panels."""

import copy
import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from generator import ppgn
from generator.networks import TappedNet, caffenet
from generator.panels import grid, photo_panel, receptive_field
from generator.panels import main as panels_main
from generator.ppgn import Models, generate, parse_units
from generator.sampler import (
    Batch,
    Sampler,
    Settings,
    Target,
    chain_seed,
    ppgn_update,
    settings_for,
)


def tiny_models(seed=0):
    """G: a linear map h (4) -> x (3); classifier: fc6 (3 -> 4, ReLU) and fc8 (4 -> 2)."""
    torch.manual_seed(seed)
    gen = nn.Linear(4, 3)
    steps = [("fc6", nn.Linear(3, 4)), ("relu6", nn.ReLU()), ("fc8", nn.Linear(4, 2))]
    net = TappedNet(steps, {"fc6": "relu6", "fc6:pre": "fc6", "fc8": "fc8"}, (3,)).eval()

    def to_pixels(x):
        return (x.clamp(-1, 1) * 127 + 128).byte().reshape(len(x), 1, 3, 1).numpy()

    return gen, net, Models(net, gen, lambda x: x, 4, to_pixels)


def test_one_step_matches_a_hand_computation():
    gen, net, _ = tiny_models(seed=4)
    s = Settings(steps=1, eps1=0.3, eps2=1.0, eps3=0.0, lr=0.5)
    sampler = Sampler(gen, net, Target("fc8"), settings=s, code_dim=4)
    batch = sampler.start([1], [0])
    h = batch.h[0].double()
    wg, bg = gen.weight.detach().double(), gen.bias.detach().double()
    w6, b6 = net.fc6.weight.detach().double(), net.fc6.bias.detach().double()
    w8, b8 = net.fc8.weight.detach().double(), net.fc8.bias.detach().double()
    # forward by hand
    x = wg @ h + bg
    z6 = w6 @ x + b6
    assert 0 < (z6 > 0).sum() < 4  # some ReLUs pass, some block: the test covers both
    code = torch.relu(z6)
    logits = w8 @ code + b8
    p1 = torch.softmax(logits, 0)[1]
    # d logit_1 / d h = w8[1] . diag(z6 > 0) . w6 . wg
    grad = (w8[1] * (z6 > 0).double()) @ w6 @ wg
    d_h = 0.3 * (code - h) + 1.0 * (1 - p1) * grad
    expected = (h + 0.5 / d_h.abs().mean() * d_h).clamp(0, 30)
    fwd = sampler.forward(batch)
    np.testing.assert_allclose(fwd.code[0].double(), code, rtol=1e-5)
    np.testing.assert_allclose(fwd.activation[0].double(), logits[1], rtol=1e-5)
    got = ppgn_update(batch, fwd, sampler.terms, s.lr, s.h_max)
    np.testing.assert_allclose(got[0].double(), expected, rtol=1e-5, atol=1e-6)


def test_h_stays_in_its_box_and_a_zero_step_changes_nothing():
    gen, net, _ = tiny_models()
    sampler = Sampler(gen, net, Target("fc8"), settings=Settings(lr=1e3, eps3=0), code_dim=4)
    batch = sampler.start([0, 1], [0, 0])
    out = ppgn_update(batch, sampler.forward(batch), sampler.terms, 1e3, 30.0)
    assert out.min() >= 0 and out.max() <= 30
    zero = ppgn_update(batch, sampler.forward(batch), [lambda b, f: torch.zeros_like(b.h)],
                       1.0, 30.0)
    assert (batch.h < 0).any()  # drawn N(0, 1) as PPGN draws it: the update clips
    assert torch.equal(zero, batch.h.clamp(0, 30))


def run_images(sampler, units, chains, pad_to=8):
    return {(s.unit, s.chain): s.image for s in sampler.run(units, chains, pad_to=pad_to)}


def test_a_unit_alone_and_in_a_mixed_batch_gives_the_same_images():
    gen, net, _ = tiny_models()
    s = Settings(steps=30, eps3=1e-3)  # noise on, so per-chain random numbers matter
    sampler = Sampler(gen, net, Target("fc8"), settings=s, code_dim=4, seed=7)
    alone = run_images(sampler, [1, 1, 1], [0, 1, 2])
    mixed = run_images(sampler, [0, 1, 0, 1, 1], [0, 0, 1, 1, 2])
    for chain in range(3):
        assert torch.equal(alone[(1, chain)], mixed[(1, chain)])
    assert not torch.equal(alone[(1, 0)], alone[(1, 1)])  # chains differ from each other


def test_conv_schedule_resets_redraws_eps1_and_marks_samples_by_probability():
    s = settings_for("conv5", steps=40, reset_every=10, keep_every=5)
    assert s.eps1_range == (1e-6, 1e-2) and s.threshold == 0.98 and s.eps1 == 1e-5
    assert settings_for("fc8").threshold is None and settings_for("fc6").threshold is None
    gen, net, _ = tiny_models()
    sampler = Sampler(gen, net, Target("fc6:pre"), settings=replace(s, threshold=0.0),
                      code_dim=4)
    samples = list(sampler.run([2, 3], [0, 0]))
    # PPGN's steps: the image of step i before its update, at i = 0, 5, ..., 40
    assert [x.step for x in samples if x.unit == 2] == list(range(0, 41, 5))
    assert all(x.passed and 0 < x.prob < 1 for x in samples)
    high = replace(s, threshold=1 - 1e-9)
    below = list(Sampler(gen, net, Target("fc6:pre"), settings=high, code_dim=4).run([2], [0]))
    assert len(below) == 9 and not any(x.passed for x in below)
    none = replace(s, threshold=None)
    assert all(x.passed for x in Sampler(gen, net, Target("fc6:pre"), settings=none,
                                         code_dim=4).run([2], [0]))
    batch = sampler.start([2, 2], [0, 1])
    assert torch.equal(batch.eps1, torch.full((2,), 1e-5))  # PPGN's, until the first reset
    drawn = sampler._draw_eps1(batch.rngs)  # at a reset: U(1e-6, 1e-2) per chain
    assert 1e-6 <= drawn.min() and drawn.max() <= 1e-2 and drawn[0] != drawn[1]


def test_codes_are_drawn_as_ppgn_draws_them_and_resets_come_after_the_update():
    """h0 and every restart code are N(0, 1), unclipped where G first sees them; eps1 is
    1e-5 until the first reset; the sample of a reset step is the image before it."""
    gen, net, _ = tiny_models()
    seen = []
    spy = nn.Module()
    spy.lin = gen
    spy.forward = lambda h: (seen.append(h.detach().clone()), gen(h))[1]
    s = settings_for("conv5", steps=6, reset_every=3, keep_every=3, threshold=None)
    sampler = Sampler(spy, net, Target("fc6:pre"), settings=s, code_dim=4, seed=3)
    eps1 = []
    update = Sampler.forward

    def record(self, batch):
        eps1.append(batch.eps1.clone())
        return update(self, batch)

    sampler.forward = record.__get__(sampler)
    samples = list(sampler.run([1], [0]))
    assert [x.step for x in samples] == [0, 3, 6]
    # one forward pass a step (steps 0-5 with gradients, the last without)
    assert len(seen) == 7
    rng = torch.Generator().manual_seed(chain_seed(3, "fc6:pre", 1, 0))
    h0 = torch.randn(4, generator=rng)
    assert torch.equal(seen[0][0], h0) and (h0 < 0).any()  # unclipped where G sees it
    assert all((h >= 0).all() for h in seen[1:4])  # updates clip
    assert (seen[4] < 0).any()  # step 4 sees the restart code drawn after step 3's update
    assert [float(e[0]) for e in eps1[:4]] == [float(torch.tensor(1e-5))] * 4
    assert 1e-6 <= float(eps1[4][0]) <= 1e-2 and float(eps1[4][0]) != float(eps1[0][0])
    # the sample of step 3 (a reset step) is the image of the code before the reset
    torch.testing.assert_close(samples[1].image, gen(seen[3][0]).detach())


def test_generate_resumes_per_unit_to_the_same_files(tmp_path, monkeypatch):
    *_, models = tiny_models()
    settings = Settings(steps=5)
    whole = generate(models, "fc8", [0, 1], tmp_path / "whole", images_per_unit=4,
                     batch_chains=3, settings=settings, progress=False)
    original = ppgn._save_unit
    calls = {"n": 0}

    def crash_on_second(*args, **kwargs):
        if calls["n"] == 1:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(ppgn, "_save_unit", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        generate(models, "fc8", [0, 1], tmp_path / "resumed", images_per_unit=4,
                 batch_chains=3, settings=settings, progress=False)
    assert not (tmp_path / "resumed" / "manifest_fc8.csv").exists()
    monkeypatch.setattr(ppgn, "_save_unit", original)
    resumed = generate(models, "fc8", [0, 1], tmp_path / "resumed", images_per_unit=4,
                       batch_chains=3, settings=settings, progress=False)
    for unit in (0, 1):
        a = np.load(tmp_path / "whole" / "units" / f"fc8_{unit:04d}.npz")
        b = np.load(tmp_path / "resumed" / "units" / f"fc8_{unit:04d}.npz")
        np.testing.assert_array_equal(a["images"], b["images"])
    assert whole.read_text() == resumed.read_text()
    header = whole.read_text().splitlines()[0].split(",")
    assert header[:4] == ["panel_id", "layer", "unit", "path"]
    info = json.loads((tmp_path / "whole" / "units" / "fc8_0001.json").read_text())
    assert info["path"] == "panels/fc8_0001.jpg" and 0 <= info["target_share"] <= 1
    assert Image.open(tmp_path / "whole" / info["path"]).format == "JPEG"


def test_an_independent_classifier_judges_the_images_too(tmp_path):
    _, net, models = tiny_models()
    models.independent = copy.deepcopy(net)  # the same function: the same verdicts
    models.ids = {"independent_sha256": "c" * 64}
    manifest = generate(models, "fc8", [0, 1], tmp_path, images_per_unit=4,
                        settings=Settings(steps=3), progress=False)
    for unit in (0, 1):
        info = json.loads((tmp_path / "units" / f"fc8_{unit:04d}.json").read_text())
        assert info["independent_target_share"] == info["target_share"]
    header = manifest.read_text().splitlines()[0].split(",")
    assert header == ppgn.MANIFEST_COLUMNS and "independent_target_share" in header
    settings = json.loads((tmp_path / "settings_fc8.json").read_text())
    assert settings["independent_sha256"] == "c" * 64


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    *_, models = tiny_models()
    generate(models, "fc8", [0], tmp_path, images_per_unit=1, settings=Settings(steps=2),
             progress=False)
    with pytest.raises(ValueError, match="other settings"):
        generate(models, "fc8", [0], tmp_path, images_per_unit=1,
                 settings=Settings(steps=3), progress=False)


def test_parse_units():
    assert parse_units("0-3,7", 10) == [0, 1, 2, 3, 7]
    assert parse_units("all", 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="outside 0..9"):
        parse_units("5-12", 10)


def test_caffenet_conv5_centre_sees_163_pixels():
    with torch.device("meta"):
        net = caffenet()
    assert receptive_field(net, "conv5:pre", (6, 6)) == (32, 32, 195, 195)
    assert receptive_field(net, "conv1:pre", (0, 0)) == (0, 0, 11, 11)


def test_grid_places_images_row_by_row():
    images = np.stack([np.full((2, 3, 3), i, np.uint8) for i in range(6)])
    out = grid(images, rows=2, cols=3, gap=1, background=255)
    assert out.shape == (2 * 2 + 1, 3 * 3 + 2, 3)
    assert out[0, 0, 0] == 0 and out[0, 4, 0] == 1 and out[3, 8, 0] == 5
    assert out[2, 0, 0] == 255  # the gap between rows


def test_practice_panel_of_photos(tmp_path, sample_photos):
    dogs = [p for p in sample_photos if "n02085620" <= p.stem <= "n02113978"][:20]
    pixels = photo_panel(dogs, rows=4, cols=5, cell=64)
    assert pixels.shape == (4 * 64 + 3 * 2, 5 * 64 + 4 * 2, 3)
    out = tmp_path / "dogs.jpg"
    assert panels_main(["photos", *map(str, dogs), "--out", str(out), "--cell", "64"]) == 0
    assert Image.open(out).size == (5 * 64 + 8, 4 * 64 + 6)
    assert panels_main(["photos", str(dogs[0]), "--out", str(out)]) == 2  # 1 photo, 20 needed


def test_conv5_panels_crop_the_receptive_field_inside_the_generators_256_image():
    from generator.deepsim import DeePSiMGenerator, crop_to_classifier

    with torch.device("meta"):
        net, gen = caffenet(), DeePSiMGenerator()
    models = Models(net, gen, lambda x: x, 4096, lambda x: x)
    models.crop = lambda x: crop_to_classifier(x, 227)
    box = ppgn.panel_box(models, ppgn.target_for(net, "conv5"))
    assert box == (32 + 14, 32 + 14, 195 + 14, 195 + 14)  # the classifier sees [14:241]
    # fc tiles: the classifier's input, as PPGN saves its images; or the whole image
    assert ppgn.panel_box(models, ppgn.target_for(net, "fc8")) == (14, 14, 241, 241)
    for layer in ("fc8", "conv5"):
        assert ppgn.panel_box(models, ppgn.target_for(net, layer), "full") is None


def test_starting_codes_mix_elements_of_real_codes():
    gen, net, _ = tiny_models()
    bank = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    sampler = Sampler(gen, net, Target("fc8"), settings=Settings(), code_dim=4,
                      init_codes=bank)
    h = sampler.start([0] * 50, list(range(50))).h
    for j in range(4):
        assert set(h[:, j].tolist()) == {bank[0, j].item(), bank[1, j].item()}


def test_mixed_precision_still_climbs_the_target():
    gen, net, _ = tiny_models(seed=4)
    s = Settings(steps=25, eps3=0.0)
    start = Sampler(gen, net, Target("fc8"), settings=s, code_dim=4)
    before = start.forward_image(start.start([1, 1], [0, 1]))[1]
    sampler = Sampler(gen, net, Target("fc8"), settings=s, code_dim=4, amp=True)
    after = torch.tensor([x.activation for x in sampler.run([1, 1], [0, 1])])
    assert torch.isfinite(after).all() and (after > before).all()


def test_the_layers_manifests_are_combined(tmp_path):
    *_, models = tiny_models()
    generate(models, "fc8", [0, 1], tmp_path, images_per_unit=1, settings=Settings(steps=2),
             progress=False)
    generate(models, "fc6", [2], tmp_path, images_per_unit=1, settings=Settings(steps=2),
             progress=False)
    rows = (tmp_path / "manifest.csv").read_text().splitlines()
    assert rows[0].startswith("panel_id,layer,unit,path")
    assert [r.split(",")[0] for r in rows[1:]] == ["fc6_0002", "fc8_0000", "fc8_0001"]


def test_batch_independence_holds_for_the_demo_pair_conv_lrn_and_transposed_convs():
    from generator.digits import demo_network
    from generator.digits_generator import demo_generator

    torch.manual_seed(3)  # weights do not matter here, the arithmetic does
    net, gen = demo_network().eval(), demo_generator().eval()
    prepared = ppgn._for_sampling(demo_generator().eval(), net, "cpu")  # as load_models does
    for (g, c), target, settings in (
            ((gen, net), Target("fc8"), Settings(steps=8, eps3=1e-3)),
            (prepared, Target("fc8"), Settings(steps=8, eps3=1e-3)),
            *((pair, Target("conv5:pre", (3, 3)),
               settings_for("conv5", steps=8, reset_every=4, keep_every=4))
              for pair in ((gen, net), prepared))):
        sampler = Sampler(g, c, target, settings=settings, code_dim=128, seed=1)
        alone = {(s.unit, s.chain, s.step): s.image
                 for s in sampler.run([4, 4], [0, 1], pad_to=6)}
        mixed = {(s.unit, s.chain, s.step): s.image
                 for s in sampler.run([7, 4, 2, 4, 7], [0, 0, 0, 1, 1], pad_to=6)}
        for key, image in alone.items():
            assert torch.equal(image, mixed[key]), (target, key)


def test_a_step_with_the_prepared_demo_pair_is_the_same_step():
    """load_models' channels-last copies with the faster LRN and first convolution compute
    the same update, up to float32 rounding."""
    from generator.digits import demo_network
    from generator.digits_generator import demo_generator

    torch.manual_seed(5)
    net, gen = demo_network().eval(), demo_generator().eval()
    fast_gen, fast_net = ppgn._for_sampling(copy.deepcopy(gen), net, "cpu")
    for target in (Target("fc8"), Target("fc6:pre"), Target("conv5:pre", (3, 3))):
        steps = []
        for g, c in ((gen, net), (fast_gen, fast_net)):
            sampler = Sampler(g, c, target, settings=Settings(eps3=0), code_dim=128, seed=2)
            batch = sampler.start([3, 7, 1], [0, 0, 1])
            fwd = sampler.forward(batch)
            steps.append((fwd, ppgn_update(batch, fwd, sampler.terms, 1.0, 30.0)))
        (want, h_want), (got, h_got) = steps
        torch.testing.assert_close(got.code, want.code, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.activation, want.activation, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4,
                                   atol=1e-5 * want.grad.abs().max().item())
        torch.testing.assert_close(h_got, h_want, rtol=1e-4, atol=1e-4)


# -- sampling units, workers, threads ------------------------------------------------------


def test_sample_units_is_reproducible_nested_and_order_free():
    units = list(range(40))
    drawn = ppgn.sample_units(units, 10, seed=3, layer="fc6")
    assert drawn == sorted(drawn) and len(set(drawn)) == 10 and set(drawn) <= set(units)
    assert ppgn.sample_units(units[::-1], 10, seed=3, layer="fc6") == drawn
    assert set(ppgn.sample_units(units, 5, seed=3, layer="fc6")) <= set(drawn)  # nested
    assert ppgn.sample_units(units, 10, seed=4, layer="fc6") != drawn  # the seed draws
    assert ppgn.sample_units(units, 40, seed=3, layer="fc6") == units
    with pytest.raises(ValueError, match="1..40"):
        ppgn.sample_units(units, 41, seed=3, layer="fc6")


@pytest.fixture
def cli_tiny_models(monkeypatch):
    """main() on the tiny models (fc6:pre has 4 units); torch's thread count restored."""
    *_, models = tiny_models()
    monkeypatch.setattr(ppgn, "load_models", lambda *args, **kwargs: models)
    threads = torch.get_num_threads()
    yield models
    torch.set_num_threads(threads)


def manifest_units(path):
    return [int(line.split(",")[2]) for line in path.read_text().splitlines()[1:]]


def test_cli_samples_units_with_the_seed(tmp_path, cli_tiny_models, capsys):
    common = ["--network", "demo", "--generator", "demo", "--layer", "fc6",
              "--images-per-unit", "1", "--steps", "2", "--quiet"]
    assert ppgn.main([*common, "--units", "0-3", "--sample", "2", "--seed", "5",
                      "--out", str(tmp_path / "a")]) == 0
    drawn = manifest_units(tmp_path / "a" / "manifest_fc6.csv")
    assert drawn == ppgn.sample_units(range(4), 2, seed=5, layer="fc6")
    settings = json.loads((tmp_path / "a" / "settings_fc6.json").read_text())
    assert settings["sample"] == {"k": 2, "of": 4, "units": "0-3", "asked": "2"}
    assert sorted(p.name for p in (tmp_path / "a" / "panels").iterdir()) == \
        [f"fc6_{u:04d}.jpg" for u in drawn]
    # the same command again: the same units; another K in that folder is refused
    assert ppgn.main([*common, "--units", "0-3", "--sample", "2", "--seed", "5",
                      "--out", str(tmp_path / "a")]) == 0
    assert manifest_units(tmp_path / "a" / "manifest_fc6.csv") == drawn
    assert ppgn.main([*common, "--units", "0-3", "--sample", "3", "--seed", "5",
                      "--out", str(tmp_path / "a")]) == 2
    assert "other settings (sample)" in capsys.readouterr().err
    # a share of the selected units: 50% of 4 are the 2 drawn above
    assert ppgn.main([*common, "--units", "0-3", "--sample", "50%", "--seed", "5",
                      "--out", str(tmp_path / "share")]) == 0
    assert manifest_units(tmp_path / "share" / "manifest_fc6.csv") == drawn
    # K larger than the selection, or no number, is an error
    assert ppgn.main([*common, "--units", "1,2", "--sample", "3",
                      "--out", str(tmp_path / "b")]) == 2
    assert "--sample 3: expected 1..2" in capsys.readouterr().err
    assert ppgn.main([*common, "--sample", "half", "--out", str(tmp_path / "c")]) == 2
    assert "--sample half: expected a number of units" in capsys.readouterr().err


def test_parse_sample():
    assert ppgn.parse_sample("64", 128) == 64
    assert ppgn.parse_sample("50%", 128) == 64 and ppgn.parse_sample("50%", 5) == 3
    assert ppgn.parse_sample("1%", 10) == 1 and ppgn.parse_sample("100%", 7) == 7
    for bad in ("0%", "150%", "x%", "1.5"):
        with pytest.raises(ValueError, match="--sample"):
            ppgn.parse_sample(bad, 10)


def test_cli_workers_follow_the_available_cpus(tmp_path, cli_tiny_models, monkeypatch, caplog):
    seen = []
    run = Sampler.run

    def spy(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        yield from run(self, *args, **kwargs)

    monkeypatch.setattr(Sampler, "run", spy)
    monkeypatch.setenv("SELECTIVITY_CPUS", "1")
    args = ["--network", "demo", "--generator", "demo", "--layer", "fc8", "--units", "all",
            "--images-per-unit", "4", "--batch-chains", "2", "--steps", "2", "--quiet"]
    with caplog.at_level("INFO", logger="generator.ppgn"):
        assert ppgn.main([*args, "--out", str(tmp_path / "one")]) == 0
    assert "1 worker(s) on 1 available CPU(s)" in caplog.text
    assert seen and set(seen) == {1}  # one intra-op thread while sampling
    assert "1 worker(s))" in caplog.text  # the log line of the run itself
    monkeypatch.setenv("SELECTIVITY_CPUS", "3")
    caplog.clear()
    with caplog.at_level("INFO", logger="generator.ppgn"):
        assert ppgn.main([*args, "--out", str(tmp_path / "more")]) == 0
    expected = min(3, len(os.sched_getaffinity(0)))
    assert f"{expected} worker(s) on {expected} available CPU(s)" in caplog.text
    assert set(seen) == {1}


def test_the_images_do_not_depend_on_the_number_of_workers(tmp_path):
    from generator.digits import demo_network
    from generator.digits_generator import demo_generator

    torch.manual_seed(3)  # weights do not matter here, the arithmetic does
    gen, net = ppgn._for_sampling(demo_generator(), demo_network(), "cpu")
    models = Models(net, gen, lambda x: x, 128, lambda x: (x.clamp(-1, 1) * 127 + 128).byte()
                    .permute(0, 2, 3, 1).numpy())
    files = {}
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        generate(models, "fc8", [1, 4, 7], out, images_per_unit=4, batch_chains=5,
                 settings=Settings(steps=3, eps3=1e-3), progress=False, workers=workers)
        files[workers] = {u: np.load(out / "units" / f"fc8_{u:04d}.npz")["images"]
                          for u in (1, 4, 7)}
    for u in (1, 4, 7):
        np.testing.assert_array_equal(files[1][u], files[3][u])


@pytest.mark.parametrize("d", [32, 20])  # a code size that is not a multiple of 16 too
def test_noise_drawn_ahead_is_the_stream_of_one_draw_per_step(d):
    rngs = [torch.Generator().manual_seed(s) for s in (1, 2)]
    batch = Batch(torch.zeros(2, d), torch.zeros(2), torch.zeros(2), rngs)
    batch.plan_noise(5)
    ahead = torch.stack([batch.standard_normal() for _ in range(7)])  # 5, then 2 more
    again = [torch.Generator().manual_seed(s) for s in (1, 2)]
    one_by_one = torch.stack([torch.stack([torch.randn(d, generator=g) for g in again])
                              for _ in range(7)])
    assert torch.equal(ahead, one_by_one)


# -- the networks as the sampler gets them -----------------------------------------------


def test_gradient_copy_computes_the_same_function_faster():
    from generator.digits import demo_network
    from generator.networks import (
        FastLocalResponseNorm,
        OneChannelConv2d,
        fast_copy,
        gradient_copy,
    )

    torch.manual_seed(0)
    net = demo_network().eval()
    x = torch.randn(6, 1, 32, 32)
    taps = ["conv5:pre", "fc6", "fc8"]
    fast = gradient_copy(net, channels_last=False)
    assert isinstance(fast.norm1, FastLocalResponseNorm) and isinstance(fast.conv1,
                                                                         OneChannelConv2d)
    assert not any(p.requires_grad for p in fast.parameters())
    assert all(p.requires_grad for p in net.parameters())  # the original is untouched
    trainable = fast_copy(demo_network().train())  # for training: mode and grads kept
    assert trainable.training and all(p.requires_grad for p in trainable.parameters())
    assert isinstance(trainable.conv1, OneChannelConv2d) and trainable.conv1.training
    with torch.no_grad():
        want, got = net(x, taps), fast(x, taps)
    for tap in taps:  # the replaced modules' forward passes give the same bits
        assert torch.equal(want[tap], got[tap]), tap
    fast_cl = gradient_copy(net)  # channels-last layouts: other kernels, the same values
    for model in (fast, fast_cl):
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        (ga,) = torch.autograd.grad(net(xa, ["fc8"])["fc8"][:, 3].sum(), xa)
        (gb,) = torch.autograd.grad(model(xb, ["fc8"])["fc8"][:, 3].sum(), xb)
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6 * ga.abs().max().item())


@pytest.mark.parametrize("size", [5, 4, 1])
def test_fast_lrn_has_the_gradient_of_the_definition(size):
    from generator.networks import FastLocalResponseNorm

    lrn = FastLocalResponseNorm(size, alpha=0.3, beta=0.75, k=1.5)  # large alpha: a real test
    x = torch.randn(2, 7, 3, 4, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(lrn(x), nn.LocalResponseNorm(size, 0.3, 0.75, 1.5)(x))
    assert torch.autograd.gradcheck(lrn, (x,))


@pytest.mark.parametrize("padding", [0, 1, 2])
def test_one_channel_conv_has_the_gradients_of_a_convolution(padding):
    from generator.networks import OneChannelConv2d

    conv = OneChannelConv2d(1, 4, 3, padding=padding).double()
    x = torch.randn(2, 1, 6, 7, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(conv(x), nn.functional.conv2d(x, conv.weight, conv.bias,
                                                             padding=padding))
    assert torch.autograd.gradcheck(conv, (x,))  # the input gradient, and the parameters':

    def with_parameters(x, weight, bias):
        return torch.func.functional_call(conv, {"weight": weight, "bias": bias}, (x,))

    weight = conv.weight.detach().clone().requires_grad_(True)
    bias = conv.bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(with_parameters, (x, weight, bias))
