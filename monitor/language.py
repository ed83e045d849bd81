"""Language detection: declared metadata first, then a detector; pure.

Detectors sit behind the small :class:`Detector` protocol. The default, chosen by
``bench/langid.py`` (table in ``bench/results/langid.md``), is py3langid restricted to the
configured languages for texts of 120 characters or more, where it is the fastest and most
accurate. A shorter text is first routed by its script (Hangul is Korean, kana Japanese,
Cyrillic one of the configured Cyrillic languages ...); among several candidates, when
py3langid's best guess is one of :data:`LINGUA_SHORT`, lingua's 1-5-gram models, which
separate short texts best, outvote py3langid among those. lingua loads 10-30 MB of models per
language, so it gets only the languages whose short texts py3langid confuses with a
same-script neighbour, and py3langid keeps only the configured columns of its 142-language
table: the whole detector stays under 400 MB. py3langid's scores are computed with numpy
(:class:`_FastLangid`), bit for bit the same as its own byte-by-byte loop, 2-3x faster.

Codes are ISO 639-1 as :func:`normalize_code` returns them: Norwegian is ``nb`` unless a
source knows Nynorsk (``nn``); Traditional Chinese is ``zh-tw``; unknown is ``und``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol

from monitor.errors import ConfigError
from monitor.types import Detection

if TYPE_CHECKING:
    import numpy as np
    from langdetect.detector_factory import DetectorFactory
    from lingua import LanguageDetector
    from py3langid.langid import LanguageIdentifier

DEFAULT_LANGUAGES: tuple[str, ...] = (
    "en", "nb", "nn", "da", "sv", "de", "fr", "es", "it", "pt", "nl", "pl",
    "ru", "uk", "tr", "ar", "fa", "ja", "zh", "ko", "id", "vi", "ca", "fi",
)
# Languages that character n-grams confuse on short texts; a declared one is plausible
# when the detector picks a relative, and the default detector asks lingua among them.
RELATIVES: tuple[frozenset[str], ...] = (
    frozenset({"nb", "nn", "da", "sv"}),
    frozenset({"es", "pt", "ca", "gl"}),
    frozenset({"ru", "uk", "be"}),
    frozenset({"cs", "sk"}),
    frozenset({"hr", "sr", "bs"}),
    frozenset({"id", "ms"}),
    frozenset({"zh", "zh-tw"}),
)
# Writing systems of the non-Latin languages: a declared language in another script than
# the one the detector confidently sees is implausible however short the text.
_SCRIPTS = {
    **dict.fromkeys(("ru", "uk", "be", "bg", "mk", "kk", "ky", "mn", "tg", "tt"), "Cyrl"),
    **dict.fromkeys(("ar", "fa", "ur", "ps", "ug", "sd"), "Arab"),
    **dict.fromkeys(("zh", "zh-tw", "ja", "ko"), "CJK"),
    **dict.fromkeys(("hi", "mr", "ne", "sa"), "Deva"),
    "el": "Grek", "he": "Hebr", "yi": "Hebr", "th": "Thai", "ka": "Geor", "hy": "Armn",
    "bn": "Beng", "ta": "Taml", "te": "Telu", "gu": "Gujr", "pa": "Guru", "km": "Khmr",
    "am": "Ethi", "si": "Sinh", "my": "Mymr", "lo": "Laoo", "kn": "Knda", "ml": "Mlym",
}
# Scripts of Unicode character names (their first word), for routing short texts.
_NAMED_SCRIPTS = {
    "LATIN": "Latn", "CYRILLIC": "Cyrl", "ARABIC": "Arab", "GREEK": "Grek", "HEBREW": "Hebr",
    "CJK": "Hani", "IDEOGRAPHIC": "Hani", "HIRAGANA": "Kana", "KATAKANA": "Kana",
    "KATAKANA-HIRAGANA": "Kana", "HANGUL": "Hang", "DEVANAGARI": "Deva",
    "THAI": "Thai", "GEORGIAN": "Geor", "ARMENIAN": "Armn", "BENGALI": "Beng", "TAMIL": "Taml",
    "TELUGU": "Telu", "GUJARATI": "Gujr", "GURMUKHI": "Guru", "KHMER": "Khmr", "ETHIOPIC": "Ethi",
    "SINHALA": "Sinh", "MYANMAR": "Mymr", "LAO": "Laoo", "KANNADA": "Knda", "MALAYALAM": "Mlym",
}
# Finer than _SCRIPTS, for routing: Han alone may be Chinese or Japanese, kana is Japanese
# only; some languages are written in two scripts (the usual one first).
_ROUTES = {
    "zh": ("Hani",), "zh-tw": ("Hani",), "ja": ("Hani", "Kana"), "ko": ("Hang",),
    "sr": ("Cyrl", "Latn"), "bs": ("Latn", "Cyrl"), "uz": ("Latn", "Cyrl"),
    "kk": ("Cyrl", "Latn"), "az": ("Latn", "Cyrl"), "ku": ("Latn", "Arab"),
    "pa": ("Guru", "Arab"),
}
# A letter of each script that all languages written in it have (see _load_models).
_LETTERS = {"Latn": "a", "Cyrl": "\u0430", "Arab": "\u0628", "Hani": "\u4e2d", "Grek": "\u03b1"}
UNDETERMINED = "und"
METADATA_CONFIDENCE = 0.8
OVERRULE_CONFIDENCE = 0.9  # a detector must be this sure to overrule metadata ...
JUDGE_LETTERS = 40  # ... on at least this many letters
SHORT_TEXT = 120  # lingua's own limit for its high-accuracy n-grams
MAX_CHARS = 1000

_THREE_LETTER = {
    "eng": "en", "nor": "nb", "nob": "nb", "nno": "nn", "dan": "da", "swe": "sv",
    "deu": "de", "ger": "de", "fra": "fr", "fre": "fr", "spa": "es", "ita": "it",
    "por": "pt", "nld": "nl", "dut": "nl", "pol": "pl", "rus": "ru", "ukr": "uk",
    "tur": "tr", "ara": "ar", "fas": "fa", "per": "fa", "jpn": "ja", "zho": "zh",
    "chi": "zh", "cmn": "zh", "kor": "ko", "ind": "id", "vie": "vi", "cat": "ca",
    "fin": "fi", "ell": "el", "gre": "el", "heb": "he", "hin": "hi", "ces": "cs",
    "cze": "cs", "slk": "sk", "slo": "sk", "hun": "hu", "ron": "ro", "rum": "ro",
    "bul": "bg", "hrv": "hr", "srp": "sr", "bos": "bs", "slv": "sl", "est": "et",
    "lav": "lv", "lit": "lt", "isl": "is", "ice": "is", "msa": "ms", "may": "ms",
    "tha": "th", "ben": "bn", "urd": "ur", "glg": "gl", "eus": "eu", "baq": "eu",
    "cym": "cy", "wel": "cy", "afr": "af", "bel": "be", "swa": "sw", "tgl": "tl",
}
_TWO_LETTER = {"no": "nb", "iw": "he", "in": "id", "ji": "yi"}
_TRADITIONAL = {"tw", "hk", "mo", "hant"}
_NOT_A_LANGUAGE = {"und", "mul", "mis", "zxx", "xx"}
_CODE = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{1,8})*")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)


def normalize_code(code: str | None) -> str | None:
    """Our code for a metadata or detector code (``nb-NO`` -> ``nb``), or None for junk."""
    if not code:
        return None
    tag = code.strip().lower().replace("_", "-")
    if not _CODE.fullmatch(tag):
        return None
    base, *subtags = tag.split("-")
    if base in ("zh", "zho", "chi", "cmn"):
        return "zh-tw" if _TRADITIONAL.intersection(subtags) else "zh"
    base = _THREE_LETTER.get(base, _TWO_LETTER.get(base, base))
    return None if base in _NOT_A_LANGUAGE else base


def normalize_languages(languages: Iterable[str] | None) -> tuple[str, ...]:
    """The configured languages as sorted, unique codes; ConfigError names any junk."""
    chosen = DEFAULT_LANGUAGES if languages is None else tuple(languages)
    junk = [code for code in chosen if normalize_code(code) is None]
    if junk or not chosen:
        raise ConfigError(f"language.languages: not language codes: {junk or chosen!r}")
    return tuple(sorted({code for code in map(normalize_code, chosen) if code}))


def relatives_of(code: str) -> frozenset[str]:
    """The close relatives of ``code``, itself included."""
    return next((group for group in RELATIVES if code in group), frozenset({code}))


def letter_weight(text: str, enough: int | None = None) -> int:
    """Letters left once URLs are gone; a CJK character weighs as much as a short word.

    With ``enough``, an opening of the text that already weighs that much is the answer:
    callers that only compare it with thresholds up to ``enough`` need not read a long
    text to its end.
    """
    # An opening cut at a space (never inside a URL) usually holds enough letters.
    if enough is not None and (cut := text.find(" ", 4 * enough)) >= 0 and (
            weight := _letters(text[:cut])) >= enough:
        return weight
    return _letters(text)


def _without_urls(text: str) -> str:
    # The case-blind pattern is slow to scan: most texts hold no URL, and say so cheaply.
    low = text.lower()
    return _URL.sub(" ", text) if "://" in low or "www." in low else text


def _letters(text: str) -> int:
    text = _without_urls(text)
    weight = sum(map(str.isalpha, text))  # counted in C
    return weight + 2 * len(_wide_letters().findall(text)) if weight else 0


@lru_cache(maxsize=1)
def _wide_letters() -> re.Pattern[str]:
    """The letters of :func:`_is_wide`'s ranges (a class of BMP characters: a bitmap)."""
    ranges = ((0x3040, 0x9FFF), (0xAC00, 0xD7AF), (0xF900, 0xFAFF))
    return re.compile("[" + "".join(chr(c) for lo, hi in ranges for c in range(lo, hi + 1)
                                    if chr(c).isalpha()) + "]")


def _is_wide(ch: str) -> bool:
    return "\u3040" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af" or "\uf900" <= ch <= "\ufaff"


def script_of(text: str) -> str | None:
    """The ISO 15924 script of most letters (Latn, Cyrl, Arab, Hani ...), None for no letters.

    Letters weigh as in :func:`letter_weight`. Han with any kana is Kana: Japanese writes kana
    between Han characters, Chinese never does.
    """
    counts: Counter[str] = Counter()
    for ch in text:
        if ch.isalpha():
            counts[_script(ch)] += 3 if _is_wide(ch) else 1
    best = max(sorted(counts), key=counts.__getitem__, default=None)
    return "Kana" if best == "Hani" and counts["Kana"] else best


def _script(ch: str) -> str:
    word = unicodedata.name(ch, "?").split(" ", 1)[0]
    return _NAMED_SCRIPTS.get(word, word)


def written_in(script: str | None, languages: Iterable[str]) -> tuple[str, ...]:
    """The languages (of ``languages``) written in ``script``."""
    return tuple(code for code in languages if script in _scripts_of(code))


def _scripts_of(code: str) -> tuple[str, ...]:
    return _ROUTES.get(code) or (_SCRIPTS.get(code, "Latn"),)


def _prepare(text: str) -> str:
    return " ".join(_without_urls(text[:MAX_CHARS]).split())


def _undetermined(method: str) -> Detection:
    return Detection(UNDETERMINED, 0.0, method)


def _found(label: str, confidence: float, method: str) -> Detection:
    # Rounded: lingua's sums differ in the last bits between two builds of one detector.
    language = normalize_code(label) or UNDETERMINED
    return Detection(language, round(min(1.0, max(0.0, float(confidence))), 4), method)


class Detector(Protocol):
    """Names the most likely language of a text among the configured ones."""

    @property
    def name(self) -> str: ...

    def detect(self, text: str) -> Detection: ...

    def detect_many(self, texts: Sequence[str]) -> list[Detection]: ...


# --- py3langid ---------------------------------------------------------------------


def _langid_model(languages: tuple[str, ...]) -> LanguageIdentifier:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    full = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    native = {normalize_code(label): label for label in full.labels}
    wanted = sorted({native[code] for code in map(_chinese, languages) if code in native})
    if not wanted:
        raise ConfigError(f"language.languages: py3langid knows none of {languages!r}")
    full.set_languages(wanted)
    # A copy of the configured columns only; set_languages keeps the whole table (~28 MB).
    return LanguageIdentifier(full.nb_ptc, full.nb_pc, full.nb_classes, full.tk_nextmove,
                              full.tk_output, norm_probs=True, tk_row=full.tk_row)


def _chinese(code: str) -> str:
    return "zh" if code == "zh-tw" else code


class _Langid(Protocol):
    def classify(self, text: str) -> tuple[str, float]: ...

    def rank(self, text: str) -> list[tuple[str, float]]: ...


@lru_cache(maxsize=8)
def _langid(languages: tuple[str, ...]) -> _Langid:
    """py3langid for the configured languages, vectorized unless that fails its checks.

    Vectorized, py3langid's own identifier is left to the collector: its lists cost ~10 MB.
    """
    model = _langid_model(languages)
    with contextlib.suppress(AttributeError, TypeError, ValueError, IndexError):
        fast = _FastLangid.of(model)
        if all(fast.rank(text) == model.rank(text) for text in _PROBES) and all(
                label == want[0] and abs(p - want[1]) < 1e-4 for (label, p), want in
                zip(fast.classify_many(_PROBES), map(model.classify, _PROBES), strict=True)):
            return fast
    return model


def _classify_many(languages: tuple[str, ...], texts: Sequence[str]) -> list[tuple[str, float]]:
    identifier = _langid(languages)
    if isinstance(identifier, _FastLangid):
        return identifier.classify_many(texts)
    return [identifier.classify(text) for text in texts]


# Checked at load against py3langid's own walk: scripts, case folding, NFC, nothing at all.
_PROBES = ("", "12:45", "Regjeringen legger fram statsbudsjettet i dag.", "ÇA COÛTE 3 €",
           "Cafe\u0301 «Ціни на газ»", "政府は水曜日、ウクライナへの支援を決定した。",
           "قیمت گاز دوباره بالا رفت", "정부, 우크라이나 지원 확대 https://example.com/x?y=1")
_PAD = 0xFF  # a byte UTF-8 never uses, on which the root stays the root (checked at load)


@dataclass(frozen=True, eq=False)
class _FastLangid:
    """py3langid's answers, its byte automaton run over all positions of a text at once.

    py3langid walks a text's UTF-8 bytes through an Aho-Corasick automaton in a Python loop
    (``state = nextmove[rows[state] + byte]``, ~0.3 µs a byte), counts the byte n-gram
    feature each state stands for, and adds log(1 + count) times each feature's row of its
    table to the priors. In an Aho-Corasick automaton the state after a byte is the longest
    suffix of the text so far that is a node of its trie, so it depends on the last ``depth``
    bytes only (the trie's depth; 6 in py3langid's model): walking from the root over the
    ``depth`` bytes that end at a position reaches the same state. Here numpy takes those
    ``depth`` steps for every position together, and the features are counted in the order
    py3langid meets them, so the rows are summed in its order: the same scores to the bit.
    """

    nextmove: np.ndarray  # py3langid's transitions (its own buffer, not a copy)
    rows: np.ndarray  # each state's offset in nextmove
    features: np.ndarray  # each state's feature, -1 for none
    depth: int
    ptc: np.ndarray  # a row of log P(feature | language) per feature
    pc: np.ndarray  # log P(language)
    labels: tuple[str, ...]
    aliases: tuple[tuple[int, int], ...]  # (first, later) columns of one label (srl -> sr)

    @classmethod
    def of(cls, model: LanguageIdentifier) -> _FastLangid:
        import numpy as np

        nextmove = np.frombuffer(model.tk_nextmove, dtype=model.tk_nextmove.typecode)
        rows = np.frombuffer(model.tk_row, dtype=model.tk_row.typecode).astype(np.intp) << 8
        if np.any(nextmove[rows + _PAD] != 0):  # from any state: texts can be joined by it
            raise ValueError("the padding byte does not return the automaton to its root")
        labels = tuple(model.nb_classes)
        aliases = tuple((labels.index(c), i) for i, c in enumerate(labels) if labels.index(c) != i)
        return cls(nextmove=nextmove, rows=rows, depth=_trie_depth(nextmove, rows),
                   features=np.asarray(model.tk_output, dtype=np.int32),
                   # By rows, as a text gathers them (py3langid's copy is by columns).
                   ptc=np.ascontiguousarray(model.nb_ptc, dtype=np.float32),
                   pc=np.asarray(model.nb_pc, dtype=np.float32), labels=labels, aliases=aliases)

    def classify(self, text: str) -> tuple[str, float]:
        """The likeliest language and its probability, as py3langid's ``classify``."""
        probabilities = self.probabilities(text)
        best = int(probabilities.argmax())
        return self.labels[best], float(probabilities[best])

    def rank(self, text: str) -> list[tuple[str, float]]:
        """The languages by probability, best first, as py3langid's ``rank``."""
        merged: dict[str, float] = {}
        for label, probability in zip(self.labels, self.probabilities(text).tolist(),
                                      strict=True):
            merged.setdefault(label, probability)  # an alias is folded into the first column
        return sorted(merged.items(), key=lambda item: item[1], reverse=True)

    def probabilities(self, text: str) -> np.ndarray:
        """py3langid's normalization: softmax at temperature sqrt(bytes), aliases folded."""
        import numpy as np

        data = _langid_bytes(text)
        scores = self.scores(data)
        scores *= 1.0 / math.sqrt(len(data) or 1)
        np.exp(scores - scores.max(), out=scores)
        scores /= scores.sum()
        for first, later in self.aliases:
            scores[first] += scores[later]
            scores[later] = 0.0
        return scores

    def probabilities_many(self, texts: Sequence[str]) -> np.ndarray:
        """:meth:`probabilities` of many texts, one row each, in one pass over all their
        bytes joined by the padding byte (which returns the automaton to its root, so
        each text is walked as if alone). The features' log-scores are summed in feature
        order rather than py3langid's, so a probability may differ from
        :meth:`probabilities` in its last bits (checked at load: never the answer)."""
        import numpy as np

        datas = [_langid_bytes(text) for text in texts]
        lengths = np.fromiter(map(len, datas), dtype=np.int64, count=len(datas))
        joined = bytes([_PAD]).join(datas)
        found = self.features[self.states(joined)]
        owner = np.repeat(np.arange(len(datas), dtype=np.int64), lengths + 1)[:len(joined)]
        kept = found >= 0
        keys, counts = np.unique((owner[kept] << 32) | found[kept], return_counts=True)
        scores = np.zeros((len(datas), len(self.labels)), dtype=np.float64)
        if len(keys):
            # Products in float32 (as py3langid's own), summed in float64: float32 sums in
            # another order than py3langid's drift by ~1e-5.
            rows = self.ptc.take(keys & 0xFFFFFFFF, axis=0)
            rows *= np.log1p(counts.astype(np.float32))[:, None]
            texts_of = keys >> 32
            firsts = np.flatnonzero(np.concatenate(([True], texts_of[1:] != texts_of[:-1])))
            scores[texts_of[firsts]] = np.add.reduceat(rows, firsts, axis=0, dtype=np.float64)
            scores[texts_of[firsts]] += self.pc
        scores *= (1.0 / np.sqrt(np.maximum(lengths, 1)))[:, None]
        np.exp(scores - scores.max(axis=1, keepdims=True), out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        for first, later in self.aliases:
            scores[:, first] += scores[:, later]
            scores[:, later] = 0.0
        return scores

    def classify_many(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        """:meth:`classify` of many texts (see :meth:`probabilities_many`)."""
        import numpy as np

        if not texts:
            return []
        probabilities = self.probabilities_many(texts)
        best = probabilities.argmax(axis=1)
        return [(self.labels[b], float(p)) for b, p in
                zip(best.tolist(), probabilities[np.arange(len(texts)), best].tolist(),
                    strict=True)]

    def scores(self, data: bytes) -> np.ndarray:
        """Naive Bayes log scores; zeros (a uniform answer) for a text without features."""
        import numpy as np

        found = self.features[self.states(data)]
        found = found[found >= 0]
        if not len(found):
            return np.zeros(len(self.labels), dtype=np.float32)
        features, counts = _counted(found)
        return np.log1p(counts.astype(np.float32)) @ self.ptc.take(features, axis=0) + self.pc

    def states(self, data: bytes) -> np.ndarray:
        """The state after each byte: the root's walk over the ``depth`` bytes ending there."""
        import numpy as np

        padded = np.frombuffer(bytes([_PAD]) * (self.depth - 1) + data, dtype=np.uint8)
        states = np.zeros(len(data), dtype=np.intp)
        for step in range(self.depth):
            states = self.nextmove[self.rows[states] + padded[step:step + len(data)]]
        return states


def _langid_bytes(text: str) -> bytes:
    """What py3langid reads: the text lower-cased if all upper case, NFC, as UTF-8."""
    text = text.lower() if text.isupper() else text
    return unicodedata.normalize("NFC", text).encode("utf8", errors="surrogatepass")


def _counted(found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct features of ``found`` and their counts, in order of first occurrence.

    Sorted (feature, position) keys put each feature's occurrences in a run, its first one
    first; its count goes to that position, so positions read in order give py3langid's order.
    """
    import numpy as np

    keys = np.sort((found.astype(np.int64) << 32) | np.arange(len(found)))
    feature = keys >> 32
    bounds = np.flatnonzero(np.concatenate(([True], feature[1:] != feature[:-1], [True])))
    counts = np.zeros(len(found), dtype=np.int64)
    counts[keys[bounds[:-1]] & 0xFFFFFFFF] = bounds[1:] - bounds[:-1]
    first = counts > 0
    return found[first], counts[first]


def _trie_depth(nextmove: np.ndarray, rows: np.ndarray) -> int:
    """The length of the longest n-gram the automaton knows: its breadth-first depth.

    States with one row of transitions have the same successors: a level expands its rows.
    """
    import numpy as np

    seen = np.zeros(len(rows), dtype=bool)
    level, depth = np.zeros(1, dtype=np.intp), 0
    while len(level):
        seen[level] = True
        offsets, reached = np.unique(rows[level]), np.zeros_like(seen)
        for byte in range(256):  # a byte at a time: small arrays, no heap left behind
            reached[nextmove[offsets + byte]] = True
        level, depth = np.flatnonzero(reached & ~seen), depth + 1
    return depth - 1


def langid_rank(languages: tuple[str, ...], text: str) -> list[tuple[str, float]]:
    """py3langid's probabilities over the configured languages, best first."""
    ranked = _langid(languages).rank(text)
    return [(normalize_code(label) or UNDETERMINED, float(p)) for label, p in ranked]


@dataclass(frozen=True)
class Py3langidDetector:
    """py3langid (naive Bayes on byte n-grams), restricted to the configured languages."""

    languages: tuple[str, ...] = DEFAULT_LANGUAGES
    name: str = "py3langid"

    def detect(self, text: str) -> Detection:
        return self.detect_many([text])[0]

    def detect_many(self, texts: Sequence[str]) -> list[Detection]:
        """Every text at once (one pass of the automaton over them all)."""
        found: list[Detection] = [_undetermined(self.name)] * len(texts)
        wanted = [i for i, text in enumerate(texts) if text.strip()]
        answers = _classify_many(self.languages, [texts[i] for i in wanted])
        for i, (label, confidence) in zip(wanted, answers, strict=True):
            found[i] = _found(label, confidence, self.name)
        return found


# --- lingua ------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _lingua_model(languages: frozenset[str], low_accuracy: bool = False) -> LanguageDetector:
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    known = sorted({_chinese(code) for code in languages if lingua_knows(_chinese(code))})
    codes = [IsoCode639_1.from_str(code) for code in known]
    if len(codes) < 2:
        raise ConfigError(f"language.languages: lingua needs two known languages: {languages!r}")
    builder = LanguageDetectorBuilder.from_iso_codes_639_1(*codes)
    detector = (builder.with_low_accuracy_mode() if low_accuracy else builder).build()
    _load_models(detector, known)
    return detector


def _load_models(detector: LanguageDetector, languages: Iterable[str]) -> None:
    """Load lingua's models for ``languages`` now, and give back the memory that cost.

    lingua loads a model when a text first needs it, parsing it from a decompressed copy
    whose freed pages glibc keeps (40-50 MB for a dozen languages) unless asked to return
    them. Five letters that every language of a script has make it load all of them at once,
    in this thread (its own preloading, in parallel, leaves more behind).
    """
    scripts = {_scripts_of(code)[0] for code in languages}
    for letter in sorted(_LETTERS[script] for script in scripts if script in _LETTERS):
        detector.compute_language_confidence_values(letter * 5)
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)


@lru_cache(maxsize=256)
def lingua_knows(code: str) -> bool:
    """Whether lingua has a model for ``code``."""
    from lingua import IsoCode639_1

    try:
        IsoCode639_1.from_str(code)
    except ValueError:
        return False
    return True


def lingua_rank(languages: frozenset[str], text: str,
                low_accuracy: bool = False) -> list[tuple[str, float]]:
    """lingua's confidence values over ``languages``, best first (all 0.0 when unsure)."""
    values = _lingua_model(languages, low_accuracy).compute_language_confidence_values(text)
    return [(value.language.iso_code_639_1.name.lower(), value.value) for value in values]


@dataclass(frozen=True)
class LinguaDetector:
    """lingua restricted to the configured languages (high accuracy mode unless told)."""

    languages: tuple[str, ...] = DEFAULT_LANGUAGES
    low_accuracy: bool = False
    name: str = "lingua"

    def detect(self, text: str) -> Detection:
        ranked = lingua_rank(frozenset(self.languages), text, self.low_accuracy)
        if not ranked or ranked[0][1] <= 0.0:
            return _undetermined(self.name)
        return _found(*ranked[0], self.name)

    def detect_many(self, texts: Sequence[str]) -> list[Detection]:
        return [self.detect(text) for text in texts]


# --- langdetect --------------------------------------------------------------------

_LANGDETECT_PROFILES = {"nb": ("no",), "zh": ("zh-cn",), "zh-tw": ("zh-tw",)}


@lru_cache(maxsize=8)
def _langdetect_factory(languages: tuple[str, ...]) -> DetectorFactory:
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    factory = DetectorFactory()
    factory.seed = 0  # langdetect samples at random: without a seed, answers vary by run
    names = [name for code in languages for name in _LANGDETECT_PROFILES.get(code, (code,))]
    paths = [os.path.join(PROFILES_DIRECTORY, name) for name in names]
    profiles = [_read(path) for path in paths if os.path.exists(path)]
    if len(profiles) < 2:
        raise ConfigError(f"language.languages: langdetect knows too few of {languages!r}")
    factory.load_json_profile(profiles)
    return factory


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


@dataclass(frozen=True)
class LangdetectDetector:
    """langdetect (the original specification), seeded and restricted to the languages."""

    languages: tuple[str, ...] = DEFAULT_LANGUAGES
    name: str = "langdetect"

    def detect(self, text: str) -> Detection:
        from langdetect.lang_detect_exception import LangDetectException

        detector = _langdetect_factory(self.languages).create()
        detector.append(text)
        try:
            best = detector.get_probabilities()[0]
        except (LangDetectException, IndexError):
            return _undetermined(self.name)
        return _found(best.lang, best.prob, self.name)

    def detect_many(self, texts: Sequence[str]) -> list[Detection]:
        return [self.detect(text) for text in texts]


# --- the default -------------------------------------------------------------------

# Languages whose short texts lingua tells from same-script neighbours better than py3langid
# (bench/results/langid.md). Each costs lingua 10-30 MB of models, so languages with letters
# of their own (pl, tr, vi, fi, cs ...) are left to py3langid, and so are Arabic and Persian:
# their models (~45 MB) would take the detector to the 400 MB limit for two word pairs in 100.
# Nynorsk too: lingua pulls short Bokmål to it (11 of 100 nb sentences, against 6 without).
LINGUA_SHORT = frozenset({
    "en", "de", "nl", "fr", "es", "pt", "it", "ca", "gl", "nb", "da", "sv", "id", "ms",
    "ru", "uk", "be", "zh", "ja",
})
LINGUA_WEIGHT = 0.75  # lingua's part of the vote among its languages on a short text


@dataclass(frozen=True)
class HybridDetector:
    """py3langid; a short text is routed by script, and lingua votes among its candidates."""

    languages: tuple[str, ...] = DEFAULT_LANGUAGES
    name: str = "py3langid+lingua"

    def detect_many(self, texts: Sequence[str]) -> list[Detection]:
        """Long texts all at once through py3langid, short ones one by one."""
        long = [i for i, text in enumerate(texts) if len(text) >= SHORT_TEXT]
        found = dict(zip(long, Py3langidDetector(self.languages, self.name).detect_many(
            [texts[i] for i in long]), strict=True))
        return [found[i] if i in found else self.detect(text) for i, text in enumerate(texts)]

    def detect(self, text: str) -> Detection:
        if len(text) >= SHORT_TEXT:
            return Py3langidDetector(self.languages, self.name).detect(text)
        candidates = written_in(script_of(text), self.languages)
        if len(candidates) == 1:
            return _found(candidates[0], 1.0, self.name)
        if not candidates:  # no letters, or a script no configured language is written in
            return Py3langidDetector(self.languages, self.name).detect(text)
        return self._among(text, candidates)

    def _among(self, text: str, candidates: tuple[str, ...]) -> Detection:
        """py3langid's shares of the candidates, moved toward lingua's votes where it can."""
        ranked = dict(langid_rank(self.languages, text))
        mass = sum(ranked.get(code, 0.0) for code in candidates)
        shares = {code: ranked.get(code, 0.0) / mass if mass else 1 / len(candidates)
                  for code in candidates}
        family = frozenset(c for c in candidates if c in LINGUA_SHORT and lingua_knows(c))
        # lingua weighs its own languages only, so it is asked only when one leads.
        if len(family) > 1 and _best(shares) in family:
            shares.update(lingua_vote(shares, dict(lingua_rank(family, text))))
        best = _best(shares)
        return _found(best, shares[best], self.name)


def _best(shares: dict[str, float]) -> str:
    return max(sorted(shares), key=shares.__getitem__)


def lingua_vote(shares: dict[str, float], lingua: dict[str, float]) -> dict[str, float]:
    """The ``lingua`` languages' ``shares``, LINGUA_WEIGHT of their sum redealt by lingua."""
    mass = sum(shares[code] for code in lingua)
    votes = sum(lingua.values())
    if not votes:  # lingua is unsure: it returns zeros
        return {}
    return {code: (1 - LINGUA_WEIGHT) * shares[code] + LINGUA_WEIGHT * mass * vote / votes
            for code, vote in lingua.items()}


DETECTORS = {
    "default": HybridDetector,
    "py3langid+lingua": HybridDetector,
    "py3langid": Py3langidDetector,
    "lingua": LinguaDetector,
    "langdetect": LangdetectDetector,
}


def make_detector(name: str = "default", languages: Sequence[str] | None = None) -> Detector:
    """The detector called ``name`` for the configured languages; models load on first use."""
    return _make_detector(name, normalize_languages(languages))


@lru_cache(maxsize=16)
def _make_detector(name: str, languages: tuple[str, ...]) -> Detector:
    if name not in DETECTORS:
        raise ConfigError(f"language.detector: unknown {name!r}; one of {sorted(DETECTORS)}")
    detector: Detector = DETECTORS[name](languages)
    return detector


# --- the decision ------------------------------------------------------------------


def first_hint(hints: Iterable[str | None]) -> str | None:
    """The first declared language that is a language code."""
    return next((code for code in map(normalize_code, hints) if code), None)


def detect_language(text: str, hints: Sequence[str | None], detector: Detector,
                    min_chars: int = 12) -> Detection:
    """Declared metadata when plausible, else the detector; ``und`` for too little text."""
    return detect_languages([text], [hints], detector, min_chars)[0]


def detect_languages(texts: Sequence[str], hints: Sequence[Sequence[str | None]],
                     detector: Detector, min_chars: int = 12) -> list[Detection]:
    """:func:`detect_language` of many texts, the detector asked about them all at once."""
    firsts = [first_hint(h) for h in hints]
    letters = [letter_weight(text, enough=max(min_chars, JUDGE_LETTERS)) for text in texts]
    asked = [i for i, n in enumerate(letters) if n >= min_chars]
    found = dict(zip(asked, detector.detect_many([_prepare(texts[i]) for i in asked]),
                     strict=True))
    out = []
    for i, hint in enumerate(firsts):
        if i not in found:
            out.append(Detection(hint, METADATA_CONFIDENCE, "metadata") if hint
                       else _undetermined("too-short"))
        else:
            out.append(found[i] if hint is None else reconcile(hint, found[i], letters[i]))
    return out


def reconcile(hint: str, found: Detection, letters: int) -> Detection:
    """Keep the declared language unless the detector confidently names an unrelated one."""
    if found.language == hint:
        confidence = max(found.confidence, METADATA_CONFIDENCE)
        return Detection(hint, confidence, f"metadata+{found.method}")
    if plausible(hint, found, letters):
        return Detection(hint, METADATA_CONFIDENCE, "metadata")
    return found


def plausible(hint: str, found: Detection, letters: int) -> bool:
    """Whether ``hint`` survives the detector's disagreement ``found``."""
    if found.language == UNDETERMINED or found.confidence < OVERRULE_CONFIDENCE:
        return True
    if _SCRIPTS.get(found.language, "Latn") != _SCRIPTS.get(hint, "Latn"):
        return False
    return letters < JUDGE_LETTERS or found.language in relatives_of(hint)
