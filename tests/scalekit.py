"""Helpers for the scale-out tests: a config file with any sections, a loopback server of
many feeds that counts requests per period, and `monitor run` processes against one
database, each logging JSON to its own file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import DBAPIError

from monitor.models import FeedRow, ItemRow, WorkerRow
from tests.httpserver import LoopbackServer, Reply, Request
from tests.pollkit import rss


def write_toml(path: Path, sections: Mapping[str, Mapping[str, Any]],
               feeds: Sequence[Mapping[str, Any]] = ()) -> Path:
    """A config file: ``sections`` are tables, ``feeds`` the [[feeds]] entries."""
    lines: list[str] = []
    for name, values in sections.items():
        lines += [f"[{name}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items()), ""]
    for feed in feeds:
        lines += ["[[feeds]]", *(f"{k} = {json.dumps(v)}" for k, v in feed.items()), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@dataclass
class Feeds:
    """``count`` feeds on one loopback server; in period p each serves ``per_period * p``
    items (the earlier ones again, and new ones), optionally after ``delay`` seconds."""

    server: LoopbackServer
    count: int
    per_period: int = 2
    delay: float = 0.0
    period: int = 1
    requests: Counter[tuple[int, int]] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        for index in range(self.count):
            self.server.route(f"/f{index}", self._handler(index))

    def _handler(self, index: int) -> Callable[[Request], Reply]:
        def answer(_request: Request) -> Reply:
            with self._lock:
                period = self.period
                self.requests[(period, index)] += 1
            body = rss(f"feed{index}", self.per_period * period,
                       words=f"on matter {index} of the scale test")
            return Reply(body=body, delay=self.delay)
        return answer

    def urls(self) -> list[str]:
        return [self.server.url(f"/f{i}") for i in range(self.count)]

    def fetched(self, period: int) -> list[int]:
        """How many times each feed was fetched in ``period``."""
        with self._lock:
            return [self.requests[(period, i)] for i in range(self.count)]

    def items(self, periods: int) -> int:
        return self.count * self.per_period * periods


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == name:
                found.append(event)
        return found


def start_worker(config: Path, database_url: str, log: Path, *args: str) -> Worker:
    command = [sys.executable, "-m", "monitor", "--config", str(config), "--database-url",
               database_url, "--log-format", "json", "-v", "run", *args]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    return Worker(process, log)


@contextmanager
def cluster(config: Path, database_url: str, folder: Path, size: int) -> Iterator[list[Worker]]:
    """``size`` `monitor run` processes started at once; stopped (SIGTERM) afterwards."""
    workers = [start_worker(config, database_url, folder / f"worker{n}.log")
               for n in range(size)]
    try:
        yield workers
    finally:
        for w in workers:
            if w.process.poll() is None:
                w.process.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.process.wait(30)
            except subprocess.TimeoutExpired:
                w.process.kill()


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             workers: Sequence[Worker] = ()) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for w in workers:
            if w.process.poll() is not None and w.process.returncode not in (0, -9):
                raise AssertionError(f"a worker exited with {w.process.returncode}: "
                                     + w.log.read_text(errors="replace")[-3000:])
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def count(engine: Engine, query: Any) -> int:
    """A count, or 0 while the first worker has not built the schema yet."""
    try:
        with engine.connect() as connection:
            return int(connection.scalar(query) or 0)
    except DBAPIError:
        return 0


def feeds_done(engine: Engine, since: Any = None) -> int:
    """Feeds checked (since ``since``) whose claim is gone."""
    query = select(func.count()).select_from(FeedRow).where(
        FeedRow.last_checked_at.is_not(None), FeedRow.claimed_by.is_(None))
    if since is not None:
        query = query.where(FeedRow.last_checked_at >= since)
    return count(engine, query)


def items_stored(engine: Engine) -> int:
    return count(engine, select(func.count()).select_from(ItemRow))


def workers_running(engine: Engine) -> int:
    return count(engine, select(func.count()).select_from(WorkerRow)
                 .where(WorkerRow.stopped_at.is_(None)))


def make_all_due(engine: Engine, now: Any) -> None:
    with engine.begin() as connection:
        connection.execute(update(FeedRow).values(next_check_at=now))
