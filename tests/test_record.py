"""Activation recording: real photos through CaffeNet, corrupt files, resume, shards,
virtual joins, ImageNet-style folders, and the table the selectivity engine reads."""

import shutil

import h5py
import numpy as np
import pytest
import torch

from analysis.activations import open_table
from generator import record as rec
from generator.images import ImageSetError, imagenet_classes, load_image_set
from generator.loading import load_network
from generator.networks import AUTHORS_PREPROCESSING
from generator.record import RecordError, main, record, reduce_activation


def write_csv(path, photos, extra=()):
    lines = ["path,label"] + [f"{p},{p.stem}" for p in photos] + list(extra)
    path.write_text("\n".join(lines) + "\n")
    return path


def table_arrays(path):
    with h5py.File(path) as f:
        return {name: f[name][()] for name in ("labels", "image_paths", "predictions",
                                                "input_index")} | {
            f"layers/{n}": f["layers"][n][()] for n in f["layers"]}


def assert_same_table(a, b):
    x, y = table_arrays(a), table_arrays(b)
    assert x.keys() == y.keys()
    for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=key)


FAST = dict(keep="all", batch_size=4, workers=0, progress=False, layers=("conv5", "fc6", "fc8"))


@pytest.fixture
def photos_csv(tmp_path, sample_photos):
    torch.manual_seed(0)  # random CaffeNet weights, the same in every run of a test
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    return write_csv(tmp_path / "images.csv", sample_photos[:10], [f"{bad},n01440764"])


def test_records_real_photos_and_skips_a_corrupt_file(tmp_path, photos_csv, sample_photos):
    out = tmp_path / "t.h5"
    torch.manual_seed(0)
    assert record("caffenet", str(photos_csv), out, segment_images=6, **FAST) == out
    with open_table(out) as t:
        assert t.layers == ["conv5", "fc6", "fc8"]
        assert t.n_images == 10 and t.n_classes == 1000
        wnids, _ = imagenet_classes()
        np.testing.assert_array_equal(t.labels, [wnids.index(p.stem) for p in sample_photos[:10]])
        assert t.attrs["network"] == "caffenet" and t.attrs["n_skipped"] == 1
        assert t.layer_info("conv5").attrs["reduction"] == "max"
        assert t.dataset("skipped_images")[0].decode().endswith("broken.jpg")
        assert "UnidentifiedImageError" in t.dataset("skipped_errors")[0].decode()
        conv5 = t.read_units("conv5", 0, 256)
    assert not (tmp_path / "t.h5.parts").exists()  # copied into one file, parts removed
    # conv5 is the per-channel spatial max of the tap, computed here directly
    torch.manual_seed(0)
    model, spec, _ = load_network("caffenet")
    from PIL import Image

    assert spec.preprocessing is AUTHORS_PREPROCESSING   # how the paper's authors recorded
    x = torch.stack([AUTHORS_PREPROCESSING(Image.open(p)) for p in sample_photos[:4]])
    with torch.inference_mode():
        direct = model(x, ["conv5"])["conv5"].amax(dim=(2, 3)).numpy()
    np.testing.assert_allclose(conv5[:4], direct, rtol=1e-5, atol=1e-5)


def test_an_interrupted_run_resumes_to_the_same_table(tmp_path, photos_csv, monkeypatch):
    whole = tmp_path / "whole.h5"
    torch.manual_seed(0)
    record("caffenet", str(photos_csv), whole, segment_images=3, **FAST)

    out = tmp_path / "resumed.h5"
    writes = {"n": 0}
    original = rec._SegmentBuffer.write

    def crash_after_two(self, *args, **kwargs):
        if writes["n"] == 2:
            raise KeyboardInterrupt  # the process dies while recording segment 3
        writes["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rec._SegmentBuffer, "write", crash_after_two)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        record("caffenet", str(photos_csv), out, segment_images=3, **FAST)
    assert not out.exists()
    assert len(list((tmp_path / "resumed.h5.parts").glob("seg-*.h5"))) == 2
    monkeypatch.setattr(rec._SegmentBuffer, "write", original)
    torch.manual_seed(0)
    record("caffenet", str(photos_csv), out, segment_images=3, **FAST)
    assert_same_table(whole, out)


def test_changed_settings_do_not_mix_with_old_segments(tmp_path, photos_csv):
    out = tmp_path / "t.h5"
    parts = tmp_path / "t.h5.parts"
    parts.mkdir()
    (parts / "manifest.json").write_text('{"reduction": "mean"}')
    with pytest.raises(RecordError, match="other settings.*reduction"):
        record("caffenet", str(photos_csv), out, segment_images=3, **FAST)


def test_shards_join_virtually_to_the_single_run_table(tmp_path, photos_csv):
    single = tmp_path / "single.h5"
    torch.manual_seed(0)
    record("caffenet", str(photos_csv), single, segment_images=4, **FAST)
    out = tmp_path / "sharded.h5"
    results = []
    for i in range(3):
        torch.manual_seed(0)
        results.append(record("caffenet", str(photos_csv), out, segment_images=4,
                              shard=(i, 3), join="virtual", **FAST))
    assert results[:2] == [None, None] and results[2] == out
    with h5py.File(out) as f:
        assert f["layers/fc6"].is_virtual and f.attrs["joined"] == "virtual"
    assert_same_table(single, out)
    with open_table(out) as t:
        assert t.chunk_units("fc6") == 64  # the engine still reads whole-chunk blocks


def test_imagenet_style_folder_uses_the_standard_class_indices(tmp_path, sample_photos):
    root = tmp_path / "val"
    for photo in (sample_photos[3], sample_photos[500]):
        (root / photo.stem).mkdir(parents=True)
        shutil.copy(photo, root / photo.stem / "a.JPEG")
    images = load_image_set(str(root))
    assert images.labels.tolist() == [3, 500] and len(images.class_names) == 1000
    other = tmp_path / "other"
    for name in ("cats", "dogs"):
        (other / name).mkdir(parents=True)
        shutil.copy(sample_photos[0], other / name / "x.jpg")
    images = load_image_set(str(other))
    assert images.class_names == ["cats", "dogs"] and images.labels.tolist() == [0, 1]


def test_bad_image_sets_are_explained(tmp_path):
    with pytest.raises(ImageSetError, match="not a folder"):
        load_image_set(str(tmp_path / "nothing"))
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nx.jpg,not-a-class\n")
    with pytest.raises(ImageSetError, match=r"line 2: label 'not-a-class'"):
        load_image_set(str(bad))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageSetError, match="no class sub-folders"):
        load_image_set(str(tmp_path / "empty"))


def test_reduce_activation_by_hand():
    t = torch.tensor([[[[1.0, -2.0], [3.0, 0.0]], [[-1.0, -1.0], [-1.0, -5.0]]]])
    assert reduce_activation(t, "max").tolist() == [[3.0, -1.0]]
    assert reduce_activation(t, "mean").tolist() == [[0.5, -2.0]]
    flat = torch.ones(2, 3)
    assert reduce_activation(flat) is flat


def test_cli_errors(tmp_path, photos_csv, capsys):
    out = tmp_path / "t.h5"
    out.write_text("")
    assert main(["--network", "caffenet", "--images", str(photos_csv), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["--network", "vgg", "--images", str(photos_csv),
                 "--out", str(tmp_path / "u.h5")]) == 2
    assert "unknown network 'vgg'" in capsys.readouterr().err
    assert main(["--network", "caffenet", "--images", str(photos_csv), "--layers", "fc9",
                 "--out", str(tmp_path / "u.h5")]) == 2
    assert "no tap(s) ['fc9']" in capsys.readouterr().err


def test_demo_network_over_digits_gives_a_table_the_engine_reads(tmp_path):
    from analysis.selectivity import compute

    out = tmp_path / "digits.h5"
    assert main(["--network", "demo", "--images", "digits:test", "--out", str(out),
                 "--quiet"]) == 0
    with open_table(out) as t:
        assert t.class_names == [str(d) for d in range(10)]
        assert t.layers == ["conv5", "fc6", "fc7", "fc8", "prob"]
        assert 0.97 * 359 <= t.n_images < 359  # only correctly classified test digits
        np.testing.assert_array_equal(t.dataset("predictions")[()], t.labels)
    df = compute(out, progress=False)
    assert len(df) == 32 + 128 + 128 + 10 + 10
    fc8 = df[df.layer == "fc8"]
    # the output units are the classes: each is most selective for its own digit
    assert (fc8.ccmas_class.to_numpy() == np.arange(10)).all()
    assert (fc8.top_class.to_numpy() == np.arange(10)).all()


def test_only_one_process_joins(tmp_path, photos_csv):
    out = tmp_path / "t.h5"
    torch.manual_seed(0)
    record("caffenet", str(photos_csv), out, segment_images=6, shard=(0, 2), **FAST)
    torch.manual_seed(0)
    record("caffenet", str(photos_csv), out, segment_images=6, shard=(1, 2), **FAST)
    assert out.exists()
    again = tmp_path / "u.h5"
    torch.manual_seed(0)
    record("caffenet", str(photos_csv), again, segment_images=6, shard=(0, 2), **FAST)
    (tmp_path / "u.h5.parts" / "join.lock").write_text("")  # another shard is joining
    torch.manual_seed(0)
    assert record("caffenet", str(photos_csv), again, segment_images=6, shard=(1, 2),
                  **FAST) is None
    assert not again.exists()
    with pytest.raises(rec.JoinInProgress, match="another process is joining"):
        rec.join_segments(again)


def test_the_cli_uses_the_cpus_this_process_may_use(tmp_path):
    """Threads follow common.cpus.available_cpus(): $SELECTIVITY_CPUS, or the affinity
    mask (what taskset sets), not the machine's core count."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    lines = ["path,label"]
    for i in range(2):
        path = tmp_path / f"image{i}.png"
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(path)
        lines.append(f"{path},n01440764")
    (tmp_path / "images.csv").write_text("\n".join(lines) + "\n")

    def run(name, env, preexec_fn=None):
        cmd = [sys.executable, "-m", "generator.record", "--network", "caffenet", "--images",
               str(tmp_path / "images.csv"), "--out", str(tmp_path / f"{name}.h5"), "--keep",
               "all", "--layers", "fc8", "--workers", "0", "--quiet"]
        done = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], env=env,
                              preexec_fn=preexec_fn, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stderr

    env = {k: v for k, v in os.environ.items() if k != "SELECTIVITY_CPUS"}
    one = "recording with 1 intra-op thread(s) and 0 decoding process(es) on 1 available CPU(s)"
    assert one in run("env", {**env, "SELECTIVITY_CPUS": "1"})
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) > 1:
        assert one in run("taskset", env, lambda: os.sched_setaffinity(0, cpus[:1]))
