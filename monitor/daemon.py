"""`monitor run`: the process around the poller and the sweeps.

One process is one worker (:mod:`monitor.workers`); several, on one or many machines, may
share a PostgreSQL database, each with a role: ``poller`` polls due feeds and sends the
digest, ``translator`` runs the translation and embedding sweeps, ``all`` (the default)
does everything. An APScheduler tick every ``workers.tick_seconds`` runs one
:class:`~monitor.poll.Poller` cycle at a time over the due feeds no other worker holds;
the sweeps claim their items the same way, so adding workers adds throughput. State lives
in the database, so a restart loses and repeats nothing; a SQLite file serves one daemon.

SIGTERM or SIGINT stops claiming, lets the cycle end early (see :mod:`monitor.poll`) and
exits 0; a second signal exits at once, which leaves the database consistent because
every feed is one transaction. ``--once`` runs one poll cycle and prints a summary.

A database that refuses writes (a full disk, an I/O error, a read-only file or server) is
logged on one line naming it (``database.failed``; a read-only one adds a ``hint``) and
retried, at start-up and at every tick, without ending the process, until it takes the
writes or a signal comes. ``--once`` does not wait: a refusal at start-up is a one-line
error and exit code 1 (SECURITY.md, "Crashes, full disks and read-only databases").
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor import db, logs, workers
from monitor.config import Settings
from monitor.errors import StoreError
from monitor.poll import UNPOLLED, Poller, PollOutcome, limits_of

# limits_of lives in monitor.poll now; re-exported for `monitor feeds check`.
__all__ = ["limits_of", "run_daemon", "summary_lines"]

log = logs.get("monitor.daemon")
POLLING, SWEEPING = ("poller", "all"), ("translator", "all")
READ_ONLY_HINT = ("make the database writable (SQLite: the file, its directory, no mode=ro in "
                  "the URL; PostgreSQL: a primary server, no default_transaction_read_only)")


# --- reporting -----------------------------------------------------------------------


def summary_lines(outcomes: Sequence[PollOutcome], now: datetime) -> list[str]:
    """One line per failed feed saying why and when it is tried again, then the totals."""
    if not outcomes:
        return ["no feed was due; `monitor run --once --force` polls every feed now"]
    lines = [_failure_line(o, now) for o in outcomes if o.failed]
    polled = [o for o in outcomes if o.status not in UNPOLLED]
    total = (f"polled {len(polled)} feeds: {sum(o.new for o in polled)} new items, "
             f"{sum(o.status == 'not_modified' for o in polled)} unchanged, "
             f"{sum(o.failed for o in polled)} failed")
    if skipped := sum(o.status == "interrupted" for o in outcomes):
        total += f"; stopped before {skipped} more (they stay due)"
    if lost := sum(o.status == "lost" for o in outcomes):
        total += f"; {lost} taken over by another worker after a lapsed lease"
    return [*lines, total]


def _failure_line(o: PollOutcome, now: datetime) -> str:
    if o.status == "muted":
        return f"MUTED  {o.url}: {o.error}"
    when = _human(o.next_check_at - now) if o.next_check_at else "?"
    times = f"{o.error_count} failure{'' if o.error_count == 1 else 's'} in a row"
    return f"FAILED {o.url}: {o.error} ({times}; next try in {when})"


def _human(delta: timedelta) -> str:
    minutes = max(0, round(delta.total_seconds() / 60))
    return f"{minutes} min" if minutes < 120 else f"{minutes / 60:.1f} h"


# --- the process ---------------------------------------------------------------------


def run_daemon(settings: Settings, sessions: sessionmaker[Session], *, once: bool = False,
               force: bool = False, role: str = "all") -> int:
    """The main job; returns the process exit code (``--once``: 1 if a feed failed,
    130 if a signal stopped it)."""
    worker = workers.worker_for(settings, role)
    with workers.single_daemon(settings.database_url) as sole:
        poller = Poller(settings, sessions, worker) if role in POLLING else None
        stop = poller.stop if poller else threading.Event()
        previous = _install_signals(stop)
        try:
            if not _prepare(settings, sessions, poller, sole=sole, retry=not once, stop=stop):
                return 130 if once else 0
            if poller:
                poller.warm()
            with workers.running(worker, sessions):
                if poller and once:
                    return _once(poller, force)
                return _forever(settings, sessions, worker, stop, poller, force)
        finally:
            if poller:
                poller.writer.shutdown(wait=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _prepare(settings: Settings, sessions: sessionmaker[Session], poller: Poller | None, *,
             sole: bool, retry: bool, stop: threading.Event) -> bool:
    """The first writes: free a dead predecessor's leases (SQLite), prune old worker rows
    (a write even when there is nothing to prune), sync the feeds. While the database
    refuses them (full disk, I/O error, read-only), log one line and try again every tick:
    a read-only database may be a standby about to be promoted or a volume about to be
    remounted, and a service manager restarting the daemon would gain nothing. Under
    ``--once`` a refusal is a one-line error (exit 1). False when a signal came first."""
    while True:
        try:
            if sole:
                workers.free_predecessors(sessions)
            workers.prune(sessions)
            if poller:
                poller.sync()
            return True
        except SQLAlchemyError as exc:
            problem = _problem(exc, settings.database_url)
            if not retry:
                hint = f"; {problem['hint']}" if "hint" in problem else ""
                raise StoreError(f"database {problem['database']} cannot be written: "
                                 f"{problem['error']}{hint}") from exc
            log.error("database.failed", during="start", **problem)
        if stop.wait(settings.workers.tick_seconds):
            return False


def _problem(exc: SQLAlchemyError, url: str) -> dict[str, str]:
    """The fields of a ``database.failed`` line, with what to fix when it is read-only."""
    problem = db.failure(exc, url)
    return {**problem, "hint": READ_ONLY_HINT} if db.read_only(exc) else problem


def _once(poller: Poller, force: bool) -> int:
    try:
        outcomes = poller.cycle(force=force)
    except SQLAlchemyError as exc:
        problem = db.failure(exc, poller.settings.database_url)
        raise StoreError(f"database {problem['database']}: {problem['error']}") from exc
    print("\n".join(summary_lines(outcomes, datetime.now(UTC))), flush=True)
    if poller.stop.is_set():
        return 130
    return 1 if any(o.failed for o in outcomes) else 0


def _forever(settings: Settings, sessions: sessionmaker[Session], worker: workers.Worker,
             stop: threading.Event, poller: Poller | None, force: bool) -> int:
    from apscheduler.schedulers.background import BackgroundScheduler

    # A cycle longer than the tick is normal (the next tick is skipped), not a warning.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    scheduler = BackgroundScheduler(timezone="UTC")
    if poller is not None:
        scheduler.add_job(_Tick(poller, force), "interval",
                          seconds=settings.workers.tick_seconds, id="poll",
                          next_run_time=datetime.now(UTC), max_instances=1, coalesce=True)
        from monitor.digest_job import schedule_digest

        schedule_digest(scheduler, settings, sessions)
    if worker.role in SWEEPING:
        _add_sweeps(scheduler, settings, sessions, worker, stop)
    scheduler.start()
    log.info("daemon.started", feeds=len(settings.feeds), worker=worker.id, role=worker.role)
    while not stop.wait(0.5):
        pass
    log.info("daemon.stopping")
    scheduler.shutdown(wait=True)
    log.info("daemon.stopped")
    return 0


def _add_sweeps(scheduler: Any, settings: Settings, sessions: sessionmaker[Session],
                worker: workers.Worker, stop: threading.Event) -> None:
    """The translator's work: each sweep claims its items, drains what is pending, and
    checks ``stop`` between batches; state is in the database."""
    from monitor.story_sweep import schedule_dedup
    from monitor.translating import sweep

    scheduler.add_job(sweep, "interval", seconds=settings.workers.tick_seconds,
                      id="translate", args=(settings, sessions, None),
                      kwargs={"worker": worker, "stop": stop},
                      next_run_time=datetime.now(UTC), max_instances=1, coalesce=True)
    schedule_dedup(scheduler, settings, sessions)


@dataclass
class _Tick:
    """The scheduler's job: one cycle (the first one forced if asked); never raises."""

    poller: Poller
    force: bool = False

    def __call__(self) -> None:
        force, self.force = self.force, False
        try:
            self.poller.cycle(force=force)
        except SQLAlchemyError as exc:  # full, read-only, unreachable: the next tick retries
            log.error("database.failed", during="cycle",
                      **_problem(exc, self.poller.settings.database_url))
        except Exception:  # noqa: BLE001 - a failed tick is logged; the next one retries
            log.exception("cycle.failed")


def _install_signals(stop: threading.Event) -> dict[int, Any]:
    """The first SIGTERM/SIGINT sets ``stop``, a second exits at once; returns the old handlers."""

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        stop.set()

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
