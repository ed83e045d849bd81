"""Anchors: the parts of a text that survive translation and carry its event, for the
cross-lingual stage (:mod:`monitor.dedup`). Pure.

An embedding of title and lead says "same topic"; the anchors two items share say "same
event": names folded to ASCII (a run of capitalized words kept whole and by its last
word), codes (MQ-9B, TB2), amounts normalized across decimal conventions and scale words
(``1,4 milliarder`` == ``1.4 billion``; Norwegian ``billioner`` is 10^12, so ``8,8
billioner yen`` == ``8.8 trillion yen``; CJK 億 and 兆), percentages, dates and years.
Each counts by its kind (a person or an amount says more than a country or a year) and
by its rarity among stored items (an inverse document frequency).

Every function here is total: any text gives a value (an empty one for empty input).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from monitor.gazetteer import PLACES, TITLES
from monitor.normalize import clean_text
from monitor.topics import fold

CJK = ("\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
       "\uff66-\uff9f")

def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Languages that write 1,5 for one and a half (and 1.000 or 1 000 for a thousand).
DECIMAL_COMMA = _words("""
nb nn no da sv fi is de nl fr es it pt ca ro pl cs sk sl hr sr bs hu tr ru uk be bg el lt
lv et id vi az kk
""")
# milyar for 10^9); the English meaning is applied only to English-like texts.
_SCALES = {
    "thousand": 1e3, "thousands": 1e3, "k": 1e3, "tusen": 1e3, "tausend": 1e3,
    "mille": 1e3, "mila": 1e3, "bin": 1e3, "tys": 1e3, "тыс": 1e3, "тысяч": 1e3,
    "тис": 1e3, "тисяч": 1e3,
    "million": 1e6, "millions": 1e6, "mn": 1e6, "mio": 1e6, "mill": 1e6, "millioner": 1e6,
    "millionen": 1e6, "miljoner": 1e6, "miljon": 1e6, "millon": 1e6, "millones": 1e6,
    "milione": 1e6, "milioni": 1e6, "milhao": 1e6, "milhoes": 1e6, "milyon": 1e6,
    "млн": 1e6, "миллион": 1e6, "миллиона": 1e6, "миллионов": 1e6, "мільйонів": 1e6,
    "milliard": 1e9, "milliarder": 1e9, "milliards": 1e9, "milliarde": 1e9,
    "milliarden": 1e9, "miljard": 1e9, "miljarder": 1e9, "mrd": 1e9, "mld": 1e9,
    "miliardo": 1e9, "miliardi": 1e9, "milyar": 1e9, "bn": 1e9, "млрд": 1e9,
    "миллиард": 1e9, "миллиарда": 1e9, "миллиардов": 1e9, "мільярдів": 1e9,
    "billioner": 1e12, "billionen": 1e12, "biljoner": 1e12, "billon": 1e12,
    "billones": 1e12, "trillion": 1e12, "trillions": 1e12, "tn": 1e12, "trilyon": 1e12,
    "трлн": 1e12, "триллион": 1e12, "трильйонів": 1e12,
}
_ENGLISH_BILLION = frozenset({"en", "tr", "pt", "und"})
_CJK_SCALES = {"万": 1e4, "萬": 1e4, "億": 1e8, "亿": 1e8, "兆": 1e12}
_MONTHS = {
    **dict.fromkeys(("jan", "january", "januar", "janvier", "enero", "gennaio", "ocak",
                     "januari"), 1),
    **dict.fromkeys(("feb", "february", "februar", "fevrier", "febrero", "febbraio",
                     "subat", "februari"), 2),
    **dict.fromkeys(("mar", "march", "mars", "marz", "marzo", "mart", "maart"), 3),
    **dict.fromkeys(("apr", "april", "avril", "abril", "aprile", "nisan"), 4),
    **dict.fromkeys(("may", "mai", "mayo", "maggio", "mayis", "mei"), 5),
    **dict.fromkeys(("jun", "june", "juni", "juin", "junio", "giugno", "haziran"), 6),
    **dict.fromkeys(("jul", "july", "juli", "juillet", "julio", "luglio", "temmuz"), 7),
    **dict.fromkeys(("aug", "august", "aout", "agosto", "agustus", "augustus"), 8),
    **dict.fromkeys(("sep", "sept", "september", "septembre", "septiembre", "settembre",
                     "eylul"), 9),
    **dict.fromkeys(("oct", "october", "oktober", "octobre", "octubre", "ottobre",
                     "ekim"), 10),
    **dict.fromkeys(("nov", "november", "novembre", "noviembre", "kasim"), 11),
    **dict.fromkeys(("dec", "december", "desember", "dezember", "decembre", "diciembre",
                     "dicembre", "aralik"), 12),
}
# Capitalized words that are not names: function words that open headlines and quotes,
# weekdays, and the like (folded). Months are dates, not names.
_NOT_NAMES = _words("""
a an the and or but if in on at to of for from by with as is are was were be been it its
this that these those there here he she we they you i my our his her their what when where
who why how not no yes all any some more most many much new after before over under
during while since until about into than then also just only still even mr mrs ms dr
however although though because despite meanwhile according among both each every other
such several another within without across against between through toward towards
monday tuesday wednesday thursday friday saturday sunday today yesterday tomorrow
den det de en et ei og i pa til av for med som er var har han hun vi jeg du dere seg
etter mens da nar hvor hva hvem hvorfor ikke ogsa men eller om fra ved under over mot
mandag tirsdag onsdag torsdag fredag lordag sondag na nye ny
der die das ein eine und oder im am zum zur von mit fur auf bei nach aus wie ist sind
le la les un une des du et ou au aux dans sur pour par avec sans il elle ils nous vous
el los las y o del al por para con sin es son una uno lo
il lo gli di da che non
bu ve ile icin da de
""")
_UPPER = "".join(re.escape(chr(c)) for c in range(0x10000) if chr(c).isupper())
_CAPITALIZED = rf"[{_UPPER}](?:[\w'’\-]*[^\W_])?"
# A run of capitalized words with single spaces between them: "Gen Nakatani", "OSA".
_RUN = re.compile(rf"(?<![\w'’\-]){_CAPITALIZED}(?:[ \u00a0]{_CAPITALIZED})*(?![\w'’\-])")
_POSSESSIVE = re.compile(r"['’]s?$")
_WORD = re.compile(r"[^\W\d_][\w'’\-]*[^\W_]|[^\W\d_]")
_CODE = re.compile(r"(?<![\w\-])(?=[\w\-]*\d)(?=[\w\-]*[^\W\d_])[^\W_][\w\-]*[^\W_](?![\w\-])")
_COUNTED = re.compile(r"\d+-?[^\W\d_A-Z]")  # 100-minute, 28-year-old, 3D is a code
_SENTENCE_END = re.compile(r"(?:[.!?:;|(\[]|^)\s*[\"“”«»'‘–—-]?\s*$")
# A number not glued to a word (F35, MQ-9B are codes), but CJK text glues every word.
_NUMBER = re.compile(
    rf"(?<![.,:/\-])(?<!(?![{CJK}])\w)"
    r"(\d{1,3}(?:[ \u00a0\u202f]\d{3})+|\d+(?:[.,]\d+)*)"
    rf"(?!(?![{CJK}])[\w:/]|[.,]\d)"
    f"(?:\\s?(%|prosent|percent|per cent|procent|prozent)|([{''.join(_CJK_SCALES)}])"
    r"|\s?([^\W\d_]+)\.?)?")
_MAX_ANCHOR_CHARS = 3000
_MAX_ANCHORS = 64
MAX_ANCHOR_LENGTH = 100  # the column's width
_YEAR = range(1900, 2101)


PLACE_WEIGHT = 0.25
STRONG = 0.5  # kinds weighing at least this much are evidence of an event
KIND_WEIGHTS = {"name": 1.0, "code": 1.0, "amount": 1.0, "percent": 0.5, "date": 0.5,
                "year": 0.2, "number": 0.3}


def anchor_kind(key: str) -> str:
    return key.split(":", 1)[0]


def kind_weight(key: str) -> float:
    """How much an anchor of this kind says about the event: amounts, codes and names of
    people and things most; countries, capitals and institutional words (a subject, not
    an event) and years least."""
    kind, _, value = key.partition(":")
    if kind == "name" and (value in PLACES or value in TITLES):
        return PLACE_WEIGHT
    return KIND_WEIGHTS.get(kind, 0.3)


def extract(title: str, text: str, language: str) -> tuple[str, ...]:
    """The anchor keys of an item (title and the lead of its text), sorted, at most
    ``_MAX_ANCHORS`` of them (the text's first ones)."""
    body = clean_text(text[:_MAX_ANCHOR_CHARS * 2])[:_MAX_ANCHOR_CHARS]
    title = clean_text(title[:1000])
    found: dict[str, None] = {}
    for part in (title, body):
        for key in _numbers(part, language) + _codes(part):
            found.setdefault(key, None)
    for key in _names(title, body, language):
        found.setdefault(key, None)
    return tuple(sorted({key[:MAX_ANCHOR_LENGTH] for key in list(found)[:_MAX_ANCHORS]}))


def _number_value(digits: str, language: str) -> float | None:
    digits = re.sub(r"[ \u00a0\u202f]", "", digits)
    comma = language.split("-")[0] in DECIMAL_COMMA
    decimal, thousands = (",", ".") if comma else (".", ",")
    parts = re.split(r"[.,]", digits)
    seps = re.findall(r"[.,]", digits)
    if len(seps) == 1 and len(parts[1]) != 3:
        decimal, thousands = seps[0], ""  # 1,4 or 41.5: only a decimal mark reads so
    if len(set(seps)) == 2:
        decimal = seps[-1]  # 1.234,5 or 1,234.5: the last mark is the decimal one
        thousands = ({".", ","} - {decimal}).pop()
    try:
        return float(digits.replace(thousands, "").replace(decimal, ".") if thousands
                     else digits.replace(decimal, "."))
    except ValueError:
        return None


def _scale(word: str | None, cjk: str | None, language: str) -> float:
    if cjk:
        return _CJK_SCALES[cjk]
    if not word:
        return 1.0
    word = fold(word)
    if word in ("billion", "billions", "billiard"):
        return 1e9 if language.split("-")[0] in _ENGLISH_BILLION else 1e12
    return _SCALES.get(word, 1.0)


def _numbers(text: str, language: str) -> list[str]:
    keys = []
    for m in _NUMBER.finditer(text):
        value = _number_value(m.group(1), language)
        if value is None or not math.isfinite(value):
            continue
        if m.group(2):
            keys.append(f"percent:{value:.3g}")
            continue
        scale = _scale(m.group(4), m.group(3), language)
        if scale > 1:
            keys.append(f"amount:{value * scale:.3g}")
        elif value.is_integer() and int(value) in _YEAR and len(m.group(1)) == 4:
            keys.append(f"year:{int(value)}")
        elif value >= 1000:
            keys.append(f"amount:{value:.3g}")
        else:
            keys.extend(_date_around(text, m.start(), m.end(1), value) or
                        [f"number:{value:.3g}"])
    return keys


def _date_around(text: str, start: int, end: int, day: float) -> list[str]:
    """``Aug. 19``, ``August 19``, ``19 August``, ``19. august`` as a date anchor."""
    if not day.is_integer() or not 1 <= day <= 31:
        return []
    before = re.search(r"([^\W\d_]+)\.?\s+$", text[max(0, start - 16):start])
    after = re.match(r"\.?\s+([^\W\d_]+)", text[end:end + 16])
    for m in (before, after):
        month = _MONTHS.get(fold(m.group(1))) if m else None
        if month:
            return [f"date:{month:02d}-{int(day):02d}"]
    return []


def _codes(text: str) -> list[str]:
    """Model and product codes mixing letters and digits: MQ-9B, TB2, F-35, PD6B-Type3."""
    return [f"code:{fold(m.group()).replace('-', '')}" for m in _CODE.finditer(text)
            if len(m.group()) <= 24 and any(c.isupper() for c in m.group())
            and not _COUNTED.match(m.group())]


def _names(title: str, body: str, language: str) -> list[str]:
    """Names folded to ASCII. A run of capitalized words is one name (``Gen Nakatani``),
    kept whole and by its last word (``nakatani``), which is what another text, or
    another language, most often writes. A sentence's first word belongs to a name only
    if the text also writes it capitalized inside a sentence: ``Politiet``, ``Fresh``,
    ``Two`` opening a sentence are words, and counting them merged different stories on
    real feeds, while the names it loses (``Lodin said``) were few. A Title-Cased line
    (a headline) contributes only words the rest of the text writes capitalized.
    ``Texas-borgere`` is Texas; a Scandinavian genitive (``Baykars``) is the name
    (``Baykar``) when the text also has the name."""
    lines = [line for line in (title, *body.split("\n")) if line.strip()]
    titled = [_title_cased(line) for line in lines]
    runs = [run for line, t in zip(lines, titled, strict=True) if not t for run in _runs(line)]
    inner = {w for opening, words in runs for w in (words[1:] if opening else words)}
    heads = [(False, [w]) for line, t in zip(lines, titled, strict=True) if t
             for _, words in _runs(line) for w in words if w in inner]
    names: list[list[str]] = []
    for opening, words in runs + heads:
        first = words[0]
        if opening and first not in inner:
            words = words[1:]
        folded = [f for f in (_fold_name(w) for w in words) if f]
        while len(folded) > 1 and (folded[0] in _NOT_NAMES or folded[0] in _MONTHS
                                   or folded[0] in PLACES or folded[0] in TITLES):
            folded = folded[1:]  # "The", "Defense Minister" Yasar Guler
        if folded:
            names.append(folded[-5:])
    singles = {word for run in names for word in run}
    scandinavian = language.split("-")[0] in ("nb", "nn", "no", "da", "sv")
    keys = []
    for run in names:
        last = run[-1]
        if scandinavian and last.endswith("s") and last[:-1] in singles:
            run = [*run[:-1], last[:-1]]
        if len(run[-1]) > 1 and run[-1] not in _NOT_NAMES and run[-1] not in _MONTHS:
            keys.append(f"name:{run[-1]}")
            if len(run) > 1:
                keys.append(f"name:{' '.join(run)}")
    return list(dict.fromkeys(keys))


def _runs(line: str) -> list[tuple[bool, list[str]]]:
    """Runs of capitalized words separated by single spaces, each with whether it opens
    a sentence. A word in capitals (OSA, NATO) counts; a line in capitals gives nothing."""
    if line.isupper():
        return []
    runs = []
    for m in _RUN.finditer(line):
        before = line[max(0, m.start() - 4):m.start()]
        opening = (m.start() < 4 and not before.strip()) or bool(_SENTENCE_END.search(before))
        runs.append((opening, m.group().split()))
    return runs


def _title_cased(line: str) -> bool:
    """A headline in Title Case: most of its (three or more) words capitalized."""
    words = _WORD.findall(line[:300])
    return len(words) >= 3 and sum(1 for w in words if w[0].isupper()) > 0.6 * len(words)


@lru_cache(maxsize=50_000)
def _fold_name(word: str) -> str:
    word = _POSSESSIVE.sub("", word)
    parts = word.split("-")
    if len(parts) > 1 and not any(p[:1].isupper() for p in parts[1:]):
        word = parts[0]  # Texas-borgere, Chinese-made, UAV-er, NATO-landene
    return unicodedata.normalize("NFC", fold(word)).replace("-", "")


# --- rarity and scores ------------------------------------------------------------------

# A prior number of items in which no anchor occurs: with few stored items every anchor
# looks rare, and this keeps the rarity weights from swinging on a handful of items.
PRIOR_ITEMS = 50


@dataclass(frozen=True)
class Rarity:
    """Document frequencies of anchors among ``items`` stored items."""

    items: int
    df: Mapping[str, int]

    def weight(self, anchor: str) -> float:
        """The anchor's kind weight times its inverse document frequency, in (0, 1]."""
        total = self.items + PRIOR_ITEMS
        idf = math.log(total / (self.df.get(anchor, 0) + 1)) / math.log(total)
        return kind_weight(anchor) * max(idf, 0.0)


def anchor_score(a: Iterable[str], b: Iterable[str],
                 rarity: Rarity) -> tuple[float, tuple[str, ...]]:
    """How much of the two items' anchors they share, weighted by kind and rarity: the
    weight of the shared anchors over the geometric mean of each item's total, in
    [0, 1]; and the shared anchors. The geometric mean, not the union, so a short
    report of an event is not penalized for the long one's extra detail as much as
    Jaccard would, while a long text's many incidental names do not make it match
    everything."""
    left, right = set(a), set(b)
    shared = tuple(sorted(collapse(left & right)))
    if not shared:
        return 0.0, ()
    w_left = sum(rarity.weight(x) for x in collapse(left))
    w_right = sum(rarity.weight(x) for x in collapse(right))
    if w_left <= 0 or w_right <= 0:
        return 0.0, shared
    return sum(rarity.weight(x) for x in shared) / math.sqrt(w_left * w_right), shared


def collapse(keys: set[str]) -> set[str]:
    """Count a name once: its last word goes where the whole name is there too
    (``name:yasar guler`` and ``name:guler`` are one person)."""
    wholes = {k.rsplit(" ", 1)[1] for k in keys if k.startswith("name:") and " " in k}
    return {k for k in keys if not (k.startswith("name:") and " " not in k
                                    and k[5:] in wholes)}


def could_match(anchors: Iterable[str], min_evidence: float) -> bool:
    """Whether an item's anchors could ever carry ``min_evidence``: if even all of them,
    at the highest rarity, weigh less, stage 3 can never join it to anything, and
    embedding it would cost without use."""
    strong = [kind_weight(a) for a in collapse(set(anchors)) if kind_weight(a) >= STRONG]
    return sum(strong) >= min_evidence


def evidence(shared: Iterable[str], rarity: Rarity) -> float:
    """The weight of the shared anchors that can tell one event from another (names of
    people and things, amounts, codes, dates, not countries, institutions or years):
    1.0 is about one rare name or amount and a half."""
    return sum(rarity.weight(a) for a in shared if kind_weight(a) >= STRONG)
