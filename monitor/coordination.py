"""What several workers sharing one PostgreSQL use to stay out of each other's way, and
what it costs them.

PostgreSQL is the coordinator; there is no protocol of our own:

    leases        rows claimed with SELECT ... FOR UPDATE SKIP LOCKED (store.claim_*),
                  renewed by the heartbeat, taken over by anyone after they lapse
    fencing       a result is written only while its lease is still held (store.hold_*)
    advisory      pg_advisory_xact_lock on keys of our own: migrations, config sync,
    locks         feed claims that keep hosts apart, the digest's sender, story buckets
                  (released at commit or rollback)
    retries       a transaction that lost a deadlock or a foreign-key race runs again

On SQLite (one writer process, see :mod:`monitor.workers`) the locks are no-ops.

:data:`STATS` counts, per process, what coordination cost: time waiting for locks, time
of attempts that were retried, work thrown away after a lost lease, and the time spent
claiming, renewing and releasing. The heartbeat stores it on the worker's row, where
`monitor status` and ``bench/scale.py`` read it.
"""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from monitor import logs

log = logs.get("monitor.coordination")
T = TypeVar("T")
# The first key of every advisory lock monitor takes, by purpose (the second is a hash).
SPACES = {"migrate": 0x6D01, "sync": 0x6D02, "digest": 0x6D03, "settle": 0x6D04,
          "claim": 0x6D05, "merge": 0x6D06, "identity": 0x6D07, "identity-space": 0x6D08,
          "bands": 0x6D09, "bands-space": 0x6D0A}
# Most keys a transaction locks one by one per phase of story decisions (about 120 and 50
# new items); a bigger batch locks the phase's whole space instead.
STORY_KEYS = {"identity": 600, "bands": 800}
# Deadlock, serialization failure, lock not available, and a row that a concurrent
# transaction deleted under a foreign key (a story merged away meanwhile).
RETRYABLE = frozenset({"40P01", "40001", "55P03", "23503"})
ATTEMPTS = 4


@dataclass
class Counters:
    """Coordination costs of one process, in seconds and events."""

    claims: int = 0
    claim_seconds: float = 0.0
    lock_waits: int = 0
    lock_wait_seconds: float = 0.0
    retries: int = 0
    retry_seconds: float = 0.0
    lost_leases: int = 0
    lost_seconds: float = 0.0

    def overhead_seconds(self) -> float:
        """Time that bought nothing but coordination."""
        return (self.claim_seconds + self.lock_wait_seconds + self.retry_seconds
                + self.lost_seconds)


class Stats:
    """Thread-safe :class:`Counters` for the whole process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters = Counters()

    def add(self, kind: str, seconds: float, events: int = 1) -> None:
        """Count ``events`` of ``kind`` (claim, lock_wait, retry, lost) taking ``seconds``."""
        plural = {"claim": "claims", "lock_wait": "lock_waits", "retry": "retries",
                  "lost": "lost_leases"}[kind]
        with self._lock:
            c = self._counters
            setattr(c, plural, getattr(c, plural) + events)
            setattr(c, f"{kind}_seconds", getattr(c, f"{kind}_seconds") + seconds)

    @contextmanager
    def timed(self, kind: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.add(kind, time.monotonic() - started)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            values = asdict(self._counters)
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}

    def reset(self) -> None:
        with self._lock:
            self._counters = Counters()


STATS = Stats()


# --- advisory locks ------------------------------------------------------------------

_SCHEMAS: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()


def is_postgres(bind: Session | Connection) -> bool:
    return bind.get_bind().dialect.name == "postgresql" if isinstance(bind, Session) else (
        bind.dialect.name == "postgresql")


def _schema(bind: Session | Connection) -> str:
    """The current schema, so that databases sharing a server (tests) never share keys."""
    engine = bind.get_bind() if isinstance(bind, Session) else bind.engine
    assert isinstance(engine, Engine)
    if engine not in _SCHEMAS:
        _SCHEMAS[engine] = str(bind.execute(text("SELECT current_schema()")).scalar() or "")
    return _SCHEMAS[engine]


def lock_keys(bind: Session | Connection, values: Iterable[str | int]) -> list[int]:
    """Sorted, distinct signed 32-bit keys for ``values`` (sorted, so that two
    transactions locking overlapping sets always take them in the same order)."""
    schema = _schema(bind)
    keys = {int.from_bytes(hashlib.blake2b(f"{schema}\n{v}".encode(), digest_size=4).digest(),
                           "big", signed=True) for v in values}
    return sorted(keys)


def xact_lock(session: Session, purpose: str, values: Iterable[str | int] = ("",)) -> None:
    """Hold advisory locks on ``values`` until the session's transaction ends, waiting
    for them (the wait is counted as a lock wait). No-op on SQLite."""
    if not is_postgres(session):
        return
    keys = lock_keys(session, values)
    if not keys:
        return
    with STATS.timed("lock_wait"):
        session.execute(text("SELECT pg_advisory_xact_lock(:space, k) "
                             "FROM unnest(CAST(:keys AS integer[])) AS k"),
                        {"space": SPACES[purpose], "keys": keys})


def story_lock(session: Session, phase: str, keys: Iterable[str | int]) -> None:
    """Serialize story decisions that could concern the same story (see
    :func:`monitor.pipeline.ingest`): hold, until the transaction ends, an exclusive lock
    on each of ``keys`` in the ``phase``'s space ("identity" or "bands") and a shared lock
    on that whole space. More than ``STORY_KEYS[phase]`` keys take the whole space
    exclusively instead, so that no transaction needs more than about that many locks
    (PostgreSQL's lock table is shared and bounded). No-op on SQLite."""
    if not is_postgres(session):
        return
    wanted = set(keys)
    (everything,) = lock_keys(session, ["*"])
    params = {"space": SPACES[f"{phase}-space"], "key": everything}
    with STATS.timed("lock_wait"):
        if len(wanted) > STORY_KEYS[phase]:
            session.execute(text("SELECT pg_advisory_xact_lock(:space, :key)"), params)
        else:  # one round trip: the shared lock on the space first (the CTE), then the keys
            session.execute(_SHARED_THEN_KEYS, params | {"keys": lock_keys(session, wanted),
                                                         "fine": SPACES[phase]})


_SHARED_THEN_KEYS = text(
    "WITH space AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared(:space, :key)) "
    "SELECT count(pg_advisory_xact_lock(:fine, k)) "
    "FROM space, unnest(CAST(:keys AS integer[])) AS k")


def try_xact_lock(session: Session, purpose: str, value: str | int) -> bool:
    """Take the advisory lock on ``value`` until the transaction ends, if nobody holds
    it; False when another transaction does. Always True on SQLite."""
    if not is_postgres(session):
        return True
    (key,) = lock_keys(session, [value])
    return bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:space, :key)"),
                                {"space": SPACES[purpose], "key": key}).scalar())


@contextmanager
def exclusive(sessions: sessionmaker[Session], purpose: str) -> Iterator[None]:
    """Hold the advisory lock of ``purpose`` for the block, in a transaction of its own
    that stays open (doing nothing else) until the block ends. No-op on SQLite."""
    with sessions() as session, session.begin():
        xact_lock(session, purpose)
        yield


@contextmanager
def session_lock(connection: Connection, purpose: str, value: str = "") -> Iterator[None]:
    """A session-level advisory lock held on ``connection`` for the block (migrations,
    which run in transactions of their own). No-op on SQLite."""
    if not is_postgres(connection):
        yield
        return
    (key,) = lock_keys(connection, [value])
    params = {"space": SPACES[purpose], "key": key}
    with STATS.timed("lock_wait"):
        connection.execute(text("SELECT pg_advisory_lock(:space, :key)"), params)
    try:
        yield
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:space, :key)"), params)
        connection.commit()


# --- retries -------------------------------------------------------------------------


def retryable(exc: BaseException) -> bool:
    """Whether ``exc`` is a transaction that lost a race and may simply run again."""
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    return getattr(orig, "sqlstate", None) in RETRYABLE


def retrying(work: Callable[[], T], what: str, attempts: int = ATTEMPTS) -> T:
    """Run ``work`` (one whole transaction) again when it loses a race (:func:`retryable`),
    up to ``attempts`` times; the time of failed attempts is counted as retries."""
    for attempt in range(1, attempts + 1):
        started = time.monotonic()
        try:
            return work()
        except DBAPIError as exc:
            if attempt == attempts or not retryable(exc):
                raise
            STATS.add("retry", time.monotonic() - started)
            log.info("transaction.retried", what=what, attempt=attempt,
                     sqlstate=getattr(exc.orig, "sqlstate", None))
    raise AssertionError("unreachable")
