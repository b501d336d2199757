"""The participant's task as the paper ran it: practice panels that vary in how
interpretable they are (one category, or a mix of unrelated photos) with the answer each
expects, carried into the study file; and instructions that ask for the simple name."""

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from server_world import Participant
from system_deps import SHARED_PHOTOS

from experiment.design import build_design, read_practice
from generator.images import imagenet_classes
from generator.panels import MIXED_GROUPS, PRACTICE_GROUPS, PRACTICE_MIXED, practice_panels
from server.study_file import DesignError, validate_design, write_study

#: The six practice panels: four of one category, two mixed, in this order.
PHOTO_IDS = ["practice_dog", "practice_mixed_1", "practice_bird", "practice_vehicle",
             "practice_mixed_2", "practice_insect"]
DIGIT_IDS = ["practice_digit_0", "practice_mixed_digits_1", "practice_digit_1",
             "practice_digit_2", "practice_mixed_digits_2", "practice_digit_3"]


def colour(index: int) -> tuple[int, int, int]:
    """A colour of its own for every ImageNet class, 25 levels apart in some channel."""
    return 25 * (index % 10) + 5, 25 * (index // 10 % 10) + 5, 25 * (index // 100) + 5


def fake_photos(folder: Path) -> None:
    """One solid-colour stand-in ``<wnid>.jpg`` for every class the practice panels use."""
    wnids = imagenet_classes()[0]
    folder.mkdir(parents=True, exist_ok=True)
    used = {i for g in (*PRACTICE_GROUPS.values(), *MIXED_GROUPS.values()) for i in g}
    for i in sorted(used):
        Image.new("RGB", (48, 40), colour(i)).save(folder / f"{wnids[i]}.jpg", quality=95)


def rows_of(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def contents_of(folder: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows_of(folder / "practice_contents.csv"):
        out.setdefault(row["panel_id"], []).append(row)
    return out


def cell_colours(path: Path, rows: int = 4, cols: int = 5, cell: int = 128) -> list:
    with Image.open(path) as panel:
        pixels = np.asarray(panel.convert("RGB"), dtype=np.float64)
    return [pixels[r * (cell + 2) + 16:r * (cell + 2) + cell - 16,
                   c * (cell + 2) + 16:c * (cell + 2) + cell - 16].mean(axis=(0, 1))
            for r in range(rows) for c in range(cols)]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("practice")
    fake_photos(root / "photos")
    practice_panels(root / "out", photos=root / "photos", seed=3)
    return root


def test_four_one_category_panels_and_two_mixed_with_their_expected_answers(made):
    rows = rows_of(made / "out" / "practice.csv")
    assert list(rows[0]) == ["panel_id", "path", "label", "expected"]
    assert [r["panel_id"] for r in rows] == PHOTO_IDS
    assert [r["expected"] for r in rows] == ["yes", "no", "yes", "yes", "no", "yes"]
    assert [r["label"] for r in rows if r["expected"] == "yes"] == list(PRACTICE_GROUPS)
    assert all(r["label"] == "" for r in rows if r["expected"] == "no")
    assert PRACTICE_MIXED == 2 and len(PRACTICE_GROUPS) == 4
    for r in rows:
        with Image.open(made / "out" / r["path"]) as panel:
            assert panel.size == (5 * 128 + 4 * 2, 4 * 128 + 3 * 2)  # 4x5 photos of 128 px
    # the study design reads the listing, expected answers included
    practice = read_practice(made / "out" / "practice.csv")
    assert list(practice["expected"]) == ["yes", "no", "yes", "yes", "no", "yes"]
    assert practice["label"][0] == "dog" and pd.isna(practice["label"][1])


def test_every_panel_shows_what_its_listing_says(made):
    wnids = imagenet_classes()[0]
    index = {f"{w}.jpg": i for i, w in enumerate(wnids)}
    contents = contents_of(made / "out")
    assert list(contents) == PHOTO_IDS
    photos = [row["photo"] for rows in contents.values() for row in rows]
    assert len(photos) == 6 * 20 and len(set(photos)) == len(photos)   # no photo twice
    for pid, rows in contents.items():
        assert [int(r["position"]) for r in rows] == list(range(20))
        seen = cell_colours(made / "out" / f"{pid}.jpg")
        for row, got in zip(rows, seen, strict=True):
            # the cell at that position is that photo (its class's own colour)
            assert np.abs(got - colour(index[row["photo"]])).max() < 8, (pid, row)


def test_one_category_panels_show_twenty_classes_of_their_category(made):
    wnids = imagenet_classes()[0]
    contents = contents_of(made / "out")
    for label, classes in PRACTICE_GROUPS.items():
        rows = contents[f"practice_{label}"]
        drawn = [wnids.index(r["photo"].removesuffix(".jpg")) for r in rows]
        assert len(set(drawn)) == 20 and set(drawn) <= set(classes)
        assert {r["group"] for r in rows} == {label}


def test_mixed_panels_show_twenty_unrelated_categories(made):
    wnids = imagenet_classes()[0]
    contents = contents_of(made / "out")
    for pid in ("practice_mixed_1", "practice_mixed_2"):
        rows = contents[pid]
        groups = [r["group"] for r in rows]
        assert len(groups) == 20 and len(set(groups)) == 20   # no category twice
        for r in rows:
            assert wnids.index(r["photo"].removesuffix(".jpg")) in MIXED_GROUPS[r["group"]]


def test_the_mixed_categories_are_disjoint_and_hold_the_practice_ones():
    assert len(MIXED_GROUPS) >= 20
    owner: dict[int, str] = {}
    for name, classes in MIXED_GROUPS.items():
        for i in classes:
            assert 0 <= i < 1000
            assert i not in owner, f"class {i} in {owner.get(i)!r} and {name!r}"
            owner[i] = name
    # each practice category lies within one mixed category, so that a mixed panel
    # never shows two photos of a practice category (two dogs, two birds)
    for label, classes in PRACTICE_GROUPS.items():
        assert len(classes) >= 20, label
        assert len({owner.get(i) for i in classes}) == 1, label


def test_the_panels_are_seeded_and_deterministic(made, tmp_path):
    again = tmp_path / "again"
    practice_panels(again, photos=made / "photos", seed=3)
    for name in ("practice.csv", "practice_contents.csv", *(f"{p}.jpg" for p in PHOTO_IDS)):
        assert (again / name).read_bytes() == (made / "out" / name).read_bytes(), name
    other = tmp_path / "other"
    practice_panels(other, photos=made / "photos", seed=4)
    assert (other / "practice_contents.csv").read_bytes() != \
        (made / "out" / "practice_contents.csv").read_bytes()


def test_too_few_unrelated_categories_for_a_mixed_panel_is_an_error(tmp_path):
    fake_photos(tmp_path / "photos")
    wnids = imagenet_classes()[0]
    in_practice = {i for g in PRACTICE_GROUPS.values() for i in g}
    apart = [n for n, g in MIXED_GROUPS.items() if not in_practice & set(g)]
    for name in apart[:len(MIXED_GROUPS) - 19]:           # 19 categories left with photos
        for i in MIXED_GROUPS[name]:
            (tmp_path / "photos" / f"{wnids[i]}.jpg").unlink()
    with pytest.raises(ValueError, match=r"mixed practice panel 1: 19 unrelated categories "
                                         r"have an unused photo .* 20 are needed"):
        practice_panels(tmp_path / "out", photos=tmp_path / "photos")


def test_digit_panels_without_photos_mix_the_same_way(tmp_path):
    from sklearn.datasets import load_digits

    target = load_digits().target
    listing = practice_panels(tmp_path / "a", seed=1)
    rows = rows_of(listing)
    assert [r["panel_id"] for r in rows] == DIGIT_IDS
    assert [(r["label"], r["expected"]) for r in rows] == [
        ("0", "yes"), ("", "no"), ("1", "yes"), ("2", "yes"), ("", "no"), ("3", "yes")]
    contents = contents_of(tmp_path / "a")
    used = [int(r["photo"].removeprefix("digits:")) for rs in contents.values() for r in rs]
    assert len(used) == 120 and len(set(used)) == 120   # no digit image twice
    for pid, rs in contents.items():
        digits = [int(target[int(r["photo"].removeprefix("digits:"))]) for r in rs]
        assert digits == [int(r["group"]) for r in rs]
        if "mixed" in pid:
            assert Counter(digits) == {d: 2 for d in range(10)}   # every digit twice
        else:
            assert set(digits) == {int(pid[-1])}
    with Image.open(tmp_path / "a" / "practice_mixed_digits_1.jpg") as panel:
        pixels = np.asarray(panel.convert("L"))
    assert pixels.shape == (4 * 64 + 3 * 2, 5 * 64 + 4 * 2) and 10 < pixels.mean() < 200
    practice_panels(tmp_path / "b", seed=1)
    for name in ("practice.csv", "practice_contents.csv", "practice_mixed_digits_2.jpg"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.needs_system("shared_data")   # skips without the optional photos (docs/data.md)
def test_practice_panels_from_the_shared_photos(tmp_path):
    rows = rows_of(practice_panels(tmp_path, photos=SHARED_PHOTOS))
    assert [r["panel_id"] for r in rows] == PHOTO_IDS
    contents = contents_of(tmp_path)
    for pid in ("practice_mixed_1", "practice_mixed_2"):
        assert len({r["group"] for r in contents[pid]}) == 20


# -- the expected answer in the study file ----------------------------------------------------

def design_from(listing: Path, n: int = 2) -> dict:
    panels = [{"panel_id": f"fc8_{u}", "layer": "fc8", "unit": u,
               "path": str(listing.parent / "practice_digit_0.jpg")} for u in range(n)]
    return build_design(pd.DataFrame(panels), read_practice(listing), n_lists=1,
                        participants=1, practice_trials=6)


def test_the_expected_answers_travel_into_study_json(tmp_path):
    listing = practice_panels(tmp_path / "practice")
    path = write_study(design_from(listing), tmp_path / "study" / "study.json")
    study = json.loads(path.read_text())
    assert study["practice"] == DIGIT_IDS
    assert [study["practice_panels"][p]["expected"] for p in DIGIT_IDS] == \
        ["yes", "no", "yes", "yes", "no", "yes"]
    assert study["practice_panels"]["practice_digit_2"]["label"] == "2"
    assert study["practice_panels"]["practice_mixed_digits_1"]["label"] is None


def test_a_practice_manifest_without_expected_answers_writes_no_such_key(tmp_path):
    listing = practice_panels(tmp_path / "practice")
    rows = rows_of(listing)
    with listing.open("w", newline="") as fh:   # as practice.csv was before the column
        writer = csv.writer(fh)
        writer.writerow(["panel_id", "path", "label"])
        writer.writerows([r["panel_id"], r["path"], r["label"]] for r in rows)
    study = design_from(listing)
    assert all("expected" not in entry for entry in study["practice_panels"].values())
    validate_design(study)


def test_a_bad_expected_answer_is_refused(tmp_path):
    listing = practice_panels(tmp_path / "practice")
    listing.write_text(listing.read_text().replace(",yes\n", ",maybe\n", 1))
    with pytest.raises(DesignError, match=r"line 2: expected 'maybe' is not yes, no or empty"):
        read_practice(listing)
    study = design_from(practice_panels(tmp_path / "again"))
    study["practice_panels"]["practice_digit_0"]["expected"] = "maybe"
    with pytest.raises(DesignError, match="practice panel 'practice_digit_0': expected must "
                                          "be yes or no"):
        validate_design(study)


# -- the instructions -------------------------------------------------------------------------

@pytest.mark.parametrize("store_kind", ["sqlite"])   # a page's text: one store is enough
def test_the_instructions_ask_for_the_simple_name(app):
    p = Participant(app.test_client())
    p.enter()
    assert p.consent().status_code == 302
    page = p.client.get("/instructions")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert ("Name it simply, with the everyday word for it: for example <strong>fish</strong> "
            "rather than <strong>goldfish</strong>.") in html
