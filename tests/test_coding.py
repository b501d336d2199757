"""Free-text coding against WordNet 3.0 (docs/table2.md): the real database of Debian's
wordnet-base, real word lists, closed-form expectations."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis import coding
from analysis.coding import (
    Code,
    Coder,
    CodingError,
    class_senses_from_names,
    imagenet_class_senses,
    load_rough_classes,
    normalise,
    read_class_map,
    read_codes,
    review_table,
)
from analysis.wordnet import DEFAULT_DIR, WordNet, WordNetError, load_wordnet

ROOT = Path(__file__).resolve().parents[1]
WORDNET_DIR = Path(os.environ.get("WORDNET_DIR") or DEFAULT_DIR)

# Without WordNet these tests skip with the command that installs it; under CI=true they fail.
pytestmark = pytest.mark.needs_system("wordnet")

# ImageNet classes used below (index, wnid) from generator/imagenet1k_classes.tsv.
FLAT_COATED_RETRIEVER = (205, "n02099267")
TABBY_CAT = (281, "n02123045")
GRANNY_SMITH = (948, "n07742313")
EGGNOG = (969, "n07932039")
BEER_GLASS = (441, "n02823750")


@pytest.fixture(scope="module")
def wn() -> WordNet:
    return load_wordnet()


@pytest.fixture(scope="module")
def coder(wn) -> Coder:
    return Coder(wn)


@pytest.fixture(scope="module")
def imagenet(wn) -> dict:
    return imagenet_class_senses(wordnet=wn)


@pytest.fixture(scope="module")
def digits(coder) -> dict:
    return class_senses_from_names([str(d) for d in range(10)], coder)


# -- WordNet ---------------------------------------------------------------------------


def test_wordnet_synsets_words_and_ids(wn):
    dog = wn.offset("n02084071")
    assert wn.words(dog) == ("dog", "domestic_dog", "Canis_familiaris")
    assert wn.describe(dog) == "n02084071 dog, domestic_dog, Canis_familiaris"
    assert wn.wnid(13744916) == "n13744916"
    assert wn.noun_synsets("dog")[0] == dog  # sense order: the animal first
    assert wn.noun_synsets("Ice Cream") == wn.noun_synsets("ice_cream") == (7614500,)
    # Digits and their names share the synset.
    assert wn.noun_synsets("7") == (13744916,)
    assert 13744916 in wn.noun_synsets("seven")
    with pytest.raises(ValueError, match="not a WordNet noun id"):
        wn.offset("dog")
    with pytest.raises(ValueError, match="not a synset"):
        wn.offset("n00000001")


def test_wordnet_hierarchy(wn):
    retriever = wn.offset(FLAT_COATED_RETRIEVER[1])
    up = wn.ancestors(retriever)
    assert wn.offset("n02084071") in up  # dog
    assert wn.offset("n00001740") in up  # entity
    assert retriever not in up
    assert retriever in wn.hyponyms(wn.offset("n02099029"))  # retriever
    assert retriever in wn.descendants(wn.offset("n02084071"))
    # Instance hypernyms count: Mark Twain is an instance of writer.
    twain = wn.noun_synsets("mark_twain")[0]
    assert wn.noun_synsets("writer")[0] in wn.ancestors(twain)


@pytest.mark.parametrize("word, base", [
    ("dogs", "dog"), ("geese", "goose"), ("mice", "mouse"), ("buses", "bus"),
    ("boxes", "box"), ("churches", "church"), ("ponies", "pony"), ("women", "woman"),
    ("dishes", "dish"), ("foxes", "fox"), ("waltzes", "waltz"), ("glasses", "glass"),
    ("green peppers", "green_pepper"), ("granny smiths", "granny_smith"),
    ("ice creams", "ice_cream"),
])
def test_morphy_noun(wn, word, base):
    assert base in wn.morphy_noun(word)


def test_morphy_noun_puts_the_word_first_and_checks_the_index(wn):
    assert wn.morphy_noun("glasses") == ["glasses", "glass"]  # spectacles, then glass
    assert wn.morphy_noun("grass") == ["grass"]  # no s-stripping after ss
    assert wn.morphy_noun("dgo") == []
    assert wn.morphy_noun("running") == ["running"]


def test_is_known_word_covers_every_part_of_speech(wn):
    for word in ("green", "greener", "running", "went", "quickly", "dogs", "geese"):
        assert wn.is_known_word(word), word
    for word in ("dgo", "retreiver", "aple", "xqzt"):
        assert not wn.is_known_word(word), word


def test_wordnet_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("SELECTIVITY_CACHE", str(tmp_path))
    first = WordNet.load(WORDNET_DIR)
    cached = list((tmp_path / "wordnet").glob("wordnet-*.pickle"))
    assert len(cached) == 1
    second = WordNet.load(WORDNET_DIR)
    assert len(second) == len(first) == 82115
    assert second.noun_synsets("dog") == first.noun_synsets("dog")
    assert second.ancestors(2099267) == first.ancestors(2099267)
    cached[0].write_bytes(b"not a pickle")  # a broken cache is parsed again
    assert len(WordNet.load(WORDNET_DIR)) == 82115


def test_missing_wordnet_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("WORDNET_DIR", str(tmp_path))
    with pytest.raises(WordNetError, match="wordnet-base.*WORDNET_DIR"):
        WordNet.load()
    with pytest.raises(FileNotFoundError):
        load_wordnet()


# -- normalisation ------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("  The DOG!! ", "the dog"),
    ("Beer,drink", "beer, drink"),
    ("beer/drink", "beer / drink"),
    ("salt & pepper + vinegar", "salt & pepper + vinegar"),
    ("dog (maybe a wolf)", "dog, maybe a wolf"),
    ("flat-coated retriever's", "flat-coated retriever's"),
    ("dogs' bowls", "dogs bowls"),
    ("\u201cLady\u2019s slipper\u201d", "lady's slipper"),
    ("\uff24\uff4f\uff47", "dog"),  # full-width letters (NFKC)
    ("dog - cat", "dog, cat"),
    ("ice_cream", "ice cream"),
    ("?!", ""),
])
def test_normalise(text, expected):
    assert normalise(text) == expected
    assert normalise(expected) == expected  # idempotent


# -- coding -------------------------------------------------------------------------------


@pytest.mark.parametrize("answer, head", [
    ("dogs", "dog"), ("Geese", "goose"), ("mice", "mouse"), ("buses", "bus"),
    ("boxes", "box"), ("churches", "church"), ("ponies", "pony"), ("women", "woman"),
    ("ice cream", "ice_cream"), ("green peppers", "green_pepper"),
    ("Granny Smith", "granny_smith"), ("granny smiths", "granny_smith"),
    ("the number seven", "seven"), ("a picture of a dog", "dog"),
    ("some kind of bird", "bird"), ("lots of fish", "fish"), ("wine glasses", "wineglass"),
    ("a flat-coated retriever", "flat-coated_retriever"), ("dogs running", "dog"),
])
def test_heads(coder, answer, head):
    code = coder.code(answer)
    assert code.heads == (head,)
    assert code.coded and code.unknown == ()
    assert set(coder.wordnet.noun_synsets(head)) <= code.senses


def test_every_sense_of_the_head_is_kept(coder, wn):
    assert coder.code("dog").senses == frozenset(wn.noun_synsets("dog"))
    assert len(coder.code("dog").senses) == 7


def test_alternatives_modifiers_and_head_final(coder):
    code = coder.code("beer or some drink")
    assert code.heads == ("beer", "drink")
    assert code.source == "auto" and code.answer == "beer or some drink"
    green = coder.code("green apple")
    assert green.heads == ("apple",) and green.modifiers == ("green",)
    big = coder.code("big dog")
    assert big.heads == ("dog",) and big.modifiers == ("big",)
    number = coder.code("the number seven")
    assert number.modifiers == ("number",)
    assert coder.code("cat, dog / bird; horse & pony").heads == (
        "cat", "dog", "bird", "horse", "pony")


@pytest.mark.parametrize("answer", ["dgo", "retreiver", "aple"])
def test_misspellings_are_reported_never_guessed(coder, answer):
    code = coder.code(answer)
    assert code.unknown == (answer,)
    assert code.senses == frozenset() and not code.coded and code.heads == ()


def test_misspelling_beside_a_word(coder):
    code = coder.code("dgo or dog")
    assert code.heads == ("dog",) and code.unknown == ("dgo",) and code.coded


@pytest.mark.parametrize("answer", ["no idea", "not sure", "something", "?", ""])
def test_non_answers_are_not_coded(coder, answer):
    code = coder.code(answer)
    assert not code.coded and code.unknown == ()


def test_code_is_memoised_per_normalised_text(coder):
    a, b = coder.code("Dogs!"), coder.code("dogs")
    assert a.normalised == b.normalised == "dogs"
    assert a.answer == "Dogs!" and b.answer == "dogs"
    assert a.senses == b.senses


# -- agreement and matches ----------------------------------------------------------------


def test_the_papers_drinks_agree_pairwise(coder):
    codes = [coder.code(w) for w in ("beer", "glass", "drink")]
    for a in codes:
        for b in codes:
            assert coder.agree(a, b), (a.answer, b.answer)
    assert {"drink"} <= coder.rough_class(codes[1])


def test_agreement_by_hypernymy_both_ways(coder):
    assert coder.agree(coder.code("dog"), coder.code("flat-coated retriever"))
    assert coder.agree(coder.code("retriever"), coder.code("dog"))
    assert coder.agree(coder.code("animal"), coder.code("goose"))


@pytest.mark.parametrize("a, b", [("dog", "cat"), ("dog", "bird"), ("car", "boat"),
                                  ("apple", "dog"), ("beer", "dog"), ("seven", "three"),
                                  ("man", "gorilla")])
def test_unrelated_answers_do_not_agree(coder, a, b):
    assert not coder.agree(coder.code(a), coder.code(b))


def test_uncoded_answers_agree_with_nothing(coder, imagenet):
    dgo = coder.code("dgo")
    assert not coder.agree(dgo, dgo)
    assert not coder.agree(dgo, coder.code("dog"))
    assert not coder.matches(dgo, imagenet[FLAT_COATED_RETRIEVER[0]])
    assert not coder.matches(coder.code("dog"), frozenset())


def test_imagenet_classes(imagenet, wn):
    assert len(imagenet) == 1000
    for index, wnid in (FLAT_COATED_RETRIEVER, GRANNY_SMITH, EGGNOG, TABBY_CAT):
        assert imagenet[index] == frozenset({wn.offset(wnid)})


def test_dogs_match_flat_coated_retriever_cats_do_not(coder, imagenet):
    retriever, tabby = imagenet[FLAT_COATED_RETRIEVER[0]], imagenet[TABBY_CAT[0]]
    for answer in ("dog", "dogs", "a retriever", "Flat-coated retrievers"):
        assert coder.matches(coder.code(answer), retriever), answer
    assert not coder.matches(coder.code("cat"), retriever)
    assert coder.matches(coder.code("cat"), tabby)
    assert not coder.matches(coder.code("dog"), tabby)


def test_fruit_and_vegetables_match_granny_smith(coder, imagenet):
    granny = imagenet[GRANNY_SMITH[0]]
    apples, peppers = coder.code("apples"), coder.code("green peppers")
    assert coder.matches(apples, granny)  # apple is a hypernym of Granny Smith
    assert coder.matches(peppers, granny)  # through the rough class fruit_vegetable
    assert coder.rough_class(peppers) == {"fruit_vegetable"}
    assert coder.agree(peppers, apples)
    assert coder.agree(peppers, coder.code("Granny Smith"))
    assert not coder.matches(coder.code("dog"), granny)


def test_drinks_match_eggnog_and_beer_glass(coder, imagenet):
    eggnog = imagenet[EGGNOG[0]]
    for answer in ("beverage", "drink", "drinks", "eggnog"):
        assert coder.matches(coder.code(answer), eggnog), answer
    assert coder.matches(coder.code("beer"), imagenet[BEER_GLASS[0]])
    assert not coder.matches(coder.code("dog"), eggnog)


def test_digit_classes_by_name(coder, digits, wn):
    assert digits[7] == frozenset({wn.offset("n13744916")})
    for answer in ("seven", "7", "the number seven", "number 7", "Seven!"):
        code = coder.code(answer)
        assert coder.matches(code, digits[7]), answer
        assert not coder.matches(code, digits[3]), answer
        assert [d for d in digits if coder.matches(code, digits[d])] == [7], answer


def test_class_names_that_code_to_nothing(coder):
    with pytest.raises(CodingError, match="1: 'dgo'"):
        class_senses_from_names(["dog", "dgo"], coder)
    senses = class_senses_from_names(["dog", "dgo"], coder, strict=False)
    assert senses[1] == frozenset() and senses[0]


def test_class_names_as_whole_lemmas(coder, wn):
    senses = class_senses_from_names(["Black and Tan Coonhound"], coder)
    assert senses[0] == frozenset({wn.offset("n02089078")})


def test_read_class_map(coder, wn, tmp_path):
    path = tmp_path / "classes.tsv"
    path.write_text("index\tname\twnid\n0\tcrane\tn02012849\n1\tseven\t\n")
    classes = read_class_map(path, coder)
    assert classes[0] == frozenset({wn.offset("n02012849")})  # the wnid wins
    assert 13744916 in classes[1]
    path.write_text("index\tname\twnid\n0\tdog\t\n1\tcat\tn99999999\n")
    with pytest.raises(CodingError, match=r"classes.tsv, line 3.*n99999999"):
        read_class_map(path, coder)
    path.write_text("index\tname\n0\tdog\nx\tcat\n")
    with pytest.raises(CodingError, match=r"line 3.*integer"):
        read_class_map(path, coder)
    path.write_text("index\tname\n0\tdgo\n")
    with pytest.raises(CodingError, match=r"line 2.*'dgo'"):
        read_class_map(path, coder)


# -- rough classes ------------------------------------------------------------------------


def test_packaged_rough_classes_exist_in_wordnet(wn):
    rough = load_rough_classes(wordnet=wn)
    assert 25 <= len(rough) <= 45
    # Every wnid is a synset (load_rough_classes checks) and names what its row says.
    with open(coding.ROUGH_CLASSES_PATH, encoding="utf-8") as fh:
        rows = list(csv.DictReader((line for line in fh if not line.startswith("#")),
                                   delimiter="\t"))
    assert [r["name"] for r in rows] == list(rough)
    for row in rows:
        for wnid in row["wnids"].split():
            assert wn.offset(wnid) in rough[row["name"]]
    words = {name: {w.lower() for o in offsets for w in wn.words(o)}
             for name, offsets in rough.items()}
    assert {"dog", "canine"} <= words["dog"]
    assert {"beverage", "drinking_vessel", "drinking_glass"} <= words["drink"]
    assert {"produce", "fruit"} <= words["fruit_vegetable"]
    assert "bird" in words["bird"] and "feline" in words["cat"]
    # No rough class covers numbers: the digit classes stay apart.
    coder = Coder(wn, rough)
    for digit in range(10):
        assert not coder.rough_class(coder.code(str(digit)))


ROUGH_EXAMPLES = {
    "dog": "poodle wolf fox", "cat": "lion kitten", "bear": "grizzly panda",
    "primate": "monkey gorilla lemur",
    "hoofed_mammal": "horse zebra cow sheep pig camel", "rodent": "rat rabbit squirrel",
    "marine_mammal": "whale dolphin seal", "bird": "goose owl", "fish": "salmon shark",
    "snake": "cobra python", "lizard": "gecko iguana chameleon", "turtle": "tortoise",
    "amphibian": "frog toad newt", "insect": "beetle bee ant butterfly",
    "arachnid": "spider scorpion", "crustacean": "crab lobster", "mollusc": "snail octopus",
    "fungus": "mushroom toadstool", "flower": "daisy rose tulip", "tree": "oak palm",
    "fruit_vegetable": "apple banana carrot", "drink": "beer wine coffee mug goblet",
    "baked_goods": "bread bagel cake", "dish": "pizza burger soup",
    "motor_vehicle": "car truck bus taxi", "boat": "ship canoe submarine", "bicycle": "bike",
    "aircraft": "airplane helicopter", "train": "train locomotive tram",
    "building": "house church barn", "musical_instrument": "guitar piano drum",
    "ball": "football", "clothing": "shirt hat shoe", "furniture": "chair sofa bed",
    "tool": "hammer screwdriver", "weapon": "gun sword", "timepiece": "clock watch",
    "lamp": "lamp candle", "home_appliance": "fridge toaster",
    "bag": "handbag suitcase backpack", "geological_formation": "mountain cliff volcano",
}


def test_rough_classes_hold_their_everyday_members(coder):
    assert set(ROUGH_EXAMPLES) == set(coder.rough_classes)
    for name, words in ROUGH_EXAMPLES.items():
        for word in words.split():
            assert name in coder.rough_class(coder.code(word)), (name, word)


def test_rough_class_file_errors(wn, tmp_path):
    path = tmp_path / "rough.tsv"
    path.write_text("name\twnids\tnote\ndog\tn02084071\tok\nbad\tn99999999\tnope\n")
    with pytest.raises(CodingError, match=r"rough.tsv, line 3.*n99999999"):
        load_rough_classes(path, wordnet=wn)
    path.write_text("name\twnids\tnote\ndog\tdog\tnot an id\n")
    with pytest.raises(CodingError, match=r"line 2.*'dog' is not a WordNet noun id"):
        load_rough_classes(path, wordnet=wn)
    path.write_text("# comment\nname\twnids\tnote\ndog\tn02084071\tx\ndog\tn02084071\tx\n")
    with pytest.raises(CodingError, match=r"line 4.*twice"):
        load_rough_classes(path, wordnet=wn)
    path.write_text("wnid\tname\n")
    with pytest.raises(CodingError, match="header"):
        load_rough_classes(path, wordnet=wn)
    with pytest.raises(CodingError, match="none.tsv: rough-class file not found"):
        load_rough_classes(tmp_path / "none.tsv", wordnet=wn)


def test_custom_rough_classes(wn):
    no_rough = Coder(wn, rough_classes={})
    assert not no_rough.agree(no_rough.code("beer"), no_rough.code("glass"))
    assert no_rough.agree(no_rough.code("beer"), no_rough.code("drink"))  # hypernymy
    with pytest.raises(CodingError, match="not a noun synset"):
        Coder(wn, rough_classes={"x": [1]})


# -- review and overrides -----------------------------------------------------------------


def test_review_table(coder):
    table = review_table(["Dogs", "dogs", "dgo", "beer or some drink", None, "  "], coder)
    assert list(table.columns) == list(coding.REVIEW_COLUMNS)
    assert list(table["answer"]) == ["dogs", "beer or some drink", "dgo"]
    row = table.iloc[0]
    assert row["count"] == 2 and row["heads"] == "dog" and row["status"] == "auto"
    assert "n02084071" in row["senses"].split() and "dog" in row["lemmas"].split()
    assert row["rough_classes"] == "dog"
    dgo = table.iloc[2]
    assert dgo["senses"] == "" and dgo["unknown"] == "dgo" and dgo["status"] == "unknown"


def test_overrides_take_precedence(wn):
    override = Code("dgo", "dgo", frozenset({wn.offset("n02084071")}), ("dog",), (), (),
                    "override")
    coder = Coder(wn, overrides={"DGO": override})
    code = coder.code("Dgo!")
    assert code.source == "override" and code.coded and code.answer == "Dgo!"
    assert coder.auto_code("dgo").unknown == ("dgo",)


def write_responses(path: Path, rows) -> None:
    pd.DataFrame(rows, columns=["participant", "panel_id", "answer_yes", "object_text"]
                 ).to_csv(path, index=False)


def run_cli(*args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "analysis.coding", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, env=env)


def test_review_cli_round_trip(tmp_path, wn):
    responses = tmp_path / "responses.csv"
    write_responses(responses, [
        ("p1", 1, True, "Dogs"), ("p2", 1, 1, "a dog"), ("p3", 1, "True", "dgo"),
        ("p4", 2, False, "ignored answer"), ("p5", 2, 0, ""), ("p6", 3, "true", "beer"),
    ])
    out = tmp_path / "codes.csv"
    assert coding.main(["review", str(responses), "--out", str(out)]) == 0
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert set(table["answer"]) == {"dogs", "a dog", "dgo", "beer"}
    assert table.set_index("answer").loc["dgo", "status"] == "unknown"
    # The analyst codes the misspelling as dog and declares "beer" not codeable.
    table.loc[table["answer"] == "dgo", "senses"] = "n02084071"
    table.loc[table["answer"] == "beer", "senses"] = ""
    table.to_csv(out, index=False)
    codes = read_codes(out, wordnet=wn)
    assert set(codes) == {"dogs", "a dog", "dgo", "beer"}
    assert all(c.source == "override" for c in codes.values())
    coder = Coder(wn, overrides=codes)
    dgo = coder.code("DGO")
    assert dgo.source == "override" and dgo.heads == ("dog",)
    retriever = frozenset({wn.offset(FLAT_COATED_RETRIEVER[1])})
    assert coder.matches(dgo, retriever)
    assert not coder.code("beer").coded
    # Reviewing again keeps the overrides and marks where they differ from auto.
    again = tmp_path / "codes2.csv"
    assert coding.main(["review", str(responses), "--out", str(again),
                        "--codes", str(out)]) == 0
    status = pd.read_csv(again, dtype=str, keep_default_na=False).set_index("answer")["status"]
    assert status.to_dict() == {"dogs": "auto", "a dog": "auto", "dgo": "override",
                                "beer": "override"}


def test_review_cli_summary_and_errors(tmp_path):
    responses = tmp_path / "responses.csv"
    write_responses(responses, [("p1", 1, True, "aple"), ("p2", 1, True, "apple")])
    done = run_cli("review", responses, "--out", tmp_path / "codes.csv")
    assert done.returncode == 0, done.stderr
    assert "2 distinct answers: 1 coded" in done.stdout and "(aple)" in done.stdout
    missing = run_cli("review", tmp_path / "nope.csv", "--out", tmp_path / "x.csv")
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")
    assert "nope.csv" in missing.stderr
    (tmp_path / "bad.csv").write_text("participant,answer\np1,dog\n")
    bad = run_cli("review", tmp_path / "bad.csv", "--out", tmp_path / "x.csv")
    assert bad.returncode == 2 and "object_text" in bad.stderr
    nowordnet = run_cli("code", "dog", env_extra={"WORDNET_DIR": str(tmp_path)})
    assert nowordnet.returncode == 2 and "wordnet-base" in nowordnet.stderr
    helped = run_cli("review", "--help")
    assert helped.returncode == 0 and "--codes" in helped.stdout


def test_code_cli(capsys):
    assert coding.main(["code", "beer or some drink", "dgo"]) == 0
    out = capsys.readouterr().out
    assert "heads: beer drink" in out and "n07886849 beer" in out
    assert "unknown: dgo" in out and "(not coded)" in out


def test_read_codes_errors(tmp_path, wn):
    path = tmp_path / "codes.csv"
    path.write_text("answer,senses\ndog,n02084071\ncat,n0212\n")
    with pytest.raises(CodingError, match=r"codes.csv, line 3.*'n0212'"):
        read_codes(path, wordnet=wn)
    path.write_text("answer,heads\ndog,dog\n")
    with pytest.raises(CodingError, match="missing column.*senses"):
        read_codes(path, wordnet=wn)
    path.write_text("answer,senses\nDog,\ndog,n02084071\n")
    with pytest.raises(CodingError, match="line 3.*twice"):
        read_codes(path, wordnet=wn)
