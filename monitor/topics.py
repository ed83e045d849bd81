"""Multilingual topic rules: case- and diacritic-insensitive word matching, substring
matching for CJK scripts (which do not separate words with spaces). Pure.

A keyword ending in ``*`` matches any word that starts with it (``drone*`` matches
drones, droner, droneprodusent), which is how compounding languages are caught.
A keyword written in ASCII capitals (``OSA``, ``UAV``, ``TB2``) is an acronym and matches
case-sensitively, so ``OSA`` does not match the Spanish word "osa".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from monitor.config import Topic

_COMBINING = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
# Letters that carry no combining mark to strip but fold to Latin ones.
_LETTERS = {"ø": "o", "æ": "ae", "đ": "d", "ł": "l", "ı": "i", "œ": "oe", "þ": "th", "ð": "d",
            "ŀ": "l"}
_LETTERS_PRESENT = re.compile(f"[{''.join(_LETTERS)}]")
_WORD_TAIL = r"[\w\-]*"
_CJK = re.compile(
    "[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]")


@dataclass(frozen=True)
class TopicMatch:
    topic: str
    matched_on: str  # "original" or "translation"
    keywords: tuple[str, ...]


def strip_marks(text: str) -> str:
    """Strip diacritics, keep case: 'Güler' -> 'Guler'."""
    return _COMBINING.sub("", unicodedata.normalize("NFKD", text))


@lru_cache(maxsize=512)
def fold(text: str) -> str:
    """Casefold and strip diacritics: 'İHA' -> 'iha', 'Tyrkiaś' -> 'tyrkias', 'Ø' -> 'o'.

    Cached for a batch's worth of texts: an item's headline and text are folded for its
    topics and again for its near-duplicate shingles (:func:`monitor.dedup.tokens`)."""
    # Casefolded again after NFKD, which can make capitals ("™" -> "TM", "ℭ" -> "C").
    folded = strip_marks(text.casefold()).casefold()
    # str.translate looks up every character in a dict (~80 µs a kilobyte); replacing
    # only the matches is 6x cheaper on Norwegian text, where these letters are common.
    return _LETTERS_PRESENT.sub(_letter, folded)


def _letter(match: re.Match[str]) -> str:
    return _LETTERS[match.group()]


def is_acronym(keyword: str) -> bool:
    core = keyword.rstrip("*")
    return core.isascii() and core.upper() == core and any(c.isalpha() for c in core)


def _folded_words(keyword: str) -> tuple[str, list[str] | None]:
    """The keyword folded as its text will be; its words, or None for a CJK keyword."""
    core = keyword.rstrip("*").strip()
    folded = strip_marks(core) if is_acronym(keyword) else fold(core)
    if _CJK.search(folded):
        return folded, None
    return folded, [w for w in re.split(r"[\s\-]+", folded) if w]


def _pattern(keyword: str) -> str:
    folded, words = _folded_words(keyword)
    if words is None:
        return re.escape(folded)
    body = r"[\s\-]+".join(map(re.escape, words)) + (_WORD_TAIL if keyword.endswith("*") else "")
    return rf"(?<!\w){body}(?!\w)"


def _needle(keyword: str) -> str:
    """A substring that every match of the keyword contains (its longest word)."""
    folded, words = _folded_words(keyword)
    return folded if words is None else max(words, key=len, default="")


@lru_cache(maxsize=512)
def _entries(keywords: tuple[str, ...], acronyms: bool) -> tuple[tuple[int, str, str], ...]:
    """(index, keyword, needle) of the keywords matched on the folded or the case-kept text."""
    return tuple((i, k, _needle(k)) for i, k in enumerate(keywords)
                 if k.rstrip("*").strip() and is_acronym(k) == acronyms)


@lru_cache(maxsize=512)
def _compile(keywords: tuple[tuple[int, str], ...]) -> re.Pattern[str]:
    """One pattern trying the keywords in order; group ``k<i>`` is keyword ``i``."""
    return re.compile("|".join(f"(?P<k{i}>{_pattern(k)})" for i, k in keywords))


def _hits(entries: tuple[tuple[int, str, str], ...], text: str) -> set[int]:
    # A keyword whose needle is absent cannot match anywhere, so leaving it out of the
    # pattern changes no match, and spares trying it at every position of the text.
    present = tuple((i, k) for i, k, needle in entries if needle in text) if text else ()
    if not present:
        return set()
    return {int(m.lastgroup[1:]) for m in _compile(present).finditer(text) if m.lastgroup}


def matched_keywords(topic: Topic, folded: str, stripped: str) -> tuple[str, ...]:
    """The topic's keywords found in the text, given folded and case-kept forms of it."""
    hits = _hits(_entries(topic.keywords, False), folded)
    hits |= _hits(_entries(topic.keywords, True), stripped)
    return tuple(topic.keywords[i] for i in sorted(hits))


def match_topics(topics: Sequence[Topic], original: Iterable[str],
                 translated: Iterable[str] = ()) -> tuple[TopicMatch, ...]:
    """Topics matched by the original text, else by its translation (a part given twice,
    such as an RSS description that is both summary and text, is read once)."""
    texts = {"original": "\n".join(dict.fromkeys(original)),
             "translation": "\n".join(dict.fromkeys(translated))}
    forms = {where: (fold(t), strip_marks(t)) for where, t in texts.items() if t}
    matches = []
    for topic in topics:
        for where, (folded, stripped) in forms.items():
            if hits := matched_keywords(topic, folded, stripped):
                matches.append(TopicMatch(topic.name, where, hits))
                break
    return tuple(matches)
