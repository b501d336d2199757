"""The embedded demo (generator/digits.py): digits data and split, the demo network's
and the independent classifier's taps, their accuracy, deterministic training, the
weights cache and the file preprocessing."""

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common import files
from generator import digits
from generator.digits import (
    DEMO_PREPROCESSING,
    DIGIT_CLASS_NAMES,
    DIGITS_MEAN,
    DIGITS_STD,
    cached_weights_path,
    demo_network,
    evaluate,
    independent_network,
    load_digits_raw,
    load_digits_tensors,
    to_pil_image,
    train_demo_network,
    trained_demo_network,
    trained_independent_network,
)
from generator.loading import get_spec, load_network


@pytest.fixture(scope="session")
def held_out():
    return load_digits_tensors("test")


@pytest.fixture(scope="session")
def net_a():
    """The default network, trained once (or taken from the project cache)."""
    return trained_demo_network()


@pytest.fixture(scope="session")
def net_b():
    return trained_independent_network()


def cheap_training(**kwargs):
    """train_demo_network cut to a few steps, for tests of the cache."""
    real = train_demo_network

    def train(seed=None, **kw):
        return real(seed, **{**kw, "steps": 3, **kwargs})

    return train


# -- data ------------------------------------------------------------------------------


def test_digits_shapes_range_and_normalisation():
    x, y = load_digits_tensors("all")
    assert x.shape == (1797, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert DIGIT_CLASS_NAMES == tuple("0123456789")
    assert sorted(y.unique().tolist()) == list(range(10))
    # the hard-coded constants are those of the data, to the rounding
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-3
    raw, raw_y = load_digits_raw("all")
    assert raw.shape == (1797, 8, 8) and raw.min() == 0 and raw.max() == 16
    np.testing.assert_array_equal(raw_y, y.numpy())


def test_split_is_stratified_disjoint_and_deterministic():
    _, y_all = load_digits_raw("all")
    raw_tr, y_tr = load_digits_raw("train")
    raw_te, y_te = load_digits_raw("test")
    assert len(y_tr) + len(y_te) == len(y_all)
    counts_all, counts_te = np.bincount(y_all), np.bincount(y_te, minlength=10)
    np.testing.assert_array_equal(counts_te, np.round(0.2 * counts_all))
    # disjoint and covering: every image once (images are distinct enough to tell apart)
    keys = {r.tobytes() for r in raw_tr} | {r.tobytes() for r in raw_te}
    assert len(keys) == len({r.tobytes() for r in load_digits_raw("all")[0]})
    np.testing.assert_array_equal(load_digits_raw("test")[0], raw_te)
    other = load_digits_raw("test", seed=1)[0]
    assert not np.array_equal(other, raw_te)
    with pytest.raises(ValueError, match="split"):
        load_digits_raw("validation")


# -- networks --------------------------------------------------------------------------


def test_tap_names_and_shapes():
    a = demo_network().layer_shapes()
    assert a == {
        "conv1:pre": (16, 28, 28), "conv1": (16, 28, 28),
        "conv2:pre": (32, 14, 14), "conv2": (32, 14, 14),
        "conv3:pre": (48, 7, 7), "conv3": (48, 7, 7),
        "conv4:pre": (48, 7, 7), "conv4": (48, 7, 7),
        "conv5:pre": (32, 7, 7), "conv5": (32, 7, 7),
        "pool5": (32, 3, 3),
        "fc6:pre": (128,), "fc6": (128,), "fc7:pre": (128,), "fc7": (128,),
        "fc8": (10,), "prob": (10,),
    }
    b = independent_network().layer_shapes()
    assert list(b) == list(a)
    assert b["conv5"] == (24, 8, 8) and b["fc6"] == (96,) and b["fc8"] == (10,)
    assert demo_network().input_shape == independent_network().input_shape == (1, 32, 32)


def test_taps_read_before_and_after_relu():
    torch.manual_seed(0)
    net = demo_network().eval()
    x = torch.randn(2, 1, 32, 32)
    out = net(x, taps=("conv5:pre", "conv5", "fc6:pre", "fc6", "fc8", "prob"))
    torch.testing.assert_close(out["conv5"], out["conv5:pre"].clamp_min(0))
    torch.testing.assert_close(out["fc6"], out["fc6:pre"].clamp_min(0))
    torch.testing.assert_close(out["prob"], out["fc8"].softmax(1))
    assert (out["conv5:pre"] < 0).any()  # not overwritten by an in-place ReLU


def test_the_registry_builds_the_demo():
    spec = get_spec("demo")
    assert spec.preprocessing == DEMO_PREPROCESSING and spec.classes == "digits"
    assert spec.build().layer_shapes()["fc8"] == (10,)


# -- training, accuracy, cache ---------------------------------------------------------


def test_held_out_accuracy(net_a, held_out):
    model, checksum = net_a
    assert not model.training and len(checksum) == 64
    assert evaluate(model, *held_out) >= 0.97


def test_independent_classifier_accuracy(net_a, net_b, held_out):
    model_b, checksum_b = net_b
    assert evaluate(model_b, *held_out) >= 0.95
    assert checksum_b != net_a[1]
    assert cached_weights_path("b", 1).name == "demo_net_b_seed1.pt"


def test_the_cache_is_used_the_second_time(net_a, monkeypatch, caplog):
    model, checksum = net_a
    path = cached_weights_path("a", 0)
    assert checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    metrics = json.loads(path.with_suffix(".json").read_text())
    assert metrics["seed"] == 0 and metrics["held_out_accuracy"] >= 0.97
    assert {"seconds", "torch_version"} <= set(metrics)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(digits, "train_demo_network", no_training)
    with caplog.at_level(logging.INFO, logger="generator.digits"):
        again, checksum2 = trained_demo_network()
    assert checksum2 == checksum and "loaded cached weights" in caplog.text
    for key, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0)
    loaded, spec, checksum3 = load_network("demo")
    assert checksum3 == checksum and spec.name == "demo"
    assert not any(p.requires_grad for p in loaded.parameters())


def test_cache_round_trip_in_a_fresh_folder(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(digits, "train_demo_network", cheap_training())
    with caplog.at_level(logging.INFO, logger="generator.digits"):
        first, checksum = trained_demo_network(seed=5, cache_dir=tmp_path)
    assert "training" in caplog.text
    path = tmp_path / "demo" / "demo_net_seed5.pt"
    assert path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == checksum
    metrics = json.loads(path.with_suffix(".json").read_text())
    assert metrics["seed"] == 5 and metrics["steps"] == 3
    assert {"held_out_accuracy", "seconds", "torch_version", "architecture"} <= set(metrics)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]

    monkeypatch.setattr(digits, "train_demo_network", None)  # a second training would fail
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="generator.digits"):
        second, checksum2 = trained_demo_network(seed=5, cache_dir=tmp_path)
    assert checksum2 == checksum and "loaded cached weights" in caplog.text
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value)


def test_the_cache_records_what_trained_the_network(tmp_path, monkeypatch):
    """Training is deterministic per machine, not across CPU kinds: the JSON says which."""
    monkeypatch.setattr(digits, "train_demo_network", cheap_training())
    trained_demo_network(seed=6, cache_dir=tmp_path)
    metrics = json.loads((tmp_path / "demo" / "demo_net_seed6.json").read_text())
    env = metrics["trained_on"]
    assert env == {**digits.training_environment(metrics["threads"]), "threads": env["threads"]}
    assert env["torch_version"] == torch.__version__
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["machine"] and env["python_version"] and env["numpy_version"] == np.__version__
    assert env["threads"] == metrics["threads"] >= 1
    if Path("/proc/cpuinfo").is_file():  # Linux: the model and its SIMD features
        assert env["cpu_model"] and isinstance(env["cpu_flags"], list)


def test_cpuinfo_parsing(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n"
                    "flags\t\t: fpu sse4_2 avx avx2 fma bmi2\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu\n")
    assert digits._cpuinfo(info) == ("AMD EPYC 7B13", ["sse4_2", "avx", "avx2", "fma"])
    assert digits._cpuinfo(tmp_path / "missing") == (None, None)


def test_an_old_cache_without_the_training_environment_still_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(digits, "train_demo_network", cheap_training())
    first, checksum = trained_independent_network(seed=4, cache_dir=tmp_path)
    meta = tmp_path / "demo" / "demo_net_b_seed4.json"
    old = {k: v for k, v in json.loads(meta.read_text()).items() if k != "trained_on"}
    meta.write_text(json.dumps(old))  # as written before the key existed
    monkeypatch.setattr(digits, "train_demo_network", None)  # a second training would fail
    again, checksum2 = trained_independent_network(seed=4, cache_dir=tmp_path)
    assert checksum2 == checksum
    assert all(torch.equal(again.state_dict()[k], v) for k, v in first.state_dict().items())
    assert "trained_on" not in json.loads(meta.read_text())  # loading does not rewrite it


def test_environment_variable_moves_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELECTIVITY_CACHE", str(tmp_path))
    assert files.cache_dir() == tmp_path
    assert cached_weights_path("a", 3) == tmp_path / "demo" / "demo_net_seed3.pt"
    monkeypatch.delenv("SELECTIVITY_CACHE")
    assert files.cache_dir().name == ".cache"
    assert (files.cache_dir().parent / "generator" / "digits.py").exists()


@pytest.mark.parametrize("bad", [b"not a state dict", "architecture"])
def test_an_unusable_cache_is_trained_again(tmp_path, monkeypatch, caplog, bad):
    monkeypatch.setattr(digits, "train_demo_network", cheap_training())
    path = tmp_path / "demo" / "demo_net_b_seed1.pt"
    if bad == "architecture":
        trained_independent_network(cache_dir=tmp_path)
        meta = path.with_suffix(".json")
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "architecture": "other"}))
    else:
        path.parent.mkdir(parents=True)
        path.write_bytes(bad)
    with caplog.at_level(logging.WARNING, logger="generator.digits"):
        model, checksum = trained_independent_network(cache_dir=tmp_path)
    assert "training again" in caplog.text
    assert checksum == hashlib.sha256(path.read_bytes()).hexdigest()


def test_training_is_deterministic_and_leaves_global_state_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    threads = torch.get_num_threads()
    one, m1 = train_demo_network(0, steps=4)
    two, _ = train_demo_network(0, steps=4)
    other, _ = train_demo_network(1, steps=4)
    s1, s2, s3 = one.state_dict(), two.state_dict(), other.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    assert m1["steps"] == 4 and not one.training
    b1, _ = train_demo_network(variant="b", steps=3)
    b2, mb = train_demo_network(variant="b", steps=3)
    assert mb["seed"] == 1 and all(torch.equal(v, b2.state_dict()[k])
                                   for k, v in b1.state_dict().items())
    with pytest.raises(ValueError, match="variant"):
        train_demo_network(variant="c", steps=1)


# -- preprocessing ---------------------------------------------------------------------


def test_preprocessing_of_a_png_gives_back_the_tensor(tmp_path, held_out):
    images, _ = held_out
    quantum = 0.5 / 255 / DIGITS_STD  # 8-bit rounding, in input units
    for i in range(0, 50, 7):
        path = tmp_path / f"digit{i}.png"
        to_pil_image(images[i]).save(path)
        with Image.open(path) as img:
            assert img.mode == "L" and img.size == (32, 32)
            x = DEMO_PREPROCESSING(img)
        assert x.shape == (1, 32, 32) and x.dtype == torch.float32
        assert (x - images[i]).abs().max().item() <= quantum + 1e-6


def test_preprocessing_of_a_raw_8x8_png_matches_the_upsampling(tmp_path, held_out):
    # PIL's bilinear upscaling is the same interpolation as the tensors' (align_corners=False)
    images, _ = held_out
    raw, _ = load_digits_raw("test")
    for i in range(0, 50, 7):
        path = tmp_path / f"raw{i}.png"
        Image.fromarray(np.round(raw[i] * 255 / 16).astype(np.uint8)).save(path)
        with Image.open(path) as img:
            x = DEMO_PREPROCESSING(img)
        assert (x - images[i]).abs().max().item() <= 1.5 / 255 / DIGITS_STD
    assert DEMO_PREPROCESSING.mean == (DIGITS_MEAN,) and DEMO_PREPROCESSING.channels == "L"


def test_torch_in_the_tests_own_process_uses_the_cpus_it_may():
    # set by the conftest fixture once torch is imported (this module imports it)
    from common.cpus import available_cpus

    assert torch.get_num_threads() == available_cpus()
