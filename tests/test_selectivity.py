"""The selectivity engine: the paper's synthetic cases, agreement with the per-unit
reference on hard random tables, and the streaming, sharded, parallel CLI."""

import numpy as np
import pandas as pd
import pytest

from analysis import selectivity
from analysis._reference import reference_measures
from analysis.activations import write_table
from analysis.selectivity import (
    BASIC_COLUMNS,
    COLUMNS,
    SIGNAL_DETECTION_COLUMNS,
    compute,
    main,
    parse_shard,
    unit_measures,
)


def assert_frames_match(got: pd.DataFrame, want: pd.DataFrame, columns=None) -> None:
    columns = columns or [c for c in want.columns if c in got.columns]
    assert len(got) == len(want)
    for col in columns:
        g, w = got[col].to_numpy(), want[col].to_numpy()
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g.astype(float), w, rtol=1e-9, atol=1e-12,
                                       equal_nan=True, err_msg=col)
        else:
            bad = np.flatnonzero(g != w)
            assert not len(bad), f"{col}: units {bad[:5]} got {g[bad[:5]]}, want {w[bad[:5]]}"


def paper_cases() -> tuple[np.ndarray, np.ndarray]:
    """docs/measures.md / Fig. A4: 10 classes of 100 images, three units."""
    y = np.repeat(np.arange(10), 100)
    a = np.zeros((1000, 3), np.float32)
    a[0, 0] = 1.0                       # (a) one active image
    a[:100, 1] = 1.0                    # (b) class 0 on, everything else off
    a[:, 2] = 0.8                       # (c) every class active ...
    a[300:400, 2] = 0.9                 #     ... class 3 0.1 higher and separated
    return a, y


def test_paper_fig_a4_cases():
    a, y = paper_cases()
    df = unit_measures(a, y, 10)
    (ua, ub, uc) = (df.iloc[i] for i in range(3))
    # (a): CCMAS 1, precision 10.8% (one image + 99 of 999 tied slots), TCS 1%
    assert ua.ccmas == 1.0
    assert ua.precision_100 == pytest.approx((1 + 99 * 99 / 999) / 100)
    assert round(100 * ua.precision_100, 1) == 10.8
    assert ua.tcs == 0.01 and ua.top_cluster_size == 1
    # (b): CCMAS 1, precision 100%, TCS 100% (= localist on)
    assert (ub.ccmas, ub.precision_100, ub.tcs, ub.localist) == (1.0, 1.0, 1.0, "on")
    # (c): CCMAS (0.9 - 0.8) / (0.9 + 0.8) = 0.0588 ("about 0.06"), precision and TCS 100%
    mu_a, mu_rest = float(np.float32(0.9)), float(np.float32(0.8))
    assert uc.ccmas == pytest.approx((mu_a - mu_rest) / (mu_a + mu_rest), rel=1e-12)
    assert round(uc.ccmas, 2) == 0.06
    assert (uc.precision_100, uc.tcs, uc.ccmas_class, uc.top_class) == (1.0, 1.0, 3, 3)


def test_dead_unit_and_all_tied_unit():
    y = np.repeat(np.arange(4), [5, 1, 3, 7])  # uneven classes, one with a single image
    a = np.zeros((16, 2), np.float32)
    a[:, 1] = 0.5
    dead, tied = (unit_measures(a, y, 4).iloc[i] for i in range(2))
    assert np.isnan(dead.ccmas) and dead.dead
    assert (dead.localist, dead.localist_class, dead.top_cluster_size) == ("", -1, 0)
    assert (dead.max_informedness, dead.max_informedness_class) == (0.0, 0)
    # every image ties: CCMAS 0, no top cluster, precision = the largest class share
    assert tied.ccmas == 0.0 and not tied.dead and tied.tcs == 0.0
    assert tied.precision_60 == pytest.approx(7 / 16) and tied.precision_60_class == 3
    assert tied.max_informedness == 0.0


def test_negative_activations_give_ccmas_above_one():
    y = np.repeat([0, 1], 2)
    a = np.array([1.0, 1.0, -0.5, -0.5], np.float32)
    r = unit_measures(a, y, 2).iloc[0]
    assert r.ccmas == pytest.approx((1 - -0.5) / (1 + -0.5))  # 3.0, kept as the paper does
    assert (r.localist, r.localist_class) == ("on", 0)


def random_table(seed: int, n: int, k: int, u: int) -> tuple[np.ndarray, np.ndarray]:
    """Units with every awkward case: quantised values (ties), ReLU zeros, negatives,
    a dead unit, a constant unit, a planted localist unit, an absent class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    y[y == k - 2] = 0            # class k-2 has no images
    y[0], y[1] = k - 1, 1        # class k-1 has a single image (and class 1 exists)
    y[2:] = np.where(y[2:] == k - 1, 0, y[2:])
    a = rng.standard_normal((n, u)).astype(np.float32)
    a[:, 0::4] = np.round(a[:, 0::4] * 2) / 2                    # heavy ties
    a[:, 1::4] = np.maximum(a[:, 1::4], 0)                       # ReLU zeros
    a[:, 2::4] = np.maximum(np.round(a[:, 2::4] * 3) - 4, 0)     # mostly zero, few values
    a[:, 3] = 0.0                                                # dead
    a[:, 5] = -1.25                                              # constant negative
    a[:, 6] = np.where(y == 1, 2.0 + rng.random(n), rng.random(n))  # localist on, class 1
    a[:, 7] = np.where(y == 2, -3.0, rng.random(n))              # localist off, class 2
    return a, y


@pytest.mark.parametrize("ccmas_mode", ["pooled", "class_means"])
@pytest.mark.parametrize("seed, n, k, u", [(0, 400, 7, 24), (1, 1500, 120, 20), (2, 90, 3, 12)])
def test_engine_matches_reference(seed, n, k, u, ccmas_mode):
    a, y = random_table(seed, n, k, u)
    got = unit_measures(a, y, k, ccmas_mode=ccmas_mode, block_units=8)
    want = reference_measures(a, y, k, ccmas_mode=ccmas_mode)
    assert list(got.columns) == COLUMNS
    assert_frames_match(got, want)
    assert set(got.localist) == {"", "on", "off"}  # the planted cases are there


def test_precision_falls_back_to_a_full_sort_when_too_many_images_pass_the_floor(monkeypatch):
    # Room for fewer keys than there are images above the floor forces the full-sort path.
    a, y = random_table(3, 600, 9, 16)
    want = reference_measures(a, y, 9)
    monkeypatch.setattr(selectivity, "CANDIDATE_CAP", 2)
    for measures in ("basic", "all"):
        got = unit_measures(a, y, 9, measures=measures)
        assert_frames_match(got, want, BASIC_COLUMNS)


def test_basic_measures_skip_the_sort_and_agree():
    a, y = random_table(4, 500, 5, 8)
    basic = unit_measures(a, y, 5, measures="basic")
    full = unit_measures(a, y, 5)
    assert_frames_match(basic, full, BASIC_COLUMNS)
    assert basic["max_informedness"].isna().all()
    assert (basic["max_informedness_class"] == -1).all()


def test_fewer_images_than_k_and_a_single_class():
    y = np.zeros(7, int)
    a = np.arange(7, dtype=np.float32)[:, None]
    got = unit_measures(a, y, 1)
    assert_frames_match(got, reference_measures(a, y, 1))
    r = got.iloc[0]
    assert np.isnan(r.ccmas) and r.tcs == 1.0 and r.precision_100 == 1.0 and r.localist == ""


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="3 rows of activations but 2 labels"):
        unit_measures(np.zeros((3, 1)), [0, 1])
    with pytest.raises(ValueError, match="NaN or inf"):
        unit_measures(np.array([[np.nan], [0.0]]), [0, 1])
    with pytest.raises(ValueError, match=r"labels must lie in 0..1"):
        unit_measures(np.zeros((2, 1)), [0, 2], 2)
    with pytest.raises(ValueError, match="measures must be one of"):
        unit_measures(np.zeros((2, 1)), [0, 1], measures="fast")


# -- streaming engine, shards, workers, CLI ---------------------------------------


@pytest.fixture
def table(tmp_path):
    a, y = random_table(5, 700, 11, 150)
    b = np.maximum(a[:, :70] * 1.5, 0)
    path = tmp_path / "acts.h5"
    write_table(path, y, [f"class{i}" for i in range(11)], {"conv5": b, "fc6": a})
    return path, y, {"conv5": b, "fc6": a}


def test_compute_streams_every_layer_like_the_in_memory_api(table):
    path, y, layers = table
    df = compute(path, progress=False)
    assert list(df.columns) == ["layer"] + COLUMNS
    assert list(df.layer.unique()) == ["conv5", "fc6"]
    for name, acts in layers.items():
        part = df[df.layer == name].reset_index(drop=True)
        np.testing.assert_array_equal(part.unit, np.arange(acts.shape[1]))
        assert_frames_match(part, unit_measures(acts, y, 11))


def test_shards_are_disjoint_and_concatenate_to_the_whole(table):
    path, _, _ = table
    whole = compute(path, progress=False, measures="basic")
    parts = [compute(path, progress=False, measures="basic", shard=(i, 3)) for i in range(3)]
    joined = pd.concat(parts)
    joined = joined.assign(order=joined.layer.map({"conv5": 0, "fc6": 1}))
    joined = joined.sort_values(["order", "unit"]).drop(columns="order").reset_index(drop=True)
    assert sum(len(p) for p in parts) == len(whole)
    assert_frames_match(joined, whole)


def test_worker_processes_give_the_same_result(table):
    path, _, _ = table
    one = compute(path, layers=["fc6"], progress=False, workers=1)
    two = compute(path, layers=["fc6"], progress=False, workers=2, block_units=64)
    assert_frames_match(two, one)


def test_cli_writes_the_results_csv(table, tmp_path, capsys):
    path, _, _ = table
    out = tmp_path / "res" / "results.csv"
    assert main([str(path), "--out", str(out), "--layers", "fc6", "--quiet",
                 "--ccmas-mode", "class-means", "--shard", "1/2"]) == 0
    df = pd.read_csv(out, keep_default_na=False, na_values=[""])
    required = ["layer", "unit", "ccmas", "ccmas_class", "ccmas_2", "ccmas_2_class", "top_class",
                "top_cluster_size", "tcs", "localist", "localist_class", "precision_60",
                "precision_60_class", "precision_100", "precision_100_class",
                "max_informedness", "max_informedness_class"]
    assert set(required) <= set(df.columns)
    assert set(SIGNAL_DETECTION_COLUMNS) <= set(df.columns)
    assert (df.layer == "fc6").all() and list(df.unit) == list(range(75, 150))
    assert "wrote 75 units" in capsys.readouterr().out


def test_cli_errors_are_messages_not_tracebacks(table, tmp_path, capsys):
    path, _, _ = table
    out = str(tmp_path / "r.csv")
    assert main([str(path), "--out", out, "--layers", "fc9"]) == 2
    assert "no such layer" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.h5"), "--out", out]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([str(path), "--out", out, "--shard", "3/3"]) == 2
    assert "need 0 <= i < n" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()


def test_parse_shard():
    assert parse_shard("2/5") == (2, 5)
    with pytest.raises(ValueError, match="i/n"):
        parse_shard("half")


def test_dead_units_are_counted_in_the_log(table, caplog):
    path, _, _ = table
    with caplog.at_level("WARNING", logger="analysis.selectivity"):
        df = compute(path, layers=["fc6"], progress=False)
    assert df.dead.sum() == 1  # unit 3 of the random table
    assert "fc6: 1 dead unit(s)" in caplog.text


def test_a_bad_value_found_by_a_worker_process_reaches_the_caller(tmp_path):
    import h5py

    from analysis.activations import ActivationTableError

    a, y = random_table(6, 300, 4, 130)
    path = tmp_path / "t.h5"
    write_table(path, y, list("abcd"), {"fc": a})
    with h5py.File(path, "a") as f:
        f["layers/fc"][10, 100] = np.inf
    with pytest.raises(ActivationTableError, match="row 10, unit 100"):
        compute(path, workers=2, progress=False)
