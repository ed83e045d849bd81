"""The process's copy of the band index (SQLite): the same answers as the table, in step
with other connections' commits, and out of the way where it cannot be."""

from __future__ import annotations

import random
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from monitor import band_index, db, dedup, stories
from monitor.dedup import Thresholds
from monitor.language import make_detector
from monitor.models import ItemRow, MinhashBandRow, StoryItemRow
from monitor.pipeline import Pipeline, SourceContext, ingest
from monitor.types import Article

NOW = datetime(2025, 8, 20, 12, tzinfo=UTC)
WORDS = ["minister", "ankara", "drone", "export", "talks", "cooperation", "defence",
         "industry", "tokyo", "treaty", "budget", "parliament", "coalition", "vote",
         "shipyard", "frigate", "contract", "delivery", "agency", "officials", "said",
         "tuesday", "wednesday", "billion", "yen", "agreement", "signed", "visit"]


def _text(rng: random.Random, words: int = 80) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randrange(400)) for _ in range(words)) + "."


def _article(title: str, text: str, guid: str) -> Article:
    return Article(title=title, text=text, guid=guid, published=NOW)


def _pipeline(memory: bool = True) -> Pipeline:
    return Pipeline(topics=(), detector=make_detector("py3langid"),
                    dedup=Thresholds(memory_index=memory), embed=False)


def _ingest(sessions, articles: list[Article], source: str, memory: bool = True) -> list[int]:
    with db.transaction(sessions) as session:
        report = ingest(session, articles, SourceContext(source, outlet=source),
                        _pipeline(memory), NOW)
    return list(report.item_ids)


@pytest.fixture
def sessions(tmp_path: Path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    db.ensure_schema(engine)
    yield db.session_factory(engine)
    engine.dispose()


def _near(sessions, keys: list[int], memory: bool):
    with sessions() as session:
        found, signatures = stories.Placed(session, memory=memory).near(keys)
    return found, {i: s.tolist() for i, s in signatures.items()}


def _all_keys(sessions) -> list[int]:
    with sessions() as session:
        return list(session.scalars(select(MinhashBandRow.band_key)))


def test_the_copy_answers_as_the_table(sessions) -> None:
    """Every stored key, and keys nobody has, give the same items and signatures."""
    rng = random.Random(7)
    for source in range(4):
        _ingest(sessions, [_article(f"t{source}-{i}", _text(rng), f"g{i}") for i in range(25)],
                f"s{source}")
    keys = _all_keys(sessions) + [rng.randrange(-2**63, 2**63) for _ in range(50)]
    assert len(keys) > 1000
    assert _near(sessions, keys, memory=True) == _near(sessions, keys, memory=False)
    with sessions() as session:
        index = band_index.of(session)
    assert index is not None and index.rows == len(_all_keys(sessions))


def test_commits_of_another_engine_are_seen(sessions, tmp_path: Path) -> None:
    """Another writer (an engine of its own, as another process has) commits a story;
    a near copy ingested here afterwards joins it through the copy, without a reload."""
    rng = random.Random(3)
    _ingest(sessions, [_article("warm", _text(rng), "w")], "warm")
    assert _near(sessions, [1], memory=True)[0] == {}  # the copy is loaded now
    other = db.make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    body = _text(rng, 120)
    (first,) = _ingest(db.session_factory(other), [_article("wire", body, "a")], "other")
    other.dispose()
    (copy,) = _ingest(sessions, [_article("wire copy", body + " Update.", "b")], "here")
    with sessions() as session:
        links = dict(session.execute(select(StoryItemRow.item_id, StoryItemRow.reason)).all())
        index = band_index.of(session)
        assert index is not None and index.news_rows > 0 and not index.stale
    assert links[copy] == "near" and first != copy


def test_a_transaction_adds_its_own_band_rows_to_the_copy(sessions) -> None:
    """Two ingests in one transaction: the second's near duplicate of the first (not yet
    committed, so not in the copy) is still found, and so is a committed one; the rows
    the transaction wrote are its own, and a new transaction has none."""
    rng = random.Random(5)
    committed = _text(rng, 120)
    _ingest(sessions, [_article("warm", committed, "w")], "warm")
    body = _text(rng, 120)
    pipeline = _pipeline()
    with db.transaction(sessions) as session:
        first = ingest(session, [_article("wire", body, "a")],
                       SourceContext("one", outlet="one"), pipeline, NOW)
        assert band_index.of(session) is not None
        written = band_index.own(session)
        assert len(written) == 16 and all(band_index.listed(v) == list(first.item_ids)
                                          for v in written.values())
        report = ingest(session, [_article("wire copy", body + " More.", "b"),
                                  _article("warm copy", committed + " More.", "c")],
                        SourceContext("two", outlet="two"), pipeline, NOW)
    with sessions() as session:
        reasons = [session.scalar(select(StoryItemRow.reason)
                                  .where(StoryItemRow.item_id == i)) for i in report.item_ids]
        assert band_index.own(session) == {}  # a new transaction: nothing of its own
    assert reasons == ["near", "near"]


def test_band_rows_for_old_items_make_the_copy_read_again(sessions) -> None:
    """Fingerprints recorded later for items older than the copy's newest (as
    ``ensure_fingerprints`` does after an upgrade) are found after the commit."""
    rng = random.Random(9)
    ids = _ingest(sessions, [_article(f"t{i}", _text(rng), f"g{i}") for i in range(3)], "s")
    with db.transaction(sessions) as session:
        session.execute(MinhashBandRow.__table__.delete()
                        .where(MinhashBandRow.item_id == ids[0]))
    keys = list(dedup.band_keys(dedup.signature(dedup.shingles(_text(random.Random(1))))))
    assert _near(sessions, keys, memory=True)[0] == {}  # loaded, without item ids[0]'s rows
    with db.transaction(sessions) as session:
        fingerprint = stories.fingerprint_item(session.get(ItemRow, ids[0]))
        stories.record(session, {ids[0]: fingerprint}, embed=False)
    own = list(fingerprint.bands)
    found, _ = _near(sessions, own, memory=True)
    assert found == _near(sessions, own, memory=False)[0]
    assert {i for v in found.values() for i in v} == {ids[0]}


def test_news_merge_into_the_sorted_arrays(sessions, monkeypatch) -> None:
    """Past MERGE_AT rows of news, they join the sorted arrays, which stay sorted and
    give the table's answers."""
    monkeypatch.setattr(band_index, "MERGE_AT", 40)
    rng = random.Random(11)
    _ingest(sessions, [_article("warm", _text(rng), "w")], "warm")
    _near(sessions, [0], memory=True)
    for round_ in range(5):
        _ingest(sessions, [_article(f"r{round_}-{i}", _text(rng), f"g{i}") for i in range(3)],
                f"s{round_}")
        keys = _all_keys(sessions)
        assert _near(sessions, keys, memory=True) == _near(sessions, keys, memory=False)
    with sessions() as session:
        index = band_index.of(session)
    assert index is not None and index.news_rows < 48 and len(index.keys) > 16
    assert bool(np.all(np.diff(index.keys) >= 0))


def test_no_copy_for_postgresql_or_memory(tmp_path: Path) -> None:
    """Only a SQLite file has a copy: an in-memory SQLite database has none."""
    engine = db.make_engine("sqlite://")
    db.ensure_schema(engine)
    with db.session_factory(engine)() as session:
        assert band_index.of(session) is None
    engine.dispose()


def test_ingest_gives_the_same_stories_with_and_without_the_copy(tmp_path: Path) -> None:
    """Near copies spread over many sources: the same links either way."""
    rng = random.Random(13)
    bodies = [_text(rng, 100) for _ in range(8)]
    batches = [[_article(f"{s}-{i}", rng.choice(bodies) + f" Note {s}{i}.", f"g{i}")
                for i in range(4)] for s in range(6)]
    links = []
    for memory in (True, False):
        engine = db.make_engine(f"sqlite:///{tmp_path / f'{memory}.db'}")
        db.ensure_schema(engine)
        sessions = db.session_factory(engine)
        for s, batch in enumerate(batches):
            _ingest(sessions, batch, f"s{s}", memory=memory)
        with sessions() as session:
            links.append(sorted(session.execute(
                select(StoryItemRow.item_id, StoryItemRow.story_id, StoryItemRow.reason)).all()))
        engine.dispose()
    assert links[0] == links[1]
    assert sum(1 for _, _, reason in links[0] if reason == "near") >= 10


def _band_file(path: Path, rows: list[tuple[int, int]]) -> None:
    """A SQLite file with a band table only, holding ``rows`` (band key, item id)."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE IF NOT EXISTS minhash_bands (band_key INTEGER, item_id INTEGER, "
                "PRIMARY KEY (band_key, item_id)) WITHOUT ROWID")
    con.executemany("INSERT INTO minhash_bands VALUES (?, ?)", rows)
    con.commit()
    con.close()


def _shared_rows(rng: np.random.Generator, first: int, items: int) -> list[tuple[int, int]]:
    """16 keys an item: most its own, some shared by a few items, one by very many."""
    hot = [int(k) for k in rng.integers(-2**63, 2**63 - 1, 20)]
    rows = set()
    for item in range(first, first + items):
        own = rng.integers(-2**63, 2**63 - 1, 14).tolist()
        shared = [hot[0], hot[int(rng.integers(1, len(hot)))]] if item % 3 == 0 else \
            rng.integers(-2**63, 2**63 - 1, 2).tolist()
        rows.update((int(k), item) for k in own + shared)
    return sorted(rows)


def _answers(rows: list[tuple[int, int]], keys: list[int]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for key, item in sorted(rows):
        if key in keys:
            found.setdefault(key, []).append(item)
    return found


@pytest.mark.parametrize("window", [64, 2])
def test_lookup_and_candidates_answer_as_the_rows_do(tmp_path: Path, monkeypatch,
                                                     window: int) -> None:
    """Keys one item has, keys a few share, a key a third of the items share, keys nobody
    has, repeated keys: the directory's windows (and, past a full window, the binary
    search) give every item with each key, in id order; then news, not yet merged."""
    monkeypatch.setattr(band_index, "MAX_WINDOW", window)
    rng = np.random.default_rng(window)
    path = tmp_path / "bands.db"
    rows = _shared_rows(rng, 1, 600)
    _band_file(path, rows)
    index = band_index.BandIndex(str(path))
    stored = sorted({k for k, _ in rows})
    try:
        for _ in range(200):
            keys = [stored[int(i)] for i in rng.integers(0, len(stored), 8)]
            keys += rng.integers(-2**63, 2**63 - 1, 6).tolist() + keys[:2]  # misses, repeats
            expected = _answers(rows, keys)
            assert index.lookup(keys) == expected
            assert index.candidates(keys) == {i for ids in expected.values() for i in ids}
        assert index.lookup([]) == {} and index.candidates([]) == set()
        assert index.lookup(stored) == _answers(rows, stored)
        news = _shared_rows(rng, 601, 30) + [(stored[0], 700)]  # and an old key's new item
        _band_file(path, news)
        keys = stored[:50] + sorted({k for k, _ in news})
        assert index.lookup(keys) == _answers(rows + news, keys)
        assert index.candidates(keys) == {i for key, i in rows + news if key in set(keys)}
        assert index.news_rows == len(news) and len(index.keys) == len(rows)  # not merged
    finally:
        index.close()


def test_the_directory_holds_every_key_in_its_window() -> None:
    """Every stored key is in the window its top bits point at (or its bucket is marked
    full), however the keys are spread; no window runs past the keys."""
    rng = np.random.default_rng(3)
    for keys in (np.sort(rng.integers(-2**63, 2**63 - 1, 5000)),
                 np.sort(np.repeat(rng.integers(-2**63, 2**63 - 1, 50), 7)),
                 np.array([-2**63, -1, 0, 2**63 - 1], dtype=np.int64),
                 np.sort(np.concatenate([rng.integers(0, 1000, 300),
                                         rng.integers(-2**63, 2**63 - 1, 300)]))):
        index = band_index.directory(keys)
        starts = index.starts[keys >> index.shift]
        full = starts == len(index.windows)
        assert bool(np.all((index.windows[starts[~full]] == keys[~full, None]).any(axis=1)))
        assert index.windows.shape[1] <= band_index.MAX_WINDOW
        assert bool(np.all(index.starts <= len(index.windows)))


def test_candidates_and_signatures_through_the_copy_equal_the_table(sessions) -> None:
    """Near copies across sources share band keys: the candidate query gives the items
    the table gives, and the copy's own connection reads the signatures the session
    reads, for placed items only (not hidden ones, not unplaced ones, not unknown ids)."""
    rng = random.Random(17)
    bodies = [_text(rng, 100) for _ in range(4)]
    for source in range(5):
        _ingest(sessions, [_article(f"{source}-{i}", body + f" Note {source}{i}.", f"g{i}")
                           for i, body in enumerate(bodies)], f"s{source}")
    keys = _all_keys(sessions) + [rng.randrange(-2**63, 2**63) for _ in range(20)]
    with db.transaction(sessions) as session:
        unplaced = session.scalars(select(StoryItemRow.item_id)).first()
        session.execute(StoryItemRow.__table__.delete().where(StoryItemRow.item_id == unplaced))
    with sessions() as session:
        index = band_index.of(session)
        assert index is not None
        table, _ = stories.Placed(session).near(keys)
        assert any(len(ids) > 2 for ids in table.values())  # keys several items share
        found = index.candidates(keys)
        assert found - {unplaced} == set().union(*table.values())
        ids = set(session.scalars(select(ItemRow.id))) | {10**9}
        hidden = min(ids - {unplaced})
        placed = stories.Placed(session, frozenset({hidden}))
        mine = placed._signatures(ids, index)
        theirs = placed._signatures(ids)
        assert {i: s.tolist() for i, s in mine.items()} == {i: s.tolist()
                                                            for i, s in theirs.items()}
        assert hidden not in mine and unplaced not in mine and 10**9 not in mine
        assert len(mine) == len(ids) - 3


def test_own_rows_keep_every_item_of_a_shared_key(sessions) -> None:
    """Rows a transaction wrote are given back by key, however many of its items share
    one, and only inside that transaction."""
    with sessions() as session, session.begin():
        band_index.wrote(session, {1: (10, 11, 11), 2: (20, 21)})
        band_index.wrote(session, {3: (11, 30)})
        written = {k: band_index.listed(v) for k, v in band_index.own(session).items()}
        assert written == {10: [1], 11: [1, 3], 20: [2], 21: [2], 30: [3]}
    with sessions() as session, session.begin():
        assert band_index.own(session) == {}
