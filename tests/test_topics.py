"""Topic matching: word boundaries, diacritics, case, prefixes, acronyms and CJK."""

from __future__ import annotations

import pytest

from monitor.config import Topic
from monitor.topics import fold, match_topics

DRONES = Topic("drones", ("drone*", "UAV*", "İHA", "ドローン", "無人機", "MQ-9B",
                          "unmanned aerial", "OSA"))


@pytest.mark.parametrize(("text", "expected"), [
    ("Japan buys drones", ("drone*",)),
    ("Tyrkias ledende droneprodusent", ("drone*",)),
    ("UAV-er i forsvarsporteføljen", ("UAV*",)),
    ("Türkiye'nin İHA ihracatı", ("İHA",)),
    ("TÜRKİYE'NİN IHA İHRACATI", ("İHA",)),
    ("日本のドローン産業", ("ドローン",)),
    ("防衛省が無人機を導入", ("無人機",)),
    ("MQ-9B Sea Guardian", ("MQ-9B",)),
    ("Unmanned   Aerial systems", ("unmanned aerial",)),
    ("the OSA programme", ("OSA",)),
])
def test_matches(text: str, expected: tuple[str, ...]) -> None:
    """Each phrasing matches the keyword it should."""
    (match,) = match_topics([DRONES], [text])
    assert match.keywords == expected


@pytest.mark.parametrize("text", [
    "an undroned thing", "la osa y el oso", "Osaka", "squAVe", "ドロ", "MQ-9",
])
def test_non_matches(text: str) -> None:
    """Substrings inside other words, lower-case acronyms and partial CJK do not match."""
    assert match_topics([DRONES], [text]) == ()


def test_translation_is_a_second_chance() -> None:
    """An item that matches only through its translation says so."""
    (match,) = match_topics([DRONES], ["Japans forsvar"], ["Japan buys drones"])
    assert match.matched_on == "translation"


def test_fold() -> None:
    """Folding removes case and diacritics, including letters NFKD leaves alone."""
    assert fold("Ørsted ÆØÅ Güler İHA") == "orsted aeoa guler iha"
