"""Catch trials (docs/study-design.md, "Catch trials"): panels laid out as an AM panel whose
answer is known (generator.panels catch), K of them in every list at drawn positions
(experiment.design --catch K), marked in study.json, the store and the export, and left
out of Table 2."""

from __future__ import annotations

import copy
import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from server_world import Participant, count, store_of, study_app
from sqlalchemy import inspect, select
from test_design import (
    PAPER_LAYERS,
    PAPER_LISTS,
    PAPER_PARTICIPANTS,
    PAPER_SAMPLE,
    assert_paper_numbers,
    panels_frame,
    practice_frame,
)
from test_practice_panels import fake_photos

from analysis.table2 import read_responses, select_judgments
from experiment.design import build_design, main, read_catch, summary
from generator.images import imagenet_classes
from generator.panels import (
    MIXED_GROUPS,
    PRACTICE_GROUPS,
    catch_geometry,
    catch_panels,
    grid,
    practice_panels,
    save_jpeg,
)
from generator.panels import main as panels_main
from server.export import RESPONSE_COLUMNS, write_exports
from server.store import SCHEMA_VERSION, Store, meta, panels
from server.study_file import DesignError, list_trials, read_study, validate_design, write_study

POSITIVE = ("dog", "bird", "vehicle", "insect")


def rows_of(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def contents_by_panel(folder: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows_of(folder / "catch_contents.csv"):
        out.setdefault(row["panel_id"], []).append(row)
    return out


def am_panel_size(cell: int, folder: Path) -> tuple[int, int]:
    """The pixel size of a 10x10 AM panel of ``cell``-pixel images, saved as
    generator.ppgn saves one (_save_unit: grid, then save_jpeg with min_cell 64)."""
    path = folder / f"am_{cell}.jpg"
    save_jpeg(grid(np.zeros((100, cell, cell), np.uint8), 10, 10), path, min_cell=64, cell=cell)
    with Image.open(path) as image:
        return image.size


def catch_frame(yes: int = 4, no: int = 4, base: str = "/data") -> pd.DataFrame:
    """An in-memory catch manifest (no files), as read_catch returns it."""
    rows = [(f"catch_{POSITIVE[i % 4]}_{i // 4 + 1}", f"{base}/yes{i}.jpg", "yes",
             POSITIVE[i % 4]) for i in range(yes)]
    rows += [(f"catch_mixed_{i + 1}", f"{base}/no{i}.jpg", "no", None) for i in range(no)]
    return pd.DataFrame(rows, columns=["panel_id", "path", "expected", "label"])


def kinds_of(study: dict, lst: dict) -> Counter:
    return Counter(study["catch_panels"][t["panel"]]["catch_expected"] for t in lst["catch"])


# ---------------------------------------------------------------------------
# generator.panels catch


@pytest.fixture(scope="module")
def digit_catch(tmp_path_factory) -> Path:
    """The demo's case: practice panels of digits, then catch panels avoiding them."""
    root = tmp_path_factory.mktemp("digit_catch")
    practice_panels(root / "practice", seed=0)
    assert panels_main(["catch", "--digits", "--out", str(root / "catch"), "--avoid",
                        str(root / "practice" / "practice_contents.csv")]) == 0
    return root


def test_digit_catch_panels_need_no_photos_and_look_like_am_panels(digit_catch):
    folder = digit_catch / "catch"
    rows = rows_of(folder / "catch.csv")
    assert list(rows[0]) == ["panel_id", "path", "expected", "label"]
    assert [r["expected"] for r in rows] == ["yes"] * 4 + ["no"] * 4
    assert all(r["label"] for r in rows[:4]) and not any(r["label"] for r in rows[4:])
    # the demo's AM panels: 32-pixel digits, enlarged to 64-pixel tiles: 676 x 676
    am = am_panel_size(32, digit_catch)
    assert catch_geometry(32) == (64, 4, 676) and am == (676, 676)
    for r in rows:
        with Image.open(folder / r["path"]) as panel:
            assert panel.size == am
    contents = contents_by_panel(folder)
    practice_used = {r["photo"] for r in rows_of(digit_catch / "practice" /
                                                 "practice_contents.csv")}
    digits = [r["label"] for r in rows[:4]]
    # digits the practice shows least come first: not its one-digit panels' 0-3
    assert len(set(digits)) == 4 and not set(digits) & {"0", "1", "2", "3"}
    seen: set[str] = set()
    for r in rows:
        cells = contents[r["panel_id"]]
        assert [int(c["position"]) for c in cells] == list(range(100))
        photos = [c["photo"] for c in cells]
        assert len(set(photos)) == 100 and not set(photos) & (practice_used | seen)
        seen |= set(photos)
        groups = Counter(c["group"] for c in cells)
        if r["expected"] == "yes":
            assert groups == {r["label"]: 100}
        else:
            assert groups == {str(d): 10 for d in range(10)}


def test_catch_panels_are_the_same_for_a_seed(digit_catch, tmp_path):
    assert panels_main(["catch", "--digits", "--out", str(tmp_path / "again"), "--avoid",
                        str(digit_catch / "practice" / "practice_contents.csv")]) == 0
    for r in rows_of(digit_catch / "catch" / "catch.csv"):
        assert (tmp_path / "again" / r["path"]).read_bytes() == \
            (digit_catch / "catch" / r["path"]).read_bytes()
    assert panels_main(["catch", "--digits", "--seed", "1", "--out", str(tmp_path / "other"),
                        "--avoid", str(digit_catch / "practice" / "practice_contents.csv")]) == 0
    assert (tmp_path / "other" / "catch_contents.csv").read_text() != \
        (digit_catch / "catch" / "catch_contents.csv").read_text()


@pytest.fixture(scope="module")
def photo_catch(tmp_path_factory) -> Path:
    """Catch panels from stand-in photos (one solid colour a class), avoiding a practice."""
    root = tmp_path_factory.mktemp("photo_catch")
    fake_photos(root / "photos")
    practice_panels(root / "practice", photos=root / "photos", seed=3)
    catch_panels(root / "catch", photos=root / "photos", seed=3, cell=64,
                 avoid=[root / "practice" / "practice_contents.csv"])
    return root


def test_photo_catch_panels_one_category_or_unrelated_photos(photo_catch):
    folder = photo_catch / "catch"
    wnids = imagenet_classes()[0]
    group_of = {f"{wnids[i]}.jpg": g for g, indices in MIXED_GROUPS.items() for i in indices}
    rows = rows_of(folder / "catch.csv")
    assert [(r["panel_id"], r["expected"], r["label"]) for r in rows] == [
        *((f"catch_{c}_1", "yes", c) for c in POSITIVE),
        *((f"catch_mixed_{k}", "no", "") for k in range(1, 5))]
    for r in rows:
        with Image.open(folder / r["path"]) as panel:
            assert panel.size == am_panel_size(64, photo_catch) == (658, 658)
    practice_used = {r["photo"] for r in rows_of(photo_catch / "practice" /
                                                 "practice_contents.csv")}
    contents = contents_by_panel(folder)
    for r in rows[:4]:
        cells = contents[r["panel_id"]]
        classes = {f"{wnids[i]}.jpg" for i in PRACTICE_GROUPS[r["label"]]}
        photos = [c["photo"] for c in cells]
        assert len(cells) == 100 and set(photos) <= classes
        distinct = min(100, len(classes))          # dog 118 classes; bird 59, insect 27, ...
        assert len(set(photos)) == distinct
        assert Counter(c["view"] for c in cells)["0"] == distinct   # the rest: other views
        fresh = classes - practice_used
        if len(fresh) >= 100:
            assert not set(photos) & practice_used
        else:                                      # every unused photo before a used one
            assert fresh <= set(photos)
    for r in rows[4:]:
        photos = [c["photo"] for c in contents[r["panel_id"]]]
        assert len(photos) == len(set(photos)) == 100
        per_group = Counter(group_of[p] for p in photos)
        assert max(per_group.values()) <= 5 and len(per_group) == len(MIXED_GROUPS)


def test_untrained_am_panels_become_negative_catch_panels(tmp_path):
    am = tmp_path / "untrained"
    (am / "panels").mkdir(parents=True)
    for stem in ("fc8_0000", "fc8_0001"):
        Image.new("RGB", (40, 40), (90, 90, 90)).save(am / "panels" / f"{stem}.jpg")
    with open(am / "manifest_fc8.csv", "w", newline="") as fh:
        fh.write("panel_id,layer,unit,path,n_images\n"
                 "fc8_0000,fc8,0,panels/fc8_0000.jpg,100\n"
                 "fc8_0001,fc8,1,panels/fc8_0001.jpg,0\n")
    listing = catch_panels(tmp_path / "catch", positive=1, negative=0,
                           untrained=am / "manifest_fc8.csv")
    rows = rows_of(listing)
    assert [r["expected"] for r in rows] == ["yes", "no"]
    assert rows[0]["panel_id"].startswith("catch_digit_")
    assert rows[1]["panel_id"] == "catch_untrained_fc8_0000"      # the empty panel left out
    assert (tmp_path / "catch" / rows[1]["path"]).read_bytes() == \
        (am / "panels" / "fc8_0000.jpg").read_bytes()


def test_catch_command_errors(tmp_path, capsys):
    assert panels_main(["catch", "--photos", str(tmp_path / "none"), "--out",
                        str(tmp_path / "c")]) == 2
    assert "no such folder of photos" in capsys.readouterr().err
    assert panels_main(["catch", "--digits", "--positive", "0", "--negative", "0", "--out",
                        str(tmp_path / "c")]) == 2
    assert "no catch panels" in capsys.readouterr().err


def test_catch_panels_of_the_real_photos(sample_photos, tmp_path):
    catch_panels(tmp_path, photos=sample_photos[0].parent, positive=1, negative=1, cell=32)
    rows = rows_of(tmp_path / "catch.csv")
    assert [(r["panel_id"], r["expected"]) for r in rows] == [("catch_dog_1", "yes"),
                                                            ("catch_mixed_1", "no")]
    for r in rows:
        with Image.open(tmp_path / r["path"]) as panel:
            assert panel.size == (676, 676)
            assert np.asarray(panel.convert("L")).std() > 20    # photos, not blank cells


# ---------------------------------------------------------------------------
# experiment.design --catch K


def test_the_papers_design_with_four_catch_trials_still_balances_the_layers():
    frames = (panels_frame(PAPER_LAYERS), practice_frame())
    plain = build_design(*frames, PAPER_LISTS, PAPER_PARTICIPANTS, sample=PAPER_SAMPLE, seed=0)
    study = build_design(*frames, PAPER_LISTS, PAPER_PARTICIPANTS, sample=PAPER_SAMPLE,
                         seed=0, catch=catch_frame(), catch_trials=4)
    assert_paper_numbers(study)        # 4 conv5, 32 fc6, 15-16 fc8 a list, as without
    validate_design(study)
    # the AM dealing and the targets are those of the design without catch trials
    assert [(lst["panels"], lst["target"]) for lst in study["lists"]] == \
        [(lst["panels"], lst["target"]) for lst in plain["lists"]]
    assert study["catch_trials"] == 4 and len(study["catch_panels"]) == 4 * PAPER_LISTS
    for lst in study["lists"]:
        assert len(lst["catch"]) == 4 and kinds_of(study, lst) == {"yes": 2, "no": 2}
        sources = [study["catch_panels"][t["panel"]]["catch_id"] for t in lst["catch"]]
        assert len(set(sources)) == 4                  # no file twice in a list
        trials = list_trials(lst)
        assert len(trials) == len(lst["panels"]) + 4
        assert [trials[t["position"]] for t in lst["catch"]] == [t["panel"] for t in lst["catch"]]
    # every file serves as many lists (64 lists x 2 of 4 files of a kind: 32 each)
    uses = Counter(e["catch_id"] for e in study["catch_panels"].values())
    assert set(uses.values()) == {32}
    # no catch keys without catch trials: a study file as before them
    assert not {"catch_trials", "catch_panels"} & set(plain)
    assert not any("catch" in lst for lst in plain["lists"])


def test_catch_positions_and_ids_are_seeded():
    frames = (panels_frame({"conv5": 12, "fc6": 30, "fc8": 9}), practice_frame())

    def design(seed: int) -> dict:
        study = build_design(*frames, 6, 12, seed=seed, catch=catch_frame(), catch_trials=3)
        study.pop("created")
        return study

    a, b, c = design(5), design(5), design(6)
    assert a == b
    assert [lst["catch"] for lst in a["lists"]] != [lst["catch"] for lst in c["lists"]]
    positions = [tuple(t["position"] for t in lst["catch"]) for lst in a["lists"]]
    assert len(set(positions)) > 1                         # drawn per list
    for lst in a["lists"]:
        size = len(lst["panels"]) + 3
        ps = [t["position"] for t in lst["catch"]]
        assert ps == sorted(set(ps)) and all(0 <= p < size for p in ps)
    # an odd K: the extra catch is positive in half the lists, negative in the others
    assert Counter(kinds_of(a, lst)["yes"] for lst in a["lists"]) == {2: 3, 1: 3}
    # ids: unique, one per list entry, giving nothing away; files shared
    ids = [t["panel"] for lst in a["lists"] for t in lst["catch"]]
    assert len(ids) == len(set(ids)) == len(a["catch_panels"]) == 18
    for pid, entry in a["catch_panels"].items():
        assert pid.startswith("panel-") and len(pid) == 22
        assert not any(word in pid for word in ("catch", "yes", "no", "dog", "mixed"))
        assert entry["catch"] is True and entry["path"] == \
            catch_frame().set_index("panel_id").loc[entry["catch_id"], "path"]
        assert entry["catch_class"] == (None if entry["catch_expected"] == "no" else
                                        entry["catch_id"].split("_")[1])


def test_impossible_catch_requests():
    frames = (panels_frame({"a": 8}), practice_frame())
    with pytest.raises(DesignError, match="needs catch panels"):
        build_design(*frames, 2, 4, catch_trials=2)
    with pytest.raises(DesignError, match=r"needs 3 positive .* has 2"):
        build_design(*frames, 2, 4, catch=catch_frame(yes=2, no=4), catch_trials=6)
    with pytest.raises(DesignError, match=r"needs 1 negative .* has 0"):
        build_design(*frames, 2, 4, catch=catch_frame(yes=2, no=0), catch_trials=2)
    with pytest.raises(DesignError, match="catch_trials"):
        build_design(*frames, 2, 4, catch=catch_frame(), catch_trials=-1)


def test_read_catch_checks_the_manifest(tmp_path):
    path = tmp_path / "catch.csv"
    path.write_text("panel_id,path,expected,label\na,a.jpg,yes,dog\nb,b.jpg,no,\n")
    frame = read_catch(path)
    assert list(frame["expected"]) == ["yes", "no"] and list(frame["label"]) == ["dog", None]
    assert frame["path"].iloc[0] == str(tmp_path / "a.jpg")
    path.write_text("panel_id,path,expected,label\na,a.jpg,yes,\nb,b.jpg,no,cat\n"
                    "c,c.jpg,maybe,\nc,d.jpg,no,\n")
    with pytest.raises(DesignError) as err:
        read_catch(path)
    for needle in ("line 2: a positive catch panel (expected yes) needs the label",
                   "line 3: a negative catch panel (expected no) has label 'cat'",
                   "line 4: expected 'maybe' is not yes or no"):
        assert needle in str(err.value)


@pytest.fixture
def catch_study() -> dict:
    return build_design(panels_frame({"conv5": 4, "fc6": 8, "fc8": 4}), practice_frame(), 4, 8,
                        seed=2, catch=catch_frame(), catch_trials=2)


@pytest.mark.parametrize(("how", "needle"), [
    ("twice", "is in 2 list entries (must be exactly one)"),
    ("count", "1 catch trials, catch_trials = 2"),
    ("position", "must ascend, each once"),
    ("unknown", "list catch panel 'ghost' is not in 'catch_panels'"),
    ("unlisted", "is in no list"),
    ("class", "a negative catch (expected no) has no catch_class"),
    ("no-class", "a positive catch (expected yes) needs its catch_class"),
    ("clash", "is also an AM or practice panel id"),
    ("k", "catch trials need 'catch_trials'"),
])
def test_validate_design_checks_the_catch_trials(catch_study, how, needle):
    validate_design(catch_study)
    study = copy.deepcopy(catch_study)
    lists, entries = study["lists"], study["catch_panels"]
    no = next(p for p, e in entries.items() if e["catch_expected"] == "no")
    yes = next(p for p, e in entries.items() if e["catch_expected"] == "yes")
    if how == "twice":
        lists[1]["catch"][0] = dict(lists[0]["catch"][0])
    elif how == "count":
        lists[0]["catch"].pop()
    elif how == "position":
        lists[0]["catch"][1]["position"] = lists[0]["catch"][0]["position"]
    elif how == "unknown":
        lists[0]["catch"][0]["panel"] = "ghost"
    elif how == "unlisted":
        entries["panel-0000000000000000"] = dict(entries[no])
    elif how == "class":
        entries[no]["catch_class"] = "dog"
    elif how == "no-class":
        entries[yes]["catch_class"] = None
    elif how == "clash":
        entries[next(iter(study["panels"]))] = dict(entries[no])
    elif how == "k":
        del study["catch_trials"]
    with pytest.raises(DesignError) as err:
        validate_design(study)
    assert needle in str(err.value)


def test_the_command_line_writes_catch_trials_into_study_json(tmp_path, digit_catch, capsys):
    world = tmp_path / "world"
    (world / "panels").mkdir(parents=True)
    rows = []
    for layer, n in {"conv5": 4, "fc6": 8, "fc8": 4}.items():
        for unit in range(n):
            Image.new("L", (8, 8), unit * 10).save(world / "panels" / f"{layer}_{unit}.png")
            rows.append(f"{layer}_{unit},{layer},{unit},panels/{layer}_{unit}.png")
    (world / "panels.csv").write_text("panel_id,layer,unit,path\n" + "\n".join(rows) + "\n")
    args = ["--panels", str(world / "panels.csv"), "--practice",
            str(digit_catch / "practice" / "practice.csv"), "--lists", "4",
            "--participants", "8", "--out", str(tmp_path / "study" / "study.json"), "--quiet"]
    catch = str(digit_catch / "catch" / "catch.csv")
    assert main([*args, "--catch-panels", catch]) == 2
    assert "--catch-panels without --catch K" in capsys.readouterr().err
    assert main([*args, "--catch", "2", "--catch-panels", catch]) == 0
    assert re.search(r"catch trials\s+2\s+per list; 4 yes \+ 4 no in all, from 8 files",
                     capsys.readouterr().out)
    text = json.loads((tmp_path / "study" / "study.json").read_text())
    entry = next(iter(text["catch_panels"].values()))
    assert entry["path"].startswith("../") and len(entry["sha256"]) == 64   # relative, hashed
    study = read_study(tmp_path / "study" / "study.json")
    assert study["source"]["catch"] == catch
    assert all(Path(e["path"]).is_file() for e in study["catch_panels"].values())
    assert "catch trials" in summary(study)


# ---------------------------------------------------------------------------
# The server: installed, shown, stored, exported; Table 2 leaves them out


def catch_design(root: Path) -> Path:
    """3 lists of 2 AM panels and 2 catch trials (1 yes, 1 no), 2 practice panels."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)

    def png(name: str) -> str:
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            root / "img" / f"{name}.png")
        return str(root / "img" / f"{name}.png")

    am = pd.DataFrame([(f"fc8_{u}", "fc8", u, png(f"fc8_{u}")) for u in range(6)],
                      columns=["panel_id", "layer", "unit", "path"])
    practice = pd.DataFrame([(f"practice_{i}", png(f"practice_{i}"), "dog") for i in range(2)],
                            columns=["panel_id", "path", "label"])
    catch = pd.DataFrame([("catch_dog_1", png("catch_dog"), "yes", "dog"),
                          ("catch_mixed_1", png("catch_mixed"), "no", None)],
                         columns=["panel_id", "path", "expected", "label"])
    study = build_design(am, practice, 3, 3, practice_trials=2, catch=catch, catch_trials=2)
    return write_study(study, root / "study.json")


def test_catch_trials_are_installed_shown_exported_and_left_out_of_table2(db_url, tmp_path):
    design = catch_design(tmp_path / "design")
    study = read_study(design)
    app = study_app(db_url, tmp_path / "instance", design, "DONE123", TESTING=True)
    try:
        assert count(app, panels, panels.c.catch.is_(True)) == 6      # 2 a list, 3 lists
        with store_of(app).read() as conn:
            stored = {r.id: r for r in conn.execute(select(panels))}
        for pid, entry in study["catch_panels"].items():
            row = stored[pid]
            assert (row.catch, row.catch_expected, row.catch_class, row.layer, row.unit,
                    row.practice) == (True, entry["catch_expected"], entry["catch_class"],
                                      None, None, False)
        assert not any(r.catch for pid, r in stored.items() if pid not in study["catch_panels"])
        person = Participant(app.test_client())
        state = person.ready()
        assert len(state["trials"]) == 2 + 2 + 2                     # practice, AM, catch
        assert "catch" not in json.dumps(state)                      # nothing gives it away
        person.answer_all()
        out = tmp_path / "export"
        write_exports(store_of(app), out)
    finally:
        store_of(app).dispose()
    rows = rows_of(out / "responses.csv")
    assert tuple(rows[0]) == RESPONSE_COLUMNS and RESPONSE_COLUMNS[-3:] == (
        "catch", "catch_expected", "catch_class")
    catch_rows = [r for r in rows if r["catch"] == "true"]
    assert len(catch_rows) == 2 and sorted(r["catch_expected"] for r in catch_rows) == ["no",
                                                                                        "yes"]
    for r in catch_rows:
        entry = study["catch_panels"][r["panel_id"]]
        assert (r["catch_class"] or None) == entry["catch_class"]
        assert r["layer"] == r["unit"] == "" and r["practice"] == "false"
    assert {(r["catch"], r["catch_expected"], r["catch_class"]) for r in rows
            if r["catch"] != "true"} == {("false", "", "")}
    objects = json.loads((out / "responses.json").read_text())
    assert sorted(o["catch"] for o in objects) == [False] * 4 + [True] * 2
    # Table 2 reads the export: catch rows (no unit) are read, and left out of the judgments
    responses = read_responses(out / "responses.csv")
    judgments = select_judgments(responses)
    assert len(responses) == 6 and len(judgments) == 2
    assert set(judgments["layer"]) == {"fc8"} and not judgments["catch"].any()


def test_table2_reads_exports_with_and_without_catch_columns(tmp_path):
    header = "participant_id,trial_index,practice,panel_id,layer,unit,answer_yes,object_text"
    body = ["1,0,true,p0,,,true,dog", "1,1,false,fc8_1,fc8,1,true,seven",
            "1,2,false,panel-ab,,,false,", "1,3,false,fc8_2,fc8,2,false,"]
    old = tmp_path / "old.csv"
    old.write_text("\n".join([header] + [b for b in body if "panel-" not in b]) + "\n")
    assert len(select_judgments(read_responses(old), include_incomplete=True)) == 2
    new = tmp_path / "new.csv"
    flags = ["false", "false", "true", "false"]
    new.write_text("\n".join([header + ",catch"] + [f"{b},{f}" for b, f in
                                                    zip(body, flags, strict=True)]) + "\n")
    judgments = select_judgments(read_responses(new))     # completeness inferred, catch out
    assert list(judgments["panel_id"]) == ["fc8_1", "fc8_2"]
    # a frame not read by read_responses: text flags
    raw = pd.read_csv(new, dtype=str, keep_default_na=False)
    raw["practice"] = raw["practice"] == "true"
    assert list(select_judgments(raw, include_incomplete=True)["panel_id"]) == ["fc8_1", "fc8_2"]


def test_a_store_from_before_catch_trials_gains_the_catch_columns(db_url):
    """A store made at schema version 5 (panels without the catch columns) gains them on
    start; its panels are no catch panels."""
    store = Store(db_url)
    with store.write() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE panels (id VARCHAR(128) PRIMARY KEY, practice BOOLEAN NOT NULL, "
            "layer VARCHAR(64), unit INTEGER, label TEXT, image VARCHAR(96) NOT NULL, "
            "position INTEGER NOT NULL)")
        conn.exec_driver_sql("INSERT INTO panels (id, practice, layer, unit, image, position) "
                             "VALUES ('fc8_0', FALSE, 'fc8', 0, 'x.png', 0)")
        panels.metadata.create_all(conn)          # every other table (panels exists)
        conn.execute(meta.insert().values(key="schema_version", value="5"))
    assert store.migrate() == 5
    columns = {c["name"] for c in inspect(store.engine).get_columns("panels")}
    assert {"catch", "catch_expected", "catch_class"} <= columns
    with store.read() as conn:
        assert conn.execute(select(meta.c.value)).scalar() == str(SCHEMA_VERSION)
        row = conn.execute(select(panels)).one()
    assert (row.id, row.catch, row.catch_expected, row.catch_class) == ("fc8_0", False, None,
                                                                        None)
    assert store.migrate() == SCHEMA_VERSION      # again: nothing to do
    store.dispose()
