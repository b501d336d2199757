"""Table 2's last three columns, both ways (docs/table2.md): ``agreement="share"`` (the mean
over units of each unit's share of coded answers that agree / match, ± the SE of that mean)
and ``agreement="unit"`` (the share of units scored yes or no, ± the binomial SE); and the
threshold, ">= 80%" or, with ``strict``, "> 80%".

The expected values are computed by hand in the comments; the paper's figures (Gale et al.
2020, Table 2, as quoted in issue 15 and docs/table2.md) are reproduced from constructed
per-unit shares through :func:`analysis.table2.mean_share`, the function the table uses."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_table2 import ToyCoder

from analysis.table2 import (
    TABLE2_COLUMNS,
    UNIT_COLUMNS,
    Table2Error,
    format_markdown,
    mean_share,
    proportion,
    table2,
)

CLASSES = {i: frozenset({f"c{i}"}) for i in range(20)}


def study(units, raters=5, layer="fc8"):
    """``units``: {unit: (yes answers, top class, CCMAS class)}; each unit is rated by
    ``raters`` people, the first ones saying yes with the given answers, the rest no."""
    rows, sel = [], []
    for unit, (answers, top, ccmas) in units.items():
        for r in range(raters):
            yes = r < len(answers)
            rows.append({"participant_id": f"p{r}", "trial_index": len(rows),
                         "practice": False, "panel_id": f"{layer}_{unit}", "layer": layer,
                         "unit": unit, "answer_yes": yes,
                         "object_text": answers[r] if yes else ""})
        sel.append({"layer": layer, "unit": unit, "top_class": top, "ccmas_class": ccmas})
    return pd.DataFrame(rows), pd.DataFrame(sel)


# Seven fc8 units, five raters each. Per unit (coded answers only; "?.." is uncodeable):
#   unit  yes  answers                    top  CCMAS  coded  modal group  top hits  CCMAS hits
#   0     5/5  c0 c0 c0 c0 c0             0    0      5      5 (c0)       5         5
#   1     5/5  c1 c1 c1 c2 c3             1    2      5      3 (c1)       3         1
#   2     4/5  c2 c2 c5 ?xx               2    5      3      2 (c2)       2         1
#   3     4/5  c3 c4 c6 c7                3    9      4      1 -> 0       1         0
#   4     3/5  c4 c4 c4                   4    4      (60% yes: not counted)
#   5     5/5  ?a ?b ?c ?d ?e             5    5      0      -            -         -
#   6     5/5  c6 ?p ?q ?r ?s             6    6      1      (one: -)     1         1
MIXED = {
    0: (["c0"] * 5, 0, 0),
    1: (["c1", "c1", "c1", "c2", "c3"], 1, 2),
    2: (["c2", "c2", "c5", "?xx"], 2, 5),
    3: (["c3", "c4", "c6", "c7"], 3, 9),
    4: (["c4"] * 3, 4, 4),
    5: (["?a", "?b", "?c", "?d", "?e"], 5, 5),
    6: (["c6", "?p", "?q", "?r", "?s"], 6, 6),
}


def test_unit_scoring_and_share_averaging_give_their_hand_computed_answers():
    responses, sel = study(MIXED)
    unit_table, detail = table2(responses, sel, ToyCoder(), CLASSES, agreement="unit")
    share_table, share_detail = table2(responses, sel, ToyCoder(), CLASSES)  # the default
    assert list(share_table.columns) == TABLE2_COLUMNS
    assert share_table.loc[0, "agreement"] == "share" and unit_table.loc[0, "agreement"] == "unit"
    for table in (unit_table, share_table):
        row = table.iloc[0]
        # 6 of 7 units have >= 80% yes (4/5 counts): 85.7%, binomial SE sqrt(6/7 * 1/7 / 7)
        assert row["n_units"] == 7 and row["n_units_yes80"] == 6
        assert row["pct_units_yes80"] == pytest.approx(100 * 6 / 7)
        assert row["pct_units_yes80_se"] == pytest.approx(100 * math.sqrt(6 / 49 / 7))
        # answers of the six units: 5 + 5 + 4 + 4 + 5 + 5 = 28, uncoded 1 + 5 + 4 = 10
        assert row["n_answers_yes80"] == 28 and row["n_answers_uncoded"] == 10

    # -- unit: over the 6 units, each scored yes or no ---------------------------------------
    # agree (one coded answer agrees with all others, two coded at least): unit 0 only -> 1/6
    # match top (more than half the coded answers): units 0 (5/5), 1 (3/5), 2 (2/3), 6 (1/1)
    #   -> 4/6; match CCMAS: units 0 (5/5), 6 (1/1) -> 2/6. Unit 5 (nothing coded) scores no.
    row = unit_table.iloc[0]
    assert row["pct_agree_humans"] == pytest.approx(100 / 6)
    assert row["pct_agree_humans_se"] == pytest.approx(100 * math.sqrt(1 / 6 * 5 / 6 / 6))
    assert row["pct_match_top_class"] == pytest.approx(100 * 4 / 6)
    assert row["pct_match_top_class_se"] == pytest.approx(100 * math.sqrt(4 / 6 * 2 / 6 / 6))
    assert row["pct_match_ccmas_class"] == pytest.approx(100 * 2 / 6)
    assert row["pct_match_ccmas_class_se"] == pytest.approx(100 * math.sqrt(2 / 6 * 4 / 6 / 6))
    assert row["n_units_agree_humans"] == row["n_units_match_top_class"] == 6

    # -- share: the mean of each unit's share, ± SD (ddof=1) / sqrt(n units) -----------------
    # agree, the units with two coded answers or more (0, 1, 2, 3): 5/5, 3/5, 2/3, 0
    #   mean = (1 + 0.6 + 0.6667 + 0) / 4 = 17/30 = 56.67%;
    #   deviations 13/30, 1/30, 3/30, -17/30: squares sum (169 + 1 + 9 + 289)/900 = 0.52;
    #   SD^2 = 0.52/3, SE = sqrt(0.52/3/4) = 0.2082 -> 20.8
    row = share_table.iloc[0]
    assert row["n_units_agree_humans"] == 4
    assert row["pct_agree_humans"] == pytest.approx(100 * 17 / 30)
    assert row["pct_agree_humans_se"] == pytest.approx(100 * math.sqrt(0.52 / 3 / 4))
    # top class, the units with a coded answer (0, 1, 2, 3, 6): 1, 3/5, 2/3, 1/4, 1
    #   mean = (300 + 180 + 200 + 75 + 300)/300/5 = 1055/1500 = 211/300 = 70.33%;
    #   in 300ths the deviations are 89, -31, -11, -136, 89: squares sum 35,420/90,000;
    #   SE = sqrt(35420/90000/4/5) = 0.1403 -> 14.0
    assert row["n_units_match_top_class"] == 5
    assert row["pct_match_top_class"] == pytest.approx(100 * 211 / 300)
    assert row["pct_match_top_class_se"] == pytest.approx(100 * math.sqrt(35420 / 90000 / 20))
    # CCMAS class, the same units: 1, 1/5, 1/3, 0, 1 -> in 150ths 150, 30, 50, 0, 150,
    #   mean 76/150 = 50.67%; deviations 74, -46, -26, -76, 74: squares sum 19,520/22,500;
    #   SE = sqrt(19520/22500/4/5) = 0.2083 -> 20.8
    assert row["n_units_match_ccmas_class"] == 5
    assert row["pct_match_ccmas_class"] == pytest.approx(100 * 76 / 150)
    assert row["pct_match_ccmas_class_se"] == pytest.approx(100 * math.sqrt(19520 / 22500 / 20))
    # the t 95% interval: mean ± t(0.975, 3 df) SE, t = 3.182446, clipped to 0-100:
    #   0.5667 ± 0.6625 -> 0 to 1; top class, 4 df: 0.7033 ± 2.776445 * 0.1403 = 0.3139-1.0928
    half = 3.182446305284263 * math.sqrt(0.52 / 12)
    assert 17 / 30 - half < 0 and row["pct_agree_humans_ci_low"] == 0
    assert 17 / 30 + half > 1 and row["pct_agree_humans_ci_high"] == 100
    half = 2.7764451051977987 * math.sqrt(35420 / 90000 / 20)
    assert row["pct_match_top_class_ci_low"] == pytest.approx(100 * (211 / 300 - half))
    assert row["pct_match_top_class_ci_high"] == 100

    # the two ways differ, as the paper's figures say they must
    assert unit_table.iloc[0]["pct_agree_humans"] != pytest.approx(row["pct_agree_humans"])

    # the markdown shows each mean ± SE with the number of units it averages (yes: 5 + 5 +
    # 4 + 4 + 3 + 5 + 5 = 31 of 35 judgments, 88.6 ± sqrt(31/35 * 4/35 / 35) = 5.4)
    markdown = format_markdown(share_table)
    assert ("| fc8 | 88.6 ± 5.4 (n=35) | 85.7 ± 13.2 (n=7) | 56.7 ± 20.8 (n=4) "
            "| 70.3 ± 14.0 (n=5) | 50.7 ± 20.8 (n=5) |") in markdown
    assert "humans agree (mean % of a unit's answers)" in markdown and "ddof=1" in markdown
    assert "| 16.7 ± 15.2 (n=6) | 66.7 ± 19.2 (n=6) | 33.3 ± 19.2 (n=6) |" in format_markdown(
        unit_table)

    # table2_units.csv carries every unit's counts and shares: the table is recomputable
    assert detail.equals(share_detail)
    assert set(UNIT_COLUMNS) <= set(detail.columns)
    d = detail.set_index("unit")
    assert not d.loc[4, "yes80"] and pd.isna(d.loc[4, "share_agree_humans"])
    assert d.loc[[0, 1, 2, 3, 5, 6], "n_coded"].tolist() == [5, 5, 3, 4, 0, 1]
    assert d.loc[[0, 1, 2, 3, 5, 6], "n_agree_humans"].tolist() == [5, 3, 2, 0, 0, 0]
    assert d.loc[[0, 1, 2, 3, 6], "n_match_top_class"].tolist() == [5, 3, 2, 1, 1]
    assert d.loc[[0, 1, 2, 3, 6], "n_match_ccmas_class"].tolist() == [5, 1, 1, 0, 1]
    assert d.loc[[0, 1, 2, 3], "modal_answer"].tolist() == ["c0", "c1", "c2", ""]
    assert d.loc[1, "share_agree_humans"] == pytest.approx(0.6)
    assert d.loc[2, "share_match_ccmas_class"] == pytest.approx(1 / 3)
    assert d.loc[[5, 6], "share_agree_humans"].isna().all()      # fewer than two coded
    assert pd.isna(d.loc[5, "share_match_top_class"]) and d.loc[6, "share_match_top_class"] == 1
    high = detail[detail["yes80"]]
    for stem in ("agree_humans", "match_top_class", "match_ccmas_class"):
        shares = high[f"share_{stem}"].dropna()
        assert 100 * shares.mean() == pytest.approx(row[f"pct_{stem}"])
        recomputed = high[f"n_{stem}"] / high["n_coded"]
        assert np.allclose(recomputed[shares.index], shares)


def test_the_modal_answer_of_a_tie_is_the_first_by_text_whatever_the_order():
    answers = ["c2", "c1", "c3", "c2", "c1"]                       # c1 and c2: two each
    for order in (answers, answers[::-1]):
        responses, sel = study({0: (order, 1, 2)})
        row = table2(responses, sel, ToyCoder(), CLASSES)[1].iloc[0]
        assert row["modal_answer"] == "c1" and row["n_agree_humans"] == 2
        assert row["share_agree_humans"] == pytest.approx(2 / 5)


def test_strict_threshold_leaves_out_a_unit_at_exactly_80_percent():
    # unit 0: 5 of 5 yes; unit 1: 4 of 5 yes (exactly 80%); unit 2: 3 of 5
    units = {0: (["c0"] * 5, 0, 0), 1: (["c1", "c1", "c1", "c9"], 1, 1),
             2: (["c2"] * 3, 2, 2)}
    responses, sel = study(units)
    at_least, d1 = table2(responses, sel, ToyCoder(), CLASSES)
    over, d2 = table2(responses, sel, ToyCoder(), CLASSES, strict=True)
    assert d1["yes80"].tolist() == [True, True, False]
    assert d2["yes80"].tolist() == [True, False, False]
    assert at_least.loc[0, "n_units_yes80"] == 2 and over.loc[0, "n_units_yes80"] == 1
    # >= 80%: agreement shares 5/5 and 3/4 -> 87.5; > 80%: unit 0 alone -> 100, no SE
    assert at_least.loc[0, "pct_agree_humans"] == pytest.approx(87.5)
    assert over.loc[0, "pct_agree_humans"] == pytest.approx(100)
    assert math.isnan(over.loc[0, "pct_agree_humans_se"])
    assert "% units with ≥80% yes" in format_markdown(at_least)
    strict_md = format_markdown(over, strict=True)
    assert "% units with >80% yes" in strict_md and "| 100.0 ± – (n=1) |" in strict_md
    # the same at another threshold: 0.6 counts unit 2 (3 of 5), strict 0.6 does not
    assert table2(responses, sel, ToyCoder(), CLASSES, 0.6)[0].loc[0, "n_units_yes80"] == 3
    assert table2(responses, sel, ToyCoder(), CLASSES, 0.6,
                  strict=True)[0].loc[0, "n_units_yes80"] == 2
    with pytest.raises(Table2Error, match="more than 100% yes"):
        table2(responses, sel, ToyCoder(), CLASSES, 1.0, strict=True)
    with pytest.raises(Table2Error, match="agreement 'units'"):
        table2(responses, sel, ToyCoder(), CLASSES, agreement="units")


# -- the paper's figures --------------------------------------------------------------------

def shares(counts, n):
    """``n`` per-unit shares: ``counts`` maps a share to how many units have it, the rest 1."""
    values = [value for value, k in counts.items() for _ in range(k)]
    assert len(values) <= n
    return values + [1.0] * (n - len(values))


# Gale et al. 2020, Table 2, as quoted in issue 15 (docs/table2.md): units with >= 80% yes
# conv5 11 (4.3% of 256), fc6 63 (3.1% of 2,048; 64 rounds the same), fc8 590 (59.3% of 995).
# Each case: (layer, column, unit count, constructed shares, the paper's mean or None, its ±
# or None). The shares are multiples of 1/5 and 1/4 (five raters, four or five coded answers).
# Where the issue quotes a mean without its ± (conv5, fc6), the ± asserted is the one the
# constructed set gives; where it quotes a ± without its mean (fc8's two match columns: ± 0.6
# and ± 0.7), the mean is left unasserted (these constructed means are not the paper's).
PAPER = [
    # conv5 humans agree 89.5 (Table 2): 7 units at 1 + 0.8 + 0.8 + 0.75 + 0.5 = 9.85 of 11
    #   -> 89.55 -> 89.5; SD = 0.1650 (ddof=1), SE = 0.1650 / sqrt(11) = 4.98 -> ± 5.0
    ("conv5", "humans agree", 11, shares({0.8: 2, 0.75: 1, 0.5: 1}, 11), 89.5, 5.0),
    # conv5 match top class 34.1 (Table 2): 1 + 1 + 0.75 + 0.6 + 0.4 = 3.75 of 11 -> 34.09
    #   -> 34.1; SE = 12.8
    ("conv5", "match top class", 11, shares({0.75: 1, 0.6: 1, 0.4: 1, 0.0: 6}, 11), 34.1,
     12.8),
    # fc6 humans agree 80.4 (Table 2): 40 at 1, 10 at 0.8, 3 at 0.75, 1 at 0.4, 9 at 0:
    #   50.65 of 63 -> 80.40, SE 4.39; with a 64th unit at 0.8, 51.45 of 64 -> 80.39, SE 4.32
    ("fc6", "humans agree", 63, shares({0.8: 10, 0.75: 3, 0.4: 1, 0.0: 9}, 63), 80.4, 4.4),
    ("fc6", "humans agree", 64, shares({0.8: 11, 0.75: 3, 0.4: 1, 0.0: 9}, 64), 80.4, 4.3),
    # fc8 humans agree 96.5 ± 0.4 (Table 2): 514 at 1, 49 at 0.8, 27 at 0.6:
    #   569.4 of 590 -> 96.51; SD = 0.0972, SE = 0.0972 / sqrt(590) = 0.400 -> ± 0.4
    ("fc8", "humans agree", 590, shares({0.8: 49, 0.6: 27}, 590), 96.5, 0.4),
    # fc8 match top class ± 0.6 (Table 2; mean not asserted): 25 at 0.8, 12 at 0 -> ± 0.600
    ("fc8", "match top class", 590, shares({0.8: 25, 0.0: 12}, 590), None, 0.6),
    # fc8 match CCMAS class ± 0.7 (Table 2; mean not asserted): 7 at 0.8, 1 at 0.4, 17 at 0
    #   -> ± 0.700
    ("fc8", "match CCMAS class", 590, shares({0.8: 7, 0.4: 1, 0.0: 17}, 590), None, 0.7),
]


@pytest.mark.parametrize("layer, column, n, values, mean, se", PAPER,
                         ids=[f"{p[0]}-{p[1]}-{p[2]}" for p in PAPER])
def test_the_papers_figures_follow_from_per_unit_shares(layer, column, n, values, mean, se):
    assert len(values) == n
    result = mean_share(values)
    if mean is not None:
        assert round(result[""], 1) == mean
    assert round(result["_se"], 1) == se
    assert result["_ci_low"] < result[""] < result["_ci_high"]


@pytest.mark.parametrize("pct, counts", [
    (89.5, [11]), (34.1, [11]),          # conv5: 11 units
    (80.4, [63, 64]),                    # fc6
    (96.5, range(586, 591)),             # fc8: about 590 units
])
def test_the_papers_figures_are_no_share_of_units(pct, counts):
    # what agreement="unit" computes, k of n units, never prints the paper's figure
    for n in counts:
        assert all(round(proportion(k, n)[""], 1) != pct for k in range(n + 1)), n


def test_fc8s_plus_minus_is_half_a_binomial_se_over_its_units():
    # 96.5% of 590 units as a share of units would be ± 0.8, twice the paper's ± 0.4
    assert round(100 * math.sqrt(0.965 * 0.035 / 590), 1) == 0.8
    assert round(proportion(569, 590)["_se"], 1) == 0.8


def test_mean_share_edge_cases():
    assert all(math.isnan(v) for v in mean_share([]).values())
    one = mean_share([0.75])
    assert one[""] == 75 and math.isnan(one["_se"]) and math.isnan(one["_ci_low"])
    same = mean_share([1, 1, 1])
    assert same == {"": 100, "_se": 0, "_ci_low": 100, "_ci_high": 100}
    # ddof=1: shares 0 and 1 -> mean 0.5, SD sqrt(0.5), SE sqrt(0.5)/sqrt(2) = 0.5
    assert mean_share([0, 1])["_se"] == pytest.approx(50)
    assert mean_share([0, 1])["_ci_low"] == 0 and mean_share([0, 1])["_ci_high"] == 100
    for bad in ([1.2], [-0.1], [math.nan]):
        with pytest.raises(ValueError, match="in \\[0, 1\\]"):
            mean_share(bad)
