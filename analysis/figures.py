"""The paper's figures from a results file or an activation table.

Figures (each a pure function returning a :class:`matplotlib.figure.Figure`;
writing files is separate, :func:`save_figure`):

- Fig. 2 :func:`plot_distributions` -- per-layer distributions of TCS,
  precision and CCMAS (results CSV).
- Fig. 3a/4 :func:`plot_jitter` -- one unit's activations (x) with random
  jitter (y); one class as black squares, the rest as light grey dots.
- Fig. 3b :func:`plot_top_classes` -- the classes among a unit's 100 most
  active images.
- Fig. 5 :func:`plot_ccmas2` -- CCMAS vs CCMAS_2, one panel per layer.
- Fig. A2/A3 :func:`plot_activation_distribution` -- a unit's activations
  with exponential and normal fits of its non-zero activations.
- Fig. A4 :func:`plot_a4` -- the three synthetic cases of docs/measures.md, each
  titled with the CCMAS, precision and TCS that ``analysis.selectivity``
  computes for it.

Command line (each writes PNG and SVG unless ``--format`` says otherwise)::

    python -m analysis.figures distributions RESULTS.csv --out DIR
    python -m analysis.figures jitter TABLE.h5 --layer L --unit U [--highlight-class C] --out FILE
    python -m analysis.figures classes TABLE.h5 --layer L --unit U --out FILE
    python -m analysis.figures ccmas2 RESULTS.csv --out DIR
    python -m analysis.figures activation-dist TABLE.h5 --layer L --unit U --out FILE
    python -m analysis.figures a4 --out DIR

Only the object-oriented matplotlib API is used (no pyplot), rendering with
the Agg canvas: nothing here needs a display.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from .selectivity import unit_measures
from .tables import FRACTION_COLUMNS, ResultsError, layer_order, read_results

__all__ = [
    "ActivationFits",
    "a4_measures",
    "STYLE",
    "draw_jitter",
    "fit_activation_distribution",
    "jitter",
    "main",
    "plot_a4",
    "plot_activation_distribution",
    "plot_ccmas2",
    "plot_distributions",
    "plot_jitter",
    "plot_top_classes",
    "save_figure",
    "synthetic_cases",
    "top_class",
    "top_k_class_counts",
]

log = logging.getLogger("analysis.figures")  # the same name under python -m

#: Matplotlib settings every figure is drawn with.
STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 9,
    "figure.titlesize": 13,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "none",  # keep text as text in SVG
}

#: Light grey of the non-highlighted images in jitterplots.
GREY = "0.78"
DPI = 150


def _styled(func: Callable[..., Figure]) -> Callable[..., Figure]:
    """Draw inside :data:`STYLE` (fonts are fixed when artists are created)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return func(*args, **kwargs)
    return wrapper


# -- data helpers (pure) ---------------------------------------------------------

def top_class(activations: np.ndarray, labels: np.ndarray) -> int:
    """Class of the most active image (ties: the lowest class index among them)."""
    a = np.asarray(activations)
    if a.size == 0:
        raise ValueError("top_class: no activations")
    return int(np.asarray(labels)[a == a.max()].min())


def top_k_class_counts(activations: np.ndarray, labels: np.ndarray, n_classes: int,
                       k: int = 100) -> np.ndarray:
    """Expected count of each class among the ``k`` most active images.

    Images tied at the k-th activation share the remaining places
    fractionally (uniformly random tie-breaking), as for precision@k
    (docs/measures.md). ``k`` larger than the number of images takes them all.
    """
    a = np.asarray(activations, dtype=float)
    y = np.asarray(labels)
    k = min(int(k), len(a))
    if k <= 0:
        return np.zeros(n_classes)
    kth = np.partition(a, len(a) - k)[len(a) - k]
    above = a > kth
    tied = a == kth
    counts = np.bincount(y[above], minlength=n_classes).astype(float)
    remaining = k - int(above.sum())
    if remaining:
        counts += remaining * np.bincount(y[tied], minlength=n_classes) / tied.sum()
    return counts


def jitter(n: int, seed: int = 0) -> np.ndarray:
    """``n`` uniform random heights in [0, 1) (a fixed seed: figures are reproducible)."""
    return np.random.default_rng(seed).uniform(0.0, 1.0, n)


@dataclass(frozen=True)
class ActivationFits:
    """Exponential and normal fits (scipy.stats maximum likelihood) of non-zero activations."""

    n: int
    n_zero: int
    expon_loc: float
    expon_scale: float
    norm_mu: float
    norm_sigma: float
    loglik_expon: float
    loglik_norm: float

    @property
    def rate(self) -> float:
        """Rate of the exponential fit, 1 / scale."""
        return 1.0 / self.expon_scale if self.expon_scale > 0 else math.nan

    @property
    def n_nonzero(self) -> int:
        return self.n - self.n_zero


def fit_activation_distribution(activations: np.ndarray) -> ActivationFits:
    """Fit an exponential and a normal distribution to the non-zero activations.

    For non-negative activations (after a ReLU) the exponential starts at 0
    (``loc`` fixed), so its rate is 1 / mean; with negative activations
    (fc8) its ``loc`` is fitted too. Fewer than two non-zero values give NaN
    parameters.
    """
    a = np.asarray(activations, dtype=float)
    nz = a[a != 0]
    nan = math.nan
    if len(nz) < 2 or np.ptp(nz) == 0:
        if len(nz) >= 1:
            log.warning("fewer than two distinct non-zero activations: no fits")
        return ActivationFits(len(a), len(a) - len(nz), nan, nan, nan, nan, nan, nan)
    if nz.min() >= 0:
        loc, scale = stats.expon.fit(nz, floc=0.0)
    else:
        loc, scale = stats.expon.fit(nz)
    mu, sigma = stats.norm.fit(nz)
    return ActivationFits(
        n=len(a), n_zero=len(a) - len(nz),
        expon_loc=float(loc), expon_scale=float(scale),
        norm_mu=float(mu), norm_sigma=float(sigma),
        loglik_expon=float(stats.expon.logpdf(nz, loc, scale).sum()),
        loglik_norm=float(stats.norm.logpdf(nz, mu, sigma).sum()),
    )


def synthetic_cases(n_classes: int = 10, per_class: int = 100
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The paper's Fig. A4 cases (docs/measures.md): name -> (activations, labels).

    Class 0 is the selective class. (a) one image of class 0 active (1.0),
    all else 0; (b) every image of class 0 at 1.0, all else 0; (c) every
    image active: the other classes evenly in [0.7, 0.8), class 0 the same
    values + 0.1, so it is separated and its mean 0.1 higher (CCMAS ~0.06).
    """
    labels = np.repeat(np.arange(n_classes), per_class).astype(np.int32)
    is_a = labels == 0
    a = np.zeros(len(labels), dtype=np.float32)
    a[np.flatnonzero(is_a)[0]] = 1.0
    b = is_a.astype(np.float32)
    base = np.tile(np.linspace(0.7, 0.8, per_class, endpoint=False), n_classes)
    c = (base + 0.1 * is_a).astype(np.float32)
    return {
        "(a) one active image": (a, labels),
        "(b) one class on, the rest off": (b, labels),
        "(c) all active, one class 0.1 higher": (c, labels),
    }


def _class_label(c: int, class_names: Sequence[str] | None) -> str:
    """``cat (3)`` for a named class; ``class 3`` when unnamed or named by its own
    index (the digits' "3"), which would read "3 (3)"."""
    if class_names is not None and 0 <= c < len(class_names) and str(class_names[c]) != str(c):
        return f"{class_names[c]} ({c})"
    return f"class {c}"


# -- figures (pure) -----------------------------------------------------------------

def _layer_values(df: pd.DataFrame, column: str) -> tuple[list[str], list[np.ndarray], list[int]]:
    layers = layer_order(df)
    names = df["layer"].astype(str)
    values, n_nan = [], []
    for layer in layers:
        v = df.loc[names == layer, column].astype(float).to_numpy()
        n_nan.append(int(np.isnan(v).sum()))
        values.append(v[~np.isnan(v)])
    return layers, values, n_nan


def _alpha(n_points: int, most: float) -> float:
    """Opacity of scatter points: dense layers lighter, so that overlaps still show."""
    return float(np.clip(8.0 / math.sqrt(max(n_points, 1)), 0.08, most))


_MEASURE_LABELS = {
    "tcs": "top-class selectivity (%)",
    "precision_100": "precision (%)",
    "ccmas": "CCMAS",
    "ccmas_2": "CCMAS_2",
}


@_styled
def plot_distributions(df: pd.DataFrame, measures: Sequence[str] = ("tcs", "precision_100",
                                                                     "ccmas"),
                       *, seed: int = 0) -> Figure:
    """Fig. 2: per layer, each unit's value (jittered dots) with a box plot.

    One panel per measure; fractions are shown in percent. NaN values (dead
    units' CCMAS) cannot be drawn: their count is printed under the layer.
    """
    missing = [c for c in ("layer", *measures) if c not in df.columns]
    if missing:
        raise ResultsError(f"Fig. 2 needs the column(s) {', '.join(missing)}")
    if len(df) == 0:
        raise ResultsError("Fig. 2: the results hold no units")
    rng = np.random.default_rng(seed)
    n_layers = len(layer_order(df))
    if n_layers <= 5:  # side by side
        nrows, ncols = 1, len(measures)
        size = (ncols * (1.6 + 0.75 * n_layers) + 0.4, 4.4)
    else:  # stacked, so that many layers stay readable
        nrows, ncols = len(measures), 1
        size = (1.8 + 0.8 * n_layers, 3.1 * nrows + 0.5)
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, m in zip(axes, measures, strict=True):
        layers, values, n_nan = _layer_values(df, m)
        scale = 100.0 if m in FRACTION_COLUMNS else 1.0
        values = [scale * v for v in values]
        pos = np.arange(1, len(layers) + 1)
        for p, v in zip(pos, values, strict=True):
            ax.scatter(p + rng.uniform(-0.3, 0.3, len(v)), v, s=6, color="0.45",
                       alpha=_alpha(len(v), 0.5), linewidths=0, rasterized=len(v) > 1000)
        nonempty = [i for i, v in enumerate(values) if len(v)]
        if nonempty:
            ax.boxplot([values[i] for i in nonempty], positions=pos[nonempty], widths=0.55,
                       showfliers=False, patch_artist=True,
                       medianprops={"color": "black", "linewidth": 1.8},
                       boxprops={"linewidth": 1.1, "facecolor": (1, 1, 1, 0.6)},
                       whiskerprops={"linewidth": 1.1},
                       capprops={"linewidth": 1.1})
        labels = [f"{layer}\n({k} NaN)" if k else layer
                  for layer, k in zip(layers, n_nan, strict=True)]
        ax.set_xticks(pos, labels, rotation=45 if len(layers) > 12 else 0)
        ax.set_xlim(0.4, len(layers) + 0.6)
        ax.set_xlabel("layer")
        ax.set_ylabel(_MEASURE_LABELS.get(m, m))
        ax.set_title(_MEASURE_LABELS.get(m, m).replace(" (%)", ""))
        ax.grid(axis="y", color="0.92")
        ax.set_axisbelow(True)
    fig.suptitle("Selectivity of units by layer")
    return fig


def draw_jitter(ax, activations: np.ndarray, labels: np.ndarray, highlight_class: int, *,
                class_names: Sequence[str] | None = None, seed: int = 0,
                legend: bool = True):
    """Draw a jitterplot into ``ax``; return (highlighted, others) scatter collections."""
    a = np.asarray(activations, dtype=float)
    y = np.asarray(labels)
    if a.shape != y.shape:
        raise ValueError(f"activations {a.shape} and labels {y.shape} differ in shape")
    h = jitter(len(a), seed)
    sel = y == highlight_class
    n_sel = int(sel.sum())
    others = ax.scatter(a[~sel], h[~sel], s=9, marker="o", color=GREY, linewidths=0,
                        label=f"other classes (n={len(a) - n_sel})",
                        rasterized=len(a) - n_sel > 5000)
    others.set_gid("others")
    high = ax.scatter(a[sel], h[sel], s=14, marker="s", color="black", linewidths=0,
                      label=f"{_class_label(highlight_class, class_names)} (n={n_sel})")
    high.set_gid("highlight")
    ax.set_xlabel("activation")
    ax.set_ylabel("random jitter")
    ax.set_yticks([])
    ax.spines["left"].set_visible(False)
    ax.set_ylim(-0.05, 1.05)
    if legend:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False,
                  markerscale=1.5)
    return high, others


@_styled
def plot_jitter(activations: np.ndarray, labels: np.ndarray, highlight_class: int | None = None,
                *, class_names: Sequence[str] | None = None, title: str | None = None,
                seed: int = 0) -> Figure:
    """Fig. 3a/4: activations on x, random jitter on y; one class as black squares.

    ``highlight_class`` defaults to the unit's top class (class of its most
    active image).
    """
    if highlight_class is None:
        highlight_class = top_class(activations, labels)
    fig = Figure(figsize=(7.5, 3.6), layout="constrained")
    ax = fig.subplots()
    draw_jitter(ax, activations, labels, highlight_class, class_names=class_names, seed=seed)
    ax.set_title(title or f"Activations; highlighted: {_class_label(highlight_class, class_names)}")
    return fig


@_styled
def plot_top_classes(activations: np.ndarray, labels: np.ndarray, n_classes: int, *,
                     k: int = 100, class_names: Sequence[str] | None = None,
                     title: str | None = None, max_bars: int = 25) -> Figure:
    """Fig. 3b: how many of the ``k`` most active images belong to each class.

    Bars in decreasing order; beyond ``max_bars`` classes the rest are pooled
    in one bar. Ties at the k-th activation are shared fractionally.
    """
    counts = top_k_class_counts(activations, labels, n_classes, k)
    k_eff = min(k, len(np.asarray(activations)))
    present = np.flatnonzero(counts > 0)
    order = present[np.lexsort((present, -counts[present]))]
    shown, rest = order[:max_bars], order[max_bars:]
    names = [class_names[c] if class_names is not None and c < len(class_names) else str(c)
             for c in shown]
    heights = list(counts[shown])
    if len(rest):
        names.append(f"{len(rest)} other classes")
        heights.append(float(counts[rest].sum()))
    fig = Figure(figsize=(max(5.0, 1.6 + 0.38 * len(names)), 4.4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(names))
    colors = ["black"] + ["0.55"] * (len(names) - 1)
    if len(rest):
        colors[-1] = "0.8"
    ax.bar(x, heights, color=colors, width=0.75)
    rotate = len(names) > 4 or max(map(len, names)) > 10
    ax.set_xticks(x, names, rotation=60 if rotate else 0, ha="right" if rotate else "center",
                  rotation_mode="anchor")
    ax.set_xlabel("class")
    ax.set_ylabel(f"images among the top {k_eff}")
    ax.grid(axis="y", color="0.92")
    ax.set_axisbelow(True)
    best = int(order[0]) if len(order) else 0
    share = 100.0 * counts[best] / k_eff if k_eff else math.nan
    ax.set_title(title or f"Classes of the {k_eff} most active images "
                          f"(precision {share:.1f}%)")
    return fig


@_styled
def plot_ccmas2(df: pd.DataFrame) -> Figure:
    """Fig. 5: CCMAS (x) against CCMAS_2 (y), one panel per layer, with y = x."""
    missing = [c for c in ("layer", "ccmas", "ccmas_2") if c not in df.columns]
    if missing:
        raise ResultsError(f"Fig. 5 needs the column(s) {', '.join(missing)}")
    if len(df) == 0:
        raise ResultsError("Fig. 5: the results hold no units")
    layers = layer_order(df)
    ncols = min(4, len(layers))
    nrows = math.ceil(len(layers) / ncols)
    fig = Figure(figsize=(3.4 * ncols + 0.4, 3.4 * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    names = df["layer"].astype(str)
    for ax, layer in zip(axes, layers, strict=False):
        part = df[names == layer]
        x = part["ccmas"].astype(float).to_numpy()
        y = part["ccmas_2"].astype(float).to_numpy()
        ok = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[ok], y[ok], s=8, color="black", alpha=_alpha(int(ok.sum()), 0.7),
                   linewidths=0, rasterized=ok.sum() > 1000)
        if ok.any():
            lo = min(0.0, x[ok].min(), y[ok].min())
            hi = max(1.0, x[ok].max(), y[ok].max())
        else:
            lo, hi = 0.0, 1.0
        pad = 0.03 * (hi - lo)
        ax.plot([lo, hi], [lo, hi], ls="--", color="0.5", lw=1)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal")
        note = f"n={int(ok.sum())}" + (f", {int((~ok).sum())} NaN not shown" if (~ok).any()
                                       else "")
        ax.set_title(f"{layer} ({note})", fontsize=11)
        ax.set_xlabel("CCMAS")
        ax.set_ylabel("CCMAS_2")
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    fig.suptitle("CCMAS of the best class vs the second-best class")
    return fig


@_styled
def plot_activation_distribution(activations: np.ndarray, *, bins: int = 60,
                                 title: str | None = None,
                                 fits: ActivationFits | None = None) -> Figure:
    """Fig. A2/A3: histogram (density) of the non-zero activations with both fits."""
    a = np.asarray(activations, dtype=float)
    fits = fits or fit_activation_distribution(a)
    nz = a[a != 0]
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.subplots()
    if len(nz):
        ax.hist(nz, bins=bins, density=True, color="0.75", edgecolor="white", linewidth=0.4,
                label=f"non-zero activations (n={len(nz)})")
    if np.isfinite(fits.expon_scale):
        lo, hi = nz.min(), nz.max()
        x = np.linspace(min(lo, fits.expon_loc), hi, 400)
        ax.plot(x, stats.expon.pdf(x, fits.expon_loc, fits.expon_scale), color="black", lw=2,
                label=f"exponential, rate {fits.rate:.3g} (log-lik {fits.loglik_expon:.4g})")
        ax.plot(x, stats.norm.pdf(x, fits.norm_mu, fits.norm_sigma), color="black", lw=1.6,
                ls="--", label=f"normal, μ {fits.norm_mu:.3g}, σ {fits.norm_sigma:.3g} "
                               f"(log-lik {fits.loglik_norm:.4g})")
    else:
        ax.text(0.5, 0.5, "too few non-zero activations to fit", transform=ax.transAxes,
                ha="center", va="center")
    ax.set_xlabel("activation")
    ax.set_ylabel("density")
    pct_zero = 100.0 * fits.n_zero / fits.n if fits.n else math.nan
    ax.set_title(f"{title or 'Activation distribution'}\n"
                 f"{fits.n_zero} of {fits.n} activations are 0 ({pct_zero:.1f}%): "
                 "not drawn or fitted")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", frameon=False)
    return fig


@_styled
def plot_a4(cases: dict[str, tuple[np.ndarray, np.ndarray]], measures: pd.DataFrame,
            *, seed: int = 0) -> Figure:
    """Fig. A4: one jitterplot per synthetic case, titled with its measures.

    ``measures`` has one row per case, in order, with ``ccmas``,
    ``precision_100`` and ``tcs`` (as :func:`analysis.selectivity.unit_measures`
    returns them).
    """
    if len(measures) != len(cases):
        raise ValueError(f"{len(cases)} cases but {len(measures)} rows of measures")
    fig = Figure(figsize=(7.5, 2.9 * len(cases) + 0.4), layout="constrained")
    axes = fig.subplots(len(cases), 1, squeeze=False)[:, 0]
    for i, (ax, (name, (acts, labels))) in enumerate(zip(axes, cases.items(), strict=True)):
        row = measures.iloc[i]
        draw_jitter(ax, acts, labels, top_class(acts, labels), seed=seed + i,
                    legend=i == len(cases) - 1)
        ax.set_title(f"{name}\nCCMAS {row['ccmas']:.2f}, precision "
                     f"{100 * row['precision_100']:.1f}%, TCS {100 * row['tcs']:.1f}%",
                     fontsize=11)
    fig.suptitle("Synthetic units (10 classes of 100 images; class 0 in black)")
    return fig


# -- files -----------------------------------------------------------------------------

def save_figure(fig: Figure, stem: str | os.PathLike, formats: Sequence[str] = ("png", "svg")
                ) -> list[str]:
    """Write ``fig`` as ``stem.<format>`` for each format; return the paths."""
    stem = os.fspath(stem)
    folder = os.path.dirname(stem)
    if folder:
        os.makedirs(folder, exist_ok=True)
    paths = []
    for fmt in formats:
        path = f"{stem}.{fmt}"
        fig.savefig(path, format=fmt, dpi=DPI)
        paths.append(path)
        log.info("wrote %s", path)
    return paths


def _stem(out: str, formats: Sequence[str]) -> str:
    """``fig.png`` -> ``fig`` (when the suffix is one of the formats), else unchanged."""
    root, ext = os.path.splitext(out)
    return root if ext.lstrip(".").lower() in {*formats, "png", "svg", "pdf"} else out


def _read_unit(path: str, layer: str, unit: int):
    from .activations import open_table

    with open_table(path) as table:
        acts = table.read_units(layer, unit, unit + 1)[:, 0]
        return acts, table.labels.copy(), list(table.class_names)


def _parse_class(value: str, class_names: Sequence[str], path: str) -> int:
    if value.lstrip("-").isdigit():
        c = int(value)
    elif value in class_names:
        c = list(class_names).index(value)
    else:
        raise ValueError(f"{path}: --highlight-class {value!r} is neither a class index nor "
                         "a class name of the table")
    if not 0 <= c < len(class_names):
        raise ValueError(f"{path}: class {c} is outside 0..{len(class_names) - 1}")
    return c


def a4_measures(cases: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """CCMAS, precision and TCS of each synthetic case, from ``analysis.selectivity``."""
    rows = []
    for acts, labels in cases.values():
        n_classes = int(labels.max()) + 1
        rows.append(unit_measures(np.asarray(acts, dtype=np.float32)[:, None], labels,
                                  n_classes).iloc[0])
    return pd.DataFrame(rows).reset_index(drop=True)


# -- command line ----------------------------------------------------------------------

def _cmd_distributions(args) -> list[str]:
    df = read_results(args.results, required=("layer", "tcs", "precision_100", "ccmas"))
    return save_figure(plot_distributions(df), os.path.join(args.out, "fig2_distributions"),
                       args.format)


def _cmd_ccmas2(args) -> list[str]:
    df = read_results(args.results, required=("layer", "ccmas", "ccmas_2"))
    return save_figure(plot_ccmas2(df), os.path.join(args.out, "fig5_ccmas_vs_ccmas2"),
                       args.format)


def _cmd_jitter(args) -> list[str]:
    acts, labels, names = _read_unit(args.table, args.layer, args.unit)
    c = (_parse_class(args.highlight_class, names, args.table)
         if args.highlight_class is not None else top_class(acts, labels))
    fig = plot_jitter(acts, labels, c, class_names=names, seed=args.seed,
                      title=f"{args.layer} unit {args.unit}: {_class_label(c, names)} "
                            "in black")
    return save_figure(fig, _stem(args.out, args.format), args.format)


def _cmd_classes(args) -> list[str]:
    acts, labels, names = _read_unit(args.table, args.layer, args.unit)
    counts = top_k_class_counts(acts, labels, len(names), args.top_k)
    k_eff = min(args.top_k, len(acts))
    n_present = int((counts > 0).sum())
    title = (f"{args.layer} unit {args.unit}: classes of the {k_eff} most active images\n"
             f"(precision {100 * counts.max() / k_eff:.1f}%, "
             f"{n_present} {'class' if n_present == 1 else 'classes'})")
    fig = plot_top_classes(acts, labels, len(names), k=args.top_k, class_names=names,
                           title=title)
    return save_figure(fig, _stem(args.out, args.format), args.format)


def _cmd_activation_dist(args) -> list[str]:
    acts, _, _ = _read_unit(args.table, args.layer, args.unit)
    fig = plot_activation_distribution(
        acts, bins=args.bins, title=f"{args.layer} unit {args.unit}: distribution of activations")
    return save_figure(fig, _stem(args.out, args.format), args.format)


def _cmd_a4(args) -> list[str]:
    cases = synthetic_cases()
    fig = plot_a4(cases, a4_measures(cases))
    return save_figure(fig, os.path.join(args.out, "figA4_synthetic"), args.format)


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m analysis.figures",
        description="The paper's figures (2, 3, 4, 5, A2, A3, A4) from a results CSV or an "
                    "activation table.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_, source):
        p = sub.add_parser(name, help=help_, description=help_)
        if source == "results":
            p.add_argument("results", help="results CSV written by analysis.selectivity")
            p.add_argument("--out", required=True, help="output folder")
        elif source == "table":
            p.add_argument("table", help="activation table (.h5)")
            p.add_argument("--layer", required=True)
            p.add_argument("--unit", required=True, type=int)
            p.add_argument("--out", required=True,
                           help="output file; its suffix is replaced by each format's")
        else:
            p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--format", nargs="+", default=["png", "svg"],
                       choices=["png", "svg", "pdf"], help="file formats (default: png svg)")
        p.set_defaults(func=func)
        return p

    add("distributions", _cmd_distributions,
        "Fig. 2: per-layer distributions of TCS, precision and CCMAS", "results")
    p = add("jitter", _cmd_jitter,
            "Fig. 3a/4: jitterplot of one unit, one class as black squares", "table")
    p.add_argument("--highlight-class", metavar="C",
                   help="class index or name to draw in black (default: the unit's top class)")
    p.add_argument("--seed", type=int, default=0, help="seed of the jitter")
    p = add("classes", _cmd_classes,
            "Fig. 3b: classes among the unit's most active images", "table")
    p.add_argument("--top-k", type=int, default=100, help="number of images (default 100)")
    add("ccmas2", _cmd_ccmas2, "Fig. 5: CCMAS vs CCMAS_2 per layer", "results")
    p = add("activation-dist", _cmd_activation_dist,
            "Fig. A2/A3: activation histogram with exponential and normal fits", "table")
    p.add_argument("--bins", type=int, default=60, help="histogram bins (default 60)")
    add("a4", _cmd_a4, "Fig. A4: the three synthetic cases as jitterplots", "none")
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = _parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        paths = args.func(args)
    except (ValueError, RuntimeError) as exc:  # ResultsError, ActivationTableError, ...
        log.error("%s", exc)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
