"""Tables 1, A1, A2 and top-class agreement on hand-made results."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest

from analysis.tables import (
    RESULTS_COLUMNS,
    ResultsError,
    format_markdown,
    load_class_names,
    main,
    read_results,
    table1,
    table_a1,
    table_a2,
    top_class_agreement,
)

NAN = math.nan


def _row(layer, unit, **values):
    row = dict.fromkeys(RESULTS_COLUMNS, 0.0)
    row.update(layer=layer, unit=unit, localist="", localist_class=-1, dead=False)
    row.update(values)
    return row


@pytest.fixture
def results() -> pd.DataFrame:
    """fc8 first (layers keep file order), then 4 conv5 units with known values."""
    rows = [
        _row("fc8", 0, ccmas=1.2, precision_100=0.9, tcs=0.5, top_class=3, ccmas_class=3,
             ccmas_2=0.9, top_cluster_size=10),
        _row("fc8", 1, ccmas=0.95, precision_100=0.9, tcs=0.2, top_class=1, ccmas_class=2,
             ccmas_2=0.5, top_cluster_size=4),
        _row("conv5", 0, ccmas=0.65, precision_100=0.40, tcs=0.00, top_class=1, ccmas_class=1,
             ccmas_2=0.2, top_cluster_size=0),
        _row("conv5", 1, ccmas=0.70, precision_100=0.50, tcs=0.05, top_class=2, ccmas_class=2,
             ccmas_2=0.4, top_cluster_size=5),
        _row("conv5", 2, ccmas=0.85, precision_100=0.75, tcs=0.04, top_class=3, ccmas_class=0,
             ccmas_2=0.6, top_cluster_size=4),
        # a dead unit: CCMAS NaN, but other measures present
        _row("conv5", 3, ccmas=NAN, precision_100=1.00, tcs=1.00, top_class=4, ccmas_class=0,
             ccmas_2=NAN, top_cluster_size=100, dead=True),
    ]
    return pd.DataFrame(rows)


def test_table1_exact_percentages(results):
    t = table1(results).set_index("layer")
    assert list(t.index) == ["fc8", "conv5"]
    c = t.loc["conv5"]
    assert c["n_units"] == 4
    assert c["pct_precision_100_ge_50"] == pytest.approx(75.0)
    assert c["pct_precision_100_ge_75"] == pytest.approx(50.0)
    assert c["pct_ccmas_ge_0.7"] == pytest.approx(50.0)  # the NaN unit meets nothing
    assert c["pct_ccmas_ge_0.8"] == pytest.approx(25.0)
    assert c["pct_ccmas_ge_0.9"] == pytest.approx(0.0)
    assert c["pct_tcs_ge_5"] == pytest.approx(50.0)
    assert c["n_ccmas_nan"] == 1
    f = t.loc["fc8"]
    assert f["pct_ccmas_ge_0.9"] == pytest.approx(100.0)
    assert f["pct_tcs_ge_5"] == pytest.approx(100.0)
    assert f["n_ccmas_nan"] == 0


def test_table_a2_nan_aware_means(results):
    t = table_a2(results).set_index("layer")
    c = t.loc["conv5"]
    assert c["mean_ccmas"] == pytest.approx((0.65 + 0.70 + 0.85) / 3)
    assert c["n_nan_ccmas"] == 1
    assert c["n_nan_ccmas_2"] == 1
    assert c["mean_ccmas_2"] == pytest.approx(0.4)
    assert c["mean_precision_100_pct"] == pytest.approx(100 * (0.4 + 0.5 + 0.75 + 1.0) / 4)
    assert c["mean_tcs_pct"] == pytest.approx(100 * 1.09 / 4)
    assert c["mean_top_cluster_size"] == pytest.approx(109 / 4)
    assert c["n_nan_tcs"] == 0
    assert c["sd_ccmas"] == pytest.approx(np.std([0.65, 0.70, 0.85], ddof=1))
    assert t.loc["fc8", "mean_ccmas"] == pytest.approx((1.2 + 0.95) / 2)


def test_table_a1_best_units_and_ties(results):
    t = table_a1(results).set_index(["layer", "criterion"])
    assert list(t.index.get_level_values(0).unique()) == ["fc8", "conv5"]
    assert t.loc[("conv5", "ccmas"), "unit"] == 2  # NaN ignored
    assert t.loc[("conv5", "ccmas"), "n_tied"] == 1
    assert t.loc[("conv5", "precision_100"), "unit"] == 3
    assert t.loc[("conv5", "tcs"), "unit"] == 3
    # fc8: both units at precision 0.9 -> the lowest unit index, n_tied 2
    assert t.loc[("fc8", "precision_100"), "unit"] == 0
    assert t.loc[("fc8", "precision_100"), "n_tied"] == 2
    # all measures come along
    assert t.loc[("conv5", "ccmas"), "ccmas_2"] == pytest.approx(0.6)
    assert set(RESULTS_COLUMNS) - {"layer"} <= set(t.columns)


def test_table_a1_class_names(results):
    names = ["zero", "one", "two", "three", "four"]
    t = table_a1(results, names).set_index(["layer", "criterion"])
    assert t.loc[("fc8", "ccmas"), "top_class_name"] == "three"
    assert t.loc[("fc8", "ccmas"), "localist_class_name"] == ""  # -1: none
    cols = list(t.columns)
    assert cols.index("top_class_name") == cols.index("top_class") + 1
    with pytest.raises(ResultsError, match="outside"):
        table_a1(results, names[:2])


def test_table_a1_all_nan_layer_warns(results, caplog):
    df = results.copy()
    df.loc[df["layer"] == "conv5", "ccmas"] = NAN
    with caplog.at_level(logging.WARNING, logger="analysis.tables"):
        t = table_a1(df)
    assert not ((t["layer"] == "conv5") & (t["criterion"] == "ccmas")).any()
    assert "NaN for every unit" in caplog.text


def test_top_class_agreement(results):
    t = top_class_agreement(results).set_index("layer")
    c = t.loc["conv5"]
    assert (c["n_units"], c["n_compared"], c["n_excluded"], c["n_agree"]) == (4, 3, 1, 2)
    assert c["pct_agree"] == pytest.approx(200 / 3)
    assert t.loc["fc8", "pct_agree"] == pytest.approx(50.0)


def test_missing_column_and_empty_frame(results):
    with pytest.raises(ResultsError, match="tcs"):
        table1(results.drop(columns=["tcs"]))
    with pytest.raises(ResultsError, match="no units"):
        table_a2(results.iloc[:0])


def test_read_results_errors(tmp_path, results):
    with pytest.raises(ResultsError, match="no such file"):
        read_results(tmp_path / "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ResultsError, match=r"empty\.csv: the file is empty"):
        read_results(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(RESULTS_COLUMNS) + "\n")
    with pytest.raises(ResultsError, match="no rows"):
        read_results(header_only, required=("layer",))
    bad = tmp_path / "bad.csv"
    df = results.copy()
    df["ccmas"] = df["ccmas"].astype(object)
    df.loc[1, "ccmas"] = "oops"
    df.to_csv(bad, index=False)
    with pytest.raises(ResultsError, match=r"bad\.csv: column 'ccmas', data row 2"):
        read_results(bad)


def test_read_results_round_trip(tmp_path, results):
    path = tmp_path / "r.csv"
    results.to_csv(path, index=False)
    df = read_results(path, required=RESULTS_COLUMNS)
    assert df["dead"].dtype == bool
    assert df["ccmas"].isna().sum() == 1
    pd.testing.assert_frame_equal(table1(df), table1(results), check_dtype=False)


def test_main_writes_tables(tmp_path, results, capsys):
    path = tmp_path / "r.csv"
    results.to_csv(path, index=False)
    names = tmp_path / "classes.tsv"
    names.write_text("index\twnid\tname\n" + "".join(
        f"{i}\tn{i:08d}\tthing {i}\n" for i in range(5)))
    out = tmp_path / "out"
    assert main([str(path), "--out", str(out), "--class-names", str(names)]) == 0
    for stem in ("table1", "tableA1", "tableA2", "top_vs_ccmas"):
        assert (out / f"{stem}.csv").stat().st_size > 0
    t1 = pd.read_csv(out / "table1.csv")
    assert list(t1["layer"]) == ["fc8", "conv5"]
    assert t1.loc[1, "pct_precision_100_ge_50"] == pytest.approx(75.0)
    a1 = pd.read_csv(out / "tableA1.csv")
    assert "thing 3" in set(a1["top_class_name"])
    md = (out / "tables.md").read_text()
    assert "## Table 1" in md and "## Table A1" in md and "## Table A2" in md
    assert "| conv5 |     4 |            75.0 |" in md
    assert "ccmas 1" in md  # the NaN count is reported
    assert "## Table 1" in capsys.readouterr().out


def test_main_errors_name_the_file(tmp_path, results, caplog):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main([str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "empty.csv" in caplog.text
    caplog.clear()
    partial = tmp_path / "partial.csv"
    results.drop(columns=["ccmas"]).to_csv(partial, index=False)
    assert main([str(partial), "--out", str(tmp_path / "o")]) == 2
    assert "partial.csv" in caplog.text and "ccmas" in caplog.text


def test_load_class_names(tmp_path):
    plain = tmp_path / "names.txt"
    plain.write_text("cat\ndog\n\n")
    assert load_class_names(plain) == ["cat", "dog"]
    from analysis.activations import write_table

    h5 = tmp_path / "t.h5"
    write_table(h5, np.array([0, 1]), ["a", "b"], {"l": np.zeros((2, 1), np.float32)})
    assert load_class_names(h5) == ["a", "b"]


def test_format_markdown():
    df = pd.DataFrame({"layer": ["a|b"], "n": [3], "x": [0.12345], "y": [NAN]})
    md = format_markdown(df, digits=2).splitlines()
    assert md[0] == "| layer | n |    x |   y |"
    assert md[1] == "|-------|--:|-----:|----:|"
    assert md[2] == "| a\\|b  | 3 | 0.12 | NaN |"
