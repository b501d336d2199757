"""Free-text answers to WordNet 3.0 synsets, and their agreement (docs/table2.md).

Participants who say yes write which everyday object, place or animal they see
("beer or some drink", "green peppers", "dgo"). Table 2 asks whether the humans
agree on the object and whether it matches a unit's class; ImageNet's classes are
WordNet 3.0 noun synsets, so answers are coded as synsets too.

Coding (:meth:`Coder.code`), deliberately simple and predictable:

1. :func:`normalise`: lower case, NFKC, punctuation stripped except intra-word
   hyphens and apostrophes, whitespace collapsed. The list separators ``, / ; & +``
   are kept as tokens (brackets, ``!``, ``?``, ``:`` and dashes become ``,``),
   because they separate alternatives.
2. The answer splits into alternatives at separators and at the words of
   :data:`SEPARATOR_WORDS` ("or", "and", "of", "with", "maybe", "possibly",
   prepositions...). In each, the stop words of :data:`STOP_WORDS` (articles,
   determiners, quantifiers, pronouns, "kind", "sort", "type", "like", "looks",
   generic words such as "thing" or "object", non-answers such as "no idea")
   are dropped.
3. Noun phrases are matched greedily, longest first (up to 4 tokens joined with
   ``_``, or ``-``, or closed up for two tokens: "wine glass" -> wineglass), with
   WordNet's noun morphology on the last word ("green peppers" -> green_pepper,
   "granny smiths" -> granny_smith, "geese" -> goose).
4. The head of an alternative is its last noun phrase (English is head-final:
   "apple tree" -> tree, "the number seven" -> seven); earlier nouns become
   modifiers. Filler nouns (:data:`FILLER_WORDS`: "number", "picture", "shape",
   "pattern", body parts...) are heads only when the answer names nothing else
   ("a picture of a dog" -> dog), and a trailing gerund ("dogs running") gives
   way to an earlier noun.
5. Every sense of every head is kept (all index.noun synsets of each base form).
   Known words that are not nouns ("green", "big") are modifiers; words WordNet
   does not know are reported in ``unknown`` and never guessed ("dgo").

Agreement (:meth:`Coder.agree`): two codes agree when a sense of one equals, is
a hypernym of or a hyponym of a sense of the other, or both fall under the same
rough class (``rough_classes.tsv``: "beer", "glass" and "drink" agree as in the
paper). A code matches a class (:meth:`Coder.matches`) when one of its senses is
a class synset or a hypernym of one ("dog" matches flat-coated retriever), or
they share a rough class. Uncoded answers agree with nothing and match nothing.
Keeping every sense makes agreement lenient ("dog" is also a hot dog and a cad, so
"dog" agrees with "person"); the rough classes are chosen not to add to that (no
person, animal, food or vehicle class), and the review table lets an analyst narrow
any answer to the senses meant.

Review: ``python -m analysis.coding review responses.csv --out codes.csv`` writes
one row per distinct answer with its code; the analyst edits the ``senses``
column (WordNet ids; empty = not codeable) and :func:`read_codes` reads the file
back as overrides, which take precedence over automatic coding. The file is the
coding: every row of it is an override (``status`` says where it differs from
the automatic code). ``python -m analysis.coding code "some text" ...`` prints
codes.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from common.data import data_dir

from .wordnet import WordNet, WordNetError, load_wordnet

__all__ = [
    "FILLER_WORDS",
    "REVIEW_COLUMNS",
    "ROUGH_CLASSES_PATH",
    "SEPARATOR_WORDS",
    "STOP_WORDS",
    "Code",
    "Coder",
    "CodingError",
    "WordNetError",
    "class_senses_from_names",
    "imagenet_class_senses",
    "load_rough_classes",
    "main",
    "normalise",
    "read_answers",
    "read_class_map",
    "read_codes",
    "review_table",
]

log = logging.getLogger("analysis.coding")  # the same name under python -m

ROOT = Path(__file__).resolve().parent.parent

#: The packaged rough classes.
ROUGH_CLASSES_PATH = Path(__file__).resolve().with_name("rough_classes.tsv")

#: Where the ILSVRC-2012 class list is looked for (docs/data.md), in order.
IMAGENET_CLASSES_PATHS = (ROOT / "generator" / "imagenet1k_classes.tsv",
                          *([data_dir() / "imagenet1k_classes.tsv"] if data_dir() else []))

#: Columns of a review table / codes.csv.
REVIEW_COLUMNS = ("answer", "count", "senses", "lemmas", "heads", "modifiers", "unknown",
                  "rough_classes", "status")

#: Punctuation kept by :func:`normalise` as alternative separators.
SEPARATOR_MARKS = frozenset(",/;&+")

#: Words that separate alternatives ("beer or some drink", "picture of a dog").
SEPARATOR_WORDS = frozenset("""
    or and of with maybe possibly perhaps probably nor plus vs versus
    in on at near under over behind inside beside besides next by from into onto for to
    without within around above below among between against than
""".split())

#: Words dropped before matching: articles, determiners, quantifiers, pronouns, hedges,
#: auxiliaries, generic nouns that name no object, and non-answers ("no idea").
STOP_WORDS = frozenset("""
    a an the this that these those each every either neither another any all both some such
    no other own same what which whose whatever whichever
    many much few several lots loads plenty multiple numerous various more most less least
    couple
    i me my mine myself you your yours he him his she her hers it its it's itself we us our
    they them their theirs i'm im i'd i've you're they're there here there's that's what's
    is are was were be been being am do does did can could would should might may must will
    shall seem seems seemed appear appears look looks looked looking like likes see seeing
    think thought guess know believe say said
    kind kinds sort sorts type types form forms
    very really quite just also too so then only mostly mainly almost rather somewhat etc
    not don't dont doesn't isn't aren't can't cant couldn't
    thing things object objects something somethings stuff item items entity anything
    everything nothing whatever
    idea clue sure unsure unclear tell idk dunno unknown none nope n/a na nil
""".split())

#: Nouns that head an answer only when it names nothing else ("the number seven" -> seven).
FILLER_WORDS = frozenset("""
    number numeral digit picture image photo photograph drawing painting shape pattern texture
    design close-up closeup group bunch pile lot collection set variety part piece bit section
    colour color face head eye body fur skin feather leg tail
""".split())

#: Lexicographer files of nouns naming acts, events, processes, states: a trailing gerund
#: there ("dogs running") is a verb, not the object.
_VERBAL_LEXFILES = frozenset({4, 11, 19, 22, 26})

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "`": "'", "\u00b4": "'",
                         "\u2010": "-", "\u2011": "-", "\u2012": "-", "_": " "})
_TOKEN = re.compile(r"[\w'-]+|[,/;&+]|[()\[\]{}!?:|\u2013\u2014]")
_COMMA_LIKE = frozenset("()[]{}!?:|\u2013\u2014")
_WNID = re.compile(r"^n\d{8}$")


class CodingError(ValueError):
    """Bad input to coding: a malformed codes, class or rough-class file, an unknown wnid."""


@dataclass(frozen=True)
class Code:
    """The coding of one free-text answer."""

    answer: str
    normalised: str
    senses: frozenset[int]
    heads: tuple[str, ...] = ()
    modifiers: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    source: str = "auto"

    @property
    def coded(self) -> bool:
        return bool(self.senses)


# -- normalisation ---------------------------------------------------------------------


def normalise(text: str) -> str:
    """Lower case, NFKC, punctuation stripped except intra-word hyphens/apostrophes,
    whitespace collapsed. The separators ``, / ; & +`` are kept (``,`` and ``;``
    attached to the word before, the others spaced); brackets, ``!?:|`` and
    dashes become ``,``. Idempotent: ``normalise(normalise(t)) == normalise(t)``."""
    if text is None:
        return ""
    text = unicodedata.normalize("NFKC", str(text)).lower().translate(_QUOTES)
    parts: list[str] = []
    for token in _TOKEN.findall(" " + text + " "):
        if token in _COMMA_LIKE or set(token) == {"-"}:  # brackets, "dog - cat"
            token = ","
        if token in SEPARATOR_MARKS:
            if parts and parts[-1] not in SEPARATOR_MARKS:
                parts.append(token)
            continue
        token = token.strip("'-")
        if token:
            parts.append(token)
    while parts and parts[-1] in SEPARATOR_MARKS:
        parts.pop()
    out = ""
    for token in parts:
        if token in (",", ";"):
            out += token
        else:
            out += (" " if out else "") + token
    return out


# -- rough classes ---------------------------------------------------------------------


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a TSV, skipping blank and ``#`` lines."""
    with open(path, encoding="utf-8", newline="") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            yield lineno, line.split("\t")


def _table(path: Path, required: Sequence[str], what: str, columns: str
           ) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header and the remaining rows of a TSV that needs the ``required`` columns."""
    if not path.is_file():
        raise CodingError(f"{path}: {what} not found")
    rows = _rows(path)
    try:
        lineno, header = next(rows)
    except StopIteration:
        raise CodingError(f"{path}: empty {what} (columns {columns})") from None
    header = [h.strip() for h in header]
    if any(column not in header for column in required):
        raise CodingError(f"{path}, line {lineno}: expected columns {columns}; "
                          f"got {header!r}")
    return header, rows


def _parse_wnids(text: str, wordnet: WordNet, where: str) -> list[int]:
    offsets = []
    for wnid in text.split():
        if not _WNID.match(wnid):
            raise CodingError(f"{where}: {wnid!r} is not a WordNet noun id (n + 8 digits, "
                              "e.g. n02084071)")
        try:
            offsets.append(wordnet.offset(wnid))
        except ValueError:
            raise CodingError(f"{where}: {wnid} is not a synset of WordNet 3.0 (data.noun)"
                              ) from None
    return offsets


def load_rough_classes(path: str | Path | None = None, *,
                       wordnet: WordNet | None = None) -> dict[str, frozenset[int]]:
    """Rough classes from a TSV with columns ``name``, ``wnids`` (space-separated) and
    ``note`` (default: the packaged ``rough_classes.tsv``); ``#`` lines are comments.
    Every wnid must be a WordNet 3.0 noun synset."""
    path = Path(path) if path is not None else ROUGH_CLASSES_PATH
    wordnet = wordnet or load_wordnet()
    if not path.is_file():
        raise CodingError(f"{path}: rough-class file not found")
    rows = _rows(path)
    try:
        lineno, header = next(rows)
    except StopIteration:
        raise CodingError(f"{path}: empty rough-class file (columns name, wnids, note)"
                          ) from None
    header = [h.strip() for h in header]
    if header[:2] != ["name", "wnids"]:
        raise CodingError(f"{path}, line {lineno}: expected a header 'name<TAB>wnids<TAB>note', "
                          f"got {header!r}")
    out: dict[str, frozenset[int]] = {}
    for lineno, fields in rows:
        where = f"{path}, line {lineno}"
        if len(fields) < 2 or len(fields) > len(header):
            raise CodingError(f"{where}: expected {len(header)} tab-separated fields "
                              f"({', '.join(header)}), got {len(fields)}")
        name = fields[0].strip()
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise CodingError(f"{where}: bad rough-class name {name!r} (lower case, digits, _)")
        if name in out:
            raise CodingError(f"{where}: rough class {name!r} defined twice")
        offsets = _parse_wnids(fields[1], wordnet, where)
        if not offsets:
            raise CodingError(f"{where}: rough class {name!r} has no wnids")
        out[name] = frozenset(offsets)
    if not out:
        raise CodingError(f"{path}: no rough classes")
    return out


# -- the coder ------------------------------------------------------------------------


@dataclass
class _Phrase:
    lemma: str
    senses: frozenset[int]
    single: str | None  # the token, for a one-token phrase


class Coder:
    """Codes answers (:meth:`code`) and decides agreement (:meth:`agree`) and class
    matches (:meth:`matches`). Defaults: :func:`analysis.wordnet.load_wordnet` and the
    packaged rough classes; ``overrides`` (e.g. from :func:`read_codes`), keyed by
    normalised answer, take precedence over automatic coding."""

    def __init__(self, wordnet: WordNet | None = None,
                 rough_classes: Mapping[str, Iterable[int]] | None = None,
                 overrides: Mapping[str, Code] | None = None):
        self.wordnet = wordnet if wordnet is not None else load_wordnet()
        if rough_classes is None:
            rough_classes = load_rough_classes(wordnet=self.wordnet)
        self.rough_classes: dict[str, frozenset[int]] = {
            str(name): frozenset(int(o) for o in offsets)
            for name, offsets in rough_classes.items()}
        self._rough_by_offset: dict[int, set[str]] = {}
        for name, offsets in self.rough_classes.items():
            for offset in offsets:
                if offset not in self.wordnet:
                    raise CodingError(f"rough class {name!r}: {offset} is not a noun synset "
                                      "offset of WordNet 3.0")
                self._rough_by_offset.setdefault(offset, set()).add(name)
        self.overrides: dict[str, Code] = {}
        for key, code in (overrides or {}).items():
            self.overrides[normalise(key)] = code
        self._memo: dict[str, Code] = {}
        self._sense_rough: dict[int, frozenset[str]] = {}
        self._targets: dict[frozenset[int], frozenset[int]] = {}

    # -- coding ---------------------------------------------------------------------

    def code(self, text: str) -> Code:
        """The code of an answer: the analyst's override if there is one, else the
        automatic code (memoised on the normalised text)."""
        norm = normalise(text)
        override = self.overrides.get(norm)
        if override is not None:
            return dataclasses.replace(override, answer=_text(text), normalised=norm,
                                       source="override")
        return self.auto_code(text)

    def auto_code(self, text: str) -> Code:
        """The automatic code, ignoring overrides."""
        norm = normalise(text)
        code = self._memo.get(norm)
        if code is None:
            code = self._code(norm)
            self._memo[norm] = code
        answer = _text(text)
        return code if code.answer == answer else dataclasses.replace(code, answer=answer)

    def _code(self, norm: str) -> Code:
        tokens = norm.replace(",", " ,").replace(";", " ;").split()
        alternatives: list[list[str]] = [[]]
        for token in tokens:
            if token in SEPARATOR_MARKS or token in SEPARATOR_WORDS:
                alternatives.append([])
            else:
                alternatives[-1].append(token)
        parsed = []
        modifiers: list[str] = []
        unknown: list[str] = []
        for alt in alternatives:
            phrases: list[_Phrase] = []
            run: list[str] = []
            for token in [*alt, None]:
                if token is None or token in STOP_WORDS:
                    self._segment(run, phrases, modifiers, unknown)
                    run = []
                else:
                    run.append(token)
            parsed.append(phrases)
        content = any(not self._filler(p) for phrases in parsed for p in phrases)
        heads: list[_Phrase] = []
        for phrases in parsed:
            pool = [p for p in phrases if not (content and self._filler(p))]
            if len(pool) > 1:
                pool = [p for p in pool if not self._verbal(p)] or pool
            head = pool[-1] if pool else None
            for p in phrases:
                if p is head:
                    heads.append(p)
                else:
                    modifiers.append(p.lemma)
        head_lemmas = _unique(p.lemma for p in heads)
        senses = frozenset(s for p in heads for s in p.senses)
        return Code(answer=norm, normalised=norm, senses=senses, heads=head_lemmas,
                    modifiers=tuple(m for m in _unique(modifiers) if m not in head_lemmas),
                    unknown=_unique(unknown), source="auto")

    def _segment(self, run: list[str], phrases: list[_Phrase], modifiers: list[str],
                 unknown: list[str]) -> None:
        """Greedy longest-first noun phrases of a run of tokens."""
        i = 0
        while i < len(run):
            for n in range(min(4, len(run) - i), 0, -1):
                found = self._lookup(run[i:i + n])
                if found is not None:
                    phrases.append(found)
                    i += n
                    break
            else:
                token = run[i]
                i += 1
                bare = _strip_possessive(token)
                wn = self.wordnet
                if wn.is_known_word(token) or (bare != token and wn.is_known_word(bare)):
                    modifiers.append(bare)
                elif "-" in token.strip("-"):  # dog-like, blue-ish: the parts
                    self._segment([t for t in token.split("-") if t and t not in STOP_WORDS],
                                  phrases, modifiers, unknown)
                elif re.fullmatch(r"[\d']+", token):  # a number WordNet lacks (42)
                    modifiers.append(token)
                else:
                    unknown.append(token)

    def _lookup(self, tokens: list[str]) -> _Phrase | None:
        wn = self.wordnet
        candidates = _joins(tokens)
        if len(tokens) == 2:
            candidates.append("".join(tokens))  # wine glass -> wineglass
        if len(tokens) == 1:
            bare = _strip_possessive(tokens[0])
            if bare != tokens[0]:
                candidates.append(bare)
        more = []
        for c in candidates:
            if "-" in c:
                more += [c.replace("-", "_"), c.replace("-", "")]
        for candidate in _unique(candidates + more):
            if not candidate.strip("_-"):
                continue
            forms = wn.morphy_noun(candidate)
            if forms:
                senses = frozenset(s for f in forms for s in wn.noun_synsets(f))
                return _Phrase(forms[0], senses, tokens[0] if len(tokens) == 1 else None)
        return None

    @staticmethod
    def _filler(phrase: _Phrase) -> bool:
        return phrase.lemma in FILLER_WORDS

    def _verbal(self, phrase: _Phrase) -> bool:
        if phrase.single is None or not phrase.single.endswith("ing"):
            return False
        first = self.wordnet.noun_synsets(phrase.lemma)
        return bool(first) and self.wordnet.lexname_number(first[0]) in _VERBAL_LEXFILES

    # -- agreement ------------------------------------------------------------------

    def rough_class(self, code: Code) -> frozenset[str]:
        """Names of the rough classes any sense of ``code`` falls under."""
        return self._rough_of(code.senses)

    def _rough_of(self, senses: Iterable[int]) -> frozenset[str]:
        out: set[str] = set()
        for sense in senses:
            names = self._sense_rough.get(sense)
            if names is None:
                acc: set[str] = set()
                for node in (sense, *self.wordnet.ancestors(sense)):
                    acc |= self._rough_by_offset.get(node, set())
                names = self._sense_rough[sense] = frozenset(acc)
            out |= names
        return frozenset(out)

    def agree(self, a: Code, b: Code) -> bool:
        """Whether two answers name the same thing: a sense of one equals, is a
        hypernym of or a hyponym of a sense of the other, or they share a rough class."""
        if not a.coded or not b.coded:
            return False
        wn = self.wordnet
        for x in a.senses:
            up_x = wn.ancestors(x)
            for y in b.senses:
                if x == y or y in up_x or x in wn.ancestors(y):
                    return True
        return bool(self.rough_class(a) & self.rough_class(b))

    def matches(self, code: Code, class_senses: Iterable[int]) -> bool:
        """Whether an answer matches a class given by its synsets: one of its senses is
        a class synset or a hypernym of one, or they share a rough class."""
        if not code.coded:
            return False
        senses = frozenset(class_senses)
        if not senses:
            return False
        targets = self._targets.get(senses)
        if targets is None:
            acc = set(senses)
            for s in senses:
                acc |= self.wordnet.ancestors(s)
            targets = self._targets[senses] = frozenset(acc)
        if not code.senses.isdisjoint(targets):
            return True
        return bool(self.rough_class(code) & self._rough_of(senses))

    # -- display --------------------------------------------------------------------

    def lemma(self, offset: int) -> str:
        """The first word of a synset (readable)."""
        return self.wordnet.words(offset)[0]

    def describe(self, code: Code) -> str:
        """A one-line account of a code, for analysts."""
        parts = [f"{code.answer!r}"]
        if code.source == "override":
            parts.append("(override)")
        parts.append(f"heads: {' '.join(code.heads) or '-'}")
        if code.modifiers:
            parts.append(f"modifiers: {' '.join(code.modifiers)}")
        if code.unknown:
            parts.append(f"unknown: {' '.join(code.unknown)}")
        rough = sorted(self.rough_class(code))
        if rough:
            parts.append(f"rough: {' '.join(rough)}")
        lines = ["  ".join(parts)]
        lines += [f"    {self.wordnet.describe(s)}" for s in sorted(code.senses)]
        if not code.coded:
            lines.append("    (not coded)")
        return "\n".join(lines)


def _text(text) -> str:
    return "" if text is None else str(text)


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _joins(tokens: Sequence[str]) -> list[str]:
    """The tokens joined by ``_`` or ``-`` in every combination, all-``_`` first
    (WordNet spells "black-and-tan_coonhound", "flat-coated_retriever")."""
    out = [""]
    for i, token in enumerate(tokens):
        out = [o + token for o in out] if i == 0 else \
            [o + sep + token for o in out for sep in ("_", "-")]
    return out


def _strip_possessive(token: str) -> str:
    if token.endswith("'s") and len(token) > 2:
        return token[:-2]
    return token.rstrip("'")


# -- classes ---------------------------------------------------------------------------


def imagenet_class_senses(path: str | Path | None = None, *,
                          wordnet: WordNet | None = None) -> dict[int, frozenset[int]]:
    """Class index -> {synset} of the ILSVRC-2012 class list (a TSV: index, wnid, name;
    default ``generator/imagenet1k_classes.tsv``, else the optional data folder's,
    :mod:`common.data`)."""
    if path is None:
        for candidate in IMAGENET_CLASSES_PATHS:
            if candidate.is_file():
                path = candidate
                break
        else:
            raise CodingError("the ImageNet class list is missing (looked for "
                              + ", ".join(str(p) for p in IMAGENET_CLASSES_PATHS) + ")")
    path = Path(path)
    header, rows = _table(path, ("index", "wnid"), "class list", "index, wnid, name")
    wordnet = wordnet or load_wordnet()
    i_index, i_wnid = header.index("index"), header.index("wnid")
    out: dict[int, frozenset[int]] = {}
    for lineno, fields in rows:
        where = f"{path}, line {lineno}"
        index = _parse_index(fields, i_index, where, out)
        wnid = fields[i_wnid].strip() if i_wnid < len(fields) else ""
        if not wnid:
            raise CodingError(f"{where}: no wnid")
        out[index] = frozenset(_parse_wnids(wnid, wordnet, where))
    return out


def _parse_index(fields: list[str], column: int, where: str, seen: Mapping) -> int:
    try:
        index = int(fields[column])
    except (IndexError, ValueError):
        raise CodingError(f"{where}: the index must be an integer, got "
                          f"{fields[column] if column < len(fields) else ''!r}") from None
    if index < 0:
        raise CodingError(f"{where}: negative class index {index}")
    if index in seen:
        raise CodingError(f"{where}: class index {index} given twice")
    return index


def _name_senses(name: str, coder: Coder) -> frozenset[int]:
    """A class name's synsets: the whole name as one lemma when WordNet has it
    ("black and tan coonhound"), else its code."""
    words = normalise(name).replace(",", "").replace(";", "").split()
    if words and len(words) <= 6 and not SEPARATOR_MARKS.intersection(words):
        for candidate in _joins(words):
            forms = coder.wordnet.morphy_noun(candidate)
            if forms:
                return frozenset(s for f in forms for s in coder.wordnet.noun_synsets(f))
    return coder.code(name).senses


def class_senses_from_names(names: Sequence[str], coder: Coder, *,
                            strict: bool = True) -> dict[int, frozenset[int]]:
    """Class index -> synsets for classes given by name (the demo's digits "0".."9",
    an activation table's ``/class_names``). A name WordNet has as a whole is that
    lemma's synsets; otherwise the name is coded like an answer. Names that code to
    nothing raise :class:`CodingError` (``strict=False``: a warning, and an empty set
    that matches nothing)."""
    out: dict[int, frozenset[int]] = {}
    bad = []
    for index, name in enumerate(names):
        senses = _name_senses(str(name), coder)
        if not senses:
            bad.append(f"{index}: {name!r}")
        out[index] = senses
    if bad:
        message = ("class names WordNet cannot code (give wnids with read_class_map): "
                   + ", ".join(bad))
        if strict:
            raise CodingError(message)
        log.warning("%s", message)
    return out


def read_class_map(path: str | Path, coder: Coder) -> dict[int, frozenset[int]]:
    """Class index -> synsets from a TSV with columns ``index``, ``name`` and optionally
    ``wnid`` (space-separated ids allowed): the wnid wins when given, else the name is
    coded. Errors name the file and line."""
    path = Path(path)
    header, rows = _table(path, ("index", "name"), "class map", "index, name[, wnid]")
    i_index, i_name = header.index("index"), header.index("name")
    i_wnid = header.index("wnid") if "wnid" in header else None
    out: dict[int, frozenset[int]] = {}
    for lineno, fields in rows:
        where = f"{path}, line {lineno}"
        if len(fields) > len(header):
            raise CodingError(f"{where}: {len(fields)} fields, the header has {len(header)}")
        index = _parse_index(fields, i_index, where, out)
        wnid = fields[i_wnid].strip() if i_wnid is not None and i_wnid < len(fields) else ""
        name = fields[i_name].strip() if i_name < len(fields) else ""
        if wnid:
            out[index] = frozenset(_parse_wnids(wnid, coder.wordnet, where))
        elif name:
            senses = _name_senses(name, coder)
            if not senses:
                raise CodingError(f"{where}: WordNet cannot code the class name {name!r}: "
                                  "give its wnid")
            out[index] = senses
        else:
            raise CodingError(f"{where}: neither a name nor a wnid")
    return out


# -- review and overrides ---------------------------------------------------------------


def review_table(answers: Iterable[str], coder: Coder) -> pd.DataFrame:
    """One row per distinct normalised answer, most frequent first: ``answer`` (the
    normalised text), ``count``, ``senses`` (space-separated wnids), ``lemmas`` (the
    first word of each sense), ``heads``, ``modifiers``, ``unknown``,
    ``rough_classes`` and ``status``: ``override`` where an override differs from
    the automatic code, else ``unknown`` where WordNet lacks some word, else ``auto``."""
    counts: Counter[str] = Counter()
    for answer in answers:
        if answer is None or (isinstance(answer, float) and answer != answer):
            continue
        norm = normalise(answer)
        if norm:
            counts[norm] += 1
    rows = []
    for norm, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        code = coder.code(norm)
        auto = coder.auto_code(norm)
        if code.source == "override" and code.senses != auto.senses:
            status = "override"
        else:
            status = "unknown" if auto.unknown else "auto"
        senses = sorted(code.senses)
        rows.append({
            "answer": norm,
            "count": count,
            "senses": " ".join(coder.wordnet.wnid(s) for s in senses),
            "lemmas": " ".join(coder.lemma(s) for s in senses),
            "heads": " ".join(code.heads),
            "modifiers": " ".join(code.modifiers),
            "unknown": " ".join(code.unknown if code.source == "auto" else auto.unknown),
            "rough_classes": " ".join(sorted(coder.rough_class(code))),
            "status": status,
        })
    return pd.DataFrame(rows, columns=list(REVIEW_COLUMNS))


def read_codes(path: str | Path, *, wordnet: WordNet | None = None) -> dict[str, Code]:
    """Overrides from a reviewed codes.csv (:func:`review_table`'s columns; ``answer``
    and ``senses`` are required): normalised answer -> :class:`Code` with
    ``source="override"``. Every row is an override; empty ``senses`` means the answer
    is not codeable. Bad rows raise :class:`CodingError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise CodingError(f"{path}: codes file not found")
    wordnet = wordnet or load_wordnet()
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        missing = [c for c in ("answer", "senses") if c not in fields]
        if missing:
            raise CodingError(f"{path}: missing column(s) {', '.join(missing)} "
                              f"(columns: {', '.join(REVIEW_COLUMNS)})")
        out: dict[str, Code] = {}
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            answer = (row.get("answer") or "").strip()
            norm = normalise(answer)
            if not norm:
                raise CodingError(f"{where}: empty answer")
            if norm in out:
                raise CodingError(f"{where}: answer {norm!r} appears twice")
            senses = _parse_wnids((row.get("senses") or "").replace(",", " "), wordnet, where)
            heads = _unique(wordnet.words(s)[0].lower() for s in senses)
            modifiers = tuple((row.get("modifiers") or "").split())
            out[norm] = Code(answer=answer, normalised=norm, senses=frozenset(senses),
                             heads=heads, modifiers=modifiers, unknown=(), source="override")
    return out


# -- command line -----------------------------------------------------------------------


def _truthy(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if value is None or (isinstance(value, float) and value != value):
        return False
    text = str(value).strip().lower()
    if text in ("true", "1", "1.0", "yes", "t", "y"):
        return True
    if text in ("false", "0", "0.0", "no", "f", "n", ""):
        return False
    raise CodingError(f"{where}: answer_yes must be true/false or 1/0, got {value!r}")


def read_answers(path: str | Path) -> list[str]:
    """The ``object_text`` of the yes answers of a responses.csv (all rows with text
    when there is no ``answer_yes`` column)."""
    path = Path(path)
    if not path.is_file():
        raise CodingError(f"{path}: responses file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CodingError(f"{path}: not a readable CSV ({exc})") from None
    if "object_text" not in df.columns:
        raise CodingError(f"{path}: no object_text column (columns: "
                          f"{', '.join(map(str, df.columns)) or 'none'})")
    if "answer_yes" in df.columns:
        keep = [_truthy(v, f"{path}, row {i + 2}") for i, v in enumerate(df["answer_yes"])]
        df = df[keep]
    else:
        log.info("%s has no answer_yes column: coding every row with text", path)
    return [t for t in df["object_text"] if t.strip()]


def _review(args) -> int:
    answers = read_answers(args.responses)
    wordnet = load_wordnet(args.wordnet) if args.wordnet else load_wordnet()
    overrides = read_codes(args.codes, wordnet=wordnet) if args.codes else {}
    coder = Coder(wordnet, overrides=overrides)
    table = review_table(answers, coder)
    if overrides:  # keep the previous file's rows even when no answer uses them now
        present = set(table["answer"])
        extra = [a for a in overrides if a not in present]
        if extra:
            more = review_table(extra, coder)
            more["count"] = 0
            table = pd.concat([table, more], ignore_index=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    coded = int((table["senses"] != "").sum())
    with_unknown = table[table["unknown"] != ""]
    words = sorted({w for ws in with_unknown["unknown"] for w in ws.split()})
    print(f"{len(answers)} yes answers, {len(table)} distinct answers: {coded} coded, "
          f"{len(table) - coded} not coded, {len(with_unknown)} with unknown words"
          + (f" ({', '.join(words)})" if words else "")
          + f", {int((table['status'] == 'override').sum())} overridden")
    print(f"wrote {out}: edit the senses column (WordNet ids, empty = not codeable) and "
          "pass it to --codes or analysis.coding.read_codes")
    return 0


def _code_cli(args) -> int:
    wordnet = load_wordnet(args.wordnet) if args.wordnet else load_wordnet()
    overrides = read_codes(args.codes, wordnet=wordnet) if args.codes else {}
    coder = Coder(wordnet, overrides=overrides)
    for text in args.text:
        print(coder.describe(coder.code(text)))
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m analysis.coding",
        description="Code free-text answers as WordNet 3.0 synsets (docs/table2.md).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)
    review = sub.add_parser(
        "review", help="write a codes table for an analyst to review",
        description="Code the object_text of the yes answers of a responses CSV and write "
                    "one row per distinct answer; edit its senses column to override.")
    review.add_argument("responses", help="responses CSV with object_text (and answer_yes)")
    review.add_argument("--out", required=True, help="codes CSV to write")
    review.add_argument("--codes", help="a previously reviewed codes CSV: its rows are kept")
    review.add_argument("--wordnet", help="WordNet folder (default $WORDNET_DIR or "
                                          "/usr/share/wordnet)")
    code = sub.add_parser("code", help="print the code of each answer",
                          description="Print the code of each answer given.")
    code.add_argument("text", nargs="+", help="answers, e.g. 'beer or some drink'")
    code.add_argument("--codes", help="a reviewed codes CSV whose overrides apply")
    code.add_argument("--wordnet", help="WordNet folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "review":
            return _review(args)
        return _code_cli(args)
    except (CodingError, WordNetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
