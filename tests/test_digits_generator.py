"""The embedded default's PPGN generator (generator/digits_generator.py): output shape and range, reconstructions the
demo network recognises, deterministic training, the cache, the AM measurement."""

import hashlib
import json
import logging

import pytest
import torch

from generator import digits, digits_generator
from generator.digits import demo_network, load_digits_tensors, trained_demo_network
from generator.digits_generator import (
    CODE_MAX,
    CODE_SIZE,
    OUTPUT_HIGH,
    OUTPUT_LOW,
    cached_generator_path,
    evaluate_am,
    evaluate_reconstruction,
    train_demo_generator,
    trained_demo_generator,
)


@pytest.fixture(scope="session")
def net_a():
    return trained_demo_network()


@pytest.fixture(scope="session")
def gen():
    """The default generator, trained once (or taken from the project cache)."""
    return trained_demo_generator()


def cheap_training(**kwargs):
    """train_demo_generator cut to a few steps, without the AM measurement."""
    real = train_demo_generator

    def train(seed=0, **kw):
        return real(seed, **{**kw, "steps": 3, "am_chains_per_class": 0, **kwargs})

    return train


# -- the architecture ------------------------------------------------------------------


def test_output_shape_and_range():
    torch.manual_seed(0)
    g = digits_generator.demo_generator().eval()
    codes = torch.cat([torch.zeros(1, CODE_SIZE), torch.full((1, CODE_SIZE), CODE_MAX),
                       torch.rand(6, CODE_SIZE) * CODE_MAX, 1e4 * torch.randn(2, CODE_SIZE)])
    with torch.no_grad():
        out = g(codes)
    assert out.shape == (10, 1, 32, 32) and out.dtype == torch.float32
    assert out.min() >= OUTPUT_LOW and out.max() <= OUTPUT_HIGH
    # the range is that of real pixels 0 and 1, normalised as the network's input
    x, _ = load_digits_tensors("all")
    assert x.min().item() == pytest.approx(OUTPUT_LOW, abs=1e-5)
    assert x.max().item() == pytest.approx(OUTPUT_HIGH, abs=1e-5)
    assert g.code_size == net_fc6_size() and g.output_shape == (1, 32, 32)


def net_fc6_size():
    return demo_network().layer_shapes(["fc6"])["fc6"][0]


def test_trained_generator_output_range(gen):
    g, _ = gen
    assert not g.training
    with torch.no_grad():
        out = g(torch.rand(16, CODE_SIZE) * CODE_MAX)
    assert out.shape == (16, 1, 32, 32)
    assert out.min() >= OUTPUT_LOW and out.max() <= OUTPUT_HIGH


# -- quality ---------------------------------------------------------------------------


def test_reconstructions_of_held_out_digits_are_recognised(gen, net_a):
    (g, _), (net, _) = gen, net_a
    x, y = load_digits_tensors("test")
    result = evaluate_reconstruction(g, net, x, y)
    assert result["accuracy"] >= 0.90
    assert result["code_rel_mse"] < 0.1
    assert not g.training and not net.training


def test_am_measurement_runs_and_restores_the_caller(gen, net_a):
    (g, _), (net, _) = gen, net_a
    second = independent_network_untrained()
    state = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    result = evaluate_am(g, net, second, steps=3, chains_per_class=2, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.get_num_threads() == threads
    assert 0 <= result["agreement"] <= 1 and 0 <= result["agreement_second"] <= 1
    assert len(result["agreement_per_class"]) == 10
    assert result["images"].shape == (20, 1, 32, 32)
    assert not g.training and not net.training and second.training
    again = evaluate_am(g, net, second, steps=3, chains_per_class=2, seed=1)
    assert torch.equal(again["images"], result["images"])
    with pytest.raises(ValueError, match="init"):
        evaluate_am(g, net, second, steps=1, chains_per_class=1, init="gaussian")


def independent_network_untrained():
    torch.manual_seed(0)
    return digits.independent_network().train()


@pytest.mark.slow
def test_am_images_are_recognised_by_both_classifiers(gen, net_a):
    """The acceptance figures, on a quarter of the chains (the full run: ~20 s)."""
    (g, _), (net, _) = gen, net_a
    second, _ = digits.trained_independent_network()
    result = evaluate_am(g, net, second, steps=200, chains_per_class=5, eps1=1e-5, lr=1.0)
    assert result["agreement"] >= 0.95
    assert result["agreement_second"] >= 0.6


# -- training and the cache ------------------------------------------------------------


def test_training_is_deterministic_and_restores_the_caller():
    torch.manual_seed(0)
    net = demo_network().eval()
    settings = dict(network=net, steps=3, batch_size=16, perturbed_share=0.5,
                    adversarial_weight=0.02, adversarial_start=1, am_chains_per_class=0)
    state = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    first, metrics = train_demo_generator(7, **settings)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert not first.training and metrics["steps"] == 3 and "adversarial" in metrics["final_losses"]
    assert all(p.requires_grad for p in net.parameters())  # the caller's network is untouched
    second, _ = train_demo_generator(7, **settings)
    other, _ = train_demo_generator(8, **settings)
    a, b, c = first.state_dict(), second.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_the_weights_do_not_depend_on_how_many_parts_run_at_once():
    """Each batch's parts are computed apart and summed in order: one worker or two,
    the same weights (and the same AM measurement)."""
    torch.manual_seed(0)
    net = demo_network().eval()
    settings = dict(network=net, steps=3, batch_size=16, perturbed_share=0.5,
                    adversarial_weight=0.02, adversarial_start=1, am_chains_per_class=0)
    one, metrics = train_demo_generator(7, workers=1, **settings)
    two, _ = train_demo_generator(7, workers=2, **settings)
    a, b = one.state_dict(), two.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metrics["batch_parts"] == 2 and metrics["threads"] == 1
    second = independent_network_untrained()
    am = [evaluate_am(one, net, second, steps=2, chains_per_class=3, workers=w)["images"]
          for w in (1, 2)]
    assert torch.equal(am[0], am[1])


def test_cache_path():
    assert cached_generator_path(0).name == "demo_generator_seed0.pt"
    assert cached_generator_path(3, "/x") == cached_generator_path(3, "/x/")
    assert cached_generator_path(3, "/x").parent.name == "demo"


def test_the_cache_is_used_the_second_time(gen, monkeypatch, caplog):
    _, checksum = gen
    path = cached_generator_path(0)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == checksum
    metrics = json.loads(path.with_suffix(".json").read_text())
    assert metrics["held_out_reconstruction_accuracy"] >= 0.9
    assert metrics["network_sha256"] == trained_demo_network()[1]

    def no_training(*args, **kwargs):
        raise AssertionError("the cached generator should have been loaded")

    monkeypatch.setattr(digits_generator, "train_demo_generator", no_training)
    with caplog.at_level(logging.INFO, logger="generator.digits_generator"):
        g2, checksum2 = trained_demo_generator()
    assert checksum2 == checksum and "loaded cached weights" in caplog.text
    assert not g2.training


@pytest.fixture
def fake_network(monkeypatch):
    """digits.trained_demo_network replaced by an untrained network with a settable checksum."""
    torch.manual_seed(0)
    net = demo_network().eval()
    current = {"sha": "a" * 64}
    monkeypatch.setattr(digits, "trained_demo_network",
                        lambda seed=0, cache_dir=None: (net, current["sha"]))
    monkeypatch.setattr(digits, "trained_independent_network",
                        lambda seed=1, cache_dir=None: (net, "c" * 64))
    return current


def test_cache_round_trip_and_retraining(tmp_path, monkeypatch, caplog, fake_network):
    monkeypatch.setattr(digits_generator, "train_demo_generator", cheap_training())
    with caplog.at_level(logging.INFO, logger="generator.digits_generator"):
        first, checksum = trained_demo_generator(seed=5, cache_dir=tmp_path)
    path = tmp_path / "demo" / "demo_generator_seed5.pt"
    assert path.exists() and "training" in caplog.text
    assert json.loads(path.with_suffix(".json").read_text())["network_sha256"] == "a" * 64
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="generator.digits_generator"):
        second, checksum2 = trained_demo_generator(seed=5, cache_dir=tmp_path)
    assert checksum2 == checksum and "loaded cached weights" in caplog.text
    a, b = first.state_dict(), second.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # weights of another demo network make the cache stale
    fake_network["sha"] = "b" * 64
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="generator.digits_generator"):
        trained_demo_generator(seed=5, cache_dir=tmp_path)
    assert "made for another network_sha256" in caplog.text
    assert json.loads(path.with_suffix(".json").read_text())["network_sha256"] == "b" * 64
    # an unreadable file is trained again
    path.write_bytes(b"not a state dict")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="generator.digits_generator"):
        g, checksum3 = trained_demo_generator(seed=5, cache_dir=tmp_path)
    assert "unusable" in caplog.text
    assert hashlib.sha256(path.read_bytes()).hexdigest() == checksum3
