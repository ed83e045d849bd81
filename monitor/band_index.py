"""A process's copy of the LSH band index (``minhash_bands``), for SQLite files.

The band table is the index the processes share (a database table, so a worker on
PostgreSQL sees what the others wrote). Asking it costs one SQL statement per lookup,
about 0.1 ms however few the keys, which is most of a fresh item's near-duplicate check.
On SQLite this module keeps, per engine, the band keys and item ids in two sorted numpy
arrays (16 bytes a row, 16 rows an item: 256 bytes an item in memory), and answers a
lookup with a binary search: a fresh item's check touches the database not at all, a
near duplicate's reads only its candidates' signatures.

Keeping in step with other writers is exact on SQLite, because write transactions there
take turns: an item committed later has a larger id (a new rowid is one more than the
largest), so rows above the largest id already read are the only news. The copy reads
the file through a read-only connection of its own, which sees committed rows only and
whose ``PRAGMA data_version`` changes when any other connection commits: an unchanged
version costs one pragma, a changed one one indexed range query.

What the copy does not see, the callers handle:
- rows the caller's own transaction wrote and has not committed (a second ingest in one
  transaction): :func:`lookup` answers None and the caller asks the table;
- band rows added for old items (``stories.ensure_fingerprints`` after an upgrade): in
  this process they mark the copy stale and it is read again; by another process, they
  are missed until this one restarts (the settle and the sweeps ask the table).
Rows of items since deleted stay in the copy; callers confirm candidates in the database.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.request import pathname2url

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from monitor import db

FETCH = 65_536
# News since the copy was built wait in a dict (~100 bytes a row); past this many rows
# (or a sixteenth of the copy) they are merged into the sorted arrays, a pass over them.
MERGE_AT = 50_000
_WROTE = "monitor.band_index.wrote"


@dataclass(eq=False)
class BandIndex:
    """The band rows of one SQLite file, as sorted arrays and a dict of news."""

    path: str
    keys: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    news: dict[int, int | list[int]] = field(default_factory=dict)  # an id, or ids
    news_rows: int = 0
    watermark: int = -1  # the largest item id read; -1: nothing read yet
    version: int | None = None
    stale: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)
    _connection: sqlite3.Connection | None = None

    def lookup(self, keys: Iterable[int]) -> dict[int, list[int]]:
        """The item ids with each of ``keys``, as committed now."""
        with self.lock:
            self._sync()
            return self._find(sorted(set(keys)))

    def forget(self) -> None:
        """Read everything again at the next lookup."""
        with self.lock:
            self.stale = True

    @property
    def rows(self) -> int:
        return len(self.keys) + self.news_rows

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.ids.nbytes

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _find(self, wanted: Sequence[int]) -> dict[int, list[int]]:
        found: dict[int, list[int]] = {}
        if not wanted:
            return found
        keys, size = self.keys, len(self.keys)
        if size:
            probe = np.asarray(wanted, dtype=np.int64)
            lows = np.searchsorted(keys, probe, "left")
            hit = keys[np.minimum(lows, size - 1)] == probe
            for key, low in zip(probe[hit].tolist(), lows[hit].tolist(), strict=True):
                high = low + 1
                while high < size and keys[high] == key:  # a key several items share
                    high += 1
                found[key] = self.ids[low:high].tolist()
        for key in wanted:
            if (extra := self.news.get(key)) is not None:
                found.setdefault(key, []).extend(_listed(extra))
        return found

    def _sync(self) -> None:
        con = self._connect()
        version = con.execute("PRAGMA data_version").fetchone()[0]
        if self.stale:
            self._load(con)
        elif version != self.version:
            self._read_news(con)
        self.version = version

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = sqlite3.connect(f"file:{pathname2url(self.path)}?mode=ro",
                                               uri=True, check_same_thread=False)
        return self._connection

    def _load(self, con: sqlite3.Connection) -> None:
        """Every row, in the table's own order (its primary key: band key, item id)."""
        parts = []
        cursor = con.execute("SELECT band_key, item_id FROM minhash_bands "
                             "ORDER BY band_key, item_id")
        while rows := cursor.fetchmany(FETCH):
            parts.append(np.array(rows, dtype=np.int64))
        table = np.concatenate(parts) if parts else np.empty((0, 2), dtype=np.int64)
        self.keys, self.ids = table[:, 0].copy(), table[:, 1].copy()
        self.news, self.news_rows, self.stale = {}, 0, False
        self.watermark = int(self.ids.max()) if len(self.ids) else -1

    def _read_news(self, con: sqlite3.Connection) -> None:
        rows = con.execute("SELECT band_key, item_id FROM minhash_bands WHERE item_id > ? "
                           "ORDER BY item_id", (self.watermark,)).fetchall()
        if not rows:
            return
        fresh = dict(rows)  # a key to one item id, built in C: almost every key is new
        if len(fresh) == len(rows) and fresh.keys().isdisjoint(self.news):
            self.news.update(fresh)
        else:  # keys shared with other news: lists of ids
            for key, item_id in rows:
                known = self.news.get(key)
                self.news[key] = item_id if known is None else [*_listed(known), item_id]
        self.watermark = rows[-1][1]
        self.news_rows += len(rows)
        if self.news_rows > max(MERGE_AT, len(self.keys) // 16):
            self._merge()

    def _merge(self) -> None:
        single = {k: v for k, v in self.news.items() if isinstance(v, int)}
        several = [(k, i) for k, v in self.news.items() if not isinstance(v, int) for i in v]
        keys = np.fromiter(single, dtype=np.int64, count=len(single))
        ids = np.fromiter(single.values(), dtype=np.int64, count=len(single))
        if several:
            keys = np.concatenate((keys, np.array([k for k, _ in several], dtype=np.int64)))
            ids = np.concatenate((ids, np.array([i for _, i in several], dtype=np.int64)))
        order = np.lexsort((ids, keys))
        at = np.searchsorted(self.keys, keys[order], "right")
        self.keys = np.insert(self.keys, at, keys[order])
        self.ids = np.insert(self.ids, at, ids[order])
        self.news, self.news_rows = {}, 0


def _listed(ids: int | list[int]) -> list[int]:
    return [ids] if isinstance(ids, int) else ids


_indexes: weakref.WeakKeyDictionary[Engine, BandIndex] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def of(session: Session) -> BandIndex | None:
    """The copy for the session's database: None unless it is a SQLite file, and None
    while the session's transaction holds band rows of its own not yet committed."""
    wrote_in = session.info.get(_WROTE)
    if wrote_in is not None and wrote_in is session.get_transaction():
        return None
    engine = _engine(session)
    with _registry_lock:
        index = _indexes.get(engine)
        if index is None:
            path = db.sqlite_path(engine.url)
            if path is None:
                return None
            index = _indexes[engine] = BandIndex(str(path.resolve()))
            weakref.finalize(engine, index.close)
    return index


def wrote(session: Session, item_ids: Iterable[int]) -> None:
    """Note band rows written in the session's transaction: until it ends, lookups go to
    the table; rows for items older than the copy's newest make the copy read again."""
    session.info[_WROTE] = session.get_transaction()
    index = _indexes.get(_engine(session))
    if index is not None and index.watermark >= 0 and any(i <= index.watermark
                                                           for i in item_ids):
        index.forget()


def _engine(session: Session) -> Engine:
    bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine
