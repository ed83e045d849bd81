"""One poll cycle: claim due feeds a few at a time, fetch them concurrently behind the
per-host gate, and run each through the pipeline in its own transaction.

A cycle keeps about two fetch slots' worth of feeds in hand (``fetch.concurrency`` x 2),
claiming more as they finish until no due feed is left, so that several workers sharing
a database split the due feeds between them instead of one taking them all; unless
``fetch.per_host_delay`` is 0, a worker claims no feed of a host that another worker is
polling, so politeness holds across workers as it does within one. A claim is a lease
(see :mod:`monitor.coordination`): the worker's heartbeat renews it, a dead worker's
lapses and another worker polls the feed. A feed's transaction ends by writing its row
only if the lease is still held, and rolls back otherwise, so a feed taken over after a
lost lease is never written twice; a transaction that loses a deadlock runs again.

A broken feed becomes an error count and a next-check time on its row, never a crash.
Setting :attr:`Poller.stop` ends a cycle early: the fetches are cancelled, the feed being
written finishes, fetched results not yet written are dropped (those feeds stay due) and
the claims are released.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor import db, logs, store
from monitor.config import Settings
from monitor.coordination import STATS, retrying, xact_lock
from monitor.errors import FetchError, MonitorError, StoreError
from monitor.fetch import FetchLimits, HostGate, Validators, fetch, make_client
from monitor.parse import limits_for, parse_feed
from monitor.pipeline import Pipeline, SourceContext, ingest
from monitor.schedule import Bounds, after_failure, after_success, floor_minutes, next_interval
from monitor.store import FeedState
from monitor.types import FetchResult
from monitor.workers import Worker, worker_for

log = logs.get("monitor.poll")
FAILED = frozenset({"error", "muted"})
# Not polled by this worker: a stop came first, or another worker took the lease over.
UNPOLLED = frozenset({"interrupted", "lost"})
MUTED_NOTE = "feed muted: polled again only by `monitor run --once --force`"


@dataclass(frozen=True)
class PollOutcome:
    """What one feed's poll did; ``status`` is ok, not_modified, error, muted, interrupted
    or lost (the lease lapsed and another worker has the feed)."""

    feed_id: int
    url: str
    status: str
    new: int = 0
    http_status: int | None = None
    error: str | None = None
    error_count: int = 0
    next_check_at: datetime | None = None
    duration: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status in FAILED


@dataclass(frozen=True)
class _Fetched:
    """A fetch's answer, or why it failed, and when the request left (monotonic)."""

    result: FetchResult | FetchError
    started: float


class _LeaseLost(Exception):
    """The feed's lease lapsed and another worker took it over: write nothing."""


@dataclass(frozen=True)
class _Ingested:
    """What parsing and storing a changed body found (all zero for "nothing new")."""

    new: int = 0
    total: int = 0
    ttl_minutes: int | None = None
    title: str | None = None


def limits_of(settings: Settings) -> FetchLimits:
    f = settings.fetch
    agent = f"{f.user_agent} (+{f.contact_url})" if f.contact_url else f.user_agent
    return FetchLimits(connect_timeout=f.connect_timeout, read_timeout=f.read_timeout,
                       total_deadline=f.total_deadline, max_body=int(f.max_body_mib * 2**20),
                       max_redirects=f.max_redirects, user_agent=agent)


def bounds_of(settings: Settings) -> Bounds:
    f = settings.fetch
    return Bounds(f.min_interval_minutes, f.max_interval_minutes, f.default_interval_minutes)


class Poller:
    """One poll cycle at a time over the due feeds; ``stop`` ends the cycle early."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session],
                 worker: Worker | None = None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.pipeline = Pipeline.from_settings(settings)
        self.limits = limits_of(settings)
        self.bounds = bounds_of(settings)
        # Per-feed caps, by the URL the feed was configured with (FeedState.key).
        self.item_caps = {f.url: f.max_items_per_poll for f in settings.feeds
                          if f.max_items_per_poll is not None}
        self.worker = worker or worker_for(settings, "all")
        self.owner = self.worker.id
        self.stop = threading.Event()
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="monitor-db")
        self._fetching: set[asyncio.Task[_Fetched]] = set()

    def sync(self) -> None:
        """The configured feeds become rows; workers starting together take turns."""
        with db.transaction(self.sessions) as session:
            xact_lock(session, "sync")
            store.sync_feeds(session, self.settings.feeds, _now(), self.bounds.default_minutes)

    def warm(self) -> None:
        """Load the language models before the first cycle: loading them mid-cycle holds
        the GIL for a second or more, which would count against the fetches in flight."""
        self.pipeline.detector.detect("Warm up the language detector before polling.")

    def cycle(self, *, force: bool = False) -> list[PollOutcome]:
        """Poll every due feed (``force``: every feed) that no other worker holds, claiming
        them a few at a time; release whatever a stop left unpolled."""
        if self.stop.is_set():
            return []
        started = time.monotonic()
        try:
            outcomes = asyncio.run(self._poll(force, _now()))
        finally:
            self._release()
        (log.info if outcomes else log.debug)(
            "cycle.done", feeds=len(outcomes), new=sum(o.new for o in outcomes),
            failed=sum(o.failed for o in outcomes), duration=_since(started))
        return outcomes

    def _claim(self, force: bool, since: datetime, limit: int) -> list[FeedState]:
        now = _now()
        with STATS.timed("claim"), db.transaction(self.sessions) as session:
            feeds = store.claim_feeds(session, self.owner, now, now + self.worker.lease,
                                      limit=limit, force=force, unchecked_since=since,
                                      polite=self.settings.fetch.per_host_delay > 0)
        self.worker.held.add("feeds", [f.id for f in feeds])
        return feeds

    def _release(self) -> None:
        with STATS.timed("claim"), db.transaction(self.sessions) as session:
            store.release_feeds(session, self.owner)
        self.worker.held.drop("feeds", self.worker.held.snapshot()["feeds"])

    async def _poll(self, force: bool, since: datetime) -> list[PollOutcome]:
        f = self.settings.fetch
        gate = HostGate(f.per_host_delay, f.concurrency)
        watcher = asyncio.create_task(self._watch())
        try:
            async with make_client(self.limits) as client:
                return await self._claim_and_poll(client, gate, force, since)
        finally:
            watcher.cancel()

    async def _claim_and_poll(self, client: httpx.AsyncClient, gate: HostGate, force: bool,
                              since: datetime) -> list[PollOutcome]:
        """Keep up to twice ``fetch.concurrency`` feeds in hand, claiming more whenever
        half of them are done, until a claim comes back short (nothing more is due)."""
        hand = 2 * self.settings.fetch.concurrency
        tasks: list[asyncio.Task[PollOutcome]] = []
        seen: set[int] = set()
        more = True
        while True:
            open_ = [t for t in tasks if not t.done()]
            if more and not self.stop.is_set() and len(open_) <= hand // 2:
                want = hand - len(open_)
                feeds = await asyncio.to_thread(self._claim, force, since, want)
                fresh = [feed for feed in feeds if feed.id not in seen]
                seen.update(feed.id for feed in fresh)
                more = len(feeds) == want and bool(fresh)
                tasks += [asyncio.create_task(self._one(client, gate, feed)) for feed in fresh]
                continue
            if not open_:
                return [t.result() for t in tasks]
            await asyncio.wait(open_, return_when=asyncio.FIRST_COMPLETED)

    async def _watch(self) -> None:
        """Turn the stop event (set by a signal handler) into cancelled fetches."""
        while not self.stop.is_set():
            await asyncio.sleep(0.05)
        for task in list(self._fetching):
            task.cancel()

    async def _one(self, client: httpx.AsyncClient, gate: HostGate,
                   feed: FeedState) -> PollOutcome:
        if self.stop.is_set():
            return _interrupted(feed)
        task = asyncio.create_task(self._fetch(client, gate, feed))
        self._fetching.add(task)
        task.add_done_callback(self._fetching.discard)
        try:
            fetched = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this task itself is being cancelled, not only its fetch
            return _interrupted(feed)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.writer, self.record, feed, fetched)

    async def _fetch(self, client: httpx.AsyncClient, gate: HostGate,
                     feed: FeedState) -> _Fetched:
        validators = Validators(feed.etag, feed.last_modified, feed.checksum)
        async with gate.slot(urlsplit(feed.url).hostname or feed.url):
            started = time.monotonic()
            try:
                result = await fetch(client, feed.url, validators, self.limits, feed.user_agent)
            except FetchError as exc:
                return _Fetched(exc, started)
            except Exception as exc:  # noqa: BLE001 - a library surprise costs one feed
                log.exception("feed.crashed", feed=feed.url)
                return _Fetched(FetchError(feed.url, f"internal error: {exc!r}"), started)
            return _Fetched(result, started)

    def record(self, feed: FeedState, fetched: _Fetched) -> PollOutcome:
        """Store what one fetch brought, in one transaction; any failure goes on the row."""
        if self.stop.is_set():
            return _interrupted(feed)  # not written yet: the feed stays due
        now, result = _now(), fetched.result
        outcome = (self._failed(feed, result, now) if isinstance(result, FetchError)
                   else self._store_or_fail(feed, result, now))
        outcome = replace(outcome, duration=_since(fetched.started))
        if outcome.status == "lost":
            STATS.add("lost", outcome.duration)  # fetched and parsed for nothing
        _log_outcome(outcome)
        return outcome

    def _store_or_fail(self, feed: FeedState, result: FetchResult, now: datetime) -> PollOutcome:
        try:
            return retrying(lambda: self._succeeded(feed, result, now), "feed")
        except _LeaseLost:
            return self._lost(feed)
        except MonitorError as exc:
            return self._failed(feed, exc, now)
        except SQLAlchemyError as exc:  # rolled back: nothing of this feed is stored
            log.error("database.failed", during="feed", feed=feed.url,
                      **db.failure(exc, self.settings.database_url))
            return self._failed(feed, StoreError(f"database error: {_first_line(exc)}"), now)
        except Exception as exc:  # noqa: BLE001 - a library surprise costs one feed, not the daemon
            log.exception("feed.crashed", feed=feed.url)
            return self._failed(feed, MonitorError(f"internal error: {exc!r}"), now)

    def _succeeded(self, feed: FeedState, result: FetchResult, now: datetime) -> PollOutcome:
        """Parse and store a changed body (or note that nothing changed) in one transaction,
        committed only if the feed's lease is still ours (the last statement checks it)."""
        with db.transaction(self.sessions) as session:
            got = _Ingested() if result.not_modified else self._ingest(session, feed, result, now)
            floor = floor_minutes(got.ttl_minutes, result.max_age)
            interval = next_interval(feed.interval_minutes, got.new, got.total, floor,
                                     self.bounds, fixed=feed.fixed_interval)
            next_check = after_success(now, interval)
            title = {"title": got.title[:500]} if got.title else {}
            if not store.record_feed(session, feed.id, self.owner, **title,
                                     **self._moved(session, feed, result),
                                     **_success_values(result, now, interval, next_check)):
                raise _LeaseLost(feed.url)  # rolls back everything this feed stored
        self.worker.held.drop("feeds", [feed.id])
        status = "not_modified" if result.not_modified else "ok"
        return PollOutcome(feed.id, feed.url, status, new=got.new, http_status=result.status,
                           next_check_at=next_check)

    def _ingest(self, session: Session, feed: FeedState, result: FetchResult,
                now: datetime) -> _Ingested:
        cap = self.item_caps.get(feed.key, self.settings.fetch.max_items_per_poll)
        parsed = parse_feed(result.content or b"", result.headers, result.final_url or feed.url,
                            limits=limits_for(self.settings.limits, cap))
        articles = parsed.articles[:cap]
        ctx = SourceContext(source_key=feed.key, outlet=feed.outlet or parsed.title,
                            feed_id=feed.id, language=feed.language or parsed.language,
                            topics=feed.topics)
        report = ingest(session, articles, ctx, self.pipeline, now)
        return _Ingested(report.new, len(articles), parsed.ttl_minutes, parsed.title)

    def _moved(self, session: Session, feed: FeedState, result: FetchResult) -> dict[str, str]:
        """After a 301/308 chain, poll the new URL from now on, unless a feed already has it."""
        target = result.final_url
        if not result.permanent_redirect or not target or target == feed.url:
            return {}
        if store.url_taken(session, target, feed.id):
            log.warning("feed.move_refused", feed=feed.url, to=target,
                        reason="another feed already has that URL")
            return {}
        log.info("feed.moved", feed=feed.url, to=target)
        return {"url": target, "config_url": feed.key, "host": store.host_of(target)}

    def _failed(self, feed: FeedState, exc: MonitorError, now: datetime) -> PollOutcome:
        """Count the failure on the row and push the next check out (410: mute the feed)."""
        http_status = exc.status if isinstance(exc, FetchError) else None
        muted = http_status == 410
        count = feed.error_count + 1
        reason = _reason(exc) + (f"; {MUTED_NOTE}" if muted else "")
        retry_after = exc.retry_after if isinstance(exc, FetchError) else None
        next_check = after_failure(now, count, retry_after, self.bounds)
        values = _failure_values(count, reason, now, next_check) | (
            {"status": "muted"} if muted else {})
        try:
            with db.transaction(self.sessions) as session:
                if not store.record_feed(session, feed.id, self.owner, **values):
                    return self._lost(feed)
            self.worker.held.drop("feeds", [feed.id])
        except SQLAlchemyError as db_exc:  # the claim lapses; the feed is retried then
            log.error("feed.unrecorded", feed=feed.url, error=reason, db_error=_first_line(db_exc),
                      database=db.display(self.settings.database_url))
        return PollOutcome(feed.id, feed.url, "muted" if muted else "error",
                           http_status=http_status, error=reason, error_count=count,
                           next_check_at=next_check)


    def _lost(self, feed: FeedState) -> PollOutcome:
        """Another worker took the feed over after our lease lapsed: its result is theirs."""
        self.worker.held.drop("feeds", [feed.id])
        log.warning("feed.lease_lost", feed=feed.url, worker=self.owner)
        return PollOutcome(feed.id, feed.url, "lost")


def _success_values(result: FetchResult, now: datetime, interval: int,
                    next_check: datetime) -> dict[str, object]:
    return {"etag": result.etag, "last_modified": result.last_modified,
            "checksum": result.checksum, "status": "active", "error_count": 0,
            "last_checked_at": now, "last_success_at": now, "interval_minutes": interval,
            "next_check_at": next_check, "claimed_by": None, "claimed_until": None}


def _failure_values(count: int, reason: str, now: datetime,
                    next_check: datetime) -> dict[str, object]:
    return {"error_count": count, "last_error": reason[:2000], "last_error_at": now,
            "last_checked_at": now, "next_check_at": next_check,
            "claimed_by": None, "claimed_until": None}


def _reason(exc: MonitorError) -> str:
    if not isinstance(exc, FetchError):
        return str(exc)
    if exc.retry_after is not None:
        return f"{exc.reason} (Retry-After: {exc.retry_after:.0f} s)"
    return exc.reason


def _interrupted(feed: FeedState) -> PollOutcome:
    return PollOutcome(feed.id, feed.url, "interrupted")


def _log_outcome(o: PollOutcome) -> None:
    fields = {"feed": o.url, "status": o.status, "http_status": o.http_status, "new": o.new,
              "duration": o.duration}
    if o.failed:
        log.warning("feed.polled", **fields, error=o.error, error_count=o.error_count,
                    next_check=o.next_check_at.isoformat() if o.next_check_at else None)
    else:
        log.info("feed.polled", **fields)


def _now() -> datetime:
    return datetime.now(UTC)


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
