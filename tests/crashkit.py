"""The crash campaign: `monitor run` killed with SIGKILL at random moments of its poll
cycles and restarted, many times, against a loopback server whose feeds offer new items
every round; then a clean run, and the checks that nothing is corrupt, half stored,
stored twice or lost.

Each round: the feeds offer their next items, every feed is made due, a daemon starts,
and it is killed at the moment drawn for the round (a delay after its start, the n-th
request of the round reaching the server, or the k-th feed written), plus a short random
delay; the database is then checked. The moments come from a seeded random generator,
so a seed replays the same plan (thread timing still varies from run to run).

Used by tests/test_crash.py (a short campaign in CI) and bench/crash.py (a long one).
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, inspect, select, text, update
from sqlalchemy.exc import DBAPIError

from monitor import db
from monitor.models import FeedRow, ItemRow
from tests.httpserver import LoopbackServer, Reply, Request
from tests.pollkit import FAST, consistency
from tests.scalekit import Worker, start_worker, write_toml

LEASE = 2.0  # workers.claim_seconds: a killed daemon's feeds come back soon on PostgreSQL
TICK = 0.3  # workers.tick_seconds: feeds made due are picked up at once
REACH_DEADLINE = 120.0  # seconds a daemon may take to reach the moment drawn for it
FINAL_DEADLINE = 300.0
# (kind, weight): most kills land while feeds are being written, where it matters most.
KINDS = (("start", 1), ("fetch", 2), ("write", 5))
PHASES = ("starting", "fetching", "mid-cycle", "between cycles")
WORDS = ("harbour", "council", "budget", "drone", "border", "election", "pipeline",
         "treaty", "airport", "strike", "reactor", "minister", "frigate", "grain", "tariff",
         "glacier", "court", "railway", "summit", "vaccine", "satellite", "refinery",
         "festival", "bridge", "audit", "cable", "fishery", "mine", "parliament", "storm")
PUBLISHED = datetime(2025, 6, 1, tzinfo=UTC)


def feed_document(feed: int, numbers: range, padding: int = 0) -> bytes:
    """An RSS feed of outlet ``feed`` with the items ``numbers``, newest first, as a news
    site lists them; every item has its own GUID, link, title and text (``padding`` more
    sentences of it)."""
    filler = " The report goes on at length about what happened." * padding
    items = "".join(
        f"<item><title>Outlet {feed} report {n}: {_words(feed, n)}</title>"
        f"<link>https://crash{feed}.example/a/{n}</link><guid>crash{feed}-{n}</guid>"
        f"<pubDate>{format_datetime(PUBLISHED + timedelta(minutes=n))}</pubDate>"
        f"<description>Report {n} of outlet {feed} on {_words(n, feed)}.{filler}</description>"
        "</item>"
        for n in reversed(numbers))
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>Outlet {feed}</title><link>https://crash{feed}.example/</link>"
            f"{items}</channel></rss>").encode()


def _words(a: int, b: int) -> str:
    return " ".join(random.Random(f"{a}/{b}").sample(WORDS, 6))


def item_key(guid: str) -> tuple[int, int] | None:
    """(feed, number) of a GUID written by :func:`feed_document` (stored resolved against
    the feed's URL, as feedparser reads a GUID that may be a permalink)."""
    feed, _, number = guid.rsplit("/", 1)[-1].removeprefix("crash").partition("-")
    return (int(feed), int(number)) if feed.isdigit() and number.isdigit() else None


@dataclass
class CrashFeeds:
    """``count`` feeds on one loopback server. In round r each offers its newest
    ``window`` items up to number ``per_round * r``, after a random delay of up to
    ``max_delay`` s (so feeds finish, and are written, in varying order). Every item ever
    served is recorded in ``offered``."""

    server: LoopbackServer
    count: int
    per_round: int = 2
    window: int = 40
    max_delay: float = 0.1
    seed: int = 0
    padding: int = 0
    round: int = 1
    requests: int = 0
    offered: set[tuple[int, int]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        for index in range(self.count):
            self.server.route(f"/c{index}", self._handler(index))

    def numbers(self) -> range:
        top = self.per_round * self.round
        return range(max(0, top - self.window), top)

    def urls(self) -> list[str]:
        return [self.server.url(f"/c{i}") for i in range(self.count)]

    def _handler(self, index: int) -> Callable[[Request], Reply]:
        def answer(_request: Request) -> Reply:
            with self._lock:
                numbers = self.numbers()
                self.offered.update((index, n) for n in numbers)
                self.requests += 1
                delay = self._random.uniform(0, self.max_delay)
            return Reply(body=feed_document(index, numbers, self.padding), delay=delay)
        return answer


def crash_config(path: Path, urls: list[str]) -> Path:
    """Fast fetches (generous deadlines: a loaded machine must not fail a feed), short
    leases and ticks, the quickest language detector to load, no translation, no
    embedding model: restarts cost seconds, not tens of seconds."""
    sections: dict[str, dict[str, Any]] = {
        "fetch": {**FAST, "read_timeout": 10, "total_deadline": 20, "concurrency": 8},
        "workers": {"claim_seconds": LEASE, "tick_seconds": TICK},
        "language": {"detector": "langdetect"},
        "translation": {"enabled": False},
        "dedup": {"embedder": "none"},
    }
    return write_toml(path, sections, [{"url": url} for url in urls])


# --- kill moments ----------------------------------------------------------------------


@dataclass(frozen=True)
class Moment:
    """When a daemon is killed: ``delay`` s after its start (``start``), or after the
    ``after``-th request of the round reached the server (``fetch``), or after its log
    says that ``after`` feeds were written (``write``), and then ``delay`` s more."""

    kind: str
    after: int
    delay: float

    def __str__(self) -> str:
        if self.kind == "start":
            return f"{self.delay:.2f} s after the start"
        what = "requests served" if self.kind == "fetch" else "feeds written"
        return f"{self.after} {what} + {self.delay:.2f} s"


def draw(rng: random.Random, feeds: int) -> Moment:
    kind = rng.choices([k for k, _ in KINDS], weights=[w for _, w in KINDS])[0]
    if kind == "start":
        return Moment(kind, 0, rng.uniform(0, 3.0))
    return Moment(kind, rng.randint(1, feeds), rng.uniform(0, 0.1 if kind == "fetch" else 0.2))


def written(daemon: Worker) -> int:
    """Feeds the daemon says it wrote (``feed.polled`` is logged after the commit)."""
    return daemon.log.read_bytes().count(b'"event": "feed.polled"')


def _tail(daemon: Worker) -> str:
    return daemon.log.read_text(encoding="utf-8", errors="replace")[-2000:]


# --- checks ------------------------------------------------------------------------------


@dataclass
class Checks:
    """What the database holds after a kill or at the end. ``schema`` is absent (never
    migrated), current, or partial (a migration half applied: a failure)."""

    schema: str
    integrity: str = "n/a"
    counts: dict[str, int] = field(default_factory=dict)
    stored: set[tuple[int, int]] = field(default_factory=set)

    def problems(self, *, final: bool) -> list[str]:
        """Every broken invariant; leases held by a killed daemon count only at the end."""
        found = [] if self.schema != "partial" else ["the schema is half migrated"]
        if self.integrity not in ("ok", "n/a"):
            found.append(f"integrity_check: {self.integrity}")
        found += [f"{n} {name}" for name, n in self.counts.items()
                  if n and (final or name != "claimed feeds")]
        return found


DUPLICATES = {
    "items stored twice (feed and GUID)": "SELECT feed_id, guid FROM items "
                                          "GROUP BY feed_id, guid HAVING count(*) > 1",
    "items stored twice (URL)": "SELECT url FROM items WHERE url IS NOT NULL "
                                "GROUP BY url HAVING count(*) > 1",
}


def inspect_database(url: str) -> Checks:
    """Integrity (SQLite), partial items, duplicates, leases held, and the items stored."""
    engine = db.make_engine(url)
    try:
        if not inspect(engine).get_table_names():
            return Checks("absent")
        if not db.is_current(engine):
            return Checks("partial")
        counts = consistency(db.session_factory(engine))
        counts["items stored twice (feed and title)"] = counts.pop("items stored twice")
        checks = Checks("current", counts=counts)
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                rows = connection.exec_driver_sql("PRAGMA integrity_check").scalars().all()
                checks.integrity = "; ".join(map(str, rows))
                checks.counts["foreign key violations"] = len(
                    connection.exec_driver_sql("PRAGMA foreign_key_check").all())
            for name, query in DUPLICATES.items():
                checks.counts[name] = connection.scalar(
                    text(f"SELECT count(*) FROM ({query}) AS d")) or 0
            keys = map(item_key, connection.scalars(select(ItemRow.guid)))
            checks.stored = {key for key in keys if key is not None}
        return checks
    finally:
        engine.dispose()


def make_due(url: str) -> None:
    """Time passes: every feed is due. A feed already due stays as overdue as it was, so
    the daemon still polls the most overdue first (setting every feed to one time would
    make the order the feeds' ids, and a daemon killed after its first few feeds every
    round would never reach the last ones). Nothing to do before the first migration."""
    now = datetime.now(UTC) - timedelta(seconds=1)
    engine = db.make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(update(FeedRow).where(FeedRow.next_check_at > now)
                               .values(next_check_at=now))
    except DBAPIError:
        pass  # no feeds table yet: the daemon killed in round 1 never migrated
    finally:
        engine.dispose()


def live_leases(url: str) -> int:
    engine = db.make_engine(url)
    try:
        with engine.connect() as connection:
            return connection.scalar(select(func.count()).select_from(FeedRow).where(
                FeedRow.claimed_until > datetime.now(UTC))) or 0
    finally:
        engine.dispose()


# --- the campaign ------------------------------------------------------------------------


@dataclass
class Result:
    seed: int
    feeds: int
    kills: int = 0
    starts: int = 0
    phases: Counter[str] = field(default_factory=Counter)
    offered: set[tuple[int, int]] = field(default_factory=set)
    final: Checks | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def stored(self) -> set[tuple[int, int]]:
        return self.final.stored if self.final else set()

    @property
    def missing(self) -> set[tuple[int, int]]:
        return self.offered - self.stored

    @property
    def extra(self) -> set[tuple[int, int]]:
        return self.stored - self.offered

    def phase_line(self) -> str:
        return ", ".join(f"{p} {self.phases[p]}" for p in PHASES)

    def summary(self) -> str:
        final = self.final
        integrity = final.integrity if final else "not checked"
        counts = sum(final.counts.values()) if final else "?"
        return (f"crash campaign seed={self.seed}: {self.kills} kills ({self.phase_line()}), "
                f"{self.starts} starts, {self.feeds} feeds, items offered {len(self.offered)}"
                f" stored {len(self.stored)} missing {len(self.missing)} extra "
                f"{len(self.extra)}, broken invariants {counts}, integrity {integrity}, "
                f"{self.seconds:.0f} s: {'OK' if not self.problems else 'FAILED'}")


@dataclass
class Campaign:
    """``kills`` rounds of start, kill at a drawn moment, check; then a clean
    `monitor run --once` and the final checks. ``progress`` gets a line every ``every``
    kills."""

    workdir: Path
    database_url: str
    kills: int = 20
    feeds: int = 6
    seed: int = 0
    per_round: int = 2
    window: int = 40
    progress: Callable[[str], None] | None = None
    every: int = 10

    def run(self) -> Result:
        rng = random.Random(self.seed)
        result = Result(self.seed, self.feeds)
        started = time.monotonic()
        with LoopbackServer() as server:
            # A killed daemon resets its keep-alive connections: expected, not a traceback.
            server._httpd.handle_error = lambda _request, _address: None  # type: ignore[method-assign]
            feeds = CrashFeeds(server, self.feeds, self.per_round, self.window,
                               seed=rng.randrange(2**32))
            config = crash_config(self.workdir / "crash.toml", feeds.urls())
            for kill in range(1, self.kills + 1):
                feeds.round = kill
                if not self._round(kill, draw(rng, self.feeds), feeds, config, result):
                    break
                if self.progress and (kill % self.every == 0 or kill == self.kills):
                    self.progress(f"kill {kill}/{self.kills}: {result.phase_line()}; "
                                  f"{len(feeds.offered)} items offered; "
                                  f"{time.monotonic() - started:.0f} s")
            if not result.problems:
                self._final(config, result)
            result.offered = set(feeds.offered)
        if result.final is not None and (result.missing or result.extra):
            result.problems.append(
                f"items offered but not stored: {sorted(result.missing)[:5]} "
                f"({len(result.missing)}); stored but never offered: {sorted(result.extra)[:5]}")
        result.seconds = time.monotonic() - started
        return result

    def _round(self, kill: int, moment: Moment, feeds: CrashFeeds, config: Path,
               result: Result) -> bool:
        """One start and kill, then the checks; False (with a problem noted) to stop."""
        make_due(self.database_url)
        before = feeds.requests
        daemon = start_worker(config, self.database_url, self.workdir / f"kill{kill:04}.log")
        result.starts += 1
        problem = self._kill_at(moment, daemon, lambda: feeds.requests - before)
        if problem:
            result.problems.append(f"kill {kill} ({moment}): {problem}")
            return False
        result.kills += 1
        result.phases[_phase(feeds.requests - before, written(daemon), self.feeds)] += 1
        broken = inspect_database(self.database_url).problems(final=False)
        result.problems += [f"after kill {kill} ({moment}): {p}" for p in broken]
        return not broken

    def _kill_at(self, moment: Moment, daemon: Worker, requests: Callable[[], int]) -> str:
        """SIGKILL at ``moment``; what went wrong before it, if anything."""
        started = time.monotonic()

        def reached() -> bool:
            if moment.kind == "start":
                return time.monotonic() - started >= moment.delay
            done = requests() if moment.kind == "fetch" else written(daemon)
            return done >= moment.after

        while not reached():
            if daemon.process.poll() is not None:
                return f"the daemon exited with {daemon.process.returncode}: {_tail(daemon)}"
            if time.monotonic() - started > REACH_DEADLINE:
                daemon.process.kill()
                daemon.process.wait()
                return f"not reached in {REACH_DEADLINE:.0f} s: {_tail(daemon)}"
            time.sleep(0.01)
        if moment.kind != "start":
            time.sleep(moment.delay)
        daemon.process.send_signal(signal.SIGKILL)
        code = daemon.process.wait(30)
        if code != -signal.SIGKILL:
            return f"the daemon exited with {code} before the kill: {_tail(daemon)}"
        return ""

    def _final(self, config: Path, result: Result) -> None:
        """Every feed due, the killed daemon's leases gone (PostgreSQL: they lapse), then
        one clean `monitor run --once`: every feed is polled and the checks must pass."""
        make_due(self.database_url)
        deadline = time.monotonic() + 10 * LEASE
        while live_leases(self.database_url) and time.monotonic() < deadline:
            time.sleep(0.1)
        daemon = start_worker(config, self.database_url, self.workdir / "final.log", "--once")
        result.starts += 1
        code = daemon.process.wait(FINAL_DEADLINE)
        if code != 0:
            result.problems.append(f"the final clean run exited with {code}: {_tail(daemon)}")
        result.final = inspect_database(self.database_url)
        result.problems += [f"at the end: {p}" for p in result.final.problems(final=True)]


def _phase(requests: int, written: int, feeds: int) -> str:
    """Where in its cycle the daemon died: before any request, before any feed was
    written, between the first and the last feed, or after the whole cycle."""
    if requests == 0:
        return "starting"
    if written == 0:
        return "fetching"
    return "mid-cycle" if written < feeds else "between cycles"
