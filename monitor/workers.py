"""The workers sharing one database: who runs (a heartbeat row per `monitor run`), what
each holds, and the rule that a SQLite file has one daemon.

A worker's id is ``host:pid:random``. Every quarter of a lease (``workers.claim_seconds``)
its heartbeat thread renews, by key, every lease the process holds (feeds being polled,
items being translated or embedded) and writes the worker's row: role, last seen, claims
held, coordination counters (:data:`monitor.coordination.STATS`). A worker that dies stops
renewing: its leases lapse within ``workers.claim_seconds`` and any other worker takes the
work over; the row shows it as lost until it is pruned a day later.

SQLite has one writer, so one daemon: ``monitor run`` holds an exclusive lock on
``<database file>.lock`` for its whole life and a second one refuses to start. Holding
that lock also proves that every other daemon of the file is dead, so a starting daemon
frees the leases its killed predecessor left at once instead of waiting for them to lapse.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor import db, logs, store
from monitor.config import Settings
from monitor.coordination import STATS
from monitor.errors import MonitorError

log = logs.get("monitor.workers")
ROLES = ("poller", "translator", "all")
KINDS = ("feeds", "translations", "embeddings")
# A worker not heard from for this many leases is shown as lost; rows go after PRUNE_AFTER.
LOST_AFTER_LEASES = 2
PRUNE_AFTER = timedelta(days=1)


def new_id() -> str:
    """``host:pid:random``: unique across machines, restarts and reused pids."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(4)}"


def _now() -> datetime:
    return datetime.now(UTC)


class Held:
    """The leases this process holds, by kind, so that the heartbeat renews them by key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, set[int]] = {kind: set() for kind in KINDS}

    def add(self, kind: str, ids: Iterable[int]) -> None:
        with self._lock:
            self._ids[kind].update(ids)

    def drop(self, kind: str, ids: Iterable[int]) -> None:
        with self._lock:
            self._ids[kind].difference_update(ids)

    def snapshot(self) -> dict[str, list[int]]:
        with self._lock:
            return {kind: sorted(ids) for kind, ids in self._ids.items()}


@dataclass
class Worker:
    """This process as a worker: its id, role, lease length and the leases it holds."""

    role: str = "all"
    lease: timedelta = timedelta(minutes=2)
    id: str = field(default_factory=new_id)
    held: Held = field(default_factory=Held)
    started: datetime = field(default_factory=_now)

    def until(self) -> datetime:
        """When a lease taken or renewed now lapses."""
        return _now() + self.lease


def worker_for(settings: Settings, role: str) -> Worker:
    """A new worker identity with the configured lease (``workers.claim_seconds``)."""
    return Worker(role=role, lease=timedelta(seconds=settings.workers.claim_seconds))


class Heartbeat:
    """A thread that renews the worker's leases and writes its row every quarter lease."""

    def __init__(self, worker: Worker, sessions: sessionmaker[Session]) -> None:
        self.worker, self.sessions = worker, sessions
        self.interval = max(0.2, worker.lease.total_seconds() / 4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self.beat()  # old rows are pruned once, by the daemon's start (daemon._prepare)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and say so on the row (the caller has released its leases)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.beat(stopped=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self, *, stopped: bool = False) -> None:
        """Renew every held lease and write the row, in one transaction; never raises
        (a missed beat is retried at the next one, well before the leases lapse)."""
        held, now, w = self.worker.held.snapshot(), _now(), self.worker
        values = {"id": w.id, "role": w.role, "host": w.id.split(":")[0], "pid": os.getpid(),
                  "started_at": w.started, "last_seen": now, "stopped_at": now if stopped else None,
                  "claims": sum(len(ids) for ids in held.values()), "stats": STATS.snapshot()}
        try:
            with STATS.timed("claim"), db.transaction(self.sessions) as session:
                for kind, ids in held.items():
                    store.renew_held(session, kind, w.id, ids, now + w.lease)
                store.beat(session, values)
        except SQLAlchemyError as exc:
            log.error("heartbeat.failed", worker=w.id, **db.failure(exc, db.url_of(self.sessions)))


def prune(sessions: sessionmaker[Session]) -> None:
    """Delete the rows of workers gone for a day: a write that every start makes, even
    when there is nothing to delete."""
    with db.transaction(sessions) as session:
        store.prune_workers(session, _now() - PRUNE_AFTER)


@contextmanager
def running(worker: Worker, sessions: sessionmaker[Session]) -> Iterator[Heartbeat]:
    """The worker's heartbeat for the duration of the block."""
    heartbeat = Heartbeat(worker, sessions).start()
    try:
        yield heartbeat
    finally:
        heartbeat.stop()


# --- SQLite: one daemon per file ---------------------------------------------------------


def sqlite_file(database_url: str) -> Path | None:
    """The database file of a SQLite URL; None for PostgreSQL or an in-memory database."""
    return db.sqlite_path(database_url)


@contextmanager
def single_daemon(database_url: str) -> Iterator[bool]:
    """On SQLite, hold an exclusive lock on ``<file>.lock`` for the block, or raise a
    one-line error naming the daemon that holds it. Yields True when the lock was taken
    (SQLite), False for PostgreSQL, where any number of daemons may run."""
    path = sqlite_file(database_url)
    if path is None:
        yield False
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise MonitorError(
                f"another `monitor run` (pid {holder}) is using {path}: a SQLite database "
                "serves one daemon; stop that one, or use PostgreSQL to run several "
                "workers") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def free_predecessors(sessions: sessionmaker[Session]) -> int:
    """Drop the leases of daemons that died without releasing them. Only for the holder
    of the SQLite file lock, which proves that no other daemon of the file is alive:
    every feed lease (only daemons poll) and the item leases of those dead daemons
    (a concurrent `monitor translate --pending` keeps its own)."""
    with db.transaction(sessions) as session:
        dead = store.dead_workers(session, ROLES)
        dropped = store.release_all(session, ["feeds"])
        dropped += store.release_all(session, ["translations", "embeddings"], dead)
    if dropped:
        log.info("claims.freed", claims=dropped, workers=len(dead))
    return dropped
