"""Activation tables: round trip, chunk layout, and a clear error for every bad file."""

import h5py
import numpy as np
import pytest

from analysis.activations import (
    ActivationTableError,
    TableWriter,
    open_table,
    unit_chunk_width,
    write_table,
)


def small_table(path, n=300, k=4, units=(130, 10), seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    layers = {f"l{i}": rng.standard_normal((n, u)).astype(np.float32) for i, u in enumerate(units)}
    write_table(path, labels, [f"c{i}" for i in range(k)], layers, attrs={"network": "t"})
    return labels, layers


def test_round_trip_blocks_cover_every_unit_in_order(tmp_path):
    path = tmp_path / "t.h5"
    labels, layers = small_table(path)
    with open_table(path) as t:
        assert t.layers == ["l0", "l1"]  # writer's order, not HDF5's alphabetical one
        assert t.n_images == 300 and t.n_classes == 4
        np.testing.assert_array_equal(t.labels, labels)
        assert t.attrs["network"] == "t" and t.attrs["complete"]
        for name, data in layers.items():
            starts, blocks = zip(*t.iter_blocks(name, block_units=64), strict=True)
            np.testing.assert_array_equal(np.concatenate(blocks, axis=1), data)
            assert starts[0] == 0
            # every block but the last is a whole number of chunks wide
            assert all(b.shape[1] % t.chunk_units(name) == 0 for b in blocks[:-1])


def test_layer_order_survives_alphabetical_storage(tmp_path):
    path = tmp_path / "t.h5"
    write_table(path, [0, 1], ["a", "b"],
                {"fc8": np.zeros((2, 3)), "conv5": np.zeros((2, 2)), "fc6": np.zeros((2, 4))})
    with open_table(path) as t:
        assert t.layers == ["fc8", "conv5", "fc6"]


def test_chunks_are_unit_blocks_across_many_rows(tmp_path):
    path = tmp_path / "t.h5"
    small_table(path, n=300, units=(130, 10))
    with h5py.File(path) as f:
        assert f["layers/l0"].chunks == (300, 64)
        assert f["layers/l1"].chunks == (300, 10)
    assert unit_chunk_width(4096) == 64 and unit_chunk_width(3) == 3


def test_writer_appends_small_batches_and_flushes_whole_chunks(tmp_path):
    path = tmp_path / "t.h5"
    rng = np.random.default_rng(1)
    data = rng.standard_normal((1000, 5)).astype(np.float32)
    labels = rng.integers(0, 3, 1000)
    with TableWriter(path, ["a", "b", "c"], {"fc": 5}, extra_string_columns=["image_paths"]) as w:
        for i in range(0, 1000, 7):
            w.append(labels[i:i + 7], {"fc": data[i:i + 7]},
                     extra={"image_paths": [f"img{j}.jpg" for j in range(i, min(i + 7, 1000))]})
    with open_table(path) as t:
        np.testing.assert_array_equal(t.read_units("fc", 0, 5), data)
        assert t.dataset("image_paths")[999].decode() == "img999.jpg"


def test_writer_rejects_wrong_shapes(tmp_path):
    with TableWriter(tmp_path / "t.h5", ["a"], {"fc": 3}) as w:
        with pytest.raises(ValueError, match=r"layer fc: expected shape \(2, 3\)"):
            w.append([0, 0], {"fc": np.zeros((2, 4))})


def test_interrupted_write_is_marked_incomplete(tmp_path):
    path = tmp_path / "t.h5"
    with pytest.raises(RuntimeError):
        with TableWriter(path, ["a"], {"fc": 3}):
            raise RuntimeError("crash")
    with h5py.File(path) as f:
        assert not f.attrs["complete"]


def _mutate(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)


@pytest.mark.parametrize(
    "mutation, message",
    [
        (lambda f: f.__delitem__("labels"), r"/labels: missing"),
        (lambda f: f.__delitem__("class_names"), r"/class_names: missing"),
        (lambda f: f.__delitem__("layers"), r"/layers: missing"),
        (lambda f: (f.__delitem__("labels"), f.create_dataset("labels", data=np.zeros(299, "i4"))),
         r"/layers/l0: has 300 rows but /labels has 299"),
        (lambda f: f["labels"].__setitem__(5, 9), r"/labels: label 9 at row 5 is out of range"),
        (lambda f: f["labels"].__setitem__(0, -1), r"label -1 at row 0 is out of range"),
        (lambda f: (f.__delitem__("labels"), f.create_dataset("labels", data=np.zeros(300, "f4"))),
         r"/labels: must hold integers"),
        (lambda f: f["layers"].create_dataset("bad", data=np.zeros(300)), r"/layers/bad: must be 2-d"),
        (lambda f: f["layers"].create_dataset("ints", data=np.zeros((300, 2), "i4")),
         r"/layers/ints: must hold floats"),
    ],
)
def test_bad_files_fail_with_path_dataset_and_reason(tmp_path, mutation, message):
    path = tmp_path / "t.h5"
    small_table(path)
    _mutate(path, mutation)
    with pytest.raises(ActivationTableError, match=message) as err:
        open_table(path)
    assert str(path) in str(err.value)


def test_non_finite_values_named_on_read(tmp_path):
    path = tmp_path / "t.h5"
    small_table(path)
    _mutate(path, lambda f: f["layers/l0"].__setitem__((17, 70), np.nan))
    with open_table(path) as t:
        t.read_units("l0", 0, 64)  # unaffected block reads fine
        with pytest.raises(ActivationTableError, match=r"/layers/l0: 1 non-finite.*row 17, unit 70"):
            t.read_units("l0", 64, 128)
        with pytest.raises(ActivationTableError, match="non-finite"):
            t.check_values()


def test_missing_file_and_non_hdf5(tmp_path):
    with pytest.raises(ActivationTableError, match="no such file"):
        open_table(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(ActivationTableError, match="cannot be opened as an HDF5 file"):
        open_table(junk)


def test_unknown_layer_lists_the_real_ones(tmp_path):
    path = tmp_path / "t.h5"
    small_table(path)
    with open_table(path) as t, pytest.raises(ActivationTableError, match="has l0, l1"):
        t.n_units("fc9")


def test_cli_describes_and_checks(tmp_path, capsys):
    from analysis.activations import main as _main

    path = tmp_path / "t.h5"
    small_table(path)
    assert _main([str(path), "--check-values"]) == 0
    out = capsys.readouterr().out
    assert "300 images, 4 classes" in out and "all values finite" in out
    _mutate(path, lambda f: f["labels"].__setitem__(0, 99))
    assert _main([str(path)]) == 2
    assert "out of range" in capsys.readouterr().out
