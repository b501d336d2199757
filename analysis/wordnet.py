"""A small, pure-Python reader of WordNet 3.0's noun hierarchy (docs/table2.md).

ImageNet's classes are WordNet 3.0 noun synsets: the WordNet id ``n02099267`` is
``'n'`` followed by the 8-digit byte offset of the synset in ``data.noun``. This
module reads the database files that Debian's ``wordnet-base`` package installs
(``/usr/share/wordnet``; another folder through ``$WORDNET_DIR``) and gives what
free-text coding needs (:mod:`analysis.coding`):

- noun lemmas to synsets, in WordNet's sense order (:meth:`WordNet.noun_synsets`);
- WordNet's noun morphology: the exception list, then the detachment rules
  (:meth:`WordNet.morphy_noun`), and whether a word is known to WordNet at all,
  in any part of speech (:meth:`WordNet.is_known_word`);
- the hypernym hierarchy, instance hypernyms included (:meth:`WordNet.ancestors`,
  :meth:`WordNet.hyponyms`), and readable names (:meth:`WordNet.describe`).

No nltk: parsing takes about a second, and a compact pickle of the parsed data is
cached in the project cache folder (``$SELECTIVITY_CACHE``, else ``.cache`` in
the project root), keyed by the source files' sizes and modification times, so
later loads take about a tenth of that. :func:`load_wordnet` keeps one instance
per folder.

Licence: the WordNet files are not part of this project; they are read from the
Debian package. WordNet is distributed under the WordNet 3.0 licence (its full text
is in ``/usr/share/doc/wordnet-base/copyright``), which permits use, copying and
redistribution provided its notice is kept::

    WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.

    THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES
    NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED. [...] The name of
    Princeton University or Princeton may not be used in advertising or publicity
    pertaining to distribution of the software and/or database.  Title to
    copyright in this software, database and any associated documentation shall
    at all times remain with Princeton University and LICENSEE agrees to
    preserve same.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from common.files import atomic_write_bytes, cache_dir

__all__ = [
    "DEFAULT_DIR",
    "WordNet",
    "WordNetError",
    "load_wordnet",
]

log = logging.getLogger(__name__)

#: Where Debian's ``wordnet-base`` installs the database.
DEFAULT_DIR = Path("/usr/share/wordnet")

#: Files read (the adjective/verb/adverb data files are not needed: only their lemmas).
_REQUIRED = ("data.noun", "index.noun", "noun.exc")
_OPTIONAL = ("index.adj", "index.verb", "index.adv", "adj.exc", "verb.exc", "adv.exc")

#: Bumped whenever the pickled layout changes.
_CACHE_FORMAT = 1

# WordNet's detachment rules (morph.c), per part of speech: (suffix, replacement).
_NOUN_RULES = (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"),
               ("shes", "sh"), ("men", "man"), ("ies", "y"))
_VERB_RULES = (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""),
               ("ing", "e"), ("ing", ""))
_ADJ_RULES = (("er", ""), ("est", ""), ("er", "e"), ("est", "e"))


class WordNetError(FileNotFoundError):
    """WordNet's database files are missing or unreadable."""


def _key(word: str) -> str:
    """A lemma as index files spell it: lower case, underscores for spaces."""
    return "_".join(word.strip().lower().split())


class WordNet:
    """WordNet 3.0's nouns (synsets, lemmas, morphology, hypernyms) and the lemmas of
    the other parts of speech. Build with :meth:`load`; offsets are ``data.noun``
    byte offsets (``int``), WordNet ids are ``'n%08d' % offset``."""

    def __init__(self, data: dict, directory: Path | None = None):
        self.directory = directory
        self._words: dict[int, tuple[str, ...]] = data["words"]
        self._lexfile: dict[int, int] = data["lexfile"]
        self._hypernyms: dict[int, tuple[int, ...]] = data["hypernyms"]
        self._index: dict[str, tuple[int, ...]] = data["index"]
        self._noun_exc: dict[str, tuple[str, ...]] = data["noun_exc"]
        self._other_lemmas: dict[str, frozenset[str]] = data["other_lemmas"]
        self._other_exc: dict[str, dict[str, tuple[str, ...]]] = data["other_exc"]
        self._ancestors: dict[int, frozenset[int]] = {}
        self._hyponyms: dict[int, tuple[int, ...]] | None = None

    # -- loading ----------------------------------------------------------------------

    @classmethod
    def load(cls, directory: str | os.PathLike | None = None, *, cache: bool = True) -> WordNet:
        """Read WordNet from ``directory`` (default ``$WORDNET_DIR``, else
        ``/usr/share/wordnet``), through the pickle cache when ``cache``."""
        if directory is None:
            directory = os.environ.get("WORDNET_DIR") or DEFAULT_DIR
        directory = Path(directory)
        missing = [name for name in _REQUIRED if not (directory / name).is_file()]
        if missing:
            raise WordNetError(
                f"WordNet 3.0 not found in {directory} (missing {', '.join(missing)}): "
                "install Debian's wordnet-base (apt-get install wordnet-base, or `make "
                "wordnet`) or set WORDNET_DIR to a folder holding data.noun, index.noun "
                "and noun.exc")
        start = time.perf_counter()
        key = cls._cache_key(directory)
        path = cache_dir() / "wordnet" / f"wordnet-{key}.pickle"
        data = cls._read_cache(path) if cache else None
        if data is None:
            data = cls._parse(directory)
            if cache:
                cls._write_cache(path, data)
            how = "parsed"
        else:
            how = "loaded from cache"
        log.info("WordNet %s: %d noun synsets %s in %.2f s", directory, len(data["words"]),
                 how, time.perf_counter() - start)
        return cls(data, directory)

    @staticmethod
    def _cache_key(directory: Path) -> str:
        parts = [f"format={_CACHE_FORMAT}", f"python={sys.version_info[:2]}",
                 str(directory.resolve())]
        for name in _REQUIRED + _OPTIONAL:
            try:
                st = (directory / name).stat()
            except OSError:
                parts.append(f"{name}:-")
            else:
                parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]

    @staticmethod
    def _read_cache(path: Path) -> dict | None:
        try:
            with open(path, "rb") as fh:
                data = pickle.load(fh)
        except FileNotFoundError:
            return None
        except Exception as exc:  # a truncated or foreign file: parse again
            log.warning("ignoring unreadable WordNet cache %s (%s)", path, exc)
            return None
        if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT:
            return None
        return data

    @staticmethod
    def _write_cache(path: Path, data: dict) -> None:
        try:
            atomic_write_bytes(path, pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as exc:  # a read-only checkout: no cache, still correct
            log.info("could not write the WordNet cache %s (%s)", path, exc)

    @staticmethod
    def _parse(directory: Path) -> dict:
        words: dict[int, tuple[str, ...]] = {}
        lexfile: dict[int, int] = {}
        hypernyms: dict[int, tuple[int, ...]] = {}
        with open(directory / "data.noun", encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.startswith("  ") or not line.strip():
                    continue  # the licence header
                fields = line.split(" | ", 1)[0].split()
                try:
                    offset = int(fields[0])
                    n_words = int(fields[3], 16)
                    names = tuple(fields[4:4 + 2 * n_words:2])
                    at = 4 + 2 * n_words
                    n_ptrs = int(fields[at])
                    ups = []
                    for i in range(n_ptrs):
                        symbol, target, pos = fields[at + 1 + 4 * i: at + 4 + 4 * i]
                        if symbol in ("@", "@i") and pos == "n":
                            ups.append(int(target))
                except (IndexError, ValueError) as exc:
                    raise WordNetError(f"{directory / 'data.noun'}, line {lineno}: "
                                       f"not a WordNet data line ({exc})") from None
                words[offset] = names
                lexfile[offset] = int(fields[1])
                if ups:
                    hypernyms[offset] = tuple(ups)
        index = _read_index(directory / "index.noun", offsets=True)
        noun_exc = _read_exc(directory / "noun.exc")
        other_lemmas = {}
        other_exc = {}
        for pos in ("adj", "verb", "adv"):
            path = directory / f"index.{pos}"
            other_lemmas[pos] = frozenset(_read_index(path)) if path.is_file() else frozenset()
            path = directory / f"{pos}.exc"
            other_exc[pos] = _read_exc(path) if path.is_file() else {}
        return {"format": _CACHE_FORMAT, "words": words, "lexfile": lexfile,
                "hypernyms": hypernyms, "index": index, "noun_exc": noun_exc,
                "other_lemmas": other_lemmas, "other_exc": other_exc}

    # -- lemmas and morphology ----------------------------------------------------------

    def noun_synsets(self, lemma: str) -> tuple[int, ...]:
        """Offsets of the noun synsets of ``lemma`` (spaces or underscores, any case),
        in WordNet's sense order; ``()`` if it is not a noun lemma."""
        return self._index.get(_key(lemma), ())

    def is_noun(self, lemma: str) -> bool:
        """Whether ``lemma`` (as written, no morphology) is a noun lemma."""
        return _key(lemma) in self._index

    def morphy_noun(self, word: str) -> list[str]:
        """WordNet's base forms of a noun (lemmas of index.noun, underscored): the word
        itself first if it is a noun, then the exception list (``geese`` -> goose), then
        the detachment rules (``churches`` -> church). A collocation is inflected on its
        last word (``green peppers`` -> green_pepper)."""
        word = _key(word)
        if not word:
            return []
        found: list[str] = []

        def add(form: str) -> None:
            if form in self._index and form not in found:
                found.append(form)

        add(word)
        for form in self._noun_exc.get(word, ()):
            add(form)
        prefix, _, last = word.rpartition("_")
        prefix = prefix + "_" if prefix else ""
        for form in self._noun_exc.get(last, ()):
            add(prefix + form)
        for form in _detach_noun(last):
            add(prefix + form)
        return found

    def is_known_word(self, word: str) -> bool:
        """Whether WordNet knows ``word`` in any part of speech, with its morphology
        (exception lists and detachment rules): ``green``, ``running``, ``dogs``."""
        word = _key(word)
        if not word:
            return False
        if self.morphy_noun(word):
            return True
        rules = {"verb": _VERB_RULES, "adj": _ADJ_RULES, "adv": ()}
        for pos, lemmas in self._other_lemmas.items():
            if word in lemmas:
                return True
            if any(form in lemmas for form in self._other_exc.get(pos, {}).get(word, ())):
                return True
            for suffix, repl in rules[pos]:
                if word.endswith(suffix) and len(word) > len(suffix):
                    if word[: -len(suffix)] + repl in lemmas:
                        return True
        return False

    # -- synsets ----------------------------------------------------------------------

    def __contains__(self, offset: object) -> bool:
        return offset in self._words

    def __len__(self) -> int:
        return len(self._words)

    def hypernyms(self, offset: int) -> tuple[int, ...]:
        """Direct hypernyms and instance hypernyms of a synset."""
        self._check(offset)
        return self._hypernyms.get(offset, ())

    def ancestors(self, offset: int) -> frozenset[int]:
        """Every hypernym and instance hypernym of a synset, transitively (not itself)."""
        done = self._ancestors.get(offset)
        if done is not None:
            return done
        self._check(offset)
        # Iterative post-order, so that deep chains never hit the recursion limit.
        stack = [offset]
        while stack:
            node = stack[-1]
            pending = [up for up in self._hypernyms.get(node, ()) if up not in self._ancestors]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            if node in self._ancestors:
                continue
            acc: set[int] = set()
            for up in self._hypernyms.get(node, ()):
                acc.add(up)
                acc |= self._ancestors[up]
            self._ancestors[node] = frozenset(acc)
        return self._ancestors[offset]

    def hyponyms(self, offset: int) -> tuple[int, ...]:
        """Direct hyponyms and instance hyponyms (the inverse of :meth:`hypernyms`)."""
        self._check(offset)
        if self._hyponyms is None:
            down: dict[int, list[int]] = {}
            for node, ups in self._hypernyms.items():
                for up in ups:
                    down.setdefault(up, []).append(node)
            self._hyponyms = {k: tuple(sorted(v)) for k, v in down.items()}
        return self._hyponyms.get(offset, ())

    def descendants(self, offset: int) -> frozenset[int]:
        """Every hyponym of a synset, transitively (not itself)."""
        seen: set[int] = set()
        stack = list(self.hyponyms(offset))
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(self.hyponyms(node))
        return frozenset(seen)

    def words(self, offset: int) -> tuple[str, ...]:
        """The synset's words as data.noun spells them (underscores, original case)."""
        self._check(offset)
        return self._words[offset]

    def lexname_number(self, offset: int) -> int:
        """The lexicographer file number of a synset (e.g. 5 noun.animal)."""
        self._check(offset)
        return self._lexfile[offset]

    @staticmethod
    def wnid(offset: int) -> str:
        """``13744916`` -> ``'n13744916'``."""
        return f"n{int(offset):08d}"

    def offset(self, wnid: str) -> int:
        """``'n02099267'`` -> ``2099267``; ``ValueError`` if malformed or not a noun synset."""
        text = str(wnid).strip()
        if len(text) != 9 or text[0] != "n" or not text[1:].isdigit():
            raise ValueError(f"{wnid!r} is not a WordNet noun id (n + 8 digits, e.g. n02084071)")
        offset = int(text[1:])
        if offset not in self._words:
            raise ValueError(f"{wnid!r} is not a synset of WordNet 3.0's data.noun")
        return offset

    def describe(self, offset: int) -> str:
        """``'n02084071 dog, domestic_dog, Canis_familiaris'``."""
        return f"{self.wnid(offset)} {', '.join(self.words(offset))}"

    def describe_all(self, offsets: Iterable[int]) -> list[str]:
        return [self.describe(o) for o in sorted(offsets)]

    def _check(self, offset: int) -> None:
        if offset not in self._words:
            raise KeyError(f"{offset!r} is not a noun synset offset of WordNet 3.0")


def _detach_noun(word: str) -> list[str]:
    """Candidate base forms of a noun by WordNet's rules (unchecked)."""
    if word.endswith("ful") and len(word) > 3:  # boxesful -> boxful
        return [form + "ful" for form in _detach_noun(word[:-3])]
    if word.endswith("ss") or len(word) <= 2:
        return []
    return [word[: -len(suffix)] + repl for suffix, repl in _NOUN_RULES
            if word.endswith(suffix) and len(word) > len(suffix)]


def _read_index(path: Path, *, offsets: bool = False):
    """index.<pos>: lemma -> synset offsets (``offsets``) or just the lemmas."""
    out: dict[str, tuple[int, ...]] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.startswith("  ") or not line.strip():
                continue
            fields = line.split()
            if not offsets:
                out[fields[0]] = ()
                continue
            try:
                n_synsets = int(fields[2])
                out[fields[0]] = tuple(int(x) for x in fields[len(fields) - n_synsets:])
            except (IndexError, ValueError) as exc:
                raise WordNetError(f"{path}, line {lineno}: not a WordNet index line "
                                   f"({exc})") from None
    return out


def _read_exc(path: Path) -> dict[str, tuple[str, ...]]:
    """<pos>.exc: inflected form -> base forms."""
    out: dict[str, tuple[str, ...]] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) >= 2:
                out[fields[0]] = out.get(fields[0], ()) + tuple(fields[1:])
    return out


@functools.lru_cache(maxsize=4)
def _load(directory: str | None) -> WordNet:
    return WordNet.load(directory)


def load_wordnet(directory: str | os.PathLike | None = None) -> WordNet:
    """The :class:`WordNet` of ``directory`` (default ``$WORDNET_DIR``, else
    ``/usr/share/wordnet``), loaded once per folder."""
    if directory is None:
        directory = os.environ.get("WORDNET_DIR") or DEFAULT_DIR
    return _load(str(Path(directory).resolve()))
