"""experiment.design: manifest to lists, targets and practice panels (docs/study-design.md);
and the study file it writes (server/study_file.py: validation, writing, reading, files).

Every test builds its own world under tmp_path: tiny generated PNG files and the
manifests that point at them. The golden numbers of the paper's design come from
docs/study-design.md: 256 conv5, 995 fc8 and 2,048 fc6 sampled from 4,096; 64 lists of
4 conv5, 32 fc6 and 15 or 16 fc8 (51 or 52 panels); 333 participants, 51 lists
with a target of 5 and 13 with 6; six practice trials.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from functools import cache
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from experiment.design import (
    build_design,
    main,
    parse_sample,
    read_panels,
    read_practice,
    summary,
)
from server.study_file import (
    FORMAT,
    DesignError,
    check_files,
    read_study,
    validate_design,
    write_study,
)

ROOT = Path(__file__).resolve().parents[1]

# docs/study-design.md: the paper's panels per layer (fc6 before sampling) and request.
PAPER_LAYERS = {"conv5": 256, "fc6": 4096, "fc8": 995}
PAPER_SAMPLE = {"fc6": 2048}
PAPER_LISTS = 64
PAPER_PARTICIPANTS = 333


# ---------------------------------------------------------------------------
# Worlds


@cache
def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def make_world(root: Path, layers: dict[str, int], n_practice: int = 6) -> tuple[Path, Path]:
    """Panel and practice images under ``root`` and their manifests (relative paths)."""
    (root / "panels").mkdir(parents=True)
    (root / "practice").mkdir()
    data = png_bytes()
    rows = []
    for layer, n in layers.items():
        for unit in range(n):
            rel = f"panels/{layer}_{unit:04d}.png"
            (root / rel).write_bytes(data)
            rows.append([f"{layer}-{unit}", layer, unit, rel, 0.5 * unit])
    panels = write_csv(root / "panels.csv", ["panel_id", "layer", "unit", "path",
                                             "mean_activation"], rows)
    prows = []
    for i in range(n_practice):
        rel = f"practice/photo{i}.png"
        (root / rel).write_bytes(data)
        prows.append([f"practice-{i}", rel, f"thing {i}"])
    practice = write_csv(root / "practice.csv", ["panel_id", "path", "label"], prows)
    return panels, practice


def panels_frame(layers: dict[str, int], base: str = "/data") -> pd.DataFrame:
    """An in-memory panels manifest (no files), as read_panels returns it."""
    rows = [(f"{layer}-{u}", layer, u, f"{base}/{layer}_{u}.png")
            for layer, n in layers.items() for u in range(n)]
    return pd.DataFrame(rows, columns=["panel_id", "layer", "unit", "path"])


def practice_frame(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame({"panel_id": [f"practice-{i}" for i in range(n)],
                         "path": [f"/data/practice{i}.png" for i in range(n)],
                         "label": [f"thing {i}" for i in range(n)]})


def cli(panels: Path, practice: Path, out: Path, *extra: str, lists: int = 4,
        participants: int = 10) -> int:
    return main(["--panels", str(panels), "--practice", str(practice), "--lists", str(lists),
                 "--participants", str(participants), "--out", str(out), "--quiet", *extra])


@pytest.fixture
def world(tmp_path) -> tuple[Path, Path]:
    """A small world: 3 layers of 9, 20 and 7 panels, 8 practice photos."""
    return make_world(tmp_path / "world", {"conv5": 9, "fc6": 20, "fc8": 7}, n_practice=8)


@pytest.fixture(scope="module")
def paper_world(tmp_path_factory) -> tuple[Path, Path]:
    return make_world(tmp_path_factory.mktemp("paper"), PAPER_LAYERS)


# ---------------------------------------------------------------------------
# The paper's design (docs/study-design.md)


def per_list_layer_counts(study: dict) -> list[Counter]:
    return [Counter(study["panels"][p]["layer"] for p in lst["panels"]) for lst in study["lists"]]


def assert_paper_numbers(study: dict) -> None:
    """The numbers docs/study-design.md records for the paper's study."""
    lists = study["lists"]
    assert len(lists) == 64 and [lst["id"] for lst in lists] == list(range(1, 65))
    assert study["layers"] == ["conv5", "fc6", "fc8"]
    assert len(study["panels"]) == 3299
    assert Counter(e["layer"] for e in study["panels"].values()) == {
        "conv5": 256, "fc6": 2048, "fc8": 995}
    for counts in per_list_layer_counts(study):
        assert counts["conv5"] == 4 and counts["fc6"] == 32 and counts["fc8"] in (15, 16)
    fc8 = Counter(c["fc8"] for c in per_list_layer_counts(study))
    assert fc8 == {16: 35, 15: 29}
    assert Counter(len(lst["panels"]) for lst in lists) == {52: 35, 51: 29}
    listed = [p for lst in lists for p in lst["panels"]]
    assert len(listed) == len(set(listed)) == 3299 and set(listed) == set(study["panels"])
    assert Counter(lst["target"] for lst in lists) == {5: 51, 6: 13}
    assert sum(lst["target"] for lst in lists) == 333
    assert study["participants"] == 333 and study["practice_trials"] == 6
    assert len(study["practice"]) == 6
    fc6_units = {e["unit"] for e in study["panels"].values() if e["layer"] == "fc6"}
    assert len(fc6_units) == 2048 and fc6_units <= set(range(4096))
    assert study["sample"] == {"fc6": 2048}


def test_paper_design_in_memory_matches_design_md():
    study = build_design(panels_frame(PAPER_LAYERS), practice_frame(), PAPER_LISTS,
                         PAPER_PARTICIPANTS, sample=PAPER_SAMPLE, seed=0)
    assert_paper_numbers(study)
    validate_design(study)
    assert all(os.path.isabs(e["path"]) for e in study["panels"].values())
    assert "sha256" not in next(iter(study["panels"].values()))


@pytest.mark.parametrize("seed", [1, 7, 12345])
def test_paper_numbers_hold_for_any_seed(seed):
    study = build_design(panels_frame(PAPER_LAYERS), practice_frame(), PAPER_LISTS,
                         PAPER_PARTICIPANTS, sample=PAPER_SAMPLE, seed=seed)
    assert_paper_numbers(study)


def test_paper_design_from_the_command_line(paper_world, tmp_path, capsys):
    panels, practice = paper_world
    out = tmp_path / "study" / "study.json"
    start = time.perf_counter()
    code = cli(panels, practice, out, "--sample", "fc6=2048", "--seed", "0",
               lists=PAPER_LISTS, participants=PAPER_PARTICIPANTS)
    elapsed = time.perf_counter() - start
    assert code == 0, capsys.readouterr().err
    # 5,347 manifest rows, 3,305 images opened and hashed: a few seconds at most.
    assert elapsed < 20, f"the paper's design took {elapsed:.1f} s"
    study = read_study(out)
    assert_paper_numbers(study)
    assert study["source"] == {"panels": str(panels), "practice": str(practice)}
    assert all(Path(e["path"]).is_file() for e in study["panels"].values())
    table = capsys.readouterr().out
    assert "51 x 5 + 13 x 6" in table and "15-16" in table and "51-52" in table


# ---------------------------------------------------------------------------
# Determinism


def test_same_seed_same_design_other_seed_other_dealing():
    frames = (panels_frame(PAPER_LAYERS), practice_frame())
    a = build_design(*frames, 64, 333, sample=PAPER_SAMPLE, seed=0)
    b = build_design(*frames, 64, 333, sample=PAPER_SAMPLE, seed=0)
    c = build_design(*frames, 64, 333, sample=PAPER_SAMPLE, seed=1)
    a.pop("created"), b.pop("created"), c.pop("created")
    assert a == b
    assert a["lists"] != c["lists"]
    assert set(a["panels"]) != set(c["panels"])  # another fc6 sample


def test_same_seed_same_file_apart_from_created(world, tmp_path):
    panels, practice = world
    texts = []
    for name in ("a.json", "b.json"):
        assert cli(panels, practice, tmp_path / name, "--seed", "3") == 0
        study = json.loads((tmp_path / name).read_text())
        study.pop("created")
        texts.append(json.dumps(study, sort_keys=True))
    assert texts[0] == texts[1]
    assert cli(panels, practice, tmp_path / "c.json", "--seed", "4") == 0
    other = json.loads((tmp_path / "c.json").read_text())
    assert other["lists"] != json.loads(texts[0])["lists"]


# ---------------------------------------------------------------------------
# The dealing on other shapes


@pytest.mark.parametrize(("layers", "n_lists", "participants"), [
    ({"a": 10}, 3, 7),
    ({"a": 5, "b": 5, "c": 5}, 4, 4),
    ({"a": 1, "b": 1, "c": 1, "d": 1}, 3, 5),
    ({"x": 7, "y": 13, "z": 2}, 22, 100),
    ({"x": 7, "y": 13, "z": 2}, 5, 8),
    ({"only": 4}, 4, 4),
])
def test_dealing_invariants(layers, n_lists, participants):
    study = build_design(panels_frame(layers), practice_frame(2), n_lists, participants,
                         seed=5, practice_trials=2)
    validate_design(study)
    sizes = [len(lst["panels"]) for lst in study["lists"]]
    assert max(sizes) - min(sizes) <= 1
    for layer, n in layers.items():
        counts = [c[layer] for c in per_list_layer_counts(study)]
        assert sum(counts) == n and max(counts) - min(counts) <= 1
    targets = [lst["target"] for lst in study["lists"]]
    assert sum(targets) == participants and max(targets) - min(targets) <= 1


def test_lists_keep_layer_order_and_layers_follow_first_appearance():
    frame = panels_frame({"fc8": 6, "conv5": 6}).iloc[[0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11]]
    study = build_design(frame.reset_index(drop=True), practice_frame(), 3, 3)
    assert study["layers"] == ["fc8", "conv5"]
    for lst in study["lists"]:
        layers = [study["panels"][p]["layer"] for p in lst["panels"]]
        assert layers == sorted(layers, key=["fc8", "conv5"].index)


def test_sampling_keeps_other_layers_whole():
    study = build_design(panels_frame({"a": 30, "b": 12}), practice_frame(), 4, 8,
                         sample={"a": 10})
    ids = set(study["panels"])
    assert {f"b-{u}" for u in range(12)} <= ids
    a_ids = {p for p in ids if p.startswith("a-")}
    assert len(a_ids) == 10 and a_ids <= {f"a-{u}" for u in range(30)}


def test_practice_is_the_first_rows_in_file_order(world):
    panels, practice = world
    study = build_design(read_panels(panels), read_practice(practice), 4, 10,
                         practice_trials=3)
    assert study["practice"] == ["practice-0", "practice-1", "practice-2"]
    assert set(study["practice_panels"]) == set(study["practice"])
    assert study["practice_panels"]["practice-1"]["label"] == "thing 1"


def test_practice_label_is_optional(tmp_path, world):
    panels, _ = world
    (tmp_path / "p.png").write_bytes(png_bytes())
    practice = write_csv(tmp_path / "practice.csv", ["panel_id", "path"], [["p1", "p.png"]])
    frame = read_practice(practice)
    study = build_design(read_panels(panels), frame, 4, 10, practice_trials=1)
    assert study["practice_panels"]["p1"] == {"path": str(tmp_path / "p.png"), "label": None}


# ---------------------------------------------------------------------------
# Manifests


def test_read_panels_resolves_paths_and_drops_extra_columns(tmp_path):
    (tmp_path / "sub").mkdir()
    manifest = write_csv(tmp_path / "sub" / "m.csv",
                         ["layer", "unit", "panel_id", "path", "mean_activation"],
                         [["fc6", "12", "007", "img/a.png", "1.5"],
                          ["fc6", " 3 ", "x", "/abs/b.png", ""],
                          ["fc8", "0", "y", "../c.png", "2"]])
    frame = read_panels(manifest)
    assert list(frame.columns) == ["panel_id", "layer", "unit", "path"]
    assert list(frame["panel_id"]) == ["007", "x", "y"]  # ids stay text
    assert list(frame["unit"]) == [12, 3, 0]
    assert list(frame["path"]) == [str(tmp_path / "sub" / "img" / "a.png"), "/abs/b.png",
                                   str(tmp_path / "c.png")]


@pytest.mark.parametrize(("unit", "shown"), [("-1", "'-1'"), ("1.5", "'1.5'"), ("fc", "'fc'")])
def test_read_panels_rejects_bad_units(tmp_path, unit, shown):
    manifest = write_csv(tmp_path / "m.csv", ["panel_id", "layer", "unit", "path"],
                         [["a", "fc6", "1", "a.png"], ["b", "fc6", unit, "b.png"]])
    with pytest.raises(DesignError, match="non-negative integer") as err:
        read_panels(manifest)
    assert "line 3" in str(err.value) and shown in str(err.value) and "m.csv" in str(err.value)


def test_duplicate_panel_ids_are_reported(tmp_path, world, capsys):
    manifest = write_csv(tmp_path / "m.csv", ["panel_id", "layer", "unit", "path"],
                         [["a", "fc6", "1", "a.png"], ["b", "fc6", "2", "b.png"],
                          ["a", "fc8", "3", "c.png"]])
    with pytest.raises(DesignError, match="duplicate panel_id") as err:
        read_panels(manifest)
    assert "'a' (lines 2, 4)" in str(err.value)
    frame = panels_frame({"fc6": 3})
    frame.loc[2, "panel_id"] = "fc6-0"
    with pytest.raises(DesignError, match="duplicate panel_id.*\n.*'fc6-0'"):
        build_design(frame, practice_frame(), 1, 1)
    _, practice = world
    assert cli(manifest, practice, tmp_path / "s.json") == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_duplicate_practice_ids_are_reported(tmp_path):
    manifest = write_csv(tmp_path / "q.csv", ["panel_id", "path"], [["p", "a.png"], ["p", "b.png"]])
    with pytest.raises(DesignError, match="duplicate panel_id.*practice"):
        read_practice(manifest)


# ---------------------------------------------------------------------------
# Impossible requests: DesignError naming what, where and how to fix


@pytest.mark.parametrize(("kwargs", "needles"), [
    ({"n_lists": 37}, ["lists = 37", "only 36 panels", "at most 36 lists"]),
    ({"n_lists": 0}, ["lists = 0", "--lists", "at least 1"]),
    ({"participants": -1}, ["participants = -1", "--participants", "0 or more"]),
    ({"sample": {"fc6": 21}}, ["--sample fc6=21", "only 20 panels", "at most 20",
                               "panels.csv"]),
    ({"sample": {"fc7": 2}}, ["--sample fc7=2", "no layer 'fc7'", "conv5, fc6, fc8"]),
    ({"sample": {"fc6": 0}}, ["--sample fc6=0", "at least 1"]),
    ({"practice_trials": 9}, ["practice_trials = 9", "only 8 practice panel(s)",
                              "practice.csv", "add rows"]),
    ({"practice_trials": -2}, ["practice_trials = -2", "0 or more"]),
    ({"n_lists": 30, "sample": {"fc6": 2}}, ["only 18 panels after sampling", "at most 18 lists"]),
    # 3 participants for 10 lists: 7 lists (and their panels) would never be rated
    ({"n_lists": 10, "participants": 3}, ["participants = 3", "lists = 10", "7 list(s)",
                                          "never be rated", "at most 3 lists"]),
    ({"n_lists": 4, "participants": 0}, ["4 list(s) would have no participant"]),
])
def test_impossible_requests(world, kwargs, needles):
    panels, practice = world
    request = {"n_lists": 4, "participants": 10, **kwargs}
    with pytest.raises(DesignError) as err:
        build_design(read_panels(panels), read_practice(practice), **request)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_practice_ids_must_not_collide_with_panel_ids(tmp_path, world):
    panels, _ = world
    practice = write_csv(tmp_path / "q.csv", ["panel_id", "path"], [["fc6-3", "a.png"]])
    with pytest.raises(DesignError, match="'fc6-3' are also main panel ids.*rename"):
        build_design(read_panels(panels), read_practice(practice), 4, 10, practice_trials=1)


@pytest.mark.parametrize(("header", "rows", "needles"), [
    (["panel_id", "layer"], [["a", "fc6"]], ["lacks column(s) unit, path", "found: panel_id, layer"]),
    (["panel_id", "layer", "unit", "path"], [], ["header but no rows"]),
    (["panel_id", "layer", "unit", "path"], [["a", "", "1", "a.png"]], ["line 2: empty layer"]),
])
def test_bad_panels_manifests(tmp_path, header, rows, needles):
    manifest = write_csv(tmp_path / "m.csv", header, rows)
    with pytest.raises(DesignError) as err:
        read_panels(manifest)
    assert "m.csv" in str(err.value)
    for needle in needles:
        assert needle in str(err.value)


def test_missing_and_empty_manifest_files(tmp_path):
    with pytest.raises(DesignError, match="nope.csv: no such panels manifest"):
        read_panels(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DesignError, match="empty.csv: the practice manifest is empty"):
        read_practice(tmp_path / "empty.csv")


def test_frames_with_missing_columns_or_no_rows():
    with pytest.raises(DesignError, match="missing column.*unit"):
        build_design(panels_frame({"a": 2}).drop(columns="unit"), practice_frame(), 1, 1)
    with pytest.raises(DesignError, match="no panels"):
        build_design(panels_frame({}), practice_frame(), 1, 1)


@pytest.mark.parametrize(("args", "needles"), [
    (["--sample", "fc6:3"], ["--sample fc6:3", "LAYER=N"]),
    (["--sample", "fc6=3", "--sample", "fc6=4"], ["sampled twice"]),
    (["--lists", "0"], ["--lists", "at least 1"]),
    (["--participants", "-5"], ["participants = -5"]),
    (["--participants", "3", "--lists", "10"], ["7 list(s) would have no participant"]),
])
def test_cli_errors_exit_2_with_a_message(world, tmp_path, capsys, args, needles):
    panels, practice = world
    out = tmp_path / "study.json"
    assert cli(panels, practice, out, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for needle in needles:
        assert needle in err
    assert not out.exists()


def test_parse_sample():
    assert parse_sample(["fc6=2048", "conv5 = 10"]) == {"fc6": 2048, "conv5": 10}
    assert parse_sample(None) == {}
    with pytest.raises(DesignError, match="LAYER=N"):
        parse_sample(["=5"])


def test_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "experiment.design", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    for option in ("--panels", "--practice", "--lists", "--participants", "--sample",
                   "--practice-trials", "--seed", "--out", "--no-check-images", "--quiet"):
        assert option in out


# ---------------------------------------------------------------------------
# Files


def test_missing_and_corrupt_images_are_reported_together(world, tmp_path, capsys):
    panels, practice = world
    base = panels.parent
    (base / "panels" / "fc6_0003.png").unlink()
    (base / "panels" / "fc8_0001.png").write_bytes(b"not an image at all")
    (base / "practice" / "photo2.png").write_bytes(b"\x89PNG broken")
    study = build_design(read_panels(panels), read_practice(practice), 4, 10)
    with pytest.raises(DesignError) as err:
        check_files(study)
    text = str(err.value)
    assert text.startswith("3 of 42 panel files are unusable")
    assert "panel 'fc6-3' (fc6 unit 3)" in text and "fc6_0003.png: no such file" in text
    assert "panel 'fc8-1'" in text and "fc8_0001.png: not a readable image" in text
    assert "practice panel 'practice-2'" in text
    # Existence is still checked without opening the images.
    with pytest.raises(DesignError, match="1 of 42") as err:
        check_files(study, open_images=False)
    assert "fc6_0003.png: no such file" in str(err.value)
    # And the command line fails without writing anything.
    out = tmp_path / "study.json"
    assert cli(panels, practice, out) == 2
    assert "3 of 42 panel files are unusable" in capsys.readouterr().err
    assert not out.exists()


def test_many_problems_are_listed_up_to_ten(world):
    panels, practice = world
    for png in (panels.parent / "panels").glob("fc6_*.png"):
        png.unlink()
    study = build_design(read_panels(panels), read_practice(practice), 4, 10)
    with pytest.raises(DesignError) as err:
        check_files(study)
    assert str(err.value).count("no such file") == 10
    assert "... and 10 more" in str(err.value)


def test_no_check_images_accepts_a_corrupt_file(world, tmp_path):
    panels, practice = world
    (panels.parent / "panels" / "fc8_0001.png").write_bytes(b"garbage")
    assert cli(panels, practice, tmp_path / "s.json", "--no-check-images") == 0


def test_jpeg_images_are_checked_too(tmp_path):
    frame = panels_frame({"a": 2}, base=str(tmp_path))
    for path in frame["path"]:
        Image.new("L", (4, 4), 90).save(path.replace(".png", ".jpg"), format="JPEG")
    frame["path"] = frame["path"].str.replace(".png", ".jpg")
    (tmp_path / "p.png").write_bytes(png_bytes())
    practice = pd.DataFrame({"panel_id": ["p"], "path": [str(tmp_path / "p.png")]})
    check_files(build_design(frame, practice, 2, 2, practice_trials=1))


# ---------------------------------------------------------------------------
# study.json: writing, loading, moving


def test_cli_writes_a_study_that_loads_with_relative_paths(world, tmp_path, capsys):
    panels, practice = world
    out = panels.parent / "study.json"
    assert cli(panels, practice, out, "--sample", "fc6=12", "--seed", "2",
               "--practice-trials", "4") == 0
    raw = json.loads(out.read_text())
    assert raw["format"] == FORMAT == "selectivity-study/1"
    assert raw["seed"] == 2 and raw["participants"] == 10 and raw["practice_trials"] == 4
    assert raw["sample"] == {"fc6": 12}
    assert raw["created"].endswith("+00:00")
    assert raw["layers"] == ["conv5", "fc6", "fc8"]
    entry = raw["panels"]["conv5-0"]
    assert entry["path"] == "panels/conv5_0000.png"
    assert entry["layer"] == "conv5" and entry["unit"] == 0 and len(entry["sha256"]) == 64
    assert raw["practice_panels"]["practice-0"]["path"] == "practice/photo0.png"
    assert raw["practice_panels"]["practice-0"]["label"] == "thing 0"
    assert [lst["id"] for lst in raw["lists"]] == [1, 2, 3, 4]
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]

    moved = tmp_path / "elsewhere" / "study-folder"
    shutil.move(str(panels.parent), moved)
    study = read_study(moved / "study.json")
    for entry in [*study["panels"].values(), *study["practice_panels"].values()]:
        assert os.path.isabs(entry["path"]) and Path(entry["path"]).is_file()
        assert Path(entry["path"]).is_relative_to(moved)
    check_files(study)  # the hashes still match after the move


def test_paths_may_climb_out_of_the_study_folder(world, tmp_path):
    panels, practice = world
    out = tmp_path / "studies" / "one" / "study.json"  # the folder is created
    assert cli(panels, practice, out) == 0
    raw = json.loads(out.read_text())
    assert raw["panels"]["fc8-2"]["path"] == "../../world/panels/fc8_0002.png"
    shutil.move(str(tmp_path), tmp_path.parent / (tmp_path.name + "-moved"))
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    study = read_study(moved / "studies" / "one" / "study.json")
    assert study["panels"]["fc8-2"]["path"] == str(moved / "world" / "panels" / "fc8_0002.png")


def test_write_study_round_trip_and_changed_files(world, tmp_path):
    panels, practice = world
    study = build_design(read_panels(panels), read_practice(practice), 3, 7, seed=9)
    out = write_study(study, tmp_path / "s.json")
    assert out == tmp_path / "s.json"
    loaded = read_study(out)
    for key in ("lists", "layers", "practice", "participants", "seed", "sample"):
        assert loaded[key] == study[key]
    for pid, entry in loaded["panels"].items():
        assert entry["path"] == study["panels"][pid]["path"]
    assert "sha256" not in study["panels"]["fc6-0"]  # write_study does not touch its input
    Path(loaded["panels"]["fc6-0"]["path"]).write_bytes(png_bytes() + b"\0")
    with pytest.raises(DesignError, match="fc6-0.*sha256 differs"):
        check_files(loaded)


def test_write_study_refuses_an_invalid_study(world, tmp_path):
    panels, practice = world
    study = build_design(read_panels(panels), read_practice(practice), 3, 7)
    study["lists"][0]["target"] += 1
    with pytest.raises(DesignError, match="targets sum to 8, not participants = 7"):
        write_study(study, tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize(("content", "needle"), [
    (None, "no such study file"),
    ("{not json", "not a valid JSON study file"),
    ("[1, 2]", "holds a JSON object, not list"),
    ('{"format": "other/2"}', "study format is 'other/2', expected 'selectivity-study/1'"),
    ('{"format": "selectivity-study/1", "seed": 0}', "missing key(s) participants"),
])
def test_read_study_errors(tmp_path, content, needle):
    path = tmp_path / "study.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DesignError) as err:
        read_study(path)
    assert needle in str(err.value) and str(path) in str(err.value)


# ---------------------------------------------------------------------------
# Validation of a tampered study


@pytest.fixture
def valid_study() -> dict:
    return build_design(panels_frame({"conv5": 8, "fc6": 12, "fc8": 6}), practice_frame(), 4, 9,
                        seed=3)


def tamper(study: dict, how: str) -> dict:
    study = copy.deepcopy(study)
    lists = study["lists"]
    if how == "drop":
        lists[0]["panels"].pop()
    elif how == "duplicate":
        lists[1]["panels"].append(lists[0]["panels"][0])
    elif how == "unknown":
        lists[2]["panels"].append("ghost")
    elif how == "move":
        lists[1]["panels"].append(lists[0]["panels"].pop(0))
        lists[1]["panels"].append(lists[0]["panels"].pop(0))
    elif how == "list-id":
        lists[1]["id"] = lists[0]["id"]
    elif how == "target":
        lists[3]["target"] += 2
    elif how == "practice":
        study["practice"].pop()
    elif how == "format":
        study["format"] = "selectivity-study/0"
    elif how == "missing":
        del study["lists"]
    return study


@pytest.mark.parametrize(("how", "needle"), [
    ("drop", "is in no list"),
    ("duplicate", "is in 2 lists (must be exactly one)"),
    ("unknown", "list panel 'ghost' is not in 'panels'"),
    ("move", "list sizes range"),
    ("move", "per-list counts range"),
    ("list-id", "list id 1 used 2 times"),
    ("target", "targets sum to 11, not participants = 9"),
    ("practice", "5 practice panels listed, practice_trials = 6"),
    ("format", "expected 'selectivity-study/1'"),
    ("missing", "missing key(s) lists"),
])
def test_validate_design_catches_tampering(valid_study, how, needle):
    validate_design(valid_study)
    with pytest.raises(DesignError) as err:
        validate_design(tamper(valid_study, how))
    assert needle in str(err.value)


# ---------------------------------------------------------------------------
# Summary


def test_summary_table_of_the_paper_design():
    study = build_design(panels_frame(PAPER_LAYERS), practice_frame(), PAPER_LISTS,
                         PAPER_PARTICIPANTS, sample=PAPER_SAMPLE)
    rows = {line.split()[0]: line.split() for line in summary(study).splitlines() if line.strip()}
    assert rows["conv5"] == ["conv5", "256", "4"]
    assert rows["fc6"] == ["fc6", "2048", "32", "(sampled)"]
    assert rows["fc8"] == ["fc8", "995", "15-16"]
    assert rows["all"] == ["all", "layers", "3299", "51-52"]
    assert rows["lists"] == ["lists", "64", "51-52", "panels", "each"]
    assert rows["participants"][:2] == ["participants", "333"]
    assert " ".join(rows["participants"][2:]) == "targets 51 x 5 + 13 x 6"
    assert rows["practice"] == ["practice", "trials", "6"]


def test_summary_with_equal_targets():
    study = build_design(panels_frame({"a": 4}), practice_frame(), 2, 6)
    assert "targets 2 x 3" in summary(study)


# ---------------------------------------------------------------------------
# The study file's module: below the design, without the data stack


def test_the_study_file_format_lives_in_the_server_without_the_data_stack():
    import experiment.design
    import server.study_file

    assert experiment.design.DesignError is server.study_file.DesignError
    probe = ("import sys, server.study_file, server.study; "
             "print(sorted(m for m in ('numpy', 'pandas', 'PIL', 'experiment') "
             "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_numpy_integers_count_as_integers(valid_study):
    import numpy as np

    study = copy.deepcopy(valid_study)
    study["participants"] = np.int64(study["participants"])
    study["lists"][0]["target"] = np.int32(study["lists"][0]["target"])
    validate_design(study)
    study["participants"] = True
    with pytest.raises(DesignError, match="'participants' must be an integer"):
        validate_design(study)


def test_empty_am_panels_are_left_out_and_short_ones_kept_unless_asked(tmp_path, caplog):
    # generator.ppgn's manifest says how many images each panel holds: a conv5 unit whose
    # samples rarely pass PPGN's threshold ends short, or empty (nothing to rate)
    rows = [["conv5-0", "conv5", 0, "a.png", 100], ["conv5-1", "conv5", 1, "b.png", 0],
            ["conv5-2", "conv5", 2, "c.png", 41], ["conv5-3", "conv5", 3, "d.png", 100]]
    for name in "abcd":
        (tmp_path / f"{name}.png").write_bytes(png_bytes())
    manifest = write_csv(tmp_path / "m.csv", ["panel_id", "layer", "unit", "path", "n_images"],
                         rows)
    kept = read_panels(manifest)
    assert list(kept["panel_id"]) == ["conv5-0", "conv5-2", "conv5-3"]
    assert kept.attrs["left_out"] == ["conv5-1"]
    assert "conv5-1" in caplog.text and "1 short panel(s) kept" in caplog.text
    assert list(read_panels(manifest, min_images=100)["panel_id"]) == ["conv5-0", "conv5-3"]
    # the command line takes it too
    practice = write_csv(tmp_path / "p.csv", ["panel_id", "path"],
                         [[f"p{i}", "a.png"] for i in range(6)])
    assert cli(manifest, practice, tmp_path / "s.json", "--min-images", "100",
               lists=2) == 0
    study = json.loads((tmp_path / "s.json").read_text())
    assert sorted(study["panels"]) == ["conv5-0", "conv5-3"]
    bad = write_csv(tmp_path / "bad.csv", ["panel_id", "layer", "unit", "path", "n_images"],
                    [["x", "conv5", 0, "a.png", "many"]])
    with pytest.raises(DesignError, match="n_images"):
        read_panels(bad)
