"""The pure dedup stage: shingles, MinHash, LSH bands, anchors, scores and the decision."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from monitor import anchors, dedup
from monitor.anchors import Rarity
from monitor.dedup import Candidate, Probe, StoryView, Thresholds

WIRE = ("Japanese Defense Minister Gen Nakatani met his Turkish counterpart Yasar Guler in "
        "Ankara on Tuesday, pledging to expand defense industry cooperation as Tokyo weighs "
        "buying drones. The two ministers agreed to hold consultations between senior "
        "officials on defense equipment and technology, the ministry said, after talks that "
        "lasted about 100 minutes and ran longer than scheduled.")


def _sig(text: str) -> np.ndarray:
    return dedup.signature(dedup.shingles(text))


def test_signatures_are_stable_across_processes() -> None:
    """The same text gives the same signature and band keys in a fresh interpreter
    (no salted hash() anywhere)."""
    code = (f"from monitor import dedup; s = dedup.signature(dedup.shingles({WIRE!r})); "
            "print(s.sum(), dedup.band_keys(s)[0])")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout.split()
    sig = _sig(WIRE)
    assert other == [str(sig.sum()), str(dedup.band_keys(sig)[0])]


def test_batched_signatures_equal_one_by_one() -> None:
    """signatures() over many documents gives what signature() gives for each."""
    texts = [WIRE, "short", "", WIRE.upper(), "ドローンの輸出を検討 日本政府"]
    sets = [dedup.shingles(t) for t in texts]
    batch = dedup.signatures(sets)
    for row, s in zip(batch, sets, strict=True):
        single = dedup.signature(s)
        assert (single.size == 0 and (row == 0xFFFFFFFF).all()) or np.array_equal(row, single)
    assert np.array_equal(dedup.band_keys_many(batch[:1])[0], dedup.band_keys(batch[0]))


def test_band_keys_of_one_signature_are_the_stored_keys() -> None:
    """band_keys (one signature, at every near-duplicate check) gives bit for bit the
    int64 keys band_keys_many gives (the ingest stores those): random signatures, the
    extreme values, and other band shapes."""
    rng = np.random.default_rng(5)
    sigs = rng.integers(0, 2**32, size=(3000, dedup.NUM_PERM), dtype=np.uint64).astype(np.uint32)
    edges = np.array([[0] * 128, [2**32 - 1] * 128, [0, 2**32 - 1] * 64, [1] * 127 + [0]],
                     dtype=np.uint32)
    sigs = np.concatenate([sigs, edges])
    many = dedup.band_keys_many(sigs)
    for sig, keys in zip(sigs, many, strict=True):
        one = dedup.band_keys(sig)
        assert one == keys.tolist() and all(type(k) is int for k in one)
    for bands in (8, 32, 64):
        assert dedup.band_keys(sigs[0], bands) == dedup.band_keys_many(sigs[:1], bands)[0].tolist()
    assert dedup.band_keys(dedup.EMPTY_SIGNATURE) == []


def test_light_rewrite_is_near_and_a_different_story_is_not() -> None:
    """A syndicated copy with one changed sentence estimates above the 0.80 threshold and
    shares a band key; a different text on the same subject does not come close."""
    copy = WIRE.replace("the ministry said", "Japan's Defense Ministry said") + " Updated."
    other = ("Japan will give Malaysia coastal surveillance drones under its Official "
             "Security Assistance program, the foreign ministry said on Tuesday, the first "
             "delivery of unmanned aircraft to a Southeast Asian navy.")
    a, b, c = _sig(WIRE), _sig(copy), _sig(other)
    assert dedup.jaccard(a, b) >= 0.80
    assert set(dedup.band_keys(a)) & set(dedup.band_keys(b))
    assert dedup.jaccard(a, c) < 0.2 and not set(dedup.band_keys(a)) & set(dedup.band_keys(c))


def test_estimate_tracks_the_true_jaccard() -> None:
    """With 128 shared permutations the estimate is within 0.12 of the exact Jaccard."""
    rng = np.random.default_rng(3)
    universe = rng.integers(0, 2**63, size=4000, dtype=np.uint64)
    for overlap in (0.2, 0.5, 0.85):
        shared = int(1000 * overlap)
        a = universe[:1000]
        b = np.concatenate([universe[:shared], universe[2000:2000 + 1000 - shared]])
        exact = shared / (2000 - shared)
        assert abs(dedup.jaccard(dedup.signature(a), dedup.signature(b)) - exact) < 0.12


@pytest.mark.parametrize(("text", "language", "expected"), [
    ("Tokyo vil sette av 200 milliarder yen (omtrent 1,4 milliarder dollar).", "nb",
     {"amount:2e+11", "amount:1.4e+09"}),
    ("Tokyo intends to earmark 200 billion yen (approximately $1.4 billion).", "en",
     {"amount:2e+11", "amount:1.4e+09"}),
    ("Japans rekordhøye forsvarsbudsjett på 8,8 billioner yen.", "nb", {"amount:8.8e+12"}),
    ("Tokyo's record 8.8 trillion yen budget request.", "en", {"amount:8.8e+12"}),
    ("防衛費は8.8兆円、うち2000億円をドローンに。", "ja", {"amount:8.8e+12", "amount:2e+11"}),
    ("Salg av 1 400 droner og 1.000 båter; 41,5 mrd. kroner; 1,400 tonn.", "nb",
     {"amount:1.4e+03", "amount:1e+03", "amount:4.15e+10", "number:1.4"}),
    ("Sales of 1,400 drones, 70% of them small.", "en", {"amount:1.4e+03", "percent:70"}),
    ("On Aug. 19 the minister arrived; on 20 August he left. In 2025 it grew.", "en",
     {"date:08-19", "date:08-20", "year:2025"}),
])
def test_amounts_dates_and_years_normalize_across_conventions(
        text: str, language: str, expected: set[str]) -> None:
    """Decimal comma or point, scale words (Norwegian billioner = 10^12), CJK scales."""
    found = {a for a in anchors.extract("", text, language) if not a.startswith("name:")}
    assert expected <= found, found


def test_names_fold_to_ascii_and_keep_whole_runs() -> None:
    """Güler and Guler meet; a run is kept whole and by its last word; a sentence's
    first word is a name only when the text capitalizes it elsewhere too; Baykars is
    Baykar in Norwegian; codes keep letters and digits."""
    en = anchors.extract("", "He met Yaşar Güler and toured Baykar. The MQ-9B and TB2 "
                       "were shown. Politiet said nothing.", "en")
    nb = anchors.extract("", "Han møtte Yasar Guler. Baykars styreleder og Baykar var der; "
                       "MQ-9B ble vist.", "nb")
    assert {"name:yasar guler", "name:guler", "name:baykar", "code:mq9b"} <= set(en) & set(nb)
    assert "code:tb2" in en and "name:politiet" not in en and "name:he" not in en


def test_anchor_score_weighs_events_over_subjects() -> None:
    """Shared countries and institutions weigh little; shared people and amounts much,
    and only they count as evidence."""
    rarity = Rarity(0, {})
    subject = anchors.anchor_score({"name:japan", "name:china", "name:ministry", "name:osa"},
                                 {"name:japan", "name:china", "name:ministry", "name:aukus"},
                                 rarity)
    event = anchors.anchor_score({"name:japan", "name:nakatani", "amount:2e+11"},
                               {"name:japan", "name:nakatani", "amount:2e+11", "name:usa"},
                               rarity)
    assert event[0] > 0.5 > subject[0]
    assert anchors.evidence(subject[1], rarity) == 0
    assert anchors.evidence(event[1], rarity) > 1.5
    collapsed = anchors.anchor_score({"name:yasar guler", "name:guler"},
                                   {"name:yasar guler", "name:guler"}, rarity)[1]
    assert collapsed == ("name:yasar guler",)  # one person, counted once


def test_rarity_lowers_common_anchors() -> None:
    """An anchor most stored items have weighs far less than one few have."""
    rarity = Rarity(1000, {"name:trump": 400, "name:nakatani": 2})
    assert rarity.weight("name:trump") < 0.3 < 0.7 < rarity.weight("name:nakatani")


T0 = datetime(2025, 8, 20, tzinfo=UTC)


def _probe(**kw: object) -> Probe:
    base: dict[str, object] = {"item_id": 1, "event_at": T0, "signature": _sig(WIRE),
                               "anchors": frozenset(), "topics": frozenset({"drones"})}
    return Probe(**(base | kw))  # type: ignore[arg-type]


def _candidate(item_id: int = 2, story_id: int = 10, **kw: object) -> Candidate:
    base: dict[str, object] = {"order": dedup.canonical_order(T0, "k"),
                               "signature": _sig(WIRE), "anchors": frozenset()}
    return Candidate(item_id, story_id, **(base | kw))  # type: ignore[arg-type]


def _story(story_id: int = 10, members: frozenset[int] = frozenset({2}),
           span: tuple[datetime, datetime] | None = (T0, T0),
           topics: frozenset[str] = frozenset({"drones"})) -> StoryView:
    return StoryView(story_id, members, span, topics)


def test_decide_near_duplicate_within_window_and_topic() -> None:
    """A near duplicate joins; outside the window, across topics or after a split it
    does not; an unknown time passes the window."""
    limits, rarity = Thresholds(), Rarity(0, {})
    stories = {10: _story()}
    assert dedup.decide(_probe(), [_candidate()], stories, rarity, limits).reason == "near"
    late = _probe(event_at=T0 + timedelta(days=3, hours=1))
    assert dedup.decide(late, [_candidate()], stories, rarity, limits).story_id is None
    assert dedup.decide(_probe(event_at=None), [_candidate()], stories, rarity,
                        limits).story_id == 10
    other_topic = _probe(topics=frozenset({"osa"}))
    assert dedup.decide(other_topic, [_candidate()], stories, rarity, limits).story_id is None
    no_topics = _probe(topics=frozenset())
    assert dedup.decide(no_topics, [_candidate()], {10: _story(topics=frozenset())}, rarity,
                        limits).story_id == 10
    split = _probe(apart=frozenset({2}))
    assert dedup.decide(split, [_candidate()], stories, rarity, limits).story_id is None


def test_crosslingual_needs_embedding_anchors_and_evidence() -> None:
    """Close embeddings alone, or shared countries alone, never join; close embeddings
    with shared people and amounts do; within one language the cosine bar is higher."""
    limits, rarity = Thresholds(), Rarity(0, {})
    vec = np.ones(4, dtype=np.float32)
    near_vec = np.array([1, 1, 1, 0.6], dtype=np.float32)  # cosine ~0.98
    event = frozenset({"name:nakatani", "name:yasar guler", "amount:2e+11", "name:japan"})
    subject = frozenset({"name:japan", "name:china", "name:ministry"})
    probe = _probe(signature=dedup.EMPTY_SIGNATURE, embedding=vec, anchors=event,
                   language="nb")
    hit = _candidate(signature=dedup.EMPTY_SIGNATURE, embedding=near_vec, anchors=event,
                     language="en")
    found = dedup.decide(probe, [hit], {10: _story()}, rarity, limits)
    assert found.reason == "crosslingual" and "name:nakatani" in found.shared
    topic_only = _candidate(signature=dedup.EMPTY_SIGNATURE, embedding=near_vec,
                            anchors=subject, language="en")
    assert dedup.decide(probe, [topic_only], {10: _story()}, rarity, limits).story_id is None
    far = _candidate(signature=dedup.EMPTY_SIGNATURE, anchors=event, language="en",
                     embedding=np.array([1, -1, 1, -1], dtype=np.float32))
    assert dedup.decide(probe, [far], {10: _story()}, rarity, limits).story_id is None
    same_language = Thresholds(min_cosine_same_language=0.99)
    en_probe = _probe(signature=dedup.EMPTY_SIGNATURE, embedding=vec, anchors=event,
                      language="en")
    assert dedup.decide(en_probe, [hit], {10: _story()}, rarity,
                        same_language).story_id is None


def test_ties_go_to_the_first_candidate_in_canonical_order() -> None:
    """Two equally good stories: the one whose item comes first (time, then key) wins,
    whatever the story ids."""
    limits, rarity = Thresholds(), Rarity(0, {})
    early = _candidate(2, 99, order=dedup.canonical_order(T0, "b"))
    later = _candidate(3, 5, order=dedup.canonical_order(T0, "c"))
    stories = {99: _story(99, frozenset({2})), 5: _story(5, frozenset({3}))}
    assert dedup.decide(_probe(), [later, early], stories, rarity, limits).story_id == 99


def test_reader_merge_overrides_the_stages() -> None:
    """An item merged by a reader with a placed item goes to that item's story."""
    stories = {7: _story(7, frozenset({4}), topics=frozenset({"other"}))}
    decision = dedup.decide(_probe(together=frozenset({4})), [], stories, Rarity(0, {}),
                            Thresholds())
    assert (decision.story_id, decision.reason) == (7, "manual")


@pytest.mark.parametrize("text", [
    "", "   ", "2025 100 3,5 1.000.000 42", "Only A Title", "x" * 1_000_000,
    "word " * 200_000, "\x00\ud800 ß ﬁ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 " * 1000, "1" * 5000, "Ø" * 100 + " 9" * 50,
])
def test_bad_input_gives_a_value_never_an_exception(text: str) -> None:
    """Empty, numbers only, a title only, 1 MB of text, odd code points: values."""
    fp = dedup.fingerprint(text[:200], text, published=None, fetched=T0, polled=False,
                           source_key="s", guid="g")
    marks = anchors.extract(text[:200], text, "en")
    assert len(marks) <= 64 and all(isinstance(a, str) for a in marks)
    assert fp.signature.size in (0, dedup.NUM_PERM)
    assert len(fp.bands) == (dedup.BANDS if fp.signature.size else 0)


def test_event_time_is_unknown_only_for_undated_backfill() -> None:
    """Published date first; else the fetch time for a polled item; else unknown."""
    assert dedup.event_time(T0, T0 + timedelta(days=1), polled=True) == T0
    assert dedup.event_time(None, T0, polled=True) == T0
    assert dedup.event_time(None, T0, polled=False) is None


def test_batched_fingerprints_equal_one_by_one() -> None:
    """The ingest fingerprints a feed's items together: same signatures and band keys as
    one at a time, for texts of no, one, two, three and many words, CJK included."""
    texts = ["", "drone", "Japan drone", "Japan buys drones",
             "防衛省は無人機を導入する", "Tokyo will buy MQ-9B drones for 8,8 milliarder yen " * 40]
    docs = [dedup.Document(t[:20], t, None, T0, False, "src", str(i))
            for i, t in enumerate(texts * 2)]
    for doc, batched in zip(docs, dedup.fingerprints(docs), strict=True):
        one = dedup.signature(dedup.shingles(f"{doc.title}\n{doc.text}"))
        assert np.array_equal(batched.signature, one)
        assert batched.bands == tuple(dedup.band_keys(one))
    assert dedup.fingerprints([]) == []
