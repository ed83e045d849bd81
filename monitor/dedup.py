"""Fingerprints and similarity for the near-duplicate and cross-lingual stages. Pure.

Stage 2 (same words): word shingles -> MinHash with permutations shared by every
document -> LSH band keys (stored in a table, so every process shares the index) ->
candidates verified by the Jaccard estimate of the two signatures.

Stage 3 (same event, other words or another language): an embedding of title and lead
says "same topic"; the anchors the two items share (:mod:`monitor.anchors`) say "same
event".

Then the decision: which story a probe joins, stage by stage, within the time window and
the topics, honouring a reader's splits and merges.

Every function here is total: any text gives a value (an empty one for empty input).
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import chain

import numpy as np

from monitor.anchors import CJK, Rarity, anchor_score, evidence
from monitor.topics import fold

# --- shingles and MinHash -------------------------------------------------------------

SHINGLE_WORDS = 3
NUM_PERM = 128
BANDS = 16  # 16 bands of 8 rows: P(candidate) is 0.994 at Jaccard 0.85, 0.06 at 0.5
# Shingling reads at most this much text: a 1 MB article costs what 50 KB does, and two
# copies that agree on their first 50 KB are near duplicates for any reader.
MAX_SHINGLE_CHARS = 50_000
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_TOKEN = re.compile(f"[{CJK}]|[^\\W_]+")
_WORDS = re.compile(r"[^\W_]+")
_HAS_CJK = re.compile(f"[{CJK}]")


def tokens(text: str) -> list[str]:
    """Words folded like topic matching (case, diacritics); each CJK character is a word,
    since those scripts put no spaces between words."""
    folded = fold(text[:MAX_SHINGLE_CHARS])
    # The plain pattern is several times faster, and most texts have no CJK at all.
    return (_TOKEN if _HAS_CJK.search(folded) else _WORDS).findall(folded)


@lru_cache(maxsize=200_000)
def stable_hash(token: str) -> int:
    """A 64-bit hash that is the same in every process (Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8", "surrogatepass"),
                                          digest_size=8).digest(), "little")


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_M1_INT, _M2_INT = int(_M1), int(_M2)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, vectorized: spreads every input bit over the output.
    (Array arithmetic wraps modulo 2**64 without a warning; only scalars would warn.)"""
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def shingles_of_words(word_hashes: np.ndarray, k: int = SHINGLE_WORDS) -> np.ndarray:
    """Distinct hashes of the k-word windows over a document's word hashes (a text
    shorter than k words is one shingle of all its words; no words, no shingles)."""
    h = np.asarray(word_hashes, dtype=np.uint64)
    if h.size == 0:
        return h
    k = min(k, h.size)
    acc = np.zeros(h.size - k + 1, dtype=np.uint64)
    for offset in range(k):
        acc = _mix(acc ^ h[offset:h.size - k + 1 + offset])
    return np.unique(acc)


def shingles(text: str) -> np.ndarray:
    """The shingle hashes of a text (see :func:`shingles_of_words`)."""
    words = tokens(text)
    return shingles_of_words(np.fromiter(map(stable_hash, words), dtype=np.uint64,
                                         count=len(words)))


def shingles_many(texts: Sequence[str], k: int = SHINGLE_WORDS) -> list[np.ndarray]:
    """The shingles of many texts, each the set :func:`shingles` gives but possibly with
    repeats (a MinHash does not see them): the windows of every text are mixed in one
    pass over all their words, instead of a dozen small array operations per text."""
    words = [tokens(t) for t in texts]
    counts = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    flat = np.fromiter(map(stable_hash, chain.from_iterable(words)), dtype=np.uint64,
                       count=int(counts.sum()))
    windows = max(0, flat.size - k + 1)
    acc = np.zeros(windows, dtype=np.uint64)
    for offset in range(k):
        acc = _mix(acc ^ flat[offset:windows + offset])
    ends = np.cumsum(counts)
    starts = ends - counts
    out = []
    for i, n in enumerate(counts.tolist()):
        begin = int(starts[i])
        if n >= k:  # the windows that start and end inside this text
            out.append(acc[begin:begin + n - k + 1])
        else:  # too short for a window: one shingle of all its words, or none
            out.append(shingles_of_words(flat[begin:begin + n], k))
    return out


@dataclass(frozen=True)
class Permutations:
    """The hash functions of a MinHash, made once and shared by every document.

    ``h_i(x) = (a_i * x + b_i) >> 32`` over 64-bit words (multiply-shift hashing; ``a_i``
    odd) stands for the i-th random permutation. Making them once, from a fixed seed,
    is what lets signatures from any process and any day be compared, and it spares
    drawing ``NUM_PERM`` random numbers per document (what a fresh ``MinHash()`` does).
    """

    a: np.ndarray
    b: np.ndarray

    @classmethod
    def make(cls, count: int = NUM_PERM, seed: int = 0x6D6F6E69) -> Permutations:
        rng = np.random.default_rng(seed)
        a = rng.integers(1, 2**63, size=count, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        b = rng.integers(0, 2**63, size=count, dtype=np.uint64)
        return cls(a, b)


PERMUTATIONS = Permutations.make()
EMPTY_SIGNATURE = np.zeros(0, dtype=np.uint32)
_CHUNK = 4096


def signature(shingle_hashes: np.ndarray, perms: Permutations = PERMUTATIONS) -> np.ndarray:
    """The MinHash signature (``len(perms.a)`` uint32 values); empty for no shingles.

    The minimum is taken over the 64-bit values and shifted afterwards: the shift keeps
    order, so this equals the minimum of the shifted values, one array pass cheaper."""
    if shingle_hashes.size == 0:
        return EMPTY_SIGNATURE
    result = np.full(perms.a.size, np.iinfo(np.uint64).max, dtype=np.uint64)
    for start in range(0, shingle_hashes.size, _CHUNK):
        x = shingle_hashes[start:start + _CHUNK, None]
        np.minimum(result, (x * perms.a + perms.b).min(axis=0), out=result)
    return (result >> np.uint64(32)).astype(np.uint32)


def signatures(shingle_sets: Sequence[np.ndarray],
               perms: Permutations = PERMUTATIONS) -> np.ndarray:
    """Signatures of many documents at once, one row each (rows of a document without
    shingles are all 0xFFFFFFFF): the same values :func:`signature` gives one by one."""
    out = np.full((len(shingle_sets), perms.a.size), np.iinfo(np.uint32).max, dtype=np.uint32)
    lengths = np.fromiter((s.size for s in shingle_sets), dtype=np.int64,
                          count=len(shingle_sets))
    present = np.flatnonzero(lengths)
    if present.size == 0:
        return out
    flat = np.concatenate([shingle_sets[int(i)] for i in present])
    starts = np.concatenate(([0], np.cumsum(lengths[present])[:-1]))
    mins = np.empty((present.size, perms.a.size), dtype=np.uint64)
    # One permutation at a time over every document's shingles: the working set stays in
    # the CPU cache, some 30 times faster than one (shingles x permutations) matrix.
    for j in range(perms.a.size):
        mins[:, j] = np.minimum.reduceat(flat * perms.a[j] + perms.b[j], starts)
    out[present] = mins >> np.uint64(32)
    return out


# Odd 64-bit multipliers that fold a band's rows into one word before mixing.
_ROW_WEIGHTS = (np.random.default_rng(0x62616E64).integers(1, 2**63, size=64, dtype=np.uint64)
                * np.uint64(2) + np.uint64(1))


def band_keys(sig: np.ndarray, bands: int = BANDS) -> list[int]:
    """One signed 64-bit key per band: the band's index and its rows, hashed. Two
    signatures are LSH candidates when any key is equal.

    The keys :func:`band_keys_many` gives (they are stored, so they may never change), in
    a few microseconds: every near-duplicate check starts here. On 16 values the
    arithmetic is nothing and each numpy call's overhead is everything, so numpy only
    folds the bands' rows (one matmul), and splitmix64 runs on every band at once as one
    Python integer with a lane per band (:func:`_mix_lanes`): a dozen big-integer
    operations instead of some twenty numpy calls."""
    if sig.size == 0:
        return []
    lanes = _lanes(bands, sig.size // bands)
    folded = sig.astype(np.uint64).reshape(bands, -1).dot(lanes.weights)  # lanes: word, 0
    x = _mix_lanes(int.from_bytes(folded, "little"), lanes.low, lanes.index)
    return list(lanes.unpack.unpack(x.to_bytes(lanes.unpack.size, "little")))


@dataclass(frozen=True, eq=False)
class _Lanes:
    """What :func:`band_keys` needs for one shape: the row weights with a zero column
    (the matmul then writes each band's word into a 128-bit lane of its own), a mask of
    every lane's low 64 bits, the band indexes laid out in lanes, and the unpacking of
    the lanes' low halves as signed 64-bit keys."""

    weights: np.ndarray
    low: int
    index: int
    unpack: struct.Struct


@lru_cache(maxsize=8)
def _lanes(bands: int, rows: int) -> _Lanes:
    weights = np.zeros((rows, 2), dtype=np.uint64)
    weights[:, 0] = _ROW_WEIGHTS[:rows]
    return _Lanes(weights, sum(_LOW64 << (128 * i) for i in range(bands)),
                  sum(v << (128 * i) for i, v in enumerate(_band_index(bands).tolist())),
                  struct.Struct("<" + "q8x" * bands))


_LOW64 = 0xFFFFFFFFFFFFFFFF


def _mix_lanes(x: int, low: int, index: int) -> int:
    """``_mix(_mix(x) ^ index)`` (:func:`band_keys_many`) on every 128-bit lane of ``x``
    at once, each lane's value in its low 64 bits (``low`` masks those). Masking after
    each shift (which moves a lane's bits into its neighbour's high half) and after each
    product (a lane's product fits its 128 bits: none carries into the next) keeps the
    lanes apart and the arithmetic modulo 2**64. Written out: a call costs what an
    operation does."""
    x = ((x ^ (x >> 30)) & low) * _M1_INT & low
    x = ((x ^ (x >> 27)) & low) * _M2_INT & low
    x = ((x ^ (x >> 31)) & low) ^ index
    x = ((x ^ (x >> 30)) & low) * _M1_INT & low
    x = ((x ^ (x >> 27)) & low) * _M2_INT & low
    return (x ^ (x >> 31)) & low


def band_keys_many(sigs: np.ndarray, bands: int = BANDS) -> np.ndarray:
    """:func:`band_keys` for a matrix of signatures: an (n, bands) int64 array."""
    rows = sigs.astype(np.uint64).reshape(sigs.shape[0], bands, -1)
    folded = (rows * _ROW_WEIGHTS[:rows.shape[2]]).sum(axis=2, dtype=np.uint64)
    return _mix(_mix(folded) ^ _band_index(bands)).view(np.int64)


@lru_cache(maxsize=8)
def _band_index(bands: int) -> np.ndarray:
    return np.arange(1, bands + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The Jaccard similarity two signatures estimate (0 when either is empty)."""
    if a.size == 0 or a.size != b.size:
        return 0.0
    return float(np.count_nonzero(a == b)) / a.size


def to_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).tobytes()


def signature_from(blob: bytes | None) -> np.ndarray:
    return EMPTY_SIGNATURE if not blob else np.frombuffer(blob, dtype=np.uint32)


def embedding_to_bytes(vector: np.ndarray) -> bytes:
    """Embeddings are stored as float16: half the bytes, and cosines move by < 0.001."""
    return np.ascontiguousarray(vector, dtype=np.float16).tobytes()


def embedding_from(blob: bytes | None) -> np.ndarray | None:
    return None if not blob else np.frombuffer(blob, dtype=np.float16).astype(np.float32)


def cosine(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None or a.size == 0 or a.size != b.size:
        return 0.0
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a.astype(np.float32), b.astype(np.float32)) / (na * nb))


# --- the decision ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """When the stages call two items one story (see ``[dedup]`` in README.md), and
    whether the inline stage 2 asks a copy of the band index in memory (SQLite)."""

    near: float = 0.80
    crosslingual: float = 0.25
    min_evidence: float = 1.0
    min_cosine: float = 0.80
    min_cosine_same_language: float = 0.88
    window: timedelta = timedelta(days=3)
    memory_index: bool = False


@dataclass(frozen=True, eq=False)
class Probe:
    """The item being placed, as the stages see it; ``apart`` and ``together`` are the
    items a reader split it from or merged it with."""

    item_id: int
    event_at: datetime | None
    signature: np.ndarray
    anchors: frozenset[str]
    topics: frozenset[str]
    content_hash: str | None = None
    embedding: np.ndarray | None = None
    language: str = "und"
    apart: frozenset[int] = frozenset()
    together: frozenset[int] = frozenset()


@dataclass(frozen=True, eq=False)
class Candidate:
    """A placed item that some stage found: its story, and what the stages compare."""

    item_id: int
    story_id: int
    order: tuple[bool, datetime, str]
    signature: np.ndarray
    anchors: frozenset[str]
    content_hash: str | None = None
    embedding: np.ndarray | None = None
    language: str = "und"


@dataclass(frozen=True)
class StoryView:
    """A story as the admission rules see it: its members, the span of their known
    event times (None when none is known) and the union of their topics."""

    id: int
    members: frozenset[int]
    span: tuple[datetime, datetime] | None
    topics: frozenset[str]


@dataclass(frozen=True)
class Decision:
    """Where the probe goes (``story_id`` None: a story of its own) and why."""

    story_id: int | None
    reason: str = "new"
    score: float = 1.0
    via: int | None = None  # the candidate item that decided it
    shared: tuple[str, ...] = ()
    cosine: float | None = None


STAGES = ("content", "near", "crosslingual")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def canonical_order(event_at: datetime | None, order_key: str) -> tuple[bool, datetime, str]:
    """The order every rebuild places items in: known event times first, oldest first,
    then unknown ones; ties by ``order_key`` (a digest of source and GUID), which unlike
    the id does not depend on the order items were stored in."""
    return (event_at is None, event_at or _EPOCH, order_key)


def within_window(when: datetime | None, span: tuple[datetime, datetime] | None,
                  window: timedelta) -> bool:
    """An item joins a story only within ``window`` of the story's span. An unknown time
    (a backfilled article without a date) passes: refusing would split every undated
    copy from its story, and the stages still have to find it the same story."""
    if when is None or span is None:
        return True
    return span[0] - window <= when <= span[1] + window


def topics_admit(item: frozenset[str], story: frozenset[str]) -> bool:
    """Stories never merge across topics they do not share: an item joins a story only
    if they share a topic, or neither has any."""
    return bool(item & story) if item or story else True


def admits(probe: Probe, story: StoryView, window: timedelta) -> bool:
    return (topics_admit(probe.topics, story.topics)
            and within_window(probe.event_at, story.span, window)
            and not (story.members & probe.apart))


def decide(probe: Probe, candidates: Sequence[Candidate], stories: Mapping[int, StoryView],
           rarity: Rarity, thresholds: Thresholds,
           stages: Sequence[str] = STAGES) -> Decision:
    """The probe's story: a reader's merge first, then the first stage (in ``stages``
    order: exact content, near duplicate, cross-lingual) that finds an admissible story,
    the best-scoring one; ties go to the candidate first in the canonical order, so the
    decision does not depend on story ids."""
    for story in sorted(stories.values(), key=lambda s: min(s.members, default=0)):
        if story.members & probe.together:
            return Decision(story.id, "manual", 1.0, min(story.members & probe.together))
    admitted = [c for c in candidates if c.item_id != probe.item_id
                and c.story_id in stories and admits(probe, stories[c.story_id],
                                                     thresholds.window)]
    for stage in stages:
        scored = [d for c in admitted if (d := _score(stage, probe, c, rarity, thresholds))]
        if scored:
            order = {c.item_id: c.order for c in admitted}
            return min(scored, key=lambda d: (-d.score, order[d.via or 0]))
    return Decision(None)


def _score(stage: str, probe: Probe, c: Candidate, rarity: Rarity,
           t: Thresholds) -> Decision | None:
    if stage == "content":
        same = probe.content_hash is not None and probe.content_hash == c.content_hash
        return Decision(c.story_id, "content", 1.0, c.item_id) if same else None
    if stage == "near":
        j = jaccard(probe.signature, c.signature)
        return Decision(c.story_id, "near", round(j, 4), c.item_id) if j >= t.near else None
    return crosslingual(probe, c, rarity, t)


def crosslingual(probe: Probe, c: Candidate, rarity: Rarity, t: Thresholds) -> Decision | None:
    """Stage 3: the same event in another language or in other words. Three tests, all
    needed, because each alone fails in a known way:

    - the embeddings' cosine is at least ``min_cosine`` across languages, and the higher
      ``min_cosine_same_language`` within one: e5 puts a translation near 0.89 but two
      different stories on one subject in one language near 0.86-0.92 (seeds 000/001),
      so within a language the embedding can only veto;
    - the anchors' weighted overlap (:func:`anchor_score`) is at least ``crosslingual``:
      two stories on one subject share countries and institutions, weighed low, while
      two reports of one event share its people, amounts and dates;
    - the shared anchors weigh at least ``min_evidence`` (about two rare names): on
      short items one shared person (Netanyahu, Michelle Obama) gives a high overlap,
      and the same person is in many stories of a week.

    The cost is recall on texts with no names or numbers at all, which no anchor joins
    (see tests/test_dedup_eval.py); the reader can still `monitor stories merge` them."""
    cos = cosine(probe.embedding, c.embedding)
    same_language = probe.language == c.language and probe.language != "und"
    if cos < (t.min_cosine_same_language if same_language else t.min_cosine):
        return None
    score, shared = anchor_score(probe.anchors, c.anchors, rarity)
    if score < t.crosslingual or evidence(shared, rarity) < t.min_evidence:
        return None
    return Decision(c.story_id, "crosslingual", round(score, 4), c.item_id, shared,
                    round(cos, 4))


# --- an item's fingerprint -------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """What the ingest stores about an item for the stages (anchors and the embedding
    come later, from the sweep)."""

    event_at: datetime | None
    order_key: str
    signature: np.ndarray
    bands: tuple[int, ...]
    embeddable: bool


def event_time(published: datetime | None, fetched: datetime,
               polled: bool) -> datetime | None:
    """When the item's event happened, as far as we know: its published date; else its
    fetch time if a feed poll found it (it is news now); else unknown (None): a
    backfilled article without a date can be from any time."""
    if published is not None:
        return published
    return fetched if polled else None


def order_key(source_key: str, guid: str) -> str:
    return hashlib.blake2b(f"{source_key}\n{guid}".encode("utf-8", "surrogatepass"),
                           digest_size=16).hexdigest()


@dataclass(frozen=True)
class Document:
    """What an item's fingerprint is made of."""

    title: str
    text: str
    published: datetime | None
    fetched: datetime
    polled: bool
    source_key: str
    guid: str


def fingerprint(title: str, text: str, *, published: datetime | None, fetched: datetime,
                polled: bool, source_key: str, guid: str) -> Fingerprint:
    """Shingle signature and band keys of an item (empty for an item with neither title
    nor text: such an item can only ever be a story of its own)."""
    return fingerprints([Document(title, text, published, fetched, polled, source_key,
                                  guid)])[0]


def fingerprints(docs: Sequence[Document]) -> list[Fingerprint]:
    """:func:`fingerprint` of many items at once: the MinHash of a whole batch runs one
    permutation at a time over every document (:func:`signatures`), and the band keys in
    one pass, which costs a batch of a feed's items about half as much per item."""
    if not docs:
        return []
    sets = shingles_many([f"{d.title}\n{d.text}" for d in docs])
    sigs = signatures(sets)
    keys = band_keys_many(sigs)
    return [Fingerprint(event_time(d.published, d.fetched, d.polled),
                        order_key(d.source_key, d.guid),
                        sigs[i] if sets[i].size else EMPTY_SIGNATURE,
                        tuple(keys[i].tolist()) if sets[i].size else (),
                        bool(d.title.strip() or d.text.strip()))
            for i, d in enumerate(docs)]
