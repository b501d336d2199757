"""Figures: every subcommand writes files; the plots show what they claim."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from analysis.activations import write_table
from analysis.figures import (
    fit_activation_distribution,
    main,
    plot_a4,
    plot_activation_distribution,
    plot_ccmas2,
    plot_distributions,
    plot_jitter,
    plot_top_classes,
    synthetic_cases,
    top_class,
    top_k_class_counts,
)
from analysis.tables import RESULTS_COLUMNS, ResultsError

CLASS_NAMES = ["cat", "dog", "fish", "bird"]


@pytest.fixture
def table(tmp_path):
    """4 classes x 30 images; fc6 unit 0 prefers 'fish' (class 2), unit 1 is dead."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)
    fc6 = np.maximum(rng.normal(0, 1, (120, 3)), 0).astype(np.float32)
    fc6[labels == 2, 0] += 3.0
    fc6[:, 1] = 0.0
    fc8 = rng.normal(0, 1, (120, 4)).astype(np.float32)
    path = tmp_path / "acts.h5"
    write_table(path, labels, CLASS_NAMES, {"fc6": fc6, "fc8": fc8})
    return path, labels, fc6


@pytest.fixture
def results_csv(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for layer, n in (("fc8", 12), ("conv5", 20), ("fc6", 30)):
        for u in range(n):
            row = dict.fromkeys(RESULTS_COLUMNS, 0.0)
            row.update(layer=layer, unit=u, ccmas=rng.uniform(0, 1), ccmas_2=rng.uniform(0, 1),
                       tcs=rng.uniform(0, 0.3), precision_100=rng.uniform(0, 1),
                       localist="", dead=False)
            rows.append(row)
    rows[13]["ccmas"] = np.nan  # a dead conv5 unit
    rows[13]["ccmas_2"] = np.nan
    path = tmp_path / "results.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _assert_written(stem, formats=("png", "svg")):
    for fmt in formats:
        f = stem.parent / f"{stem.name}.{fmt}"
        assert f.exists(), f
        assert f.stat().st_size > 1000, f
    assert (stem.parent / f"{stem.name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (stem.parent / f"{stem.name}.svg").read_bytes()[:2000]


# -- every subcommand through main() ---------------------------------------------------

def test_cli_distributions(tmp_path, results_csv):
    assert main(["distributions", str(results_csv), "--out", str(tmp_path / "f")]) == 0
    _assert_written(tmp_path / "f" / "fig2_distributions")


def test_cli_ccmas2(tmp_path, results_csv):
    assert main(["ccmas2", str(results_csv), "--out", str(tmp_path / "f")]) == 0
    _assert_written(tmp_path / "f" / "fig5_ccmas_vs_ccmas2")


def test_cli_jitter(tmp_path, table):
    path, _, _ = table
    out = tmp_path / "f" / "jitter.png"  # the suffix is replaced by each format's
    assert main(["jitter", str(path), "--layer", "fc6", "--unit", "0", "--out", str(out)]) == 0
    _assert_written(tmp_path / "f" / "jitter")
    assert main(["jitter", str(path), "--layer", "fc6", "--unit", "0", "--highlight-class",
                 "dog", "--out", str(tmp_path / "g" / "j"), "--format", "png"]) == 0
    assert (tmp_path / "g" / "j.png").exists() and not (tmp_path / "g" / "j.svg").exists()


def test_cli_classes(tmp_path, table):
    path, _, _ = table
    assert main(["classes", str(path), "--layer", "fc6", "--unit", "0",
                 "--out", str(tmp_path / "classes")]) == 0
    _assert_written(tmp_path / "classes")


def test_cli_activation_dist(tmp_path, table):
    path, _, _ = table
    for layer, unit in (("fc6", 0), ("fc6", 1), ("fc8", 2)):  # ReLU, dead, signed
        stem = tmp_path / f"dist_{layer}_{unit}"
        assert main(["activation-dist", str(path), "--layer", layer, "--unit", str(unit),
                     "--out", str(stem)]) == 0
        _assert_written(stem)


def test_cli_a4(tmp_path):
    pytest.importorskip("analysis.selectivity")
    assert main(["a4", "--out", str(tmp_path)]) == 0
    _assert_written(tmp_path / "figA4_synthetic")


def test_cli_errors(tmp_path, table, caplog):
    path, _, _ = table
    assert main(["jitter", str(path), "--layer", "conv9", "--unit", "0",
                 "--out", str(tmp_path / "x")]) == 2
    assert "conv9" in caplog.text and "acts.h5" in caplog.text
    assert main(["classes", str(path), "--layer", "fc6", "--unit", "99",
                 "--out", str(tmp_path / "x")]) == 2
    assert main(["jitter", str(path), "--layer", "fc6", "--unit", "0",
                 "--highlight-class", "unicorn", "--out", str(tmp_path / "x")]) == 2
    assert "unicorn" in caplog.text
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main(["ccmas2", str(empty), "--out", str(tmp_path)]) == 2
    assert "empty.csv" in caplog.text
    assert not list(tmp_path.glob("x*"))


# -- content ----------------------------------------------------------------------------

def _collection(fig: Figure, gid: str):
    found = [c for ax in fig.axes for c in ax.collections if c.get_gid() == gid]
    assert len(found) == 1
    return found[0]


def _collection_in(ax, gid):
    return next(c for c in ax.collections if c.get_gid() == gid)


def test_jitter_highlights_exactly_the_class(table):
    _, labels, fc6 = table
    acts = fc6[:, 0]
    assert top_class(acts, labels) == 2
    fig = plot_jitter(acts, labels, class_names=CLASS_NAMES)  # default: the top class
    high, others = _collection(fig, "highlight"), _collection(fig, "others")
    assert len(high.get_offsets()) == int((labels == 2).sum()) == 30
    assert len(others.get_offsets()) == 90
    # x positions are the class's activations, jitter within [0, 1)
    np.testing.assert_allclose(np.sort(high.get_offsets()[:, 0]), np.sort(acts[labels == 2]))
    assert high.get_offsets()[:, 1].min() >= 0 and high.get_offsets()[:, 1].max() < 1
    assert high.get_paths()[0].vertices.shape[0] >= 4  # a square marker
    fig1 = plot_jitter(acts, labels, 1)
    assert len(_collection(fig1, "highlight").get_offsets()) == 30


def test_top_class_ties_go_to_lowest_class():
    assert top_class(np.array([1.0, 5.0, 5.0, 0.0]), np.array([0, 3, 1, 2])) == 1


def test_exponential_rate_is_one_over_mean_of_nonzero():
    rng = np.random.default_rng(3)
    a = np.concatenate([np.zeros(500), rng.exponential(0.5, 2000)])
    fits = fit_activation_distribution(a)
    nz = a[a != 0]
    assert fits.n == 2500 and fits.n_zero == 500 and fits.n_nonzero == 2000
    assert fits.expon_loc == 0.0
    assert fits.rate == pytest.approx(1.0 / nz.mean(), rel=1e-9)
    assert fits.norm_mu == pytest.approx(nz.mean())
    assert fits.norm_sigma == pytest.approx(nz.std(ddof=0))
    assert fits.loglik_expon > fits.loglik_norm  # exponential data: the exponential fits better
    fig = plot_activation_distribution(a)
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    assert "500 of 2500" in ax.get_title()
    assert f"{fits.rate:.3g}" in ax.get_legend().get_texts()[1].get_text()


def test_fit_without_data_gives_nan():
    fits = fit_activation_distribution(np.zeros(10))
    assert fits.n_zero == 10 and np.isnan(fits.rate) and np.isnan(fits.norm_mu)
    assert isinstance(plot_activation_distribution(np.zeros(10)), Figure)


def test_top_k_counts_share_ties():
    acts, labels = synthetic_cases()["(a) one active image"]
    counts = top_k_class_counts(acts, labels, 10, k=100)
    assert counts.sum() == pytest.approx(100)
    assert counts[0] == pytest.approx(1 + 99 * 99 / 999)  # 10.8%, docs/measures.md
    assert counts[1] == pytest.approx(99 * 100 / 999)
    assert top_k_class_counts(np.arange(5.0), np.array([0, 0, 1, 1, 1]), 2, k=100).tolist() \
        == [2, 3]


def test_top_classes_bars(table):
    _, labels, fc6 = table
    fig = plot_top_classes(fc6[:, 0], labels, 4, k=10, class_names=CLASS_NAMES)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights[0] == pytest.approx(10)  # the 10 most active are all fish
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fish"]
    assert "precision 100.0%" in ax.get_title()
    many = plot_top_classes(np.arange(40.0), np.arange(40), 40, k=40, max_bars=5)
    assert [t.get_text() for t in many.axes[0].get_xticklabels()][-1] == "35 other classes"
    assert sum(p.get_height() for p in many.axes[0].patches) == pytest.approx(40)


def test_results_figures_keep_layer_order_and_count_nan(results_csv):
    df = pd.read_csv(results_csv)
    fig = plot_distributions(df)
    assert len(fig.axes) == 3
    ticks = [t.get_text() for t in fig.axes[2].get_xticklabels()]
    assert ticks == ["fc8", "conv5\n(1 NaN)", "fc6"]
    fig5 = plot_ccmas2(df)
    titles = [ax.get_title() for ax in fig5.axes if ax.get_visible()]
    assert titles == ["fc8 (n=12)", "conv5 (n=19, 1 NaN not shown)", "fc6 (n=30)"]
    assert len(fig5.axes[1].collections[0].get_offsets()) == 19
    with pytest.raises(ResultsError, match="ccmas_2"):
        plot_ccmas2(df.drop(columns=["ccmas_2"]))


def test_a4_titles_carry_the_measures():
    pytest.importorskip("analysis.selectivity")
    from analysis.figures import a4_measures

    cases = synthetic_cases()
    measures = a4_measures(cases)
    assert measures["ccmas"].tolist() == pytest.approx([1.0, 1.0, 0.1 / 1.599], abs=1e-3)
    assert measures["precision_100"].tolist() == pytest.approx([0.108, 1.0, 1.0], abs=1e-3)
    assert measures["tcs"].tolist() == pytest.approx([0.01, 1.0, 1.0])
    fig = plot_a4(cases, measures)
    titles = [ax.get_title() for ax in fig.axes]
    assert "CCMAS 1.00, precision 10.8%, TCS 1.0%" in titles[0]
    assert "CCMAS 1.00, precision 100.0%, TCS 100.0%" in titles[1]
    assert "CCMAS 0.06, precision 100.0%, TCS 100.0%" in titles[2]


def test_a4_with_stub_measures():
    """plot_a4 itself needs only a frame of measures (no selectivity module)."""
    cases = synthetic_cases()
    stub = pd.DataFrame({"ccmas": [0.5] * 3, "precision_100": [0.25] * 3, "tcs": [0.125] * 3})
    fig = plot_a4(cases, stub)
    assert len(fig.axes) == 3
    assert len(_collection_in(fig.axes[1], "highlight").get_offsets()) == 100
    with pytest.raises(ValueError, match="3 cases"):
        plot_a4(cases, stub.iloc[:2])


def test_no_torch_no_pyplot():
    code = ("import sys, analysis.figures, analysis.tables; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_the_highlighted_class_is_named_once(table):
    _, labels, fc6 = table
    acts = fc6[:, 0]  # top class 2
    named = plot_jitter(acts, labels, class_names=["cat", "dog", "owl"])
    assert named.axes[0].get_title() == "Activations; highlighted: owl (2)"
    # classes named by their index (the digits): "2", not "2 (2)"
    digits = plot_jitter(acts, labels, class_names=["0", "1", "2"])
    assert digits.axes[0].get_title() == "Activations; highlighted: class 2"
