"""Closed-form cases for the reference (oracle) selectivity measures, analysis._reference.

Every expected value is derived by hand in the comment next to it (docs/measures.md and the
conventions in the module docstring of analysis._reference).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis._reference import COLUMNS, reference_measures, reference_unit

APPROX = {"rel": 1e-12, "abs": 1e-12}


def paper_labels() -> np.ndarray:
    """10 classes of 100 images each (the paper's Fig. A4 set-up), class-major order."""
    return np.repeat(np.arange(10), 100)


def f32(x: float) -> float:
    """The float64 value of x once stored as float32 (what the measures actually see)."""
    return float(np.float32(x))


def check(result: dict, expected: dict) -> None:
    for key, want in expected.items():
        got = result[key]
        if isinstance(want, float) and math.isnan(want):
            assert math.isnan(got), f"{key}: expected NaN, got {got}"
        elif isinstance(want, float):
            assert got == pytest.approx(want, **APPROX), f"{key}: expected {want}, got {got}"
        else:
            assert got == want, f"{key}: expected {want!r}, got {got!r}"
            assert type(got) is type(want), f"{key}: expected {type(want)}, got {type(got)}"


# --------------------------------------------------------------------------- paper cases


def test_paper_case_a_one_active_image():
    y = paper_labels()
    a = np.zeros(1000, dtype=np.float32)
    a[0] = 1.0  # one image of class 0
    r = reference_unit(a, y, 10)
    check(
        r,
        {
            # mu_0 = 1/100, mu_not0 = 0 -> 0.01 / 0.01 = 1
            "ccmas": 1.0,
            "ccmas_class": 0,
            # B = class 1 (all others tie at mean 0), mu_notAB = 0 -> 0/0 -> NaN
            "ccmas_2": float("nan"),
            "ccmas_2_class": 1,
            # T = 0, m2 = 0, one image of class 0 above it: 1/100
            "top_class": 0,
            "top_cluster_size": 1,
            "tcs": 0.01,
            # min(class 0) = 0 is not > 0; lowest minimum class 0 has max 1 not < 0
            "localist": "",
            "localist_class": -1,
            # k=100: v = 0; g_0 = 1; t = 999 tied (99 of class 0); r = 99
            # E_0 = 1 + 99*99/999 -> (1 + 9801/999)/100 = 10800/99900
            "precision_100": (1 + 99 * 99 / 999) / 100,
            "precision_100_class": 0,
            # k=60: r = 59, E_0 = 1 + 99*59/999 = 6840/999 -> /60 = 114/999
            "precision_60": 114 / 999,
            "precision_60_class": 0,
            # class 0 at threshold 1: hit 1/100, fa 0; at 0: 1 - 1 = 0. Others: 0.
            "max_informedness": 0.01,
            "max_informedness_class": 0,
            "top_class_max_informedness": 0.01,
            # threshold 1: precision 1, recall 1/100; threshold 0: precision 0.1
            "top_class_recall_at_precision_95": 0.01,
            "top_class_recall_at_precision_100": 0.01,
            # AP = 0.01 * 1 + (1 - 0.01) * 0.1 = 0.109
            "top_class_average_precision": 0.109,
            # F1 = max(2*1/(1+100), 2*100/(1000+100)) = 2/11
            "top_class_max_f1": 2 / 11,
            "mean_activation": 0.001,
            "max_activation": 1.0,
            "dead": False,
        },
    )
    assert r["precision_100"] == pytest.approx(0.108108, abs=1e-6)


def test_paper_case_b_one_class_on():
    y = paper_labels()
    a = (y == 4).astype(np.float32)  # every image of class 4 at 1.0, all else 0
    check(
        reference_unit(a, y, 10),
        {
            # mu_4 = 1, mu_not4 = 0 -> 1
            "ccmas": 1.0,
            "ccmas_class": 4,
            # B = 0 (lowest of the tied zeros), mu_notAB = 0 -> 0/0 -> NaN
            "ccmas_2": float("nan"),
            "ccmas_2_class": 0,
            # m2 = 0, all 100 images of class 4 above: tcs 1
            "top_class": 4,
            "top_cluster_size": 100,
            "tcs": 1.0,
            # min(class 4) = 1 > max(rest) = 0
            "localist": "on",
            "localist_class": 4,
            # v = 1 for both k: the 100 class-4 images are the only ones >= v
            "precision_100": 1.0,
            "precision_100_class": 4,
            "precision_60": 1.0,
            "precision_60_class": 4,
            # threshold 1 separates class 4 perfectly: hit 1, fa 0
            "max_informedness": 1.0,
            "max_informedness_class": 4,
            "top_class_max_informedness": 1.0,
            "top_class_recall_at_precision_95": 1.0,
            "top_class_recall_at_precision_100": 1.0,
            "top_class_average_precision": 1.0,
            "top_class_max_f1": 1.0,
            "mean_activation": 0.1,
            "max_activation": 1.0,
            "dead": False,
        },
    )


@pytest.mark.parametrize("base, high", [(1.0, 1.1), (0.8, 0.9)])
def test_paper_case_c_all_active_one_class_higher(base, high):
    y = paper_labels()
    a = np.full(1000, base, dtype=np.float32)
    a[y == 3] = high
    b, h = f32(base), f32(high)  # the float32 values the unit really has
    check(
        reference_unit(a, y, 10),
        {
            # (h - b) / (h + b): 0.1/2.1 ~ 0.0476 for (1, 1.1); 0.1/1.7 ~ 0.0588 (the paper's ~0.06)
            "ccmas": (h - b) / (h + b),
            "ccmas_class": 3,
            # B = 0, mu_notAB = b -> 0
            "ccmas_2": 0.0,
            "ccmas_2_class": 0,
            "top_class": 3,
            "top_cluster_size": 100,
            "tcs": 1.0,
            "localist": "on",
            "localist_class": 3,
            "precision_100": 1.0,
            "precision_100_class": 3,
            "precision_60": 1.0,
            "precision_60_class": 3,
            "max_informedness": 1.0,
            "max_informedness_class": 3,
            "top_class_max_informedness": 1.0,
            "top_class_average_precision": 1.0,
            "top_class_max_f1": 1.0,
            "max_activation": h,
            "dead": False,
        },
    )
    if (base, high) == (1.0, 1.1):
        assert reference_unit(a, y, 10)["ccmas"] == pytest.approx(0.1 / 2.1, abs=1e-6)
    else:
        assert reference_unit(a, y, 10)["ccmas"] == pytest.approx(0.06, abs=0.005)


# --------------------------------------------------------------------------- degenerate units


def test_dead_unit():
    y = np.repeat(np.arange(3), 4)  # 3 classes x 4 images
    a = np.zeros(12, dtype=np.float32)
    check(
        reference_unit(a, y, 3),
        {
            "ccmas": float("nan"),  # 0/0
            "ccmas_class": 0,  # all means tie at 0: lowest index
            "ccmas_2": float("nan"),
            "ccmas_2_class": 1,
            "top_class": 0,  # maximum 0 shared by every class: lowest index
            "top_cluster_size": 0,  # nothing strictly above m2 = 0
            "tcs": 0.0,
            "localist": "",
            "localist_class": -1,
            # k_eff = min(60, 12) = 12, all tied: E_c = 4 -> 4/12
            "precision_60": 1 / 3,
            "precision_60_class": 0,
            "precision_100": 1 / 3,
            "precision_100_class": 0,
            # only threshold 0: hit 1, fa 1 -> 0 for every class
            "max_informedness": 0.0,
            "max_informedness_class": 0,
            "top_class_max_informedness": 0.0,
            # precision 4/12 < 0.95: no threshold qualifies
            "top_class_recall_at_precision_95": 0.0,
            "top_class_recall_at_precision_100": 0.0,
            # one threshold: R = 1, Prec = 1/3
            "top_class_average_precision": 1 / 3,
            # 2*4 / (12 + 4)
            "top_class_max_f1": 0.5,
            "mean_activation": 0.0,
            "max_activation": 0.0,
            "dead": True,
        },
    )


def test_every_image_tied():
    y = np.array([0] * 2 + [1] * 3 + [2] * 5)  # class sizes 2, 3, 5
    a = np.full(10, 0.5, dtype=np.float32)
    check(
        reference_unit(a, y, 3),
        {
            "ccmas": 0.0,  # A = 0 (tie), (0.5 - 0.5) / 1
            "ccmas_class": 0,
            "ccmas_2": 0.0,  # B = 1, mu_notAB = 0.5
            "ccmas_2_class": 1,
            "top_class": 0,
            "top_cluster_size": 0,
            "tcs": 0.0,
            "localist": "",
            "localist_class": -1,
            # k_eff = 10, everything tied: E_c = n_c -> max share 5/10, class 2
            "precision_60": 0.5,
            "precision_60_class": 2,
            "precision_100": 0.5,
            "precision_100_class": 2,
            "max_informedness": 0.0,
            "max_informedness_class": 0,
            "top_class_max_informedness": 0.0,
            "top_class_recall_at_precision_95": 0.0,
            "top_class_recall_at_precision_100": 0.0,
            "top_class_average_precision": 0.2,  # R = 1, Prec = 2/10
            "top_class_max_f1": 1 / 3,  # 2*2 / (10 + 2)
            "mean_activation": 0.5,
            "max_activation": 0.5,
            "dead": False,
        },
    )


# --------------------------------------------------------------------------- CCMAS


def test_negative_activations_ccmas_beyond_one():
    y = np.array([0, 0, 1, 1])
    a = np.array([1.0, 1.0, -0.5, -0.5], dtype=np.float32)
    r = reference_unit(a, y, 2)
    # (1 - (-0.5)) / (1 + (-0.5)) = 1.5 / 0.5 = 3
    assert r["ccmas"] == pytest.approx(3.0, **APPROX)
    assert r["ccmas_class"] == 0
    # B = 1 but no image outside classes 0 and 1
    assert math.isnan(r["ccmas_2"]) and r["ccmas_2_class"] == 1


def test_ccmas_pooled_vs_class_means():
    y = np.array([0] * 2 + [1] * 4 + [2] * 2)
    a = np.array([1.0] * 2 + [-0.5] * 4 + [0.25] * 2, dtype=np.float32)
    pooled = reference_unit(a, y, 3)
    means = reference_unit(a, y, 3, ccmas_mode="class_means")
    # pooled: mu_not0 = (4*(-0.5) + 2*0.25)/6 = -0.25 -> 1.25 / 0.75 = 5/3
    assert pooled["ccmas"] == pytest.approx(5 / 3, **APPROX)
    # class means: mu_not0 = (-0.5 + 0.25)/2 = -0.125 -> 1.125 / 0.875 = 9/7
    assert means["ccmas"] == pytest.approx(9 / 7, **APPROX)
    assert pooled["ccmas_class"] == means["ccmas_class"] == 0
    # ccmas_2 ignores the mode: B = 2 (0.25), mu_notAB = -0.5 -> 0.75 / -0.25 = -3
    for r in (pooled, means):
        assert r["ccmas_2"] == pytest.approx(-3.0, **APPROX)
        assert r["ccmas_2_class"] == 2
    # everything else is identical
    for key in COLUMNS[1:]:
        if key != "ccmas":
            assert pooled[key] == means[key]


def test_unknown_ccmas_mode_rejected():
    with pytest.raises(ValueError, match="ccmas_mode"):
        reference_unit(np.zeros(2, np.float32), np.array([0, 1]), 2, ccmas_mode="morcos")


# --------------------------------------------------------------------------- single images, localist


def test_class_with_single_image():
    y = np.array([0, 1, 1, 1, 2, 2])
    a = np.array([2.0, 1.0, 0.0, 0.0, 0.5, 0.5], dtype=np.float32)
    check(
        reference_unit(a, y, 3),
        {
            # means 2, 1/3, 0.5; mu_not0 = (1 + 0.5 + 0.5)/5 = 0.4 -> 1.6/2.4 = 2/3
            "ccmas": 2 / 3,
            "ccmas_class": 0,
            # B = 2 (0.5); mu_notAB = mean(class 1) = 1/3 -> (1/6)/(5/6) = 0.2
            "ccmas_2": 0.2,
            "ccmas_2_class": 2,
            # T = 0 (its one image, 2.0), m2 = 1.0: size 1 of n_T = 1
            "top_class": 0,
            "top_cluster_size": 1,
            "tcs": 1.0,
            "localist": "on",
            "localist_class": 0,
            # k_eff = 6 = N: v = 0, g = (1, 1, 2), t = (0, 2, 0), r = 2 -> E = (1, 3, 2): 3/6
            "precision_60": 0.5,
            "precision_60_class": 1,
            # class 0 at threshold 2: hit 1, fa 0
            "max_informedness": 1.0,
            "max_informedness_class": 0,
            "top_class_max_informedness": 1.0,
            "top_class_recall_at_precision_95": 1.0,
            "top_class_recall_at_precision_100": 1.0,
            "top_class_average_precision": 1.0,
            "top_class_max_f1": 1.0,
            "mean_activation": 4.0 / 6,
            "max_activation": 2.0,
        },
    )


def test_localist_off():
    y = np.array([0, 0, 1, 1, 2, 2])
    a = np.array([0.5, 0.6, 0.7, 0.4, 0.1, 0.0], dtype=np.float32)
    r = reference_unit(a, y, 3)
    # T = 1 (0.7): min over T = 0.4 is not > 0.6. Lowest minimum: class 2 (0.0),
    # max over class 2 = 0.1 < min over the rest = 0.4 -> 'off' for class 2
    assert r["top_class"] == 1
    assert (r["localist"], r["localist_class"]) == ("off", 2)


def test_localist_off_needs_a_unique_lowest_class():
    y = np.array([0, 0, 1, 1, 2, 2])
    a = np.array([0.0, 0.1, 0.7, 0.05, 0.1, 0.0], dtype=np.float32)
    r = reference_unit(a, y, 3)
    # T = 1, but its min 0.05 is not > 0.1, so not 'on'.
    # classes 0 and 2 share the lowest minimum 0.0 -> A' = 0, max 0.1 is not < min(rest) = 0.0
    assert (r["localist"], r["localist_class"]) == ("", -1)


def test_localist_on_wins_over_off():
    y = np.array([0, 0, 1, 1])
    a = np.array([1.0, 2.0, 0.0, 0.5], dtype=np.float32)
    r = reference_unit(a, y, 2)
    # with two classes both hold (class 0 on, class 1 off): 'on' is checked first
    assert (r["localist"], r["localist_class"]) == ("on", 0)


# --------------------------------------------------------------------------- precision


def test_precision_ties_shared_fractionally():
    # class 0: 25 images at 2.0; class 1: 60 at 1.0; class 2: 15 at 1.0; class 3: 20 at 0.
    y = np.repeat([0, 1, 2, 3], [25, 60, 15, 20])
    a = np.repeat(np.array([2.0, 1.0, 1.0, 0.0], dtype=np.float32), [25, 60, 15, 20])
    r = reference_unit(a, y, 4)
    # k = 60: v = 1.0 (rank 60 lies in the 75 tied ones); g_0 = 25, t = (0, 60, 15, 0), r = 35
    # E = (25, 60*35/75, 15*35/75, 0) = (25, 28, 7, 0) -> 28/60, class 1
    assert r["precision_60"] == pytest.approx(28 / 60, **APPROX)
    assert r["precision_60_class"] == 1
    # k = 100: v = 1.0 again (ranks 26..100), r = 75 = t: every tied image in -> E_1 = 60
    assert r["precision_100"] == pytest.approx(0.6, **APPROX)
    assert r["precision_100_class"] == 1


def test_precision_tie_between_classes_goes_to_lowest_index():
    # classes 2 and 1 have the same expected count: the lower index (1) wins
    y = np.repeat([0, 1, 2], [5, 30, 30])
    a = np.repeat(np.array([0.0, 1.0, 1.0], dtype=np.float32), [5, 30, 30])
    r = reference_unit(a, y, 3)
    # k = 60 of N = 65: v = 1.0, t = (0, 30, 30), r = 60 -> E = (0, 30, 30): 0.5, class 1
    assert r["precision_60"] == pytest.approx(0.5, **APPROX)
    assert r["precision_60_class"] == 1
    # k_eff = 65: everything in, E = (5, 30, 30): 30/65, class 1
    assert r["precision_100"] == pytest.approx(30 / 65, **APPROX)
    assert r["precision_100_class"] == 1


# --------------------------------------------------------------------------- signal detection


def tiny_example():
    # descending activations with labels 0 1 0 0 1 1 (class 0 = top class, n_T = 3)
    a = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], dtype=np.float32)
    y = np.array([0, 1, 0, 0, 1, 1])
    return a, y


def test_signal_detection_tiny_example():
    a, y = tiny_example()
    r = reference_unit(a, y, 2)
    # threshold: P, TP(class 0), precision, recall, hit - fa (class 0; N - n_0 = 3)
    #   0.9: 1, 1, 1,   1/3,  1/3 - 0   = 1/3
    #   0.8: 2, 1, 1/2, 1/3,  1/3 - 1/3 = 0
    #   0.7: 3, 2, 2/3, 2/3,  2/3 - 1/3 = 1/3
    #   0.6: 4, 3, 3/4, 1,    1 - 1/3   = 2/3
    #   0.5: 5, 3, 3/5, 1,    1 - 2/3   = 1/3
    #   0.4: 6, 3, 1/2, 1,    1 - 1     = 0
    assert r["top_class"] == 0
    # AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/4 = 29/36
    assert r["top_class_average_precision"] == pytest.approx(29 / 36, **APPROX)
    # only threshold 0.9 has precision >= 0.95 (and == 1): recall 1/3
    assert r["top_class_recall_at_precision_95"] == pytest.approx(1 / 3, **APPROX)
    assert r["top_class_recall_at_precision_100"] == pytest.approx(1 / 3, **APPROX)
    # F1 = 2 TP / (P + 3): 2/4, 2/5, 4/6, 6/7, 6/8, 6/9 -> 6/7
    assert r["top_class_max_f1"] == pytest.approx(6 / 7, **APPROX)
    assert r["top_class_max_informedness"] == pytest.approx(2 / 3, **APPROX)
    # class 1: hit - fa = -1/3, 0, -1/3, -2/3, -1/3, 0 -> 0; so the maximum is class 0's
    assert r["max_informedness"] == pytest.approx(2 / 3, **APPROX)
    assert r["max_informedness_class"] == 0
    # the rest of this unit, for completeness
    m0, m1 = (f32(0.9) + f32(0.7) + f32(0.6)) / 3, (f32(0.8) + f32(0.5) + f32(0.4)) / 3
    assert r["ccmas"] == pytest.approx((m0 - m1) / (m0 + m1), **APPROX)  # ~ 0.1282
    assert math.isnan(r["ccmas_2"]) and r["ccmas_2_class"] == 1  # nothing outside 0 and 1
    assert (r["top_cluster_size"], r["tcs"]) == (1, pytest.approx(1 / 3))  # only 0.9 > m2 = 0.8
    assert (r["localist"], r["localist_class"]) == ("", -1)
    # k_eff = 6: both classes 3/6; tie -> class 0
    assert (r["precision_60"], r["precision_60_class"]) == (0.5, 0)


def test_recall_at_precision_95_boundary_is_inclusive():
    # threshold 1.0: 19 of class 0 and 1 of class 1 -> precision exactly 19/20 = 0.95
    y = np.repeat([0, 1, 1, 0], [19, 1, 10, 1])
    a = np.repeat(np.array([1.0, 1.0, 0.0, 0.0], dtype=np.float32), [19, 1, 10, 1])
    r = reference_unit(a, y, 2)
    # maximum 1.0 is shared by classes 0 and 1: T = 0, cluster size 0
    assert r["top_class"] == 0
    assert r["top_cluster_size"] == 0 and r["tcs"] == 0.0
    # recall 19/20 at threshold 1.0 (n_T = 20); threshold 0 has precision 20/31
    assert r["top_class_recall_at_precision_95"] == pytest.approx(0.95, **APPROX)
    assert r["top_class_recall_at_precision_100"] == 0.0


def test_average_precision_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for _ in range(20):
        y = rng.integers(0, 4, 200)
        a = np.round(rng.normal(size=200), 1).astype(np.float32)  # many ties
        r = reference_unit(a, y, 4)
        want = metrics.average_precision_score(y == r["top_class"], a)
        assert r["top_class_average_precision"] == pytest.approx(want, rel=1e-9)


# --------------------------------------------------------------------------- absent classes


def test_absent_classes_are_ignored():
    # n_classes = 5 but only classes 1 and 3 have images; all activations negative, so an
    # absent class (mean "0" or NaN) would win any argmax it was allowed into
    y = np.array([1, 1, 3, 3])
    a = np.array([-1.0, -1.0, -2.0, -2.0], dtype=np.float32)
    check(
        reference_unit(a, y, 5),
        {
            # A = 1, mu_not1 = -2 -> (-1 + 2)/(-1 - 2) = -1/3
            "ccmas": -1 / 3,
            "ccmas_class": 1,
            # B = 3, no image outside {1, 3}
            "ccmas_2": float("nan"),
            "ccmas_2_class": 3,
            "top_class": 1,
            "top_cluster_size": 2,
            "tcs": 1.0,
            "localist": "on",
            "localist_class": 1,
            # k_eff = 4, v = -2: g_1 = 2, t_3 = 2, r = 2 -> E = 2, 2 -> 0.5, class 1
            "precision_60": 0.5,
            "precision_60_class": 1,
            "max_informedness": 1.0,
            "max_informedness_class": 1,
        },
    )


def test_absent_class_dead_unit_picks_lowest_present_class():
    y = np.array([1, 1, 2, 2])
    a = np.zeros(4, dtype=np.float32)
    r = reference_unit(a, y, 3)  # class 0 absent
    assert r["ccmas_class"] == 1 and r["ccmas_2_class"] == 2
    assert r["top_class"] == 1
    assert r["precision_60_class"] == 1 and r["precision_100_class"] == 1
    assert r["max_informedness"] == 0.0 and r["max_informedness_class"] == 1
    assert r["dead"] is True


def test_single_present_class():
    y = np.array([2, 2, 2])
    a = np.array([0.0, 1.0, 3.0], dtype=np.float32)
    r = reference_unit(a, y, 4)
    # nothing to compare with
    assert math.isnan(r["ccmas"]) and r["ccmas_class"] == 2
    assert math.isnan(r["ccmas_2"]) and r["ccmas_2_class"] == -1
    assert (r["localist"], r["localist_class"]) == ("", -1)
    # m2 = -inf: every image of T is in the cluster
    assert (r["top_class"], r["top_cluster_size"], r["tcs"]) == (2, 3, 1.0)
    # N == n_c: false alarm 0, so informedness = best hit rate = 1 (lowest threshold)
    assert r["max_informedness"] == 1.0 and r["max_informedness_class"] == 2
    assert r["top_class_average_precision"] == 1.0


# --------------------------------------------------------------------------- the frame


def test_reference_measures_frame():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    acts = np.maximum(rng.normal(size=(300, 4)), 0).astype(np.float32)
    acts[:, 2] = 0.0  # a dead unit
    frame = reference_measures(acts, list(y), 5)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == list(COLUMNS)
    assert frame["unit"].tolist() == [0, 1, 2, 3]
    assert frame["dead"].tolist() == [False, False, True, False]
    for name in (
        "unit",
        "ccmas_class",
        "top_cluster_size",
        "localist_class",
        "max_informedness_class",
    ):
        assert frame[name].dtype == np.int64
    assert frame["dead"].dtype == bool
    assert frame["tcs"].dtype == np.float64
    # each row is reference_unit on that column
    for u in range(4):
        want = reference_unit(acts[:, u], y, 5)
        got = frame.iloc[u]
        for key, value in want.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(got[key])
            else:
                assert got[key] == value, key


def test_reference_measures_mode_is_passed_through():
    y = np.array([0] * 2 + [1] * 4 + [2] * 2)
    acts = np.array([1.0] * 2 + [-0.5] * 4 + [0.25] * 2, dtype=np.float32)[:, None]
    frame = reference_measures(acts, y, 3, ccmas_mode="class_means")
    assert frame["ccmas"].iloc[0] == pytest.approx(9 / 7, **APPROX)


def test_invalid_inputs_rejected():
    with pytest.raises(ValueError):
        reference_unit(np.zeros(3, np.float32), np.array([0, 1]), 2)  # length mismatch
    with pytest.raises(ValueError):
        reference_unit(np.zeros(2, np.float32), np.array([0, 2]), 2)  # label out of range
    with pytest.raises(ValueError):
        reference_unit(np.array([0.0, np.nan], np.float32), np.array([0, 1]), 2)  # not finite
    with pytest.raises(ValueError):
        reference_measures(np.zeros(3, np.float32), np.array([0, 1, 1]), 2)  # not 2-d
