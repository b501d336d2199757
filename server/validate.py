"""Request input that cannot turn into a 500: bounded JSON, clean strings, bounded integers.

Every check raises :class:`Invalid` (a ``ValueError`` with an HTTP ``status``, 400 unless
given, and a message safe to show), so a view turns any of them into a 4xx with one
``except``. Nothing here touches the store or the request.

- :func:`loads`: JSON text (bytes must be UTF-8) whose nesting is checked *before* it is
  parsed (Python's parser recurses and would raise RecursionError on ``[[[...`` 30,000
  deep), whose every number is bounded as it is parsed (``parse_int``/``parse_float``
  hooks: an integer literal of 10**309 would otherwise parse, then fail to become a float
  with OverflowError), with ``NaN``/``Infinity`` refused, and whose every string (object
  keys included) is checked for lone surrogates (``"\\ud800"``: no database encodes
  them) and NUL (PostgreSQL's text refuses it).
- :func:`clean_str`, :func:`is_clean`, :func:`scrub`: the same string rule for single
  values (form fields, query parameters, parsed JSON fields).
- :func:`query_int`: an integer query parameter, ASCII digits only, within bounds (so
  ``?page=9223372036854775807`` is a 400, never an offset the database overflows on).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any

__all__ = ["Invalid", "NotJSON", "MAX_DEPTH", "MAX_NUMBER", "loads", "check_depth", "is_clean",
           "clean_str", "scrub", "query_int"]

#: Deepest nesting :func:`loads` takes by default (arrays and objects; a trial answer is 1).
MAX_DEPTH = 32
#: Largest magnitude of a number :func:`loads` takes by default: JavaScript's largest
#: exact integer (``Number.MAX_SAFE_INTEGER``); times in milliseconds are ~1.7e12.
MAX_NUMBER = 2**53 - 1


class Invalid(ValueError):
    """Input that cannot be taken; ``str(exc)`` says why (safe to show), ``status`` is the
    HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class NotJSON(Invalid):
    """The text is not JSON at all (not UTF-8, or a syntax error), as opposed to JSON
    whose nesting, numbers or strings are refused."""


# A JSON string, or an unterminated one running to the end: this always matches at a
# quote (never backtracks and retries), so stripping strings is linear in the text.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
# NUL and the surrogate code points (only lone ones survive JSON decoding: a valid pair
# becomes one character).
_BAD = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_depth(text: str, max_depth: int = MAX_DEPTH) -> None:
    """Invalid unless arrays and objects in the JSON ``text`` nest at most ``max_depth``
    deep (brackets inside strings do not count). Linear; never recurses."""
    if text.count("[") + text.count("{") <= max_depth:
        return
    level = 0
    for bracket in _NOT_BRACKET.sub("", _STRING.sub("", text)):
        if bracket in "[{":
            level += 1
            if level > max_depth:
                raise Invalid(f"JSON nested deeper than {max_depth} levels")
        else:
            level -= 1


def _number_hooks(max_number: float):
    digits = len(str(int(max_number))) + 1      # a sign, then at most this many digits

    def too_large(text: str) -> Invalid:
        shown = text if len(text) <= 24 else text[:20] + "..."
        return Invalid(f"a number in the JSON is out of range: {shown} (at most "
                       f"{max_number:.16g} in size)")

    def parse_int(text: str) -> int:
        if len(text) > digits:
            raise too_large(text)
        value = int(text)
        if abs(value) > max_number:
            raise too_large(text)
        return value

    def parse_float(text: str) -> float:
        value = float(text)         # never raises for a JSON number: inf at the worst
        if not math.isfinite(value) or abs(value) > max_number:
            raise too_large(text)
        return value

    def parse_constant(text: str):
        raise Invalid(f"{text} is not a JSON number: send a finite number")

    return parse_int, parse_float, parse_constant


def _check_strings(value: Any, allow_nul: bool) -> None:
    bad = _SURROGATE if allow_nul else _BAD
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings = (item,)
        elif isinstance(item, dict):
            strings = item.keys()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for s in strings:
            if bad.search(s):
                raise Invalid(_why_unclean(s))


def _why_unclean(s: str) -> str:
    found = _BAD.search(s)
    if found and found.group() == "\x00":
        return "a string holds a NUL (\\u0000): control characters are not taken"
    return (f"a string holds a lone surrogate (\\u{ord(found.group()):04x}): not valid "
            "Unicode text")


def loads(data: bytes | bytearray | str, *, max_depth: int = MAX_DEPTH,
          max_number: float = MAX_NUMBER, allow_nul: bool = False) -> Any:
    """Parse JSON ``data`` (bytes: UTF-8, RFC 8259) or raise :class:`Invalid` (400):
    not UTF-8 or not JSON (:class:`NotJSON`, a subclass), nested deeper than ``max_depth``, a number beyond
    ``max_number`` in magnitude (or NaN/Infinity), a string (key or value) with a lone
    surrogate or, unless ``allow_nul``, a NUL. Numbers come back as ``int`` (integer
    literals) or ``float``; nothing else differs from :func:`json.loads`."""
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NotJSON(f"the JSON is not UTF-8 text (byte {exc.start})") from None
    else:
        text = data
    check_depth(text, max_depth)
    parse_int, parse_float, parse_constant = _number_hooks(max_number)
    try:
        value = json.loads(text, parse_int=parse_int, parse_float=parse_float,
                           parse_constant=parse_constant)
    except Invalid:
        raise
    except json.JSONDecodeError as exc:
        raise NotJSON(f"not valid JSON ({exc.msg} at line {exc.lineno} column "
                      f"{exc.colno})") from None
    except (ValueError, RecursionError) as exc:       # neither should happen: belt and braces
        raise NotJSON(f"not valid JSON ({type(exc).__name__})") from None
    _check_strings(value, allow_nul)
    return value


def is_clean(text: str, *, allow_nul: bool = False) -> bool:
    """True when ``text`` holds no lone surrogate and (unless ``allow_nul``) no NUL."""
    return not (_SURROGATE if allow_nul else _BAD).search(text)


def scrub(text: str) -> str:
    """``text`` with every NUL and lone surrogate replaced by U+FFFD (for values that are
    recorded whatever they hold, e.g. a failed login's user name)."""
    return _BAD.sub("\ufffd", text)


def clean_str(name: str, value: Any, *, max_len: int | None = None, min_len: int = 0,
              printable: bool = False) -> str:
    """``value`` if it is a string of ``min_len`` to ``max_len`` characters with no NUL or
    lone surrogate (and, with ``printable``, no control or format character at all);
    Invalid (400) naming ``name`` otherwise."""
    if not isinstance(value, str):
        raise Invalid(f"{name} must be a string, not {type(value).__name__}")
    if not is_clean(value):
        raise Invalid(f"{name}: {_why_unclean(value)}")
    if printable and any(unicodedata.category(c) in ("Cc", "Cf") for c in value):
        raise Invalid(f"{name} contains control characters")
    if len(value) < min_len or (max_len is not None and len(value) > max_len):
        limits = f"{min_len} to {max_len}" if max_len is not None else f"at least {min_len}"
        raise Invalid(f"{name} must be {limits} characters long, not {len(value)}")
    return value


_DIGITS = re.compile(r"[0-9]+")


def query_int(name: str, raw: str | None, default: int, lo: int, hi: int) -> int:
    """An integer query parameter: ``default`` when absent or empty, else ASCII digits
    (no sign, space or other script's digits) whose value lies in ``lo..hi``; Invalid
    (400) otherwise, checked before the digits are converted."""
    if raw is None or raw == "":
        return default
    if len(raw) > len(str(hi)) or not _DIGITS.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise Invalid(f"{name} must be a whole number from {lo} to {hi}")
    return int(raw)
