"""The panel method as a study condition (issue 18): panels of several methods (ppgn,
fourier, natural) dealt so that nobody sees a unit twice and every list balances layer x
method (experiment/design.py, step 2b; docs/study-design.md, "Methods"); study.json's
per-panel ``method`` (server/study_file.py); Table 2 per layer x method and the mixed
model's test of the method effect (analysis/table2.py; docs/table2.md, "Methods").

Each test builds its own panels in memory or under tmp_path. The one-method golden digests
were computed with the design as it was before methods (git HEAD before issue 18, part 3):
one manifest must still give the same study, byte for byte."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_design import (
    PAPER_LAYERS,
    make_world,
    panels_frame,
    png_bytes,
    practice_frame,
    write_csv,
)
from test_table2 import CLASSES, ToyCoder, imagenet_study, needs_wordnet

from analysis.table2 import (
    METHODS,
    Table2Error,
    format_markdown,
    has_methods,
    interpretability,
    kappa_by_layer,
    method_order,
    method_test,
    mixed_model,
    read_methods,
    read_responses,
    select_judgments,
    table2,
    unit_ratings,
    with_methods,
)
from experiment.design import build_design, main, read_manifests, read_panels, summary
from server.study_file import DesignError, read_study, validate_design

# ---------------------------------------------------------------------------
# Panels of several methods


def method_frame(layers: dict[str, dict[str, list[int] | int]]) -> pd.DataFrame:
    """An in-memory manifest of several methods: ``{layer: {method: units}}`` (a count n
    means units 0..n-1); ids as generator manifests write them (ppgn ``<layer>_<unit>``,
    others ``<method>_<layer>_<unit>``)."""
    rows = []
    for layer, methods in layers.items():
        for method, units in methods.items():
            for unit in (range(units) if isinstance(units, int) else units):
                pid = (f"{layer}_{unit:04d}" if method == "ppgn"
                       else f"{method}_{layer}_{unit:04d}")
                rows.append((pid, layer, unit, f"/data/{pid}.png", method))
    return pd.DataFrame(rows, columns=["panel_id", "layer", "unit", "path", "method"])


def check_methods_dealing(study: dict) -> None:
    """Every rule of issue 18 checked here, independently of validate_design: every panel
    in exactly one list; no list holds a unit (layer, unit) twice; per-list counts of every
    (layer, method), of every layer, and list sizes each within one of each other."""
    panels, lists = study["panels"], study["lists"]
    listed = [p for lst in lists for p in lst["panels"]]
    assert sorted(listed) == sorted(panels)
    for lst in lists:
        units = Counter((panels[p]["layer"], panels[p]["unit"]) for p in lst["panels"])
        assert max(units.values()) == 1, f"list {lst['id']} shows a unit twice"
    strata = {(e["layer"], e.get("method", "ppgn")) for e in panels.values()}
    for layer, method in strata:
        counts = [sum(panels[p]["layer"] == layer and panels[p].get("method", "ppgn") == method
                      for p in lst["panels"]) for lst in lists]
        assert max(counts) - min(counts) <= 1, (layer, method, counts)
    for layer in study["layers"]:
        counts = [sum(panels[p]["layer"] == layer for p in lst["panels"]) for lst in lists]
        assert max(counts) - min(counts) <= 1, (layer, counts)
    sizes = [len(lst["panels"]) for lst in lists]
    assert max(sizes) - min(sizes) <= 1
    assert sum(lst["target"] for lst in lists) == study["participants"]


THREE = {"ppgn": 1, "fourier": 1, "natural": 1}

SHAPES = {
    # 3 methods, uneven units: natural for every unit, fourier for half, ppgn for most
    "uneven": ({"conv5": {"ppgn": list(range(0, 20, 1)), "fourier": list(range(0, 20, 2)),
                          "natural": 20},
                "fc8": {"ppgn": list(range(3, 17)), "fourier": [0, 5, 9], "natural": 17}}, 5),
    # as many lists as methods: every unit with three panels fills three lists
    "tight": ({"fc6": {"ppgn": 7, "fourier": 7, "natural": 7}, "fc8": {"ppgn": 2,
               "natural": 2}}, 3),
    # a method of its own name (after the known ones) and single panels
    "other": ({"a": {"ppgn": 1, "zebra": [0], "natural": 1}, "b": {"fourier": 4,
               "zebra": [1, 2]}}, 4),
    "two": ({"fc8": {"ppgn": 11, "fourier": 11}}, 7),
}


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_dealing_balances_layer_x_method_and_never_shows_a_unit_twice(shape, seed):
    layers, n_lists = SHAPES[shape]
    study = build_design(method_frame(layers), practice_frame(), n_lists, n_lists + 3,
                         seed=seed)
    validate_design(study)
    check_methods_dealing(study)
    assert all("method" in e for e in study["panels"].values())
    again = build_design(method_frame(layers), practice_frame(), n_lists, n_lists + 3,
                         seed=seed)
    assert again["lists"] == study["lists"]                     # seeded


def test_many_random_shapes_deal_without_failure():
    rng = np.random.default_rng(2024)
    for trial in range(150):
        n_methods = int(rng.integers(2, 4))
        methods = list(METHODS[:n_methods])
        n_lists = int(rng.integers(n_methods, n_methods + 5))
        layers = {}
        for layer in ("conv5", "fc6", "fc8")[:int(rng.integers(1, 4))]:
            units = int(rng.integers(1, 3 * n_lists))
            share = rng.uniform(0.2, 1.0, size=n_methods)
            layers[layer] = {m: [u for u in range(units) if j == 0 or rng.random() < share[j]]
                             for j, m in enumerate(methods)}
        frame = method_frame(layers)
        if len(frame) < n_lists or frame["method"].nunique() < 2:
            continue
        study = build_design(frame, practice_frame(), n_lists, n_lists, seed=trial)
        validate_design(study)
        check_methods_dealing(study)


def test_the_paper_with_three_methods_in_64_lists():
    frame = method_frame({layer: dict.fromkeys(METHODS, n) for layer, n in
                          PAPER_LAYERS.items()})
    study = build_design(frame, practice_frame(), 64, 333, sample={"fc6": 2048}, seed=0)
    validate_design(study)
    check_methods_dealing(study)
    assert len(study["panels"]) == 3 * 3299
    per_list = [Counter((study["panels"][p]["layer"], study["panels"][p]["method"])
                        for p in lst["panels"]) for lst in study["lists"]]
    for counts in per_list:
        for method in METHODS:
            assert counts[("conv5", method)] == 4 and counts[("fc6", method)] == 32
            assert counts[("fc8", method)] in (15, 16)
    text = summary(study)
    assert "  fc8 / fourier" in text and "15-16" in text and "2048 units; sampled" in text


def test_sampling_draws_units_each_with_its_panels_of_every_method():
    frame = method_frame({"fc6": {"ppgn": 40, "fourier": list(range(0, 40, 2)),
                                  "natural": 40}, "fc8": THREE})
    study = build_design(frame, practice_frame(), 4, 8, sample={"fc6": 10}, seed=3)
    validate_design(study)
    fc6 = [e for e in study["panels"].values() if e["layer"] == "fc6"]
    units = {e["unit"] for e in fc6}
    assert len(units) == 10 and study["sample"] == {"fc6": 10}
    for unit in units:       # every method the manifest has for the unit, none dropped
        methods = {e["method"] for e in fc6 if e["unit"] == unit}
        assert methods == ({"ppgn", "fourier", "natural"} if unit % 2 == 0
                           else {"ppgn", "natural"})
    with pytest.raises(DesignError, match="has only 40 units"):
        build_design(frame, practice_frame(), 4, 8, sample={"fc6": 41})


def test_more_methods_than_lists_is_refused_with_a_clear_message():
    frame = method_frame({"fc8": dict.fromkeys(METHODS, 5)})
    with pytest.raises(DesignError, match=r"lists = 2 \(--lists\).*3 panels of fc8 unit "
                                          r"\d+ \(ppgn, fourier, natural\).*nobody may see a "
                                          r"unit twice.*at least 3 lists"):
        build_design(frame, practice_frame(), 2, 4)
    build_design(frame, practice_frame(), 3, 4)            # as many lists as methods: fine


def test_two_panels_of_one_unit_and_method_are_refused():
    frame = method_frame({"fc8": {"ppgn": 3, "fourier": 3}})
    frame.loc[len(frame)] = ["fourier_fc8_again", "fc8", 1, "/data/x.png", "fourier"]
    with pytest.raises(DesignError, match="fc8 unit 1, method fourier: panels "
                                          "'fourier_fc8_0001' and 'fourier_fc8_again'"):
        build_design(frame, practice_frame(), 2, 2)


def test_a_method_column_of_ppgn_alone_is_the_design_before_methods():
    plain = panels_frame({"conv5": 9, "fc6": 20, "fc8": 7})
    a = build_design(plain, practice_frame(), 4, 10, sample={"fc6": 12}, seed=3)
    b = build_design(plain.assign(method="ppgn"), practice_frame(), 4, 10,
                     sample={"fc6": 12}, seed=3)
    a.pop("created"), b.pop("created")
    assert a == b
    assert all("method" not in e for e in a["panels"].values())
    assert "/" not in summary(a)


def _digest(study: dict) -> str:
    study = dict(study)
    study.pop("created")
    return hashlib.sha256(json.dumps(study, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize(("layers", "lists", "participants", "sample", "seed", "digest"), [
    (PAPER_LAYERS, 64, 333, {"fc6": 2048}, 0, "19c693db8448d7b4"),
    ({"conv5": 9, "fc6": 20, "fc8": 7}, 4, 10, {"fc6": 12}, 3, "980c3a20e02fca5a"),
])
def test_one_manifest_gives_the_same_study_as_before_methods(layers, lists, participants,
                                                             sample, seed, digest):
    # digests of build_design's study (all but "created") from the design before methods
    study = build_design(panels_frame(layers), practice_frame(), lists, participants,
                         sample=sample, seed=seed)
    assert _digest(study) == digest


# ---------------------------------------------------------------------------
# Manifests and the command line


def method_world(root: Path) -> tuple[list[Path], Path]:
    """Three manifests with images: ppgn without a method column (an older manifest),
    fourier for half the units and natural for all, as generator manifests name them."""
    _, practice = make_world(root, {"unused": 1})
    images = root / "images"
    images.mkdir(exist_ok=True)
    manifests = []
    for method, units in (("ppgn", range(12)), ("fourier", range(0, 12, 2)),
                          ("natural", range(12))):
        rows = []
        for layer in ("conv5", "fc8"):
            for unit in units:
                pid = (f"{layer}_{unit:04d}" if method == "ppgn"
                       else f"{method}_{layer}_{unit:04d}")
                (images / f"{pid}.png").write_bytes(png_bytes())
                rows.append([pid, layer, unit, f"images/{pid}.png", "100"]
                            + ([] if method == "ppgn" else [method]))
        header = ["panel_id", "layer", "unit", "path", "n_images"]
        manifests.append(write_csv(root / f"manifest_{method}.csv",
                                   header + ([] if method == "ppgn" else ["method"]), rows))
    return manifests, practice


def test_several_manifests_from_the_command_line(tmp_path, capsys):
    manifests, practice = method_world(tmp_path / "w")
    out = tmp_path / "study" / "study.json"
    code = main(["--panels", *map(str, manifests), "--practice", str(practice), "--lists",
                 "4", "--participants", "12", "--seed", "5", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    study = read_study(out)
    check_methods_dealing(study)
    assert study["source"]["panels"] == [str(m) for m in manifests]
    methods = Counter(e["method"] for e in study["panels"].values())
    assert methods == {"ppgn": 24, "fourier": 12, "natural": 24}
    assert study["panels"]["conv5_0003"]["method"] == "ppgn"       # no column: ppgn
    printed = capsys.readouterr().out
    for line in ("conv5 / ppgn", "conv5 / fourier", "conv5 / natural", "fc8 / natural"):
        assert line in printed
    assert re.search(r"\n  conv5 / fourier +6  1-2\n", printed)


def test_read_manifests_keeps_one_manifest_as_it_was_and_merges_several(tmp_path):
    manifests, _ = method_world(tmp_path / "w")
    one = read_manifests([manifests[0]])
    assert list(one.columns) == ["panel_id", "layer", "unit", "path"]
    assert one.equals(read_panels(manifests[0]))
    merged = read_manifests(manifests)
    assert list(merged.columns) == ["panel_id", "layer", "unit", "path", "method"]
    assert merged["method"].tolist() == ["ppgn"] * 24 + ["fourier"] * 12 + ["natural"] * 24
    assert merged.attrs["sources"] == [str(m) for m in manifests]


def test_panel_ids_must_be_unique_across_manifests(tmp_path, capsys):
    manifests, practice = method_world(tmp_path / "w")
    clash = write_csv(tmp_path / "clash.csv", ["panel_id", "layer", "unit", "path", "method"],
                      [["conv5_0001", "conv5", "1", "w/images/conv5_0001.png", "natural"]])
    with pytest.raises(DesignError, match=r"(?s)1 panel id\(s\) occur in more than one panels "
                                          r"manifest.*'conv5_0001' in .*manifest_ppgn.csv "
                                          r"and .*clash.csv"):
        read_manifests([manifests[0], clash])
    code = main(["--panels", str(manifests[0]), str(clash), "--practice", str(practice),
                 "--lists", "2", "--participants", "2", "--out", str(tmp_path / "s.json")])
    assert code == 2 and "conv5_0001" in capsys.readouterr().err


def test_an_empty_method_cell_is_a_bad_cell(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["panel_id", "layer", "unit", "path", "method"],
                         [["a", "fc8", "0", "a.png", "fourier"], ["b", "fc8", "1", "b.png", ""]])
    with pytest.raises(DesignError, match="line 3: empty method"):
        read_panels(manifest)


def test_one_manifest_of_several_methods_is_dealt_by_unit(tmp_path):
    rows = [[f"{m}_{u}", "fc8", str(u), "x.png", m] for u in range(6) for m in METHODS]
    manifest = write_csv(tmp_path / "m.csv", ["panel_id", "layer", "unit", "path", "method"],
                         rows)
    study = build_design(read_manifests([manifest]), practice_frame(), 3, 3)
    check_methods_dealing(study)


# ---------------------------------------------------------------------------
# The study file's rules


@pytest.fixture
def methods_study() -> dict:
    frame = method_frame({"conv5": THREE, "fc8": {"ppgn": 6, "fourier": 6, "natural": 3}})
    return build_design(frame, practice_frame(), 3, 6, seed=2)


def test_validate_design_refuses_a_unit_twice_in_a_list(methods_study):
    study = copy.deepcopy(methods_study)
    panels, first = study["panels"], study["lists"][0]
    pid = next(p for p in first["panels"] if panels[p]["layer"] == "fc8"
               and panels[p]["method"] == "ppgn")
    unit = panels[pid]["unit"]
    twin = next(p for p, e in panels.items() if e["layer"] == "fc8" and e["unit"] == unit
                and e["method"] == "fourier")
    second = next(lst for lst in study["lists"] if twin in lst["panels"])
    other = next(p for p in first["panels"] if panels[p]["layer"] == "fc8"
                 and panels[p]["method"] == "fourier")
    # swap the twin into the first list: sizes and strata stay, the unit is shown twice
    second["panels"][second["panels"].index(twin)] = other
    first["panels"][first["panels"].index(other)] = twin
    with pytest.raises(DesignError, match=f"list 1 holds fc8 unit {unit} 2 times.*nobody "
                                          "may see a unit twice"):
        validate_design(study)


def test_validate_design_refuses_an_unbalanced_method_and_a_bad_method(methods_study):
    def fc8(study, k, method):
        return next(p for p in study["lists"][k]["panels"]
                    if study["panels"][p]["layer"] == "fc8"
                    and study["panels"][p]["method"] == method)

    study = copy.deepcopy(methods_study)          # fc8: 2 fourier and 1 natural a list
    study["panels"][fc8(study, 0, "natural")]["method"] = "zebra"
    validate_design(study)                        # zebra 1-0-0, natural 0-1-1: within one
    study = copy.deepcopy(methods_study)
    a, b = fc8(study, 0, "natural"), fc8(study, 1, "fourier")
    study["panels"][a]["method"], study["panels"][b]["method"] = "fourier", "natural"
    with pytest.raises(DesignError, match="layer 'fc8', method 'fourier': per-list counts "
                                          "range 1-3"):
        validate_design(study)                    # fourier 3-1-2
    study = copy.deepcopy(methods_study)
    study["panels"][next(iter(study["panels"]))]["method"] = " "
    with pytest.raises(DesignError, match="must be a non-empty string"):
        validate_design(study)


def test_validate_design_counts_a_sample_in_units_where_panels_carry_methods():
    frame = method_frame({"fc6": THREE | {"ppgn": 9, "natural": 9}})
    study = build_design(frame, practice_frame(), 3, 3, sample={"fc6": 4})
    validate_design(study)
    study["sample"] = {"fc6": 8}          # 4 units, 8 panels: a panel count is wrong here
    with pytest.raises(DesignError, match="sample asks for 8 fc6 units; the design has 4"):
        validate_design(study)


# ---------------------------------------------------------------------------
# Table 2 per layer x method


def test_method_order_puts_the_known_methods_first_then_others_alphabetically():
    assert method_order(["zeta", "natural", "alpha", "ppgn", "natural"]) == [
        "ppgn", "natural", "alpha", "zeta"]
    assert method_order(["fourier", "natural", "ppgn"]) == list(METHODS)


def tiny_study(root: Path) -> tuple[Path, Path, pd.DataFrame]:
    """responses.csv, study.json and the selectivity of a tiny study whose Table 2 is
    computed by hand in the test below."""
    root.mkdir(parents=True, exist_ok=True)
    ratings = {   # (layer, method, unit): answers (text for a yes, None for a no)
        ("conv5", "ppgn", 0): [None, None, "c5"],
        ("conv5", "fourier", 0): ["c5", "c5", "c5", "c5", None],
        ("fc8", "ppgn", 0): ["c0", "c0", None],
        ("fc8", "ppgn", 1): [None, None],
        ("fc8", "natural", 0): ["c0", "c0", "c1"],
        ("fc8", "natural", 1): ["c1", "c1"],
    }
    rows, panels = [], {}
    for (layer, method, unit), answers in ratings.items():
        pid = f"{layer}_{unit:04d}" if method == "ppgn" else f"{method}_{layer}_{unit:04d}"
        panels[pid] = {"layer": layer, "unit": unit, "path": f"{pid}.png"}
        if method != "ppgn":
            panels[pid]["method"] = method
        for r, text in enumerate(answers):
            rows.append({"participant_id": f"p{r}", "trial_index": len(rows),
                         "practice": False, "panel_id": pid, "layer": layer, "unit": unit,
                         "answer_yes": text is not None, "object_text": text or ""})
    responses = root / "responses.csv"
    pd.DataFrame(rows).to_csv(responses, index=False)
    study = root / "study.json"
    study.write_text(json.dumps({"format": "selectivity-study/1", "panels": panels}))
    selectivity = pd.DataFrame({"layer": ["conv5", "fc8", "fc8"], "unit": [0, 0, 1],
                                "top_class": [5, 0, 1], "ccmas_class": [5, 0, 2],
                                "ccmas": [0.1, 0.5, 0.9]})
    return responses, study, selectivity


def test_table2_per_layer_and_method_with_hand_computed_shares(tmp_path):
    responses, study, selectivity = tiny_study(tmp_path)
    judgments = select_judgments(read_responses(responses), include_incomplete=True)
    judgments = with_methods(judgments, read_methods(study))
    assert has_methods(judgments)
    table, detail = table2(judgments, selectivity, ToyCoder(), CLASSES)
    assert list(table.columns[:3]) == ["layer", "method", "n_judgments"]
    assert list(zip(table["layer"], table["method"], strict=True)) == [
        ("conv5", "ppgn"), ("conv5", "fourier"), ("fc8", "ppgn"), ("fc8", "natural")]
    rows = table.set_index(["layer", "method"])
    # % yes of judgments: 1/3, 4/5, 2/5, 5/5
    assert rows["pct_yes"].tolist() == pytest.approx([100 / 3, 80, 40, 100])
    assert rows["n_judgments"].tolist() == [3, 5, 5, 5]
    # units with >= 80% yes: conv5/fourier 4 of 5 (1 of 1); fc8/natural both (2 of 2)
    assert rows["n_units"].tolist() == [1, 1, 2, 2]
    assert rows["n_units_yes80"].tolist() == [0, 1, 0, 2]
    assert rows["pct_units_yes80"].tolist() == pytest.approx([0, 100, 0, 100])
    # fc8/natural: unit 0 "c0 c0 c1" agrees 2/3 and matches its class 0 2/3; unit 1 "c1 c1"
    # agrees and matches its class 1 fully: means (2/3 + 1) / 2
    nat = rows.loc[("fc8", "natural")]
    assert nat["pct_agree_humans"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert nat["pct_match_top_class"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert nat["pct_match_ccmas_class"] == pytest.approx(100 * (2 / 3 + 0) / 2)
    assert rows.loc[("conv5", "fourier"), "pct_agree_humans"] == pytest.approx(100)
    # the detail: one row per unit and method
    assert list(detail.columns[:3]) == ["layer", "method", "unit"]
    assert len(detail) == 6
    high = detail[detail["yes80"]].set_index(["layer", "method", "unit"])
    assert high.loc[("fc8", "natural", 0), "share_agree_humans"] == pytest.approx(2 / 3)
    markdown = format_markdown(table)
    assert "| layer | method | % yes (of judgments) |" in markdown
    assert "| fc8 | natural | 100.0 ± 0.0 (n=5) | 100.0 ± 0.0 (n=2) |" in markdown
    assert "One row per layer x method" in markdown
    kappa = kappa_by_layer(judgments)
    assert list(kappa.columns[:2]) == ["layer", "method"] and len(kappa) == 4
    units = unit_ratings(judgments)
    assert list(units.columns[:3]) == ["layer", "method", "unit"]
    result = interpretability(units, selectivity, ["ccmas"])
    assert list(zip(result["layer"], result["method"], strict=True)) == [
        ("conv5", "ppgn"), ("conv5", "fourier"), ("fc8", "ppgn"), ("fc8", "natural")]


def test_one_method_leaves_table2_as_it_was(tmp_path):
    responses, study, selectivity = tiny_study(tmp_path)
    judgments = select_judgments(read_responses(responses), include_incomplete=True)
    ppgn = judgments[~judgments["panel_id"].str.contains("_fc8_|fourier")]
    plain, plain_detail = table2(ppgn, selectivity, ToyCoder(), CLASSES)
    tagged = with_methods(ppgn, read_methods(study))
    assert not has_methods(tagged)
    table, detail = table2(tagged, selectivity, ToyCoder(), CLASSES)
    pd.testing.assert_frame_equal(table, plain)
    pd.testing.assert_frame_equal(detail, plain_detail)
    assert "method" not in table.columns and "method" not in format_markdown(table)
    assert "Method effect" not in mixed_model(tagged)


def test_methods_from_manifests_and_the_responses_and_their_errors(tmp_path):
    responses, study, _ = tiny_study(tmp_path)
    judgments = select_judgments(read_responses(responses), include_incomplete=True)
    older = write_csv(tmp_path / "ppgn.csv", ["panel_id", "layer", "unit", "path"],
                      [["conv5_0000", "conv5", 0, "a.png"], ["fc8_0000", "fc8", 0, "b.png"],
                       ["fc8_0001", "fc8", 1, "c.png"]])
    newer = write_csv(tmp_path / "more.csv", ["panel_id", "layer", "unit", "path", "method"],
                      [["fourier_conv5_0000", "conv5", 0, "d.png", "fourier"],
                       ["natural_fc8_0000", "fc8", 0, "e.png", "natural"],
                       ["natural_fc8_0001", "fc8", 1, "f.png", "natural"]])
    methods = read_methods(panels=[older, newer])
    assert methods == read_methods(study)
    assert methods["fc8_0001"] == "ppgn"
    with pytest.raises(Table2Error, match="1 rated panel.*no method.*natural_fc8_0001"):
        with_methods(judgments, {k: v for k, v in methods.items() if k != "natural_fc8_0001"})
    clash = write_csv(tmp_path / "clash.csv", ["panel_id", "layer", "unit", "path", "method"],
                      [["fc8_0000", "fc8", 0, "b.png", "natural"]])
    with pytest.raises(Table2Error, match="'fc8_0000' is a ppgn panel in .*ppgn.csv and a "
                                          "natural panel in .*clash.csv"):
        read_methods(panels=[older, clash])
    with pytest.raises(Table2Error, match="nope.json: no such file"):
        read_methods(tmp_path / "nope.json")
    # an export that carries the method itself (an empty cell: ppgn)
    own = judgments.assign(method=judgments["panel_id"].map(methods).replace("ppgn", ""))
    assert with_methods(own)["method"].tolist() == judgments["panel_id"].map(methods).tolist()


def synthetic_methods(seed: int = 0, effect: float = 1.5) -> pd.DataFrame:
    """Participants rate panels of three layers x three methods (random intercepts per
    panel and participant); natural panels get ``effect`` more log-odds of yes."""
    rng = np.random.default_rng(seed)
    layers = {"conv5": -1.0, "fc6": -1.5, "fc8": 0.5}
    panels = [(layer, unit, method) for layer in layers for unit in range(40)
              for method in METHODS]
    panel_effect = rng.normal(0, 0.8, len(panels))
    rows = []
    for person in range(50):
        own = rng.normal(0, 0.5)
        for i in rng.choice(len(panels), 30, replace=False):
            layer, unit, method = panels[i]
            eta = layers[layer] + (effect if method == "natural" else 0) + panel_effect[i] + own
            pid = f"{layer}_{unit:04d}" if method == "ppgn" else f"{method}_{layer}_{unit:04d}"
            rows.append({"participant_id": f"p{person}", "panel_id": pid, "layer": layer,
                         "unit": unit, "method": method,
                         "answer_yes": bool(rng.random() < 1 / (1 + math.exp(-eta)))})
    return pd.DataFrame(rows)


def test_mixed_model_reports_the_method_effect():
    report = mixed_model(synthetic_methods(seed=0, effect=1.5))
    assert "yes ~ layer + method + (1 | participant) + (1 | panel)" in report
    assert "methods: ppgn, fourier, natural" in report
    assert "reference method: ppgn" in report
    line = next(x for x in report.splitlines() if x.startswith("C(method)[T.natural]"))
    assert 0.8 < float(line.split()[1]) < 2.2                  # the effect: 1.5 log-odds
    test = next(x for x in report.splitlines() if x.startswith("Method effect"))
    assert "Wald test of the 2 method term(s), chi2(2)" in test
    assert float(test.rsplit("p = ", 1)[1]) < 1e-6
    natural = next(x for x in report.splitlines() if x.strip().startswith("C(method)[T.natural]")
                   and "z =" in x)
    assert float(natural.split("z = ")[1].split(",")[0]) > 4


def test_method_test_is_the_wald_chi_square_of_the_method_terms():
    names = ["Intercept", "C(layer)[T.fc8]", "C(method)[T.fourier]", "C(method)[T.natural]"]
    mean = np.array([0.1, 1.0, 0.3, -0.4])
    cov = np.diag([0.01, 0.02, 0.04, 0.09])
    cov[2, 3] = cov[3, 2] = 0.03
    result = method_test(names, mean, cov)
    b, v = mean[2:], cov[2:, 2:]
    assert result["df"] == 2
    assert result["chi2"] == pytest.approx(float(b @ np.linalg.inv(v) @ b))
    from scipy.stats import chi2

    assert result["p"] == pytest.approx(chi2.sf(result["chi2"], 2))
    assert [t["z"] for t in result["terms"]] == pytest.approx([0.3 / 0.2, -0.4 / 0.3])


@needs_wordnet
def test_command_line_per_layer_and_method_with_the_study_file(tmp_path):
    from analysis.table2 import main as table2_main

    responses, selectivity = imagenet_study(tmp_path)
    rows = pd.read_csv(responses)
    natural = rows[rows["layer"] == "fc8"].assign(
        panel_id=lambda f: "natural_" + f["panel_id"], participant_id=lambda f:
        f["participant_id"] + 10, answer_yes=False, object_text="")
    pd.concat([rows, natural]).to_csv(responses, index=False)
    panels = {pid: {"layer": layer, "unit": int(unit), "path": "x.png",
                    **({"method": "natural"} if pid.startswith("natural_") else {})}
              for pid, layer, unit in rows[["panel_id", "layer", "unit"]].drop_duplicates()
              .itertuples(index=False)}
    panels |= {f"natural_{pid}": {**e, "method": "natural"} for pid, e in panels.items()
               if e["layer"] == "fc8"}
    study = tmp_path / "study.json"
    study.write_text(json.dumps({"panels": panels}))
    out = tmp_path / "out"
    assert table2_main(["--responses", str(responses), "--selectivity", str(selectivity),
                        "--study", str(study), "--out", str(out),
                        "--include-incomplete"]) == 0
    table = pd.read_csv(out / "table2.csv")
    assert list(zip(table["layer"], table["method"], strict=True)) == [   # selectivity order
        ("fc8", "ppgn"), ("fc8", "natural"), ("conv5", "ppgn")]
    assert table.set_index("method").loc["natural", "pct_yes"] == 0
    assert "| fc8 | natural |" in (out / "table2.md").read_text()
    assert "Method effect: Wald test of the 1 method term(s)" in (
        out / "mixed_model.txt").read_text()
    assert "method" in pd.read_csv(out / "kappa.csv").columns
    assert "method" in pd.read_csv(out / "table2_units.csv").columns
