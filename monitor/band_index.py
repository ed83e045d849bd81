"""A process's copy of the LSH band index (``minhash_bands``), for SQLite files.

The band table is the index the processes share (a database table, so a worker on
PostgreSQL sees what the others wrote). Asking it costs one SQL statement per lookup,
about 0.1 ms however few the keys, which is most of a fresh item's near-duplicate check.
On SQLite this module keeps, per engine, the band keys and item ids in two sorted numpy
arrays (16 bytes a row, 16 rows an item: 256 bytes an item in memory) and a directory of
where each range of keys starts (:class:`Directory`, at most 16 bytes an item). A lookup
is then a few numpy operations and no SQL: a fresh item's check touches the database
only for one pragma, a near duplicate's also reads its candidates' signatures, through
the copy's own connection (:meth:`BandIndex.read`).

Keeping in step with other writers is exact on SQLite, because write transactions there
take turns: an item committed later has a larger id (a new rowid is one more than the
largest), so rows above the largest id already read are the only news. The copy reads
the file through a read-only connection of its own, which sees committed rows only and
whose ``PRAGMA data_version`` changes when any other connection commits: an unchanged
version costs one pragma, a changed one one indexed range query.

What the copy does not see, the callers handle:
- rows the caller's own transaction wrote and has not committed (backfill ingests many
  sources in one transaction): :func:`wrote` notes them in the session and :func:`own`
  gives them back, for the caller to add to what the copy answers;
- band rows added for old items (``stories.ensure_fingerprints`` after an upgrade): in
  this process they mark the copy stale and it is read again; by another process, they
  are missed until this one restarts (the settle and the sweeps ask the table);
- what the caller's transaction changed and has not committed, in what :meth:`read`
  reads (an item it unlinked from its story still looks placed there).
Rows of items since deleted stay in the copy; callers confirm candidates in the database.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any
from urllib.request import pathname2url

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from monitor import db, store

FETCH = 65_536
# News since the copy was built wait in a dict (~100 bytes a row); past this many rows
# (or a sixteenth of the copy) they are merged into the sorted arrays, a pass over them.
MERGE_AT = 50_000
# The directory has a bucket for every 4 to 8 rows; a lookup compares each key with the
# rows of a window as wide as the fullest bucket, unless one is fuller than this (a key
# that very many items share): keys in such buckets are found by binary search.
BUCKET_ROWS = 8
MAX_WINDOW = 64
_WROTE = "monitor.band_index.wrote"
_COPY = "monitor.band_index.copy"


@dataclass(frozen=True, eq=False)
class Directory:
    """Where the rows of each key are in the sorted keys, found with one array lookup.

    A binary search over the keys of a million items costs some 20 us, most of it in
    cache misses (16 keys, each some 12 dependent reads in a 128 MB array). Band keys are
    64-bit hashes, spread evenly, so their top bits say where they sort: ``starts[key >>
    shift]`` (a negative bucket counts from the end, as numpy indexes) is the first row
    of a window of ``windows`` (a view of the keys, ``width`` rows from each) that holds
    every row of the key's bucket, hence every row with the key. A lookup reads 16 such
    windows side by side and compares. A bucket fuller than the window starts past the
    last window: reading it raises IndexError, and the lookup searches instead."""

    starts: np.ndarray
    shift: np.ndarray  # 0-d: numpy shifts by an array faster than by a Python int
    windows: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.starts.nbytes  # the windows are a view


def directory(keys: np.ndarray) -> Directory:
    """The directory of sorted ``keys`` (see :class:`Directory`)."""
    bits = max(1, (len(keys) // BUCKET_ROWS).bit_length())
    shift, half = 64 - bits, 1 << (bits - 1)
    counts = np.bincount((keys >> shift) + half, minlength=2 * half)  # buckets in key order
    width = min(int(counts.max()), MAX_WINDOW)
    windows = sliding_window_view(keys, width)
    starts = np.minimum(np.cumsum(counts) - counts, len(windows) - 1)  # no window past the end
    starts[counts > width] = len(windows)
    dtype = np.int32 if len(keys) < 2**31 else np.int64
    return Directory(np.roll(starts, half).astype(dtype), np.array(shift), windows)


@dataclass(eq=False)
class BandIndex:
    """The band rows of one SQLite file, as sorted arrays and a dict of news."""

    path: str
    keys: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    directory: Directory = field(default_factory=lambda: directory(np.empty(0, np.int64)))
    news: dict[int, int | list[int]] = field(default_factory=dict)  # an id, or ids
    news_rows: int = 0
    watermark: int = -1  # the largest item id read; -1: nothing read yet
    version: int | None = None
    stale: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)
    _connection: sqlite3.Connection | None = None
    _version: sqlite3.Cursor | None = None

    def lookup(self, keys: Sequence[int]) -> dict[int, list[int]]:
        """The item ids with each of ``keys`` that has any, as committed now."""
        with self.lock:
            self._sync()
            found = self._by_key(keys, self._rows(keys))
            for key in self._news_of(keys):
                found.setdefault(key, []).extend(listed(self.news[key]))
            return found

    def candidates(self, keys: Sequence[int]) -> set[int]:
        """The ids of the items with any of ``keys``, as committed now: an LSH query's
        answer, the candidates (:meth:`lookup` also says which key found which)."""
        with self.lock:
            self._sync()
            hits = self._rows(keys)
            found = set() if hits is None else set(self.ids[hits[1]].tolist())
            for key in self._news_of(keys):
                found.update(listed(self.news[key]))
            return found

    def read(self, sql: Callable[[str, int], str], values: Sequence[Any]) -> list[Any]:
        """Rows of ``sql(mark, count)`` for ``values`` (in chunks), through the copy's own
        connection: committed rows, as of now, and no round trip through the caller's
        session (the caller confirms in its session what it goes on with)."""
        rows: list[Any] = []
        with self.lock:
            con = self._connect()
            for chunk in store.chunks(values):
                rows += con.execute(sql("?", len(chunk)), tuple(chunk)).fetchall()
        return rows

    def forget(self) -> None:
        """Read everything again at the next lookup."""
        with self.lock:
            self.stale = True

    @property
    def rows(self) -> int:
        return len(self.keys) + self.news_rows

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.ids.nbytes + self.directory.nbytes

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = self._version = None

    def _rows(self, keys: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | None:
        """Where the sorted arrays have ``keys``: for each such row, the place in ``keys``
        of its key, and the row; None for none. A handful of numpy operations and no
        Python loop (see :class:`Directory`)."""
        if len(keys) == 0:
            return None
        probe = np.array(keys, dtype=np.int64)
        index = self.directory
        starts = index.starts[probe >> index.shift]
        try:
            equal = index.windows[starts] == probe[:, None]
        except IndexError:  # a key in a bucket fuller than the window
            return self._search(probe)
        if not np.count_nonzero(equal):
            return None
        places, columns = equal.nonzero()
        return places, starts[places] + columns

    def _search(self, probe: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`_rows` by binary search: any key, however many items share it."""
        lows = np.searchsorted(self.keys, probe, "left")
        counts = np.searchsorted(self.keys, probe, "right") - lows
        total = int(counts.sum())
        if not total:
            return None
        firsts = np.cumsum(counts) - counts  # where each key's rows begin in the answer
        return (np.repeat(np.arange(len(probe)), counts),
                np.arange(total) + np.repeat(lows - firsts, counts))

    def _by_key(self, keys: Sequence[int],
                hits: tuple[np.ndarray, np.ndarray] | None) -> dict[int, list[int]]:
        """The ids of the rows :meth:`_rows` found, by key, in the arrays' order. A key
        that ``keys`` repeats has the same rows each time: the last answer stands."""
        if hits is None:
            return {}
        places, ids = hits[0].tolist(), self.ids[hits[1]].tolist()
        if len(set(places)) == len(places):  # most often: each key in one item
            return {keys[at]: [item_id] for at, item_id in zip(places, ids, strict=True)}
        by_place: dict[int, list[int]] = {}
        for at, item_id in zip(places, ids, strict=True):
            by_place.setdefault(at, []).append(item_id)
        return {keys[at]: found for at, found in by_place.items()}

    def _news_of(self, keys: Sequence[int]) -> AbstractSet[int]:
        """Those of ``keys`` that the news have (most often none, seen at a glance)."""
        if not self.news or self.news.keys().isdisjoint(keys):
            return frozenset()
        return self.news.keys() & set(keys)

    def _sync(self) -> None:
        con = self._connect()
        assert self._version is not None  # made with the connection
        version = self._version.execute("PRAGMA data_version").fetchone()[0]
        if self.stale:
            self._load(con)
        elif version != self.version:
            self._read_news(con)
        self.version = version

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = sqlite3.connect(f"file:{pathname2url(self.path)}?mode=ro",
                                               uri=True, check_same_thread=False)
            self._version = self._connection.cursor()  # asked at every lookup
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
        self.directory = directory(self.keys)
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
                self.news[key] = item_id if known is None else [*listed(known), item_id]
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
        self.directory = directory(self.keys)
        self.news, self.news_rows = {}, 0


def listed(ids: int | list[int]) -> list[int]:
    """An id, or ids, as a list."""
    return [ids] if isinstance(ids, int) else ids


_indexes: weakref.WeakKeyDictionary[Engine, BandIndex] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def of(session: Session) -> BandIndex | None:
    """The copy for the session's database: None unless it is a SQLite file. It answers
    what is committed; the rows of the session's own transaction are :func:`own`."""
    index = session.info.get(_COPY)  # a session keeps its engine: asked once per session
    if index is not None:
        return index
    engine = _engine(session)
    with _registry_lock:
        index = _indexes.get(engine)
        if index is None:
            path = db.sqlite_path(engine.url)
            if path is None:
                return None
            index = _indexes[engine] = BandIndex(str(path.resolve()))
            weakref.finalize(engine, index.close)
    session.info[_COPY] = index
    return index


def wrote(session: Session, bands: Mapping[int, Iterable[int]]) -> None:
    """Note band rows written in the session's transaction (band keys by item id): until
    it ends, :func:`own` gives them; rows for items older than the copy's newest make the
    copy read again."""
    transaction = session.get_transaction()
    noted = session.info.get(_WROTE)
    if noted is None or noted[0] is not transaction:
        noted = session.info[_WROTE] = (transaction, {})
    rows = noted[1]
    for item_id, keys in bands.items():
        if rows.keys().isdisjoint(keys):  # almost always: keys are 64-bit hashes
            rows.update(dict.fromkeys(keys, item_id))
            continue
        for key in set(keys):
            known = rows.get(key)
            rows[key] = item_id if known is None else [*listed(known), item_id]
    index = _indexes.get(_engine(session))
    if index is not None and index.watermark >= 0 and any(i <= index.watermark
                                                           for i in bands):
        index.forget()


def own(session: Session) -> dict[int, int | list[int]]:
    """The band rows the session's open transaction wrote, by band key an item id or ids
    (:func:`listed`): what the copy cannot see until they are committed."""
    noted = session.info.get(_WROTE)
    if noted is None or noted[0] is not session.get_transaction():
        return {}
    return noted[1]


def _engine(session: Session) -> Engine:
    bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine
