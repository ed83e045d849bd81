"""How well the cross-lingual stage separates the same event from other events, measured
with the real embedding model on shared data, with the shipped thresholds.

- nb-en (FLORES-101 dev, CC BY-SA 4.0: line i of flores-dev.nb translates line i of
  flores-dev.en; consecutive lines come from one article): pseudo-articles of four
  consecutive sentences. Duplicates: a Norwegian article and its English version, and
  the English version of only its last three sentences (a shorter report of the same
  text). Non-duplicates: the English version of the next four sentences (often the same
  article's other sentences: the hard case) and of a distant one.
- real feeds: NRK's and the Indian Express's items, many on one subject (drones, the
  US transition, a murder case) but different stories, backfilled for real.

Thresholds here are floors that a change must not break; the numbers are printed (run
with -s) and quoted in the closing note of issue 5.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from monitor import anchors, dedup
from monitor.anchors import Rarity
from monitor.config import DedupSettings
from monitor.dedup import Candidate, Probe
from monitor.embed import E5Embedder, embedding_text
from monitor.stories import thresholds
from tests.conftest import Invoke, shared

SENTENCES = 4
ARTICLES = 80


def _windows(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_flores_pairs_precision_and_recall() -> None:
    """Precision >= 0.95 on Norwegian-English pairs; recall on translations >= 0.35
    (texts with no name, number or date cannot be joined: ~30% of FLORES windows)."""
    nb = _windows(shared("corpora", "nb-en", "flores-dev.nb"))
    en = _windows(shared("corpora", "nb-en", "flores-dev.en"))
    starts = list(range(0, SENTENCES * ARTICLES, SENTENCES))
    docs = {("nb", i): " ".join(nb[i:i + SENTENCES]) for i in starts}
    docs |= {("en", i): " ".join(en[i:i + SENTENCES]) for i in [*starts, starts[-1] + SENTENCES]}
    docs |= {("part", i): " ".join(en[i + 1:i + SENTENCES]) for i in starts}
    keys = sorted(docs)
    vectors = dict(zip(keys, E5Embedder.shared().embed([embedding_text("", docs[k])
                                                        for k in keys]), strict=True))
    lang = {"nb": "nb", "en": "en", "part": "en"}
    marks = {k: frozenset(anchors.extract("", docs[k], lang[k[0]])) for k in keys}
    rarity = Rarity(len(keys), Counter(a for k in keys for a in marks[k]))
    limits = thresholds(DedupSettings())
    rng = random.Random(5)
    pairs = {"translation": [(("nb", i), ("en", i)) for i in starts],
             "shorter report": [(("nb", i), ("part", i)) for i in starts],
             "next sentences": [(("nb", i), ("en", i + SENTENCES)) for i in starts],
             "distant article": [(("nb", i), ("en", rng.choice([j for j in starts
                                                                 if abs(j - i) > 40])))
                                 for i in starts]}

    def same(a: tuple[str, int], b: tuple[str, int]) -> bool:
        probe = Probe(0, None, dedup.EMPTY_SIGNATURE, marks[a], frozenset(), None,
                      vectors[a], lang[a[0]])
        other = Candidate(1, 1, dedup.canonical_order(None, ""), dedup.EMPTY_SIGNATURE,
                          marks[b], None, vectors[b], lang[b[0]])
        return dedup.crosslingual(probe, other, rarity, limits) is not None

    found = {kind: sum(same(a, b) for a, b in ps) for kind, ps in pairs.items()}
    true = found["translation"] + found["shorter report"]
    false = found["next sentences"] + found["distant article"]
    precision = true / max(1, true + false)
    print(f"\nFLORES nb-en, {ARTICLES} pseudo-articles of {SENTENCES} sentences: "
          + ", ".join(f"{k} {v}/{len(pairs[k])}" for k, v in found.items())
          + f"; precision {precision:.3f}, recall (translations) "
          f"{found['translation'] / ARTICLES:.3f}, (shorter reports) "
          f"{found['shorter report'] / ARTICLES:.3f}")
    assert precision >= 0.95
    assert found["translation"] / ARTICLES >= 0.35
    assert found["distant article"] == 0


NRK = "no_nrk-toppsaker_2022-10-18_drones-defense_nb-nn-mixed.xml"
INDIAN_EXPRESS = "en_indianexpress_large-200-items_drones.xml"
# Items that report one event (read by hand): a multi-item story may only gather items
# of one of these groups. Everything else in the two feeds is a story of its own.
SAME_EVENT = [
    ("Droneobservasjon stengte luftrom over to flyplasser",
     "Luftrommet over flyplassene i Stavanger og Haugesund stengt etter droneobservasjon"),
    ("Melding om alarm, skudd og brann i fengsel i Iran", "Brann og skyting ved Evin-fengselet",
     "Minst åtte døde i fengselsbrann"),
    ("Finansavisen: Magnus Reitan flytter", "Store deler av Reitan-formuen flyttes"),
    ("Riksadvokaten har tatt ut tiltale i Tengs-saken", "Dette er tiltalte i Tengs-saken"),
    ("To innbrakt til arresten etter voldshendelse",
     "Tre personer pågrepet etter voldshendelse i Drammen"),
    ("Melding om brann ved hotell Scandic Sortland", "Popkorn utløste brannalarm på hotell"),
    ("Brannen i boligblokken i Kristiansand", "Elleve personer til sykehus etter brann i boligb"),
    ("US envoys appointed by Barack Obama asked to quit",
     "Donald Trump asks US ambassadors appointed by Barack Obama"),
    ("Four Yemenis freed from Guantanamo", "US sends four held at Guantanamo"),
    ("US designates Osama’s son Hamza bin Laden", "US imposes terrorism-related sanctions against"),
    ("Fort Lauderdale", "Florida airport shooting", "US shooting: Iraq war veteran",
     "US veteran guns down 5"),
    ("Israel cuts $6 million in UN funding", "Israel halts $6 million to UN"),
    ("Barnehagestreiken",),
    ("Brann i flermannsbolig i Mjøndalen", "Én mann omkom i boligbrann i Mjøndalen"),
]


def _event(title: str) -> int | None:
    return next((n for n, prefixes in enumerate(SAME_EVENT)
                 if any(title.startswith(p) or p in title for p in prefixes)), None)


def test_real_feeds_keep_different_stories_apart(monitor: Invoke) -> None:
    """300 real items, many on one subject: every multi-item story gathers reports of one
    event (the list above, read by hand; printed with -s); the drone items stay apart
    but for the one airspace closure told twice; nothing joins across the two feeds."""
    feeds = [shared("corpora", "real-feeds", name) for name in (NRK, INDIAN_EXPRESS)]
    assert monitor("backfill", *map(str, feeds)).exit_code == 0
    stories = json.loads(monitor("stories", "--json").stdout)
    assert sum(len(s["items"]) for s in stories) == 300
    multi = [s for s in stories if len(s["items"]) > 1]
    print(f"\n{len(stories)} stories, {len(multi)} with more than one item:")
    for s in multi:
        print("  " + " | ".join(f"{i['link_reason']} {i['title'][:60]}" for i in s["items"]))
    for s in multi:
        events = {_event(i["title"]) for i in s["items"]}
        assert len(events) == 1 and None not in events, [i["title"] for i in s["items"]]
        assert len({i["outlet"] for i in s["items"]}) == 1
    drones = [s for s in stories if "japan-drones" in s["topics"]]
    assert len(drones) >= 4
    assert [len(s["items"]) for s in drones if len(s["items"]) > 1] == [2]
