"""Several `monitor run` processes on one PostgreSQL (real subprocesses, a loopback server
that counts requests, aiosmtpd): nothing polled, stored or sent twice, and a killed
worker's feeds are taken over once its leases lapse."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import func, select

from monitor import db
from monitor.models import FeedRow, WorkerRow
from tests.conftest import CONFIG, SEEDS
from tests.httpserver import LoopbackServer
from tests.pollkit import FAST, MANY_ITEMS_DETECTOR, consistency
from tests.scalekit import (
    Feeds,
    cluster,
    count,
    feeds_done,
    items_stored,
    make_all_due,
    wait_for,
    workers_running,
    write_toml,
)

if TYPE_CHECKING:
    from tests.smtpserver import SmtpFactory

pytestmark = pytest.mark.postgres
FEEDS = 300
LEASE = 3.0  # workers.claim_seconds: short, so that a killed worker's feeds return soon
TICK = 0.5


def sections(**extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Fast fetches, short leases and ticks, a quick language detector, no translation, no
    embedding model."""
    base: dict[str, dict[str, Any]] = {
        # Generous read deadlines: three workers and the test share two loaded cores, and
        # a fetch that times out would store nothing that period (a false failure here).
        "fetch": {**FAST, "connect_timeout": 5, "read_timeout": 10, "total_deadline": 20,
                  "concurrency": 8},
        "workers": {"claim_seconds": LEASE, "tick_seconds": TICK},
        "language": {"detector": MANY_ITEMS_DETECTOR},
        "translation": {"enabled": False},
        "dedup": {"embedder": "none"},
    }
    return base | extra


@pytest.fixture
def server() -> Any:
    with LoopbackServer() as running:
        yield running


def polled_by(workers: list[Any]) -> list[int]:
    """Feeds each worker's log says it polled."""
    return [len(w.events("feed.polled")) for w in workers]


def test_three_workers_two_periods_one_digest(tmp_path: Path, postgres_url: str,
                                              server: LoopbackServer,
                                              smtp_server: SmtpFactory) -> None:
    """Three workers started together on an empty database (they migrate and sync in
    turn) poll 300 feeds for two due periods: each feed is fetched exactly once per
    period, every item is stored exactly once, the work is shared, and one digest is
    sent; `monitor status --json` shows the three workers."""
    feeds = Feeds(server, FEEDS)
    smtp = smtp_server()
    digest = {"time": "00:00", "recipients": ["ops@example.org"], "smtp_host": "127.0.0.1",
              "smtp_port": smtp.port, "smtp_tls": "none", "send_empty": True}
    config = write_toml(tmp_path / "c.toml", sections(digest=digest),
                        [{"url": u} for u in feeds.urls()])
    engine = db.make_engine(postgres_url)
    with cluster(config, postgres_url, tmp_path, 3) as workers:
        wait_for(lambda: feeds_done(engine) == FEEDS, 180, "period 1", workers)
        status = _status(config, postgres_url)
        feeds.period, second = 2, datetime.now(UTC)
        make_all_due(engine, second)
        wait_for(lambda: feeds_done(engine, second) == FEEDS, 120, "period 2", workers)
        wait_for(lambda: len(smtp.messages) >= 1, 30, "the digest", workers)
    assert all(w.process.returncode == 0 for w in workers)
    assert feeds.fetched(1) == [1] * FEEDS
    assert feeds.fetched(2) == [1] * FEEDS
    assert items_stored(engine) == feeds.items(2)
    assert set(consistency(db.session_factory(engine)).values()) == {0}
    assert sum(polled_by(workers)) == 2 * FEEDS
    assert sorted(polled_by(workers))[1] > 0, "at least two workers polled"
    assert len(smtp.messages) == 1
    assert [w["role"] for w in status["workers"]] == ["all"] * 3
    assert {w["state"] for w in status["workers"]} == {"running"}
    assert count(engine, select(func.count()).select_from(WorkerRow)
                 .where(WorkerRow.stopped_at.is_not(None))) == 3
    engine.dispose()


def _status(config: Path, database_url: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", "monitor", "--config", str(config),
                             "--database-url", database_url, "status", "--json"],
                            capture_output=True, text=True, timeout=60, check=True)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_killed_worker_feeds_are_taken_over(tmp_path: Path, postgres_url: str,
                                            server: LoopbackServer) -> None:
    """kill -9 of one of three workers in the middle of a cycle: the feeds it held are
    polled by the others once its leases lapse; every item is stored exactly once, and
    only feeds it held may have been fetched twice."""
    feeds = Feeds(server, FEEDS, delay=0.1)
    config = write_toml(tmp_path / "c.toml", sections(), [{"url": u} for u in feeds.urls()])
    engine = db.make_engine(postgres_url)
    with cluster(config, postgres_url, tmp_path, 3) as workers:
        wait_for(lambda: workers_running(engine) == 3, 120, "three workers", workers)
        victim = workers[0]
        victim_id = _worker_id(engine, victim.process.pid)
        wait_for(lambda: _claims_of(engine, victim_id) and feeds_done(engine) > 30, 120,
                 "the victim mid-cycle", workers)
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(10)
        killed_at = datetime.now(UTC)
        held = _claims_of(engine, victim_id)
        wait_for(lambda: feeds_done(engine) == FEEDS, 120, "the rest of the cycle", workers)
    assert victim.process.returncode == -signal.SIGKILL
    assert all(w.process.returncode == 0 for w in workers[1:])
    assert held, "the victim held feeds when it died"
    taken_over = _checked_at(engine, held)
    assert all(when >= killed_at for when in taken_over.values())
    twice = {i for i, n in enumerate(feeds.fetched(1)) if n > 1}
    assert min(feeds.fetched(1)) == 1
    assert {server.url(f"/f{i}") for i in twice} <= set(_urls(engine, held))
    assert items_stored(engine) == feeds.items(1)
    assert set(consistency(db.session_factory(engine)).values()) == {0}
    engine.dispose()


def _worker_id(engine: Any, pid: int) -> str:
    with engine.connect() as connection:
        return str(connection.scalar(select(WorkerRow.id).where(WorkerRow.pid == pid)))


def _claims_of(engine: Any, worker: str) -> list[int]:
    with engine.connect() as connection:
        return list(connection.scalars(select(FeedRow.id).where(FeedRow.claimed_by == worker)))


def _checked_at(engine: Any, ids: list[int]) -> dict[int, datetime]:
    with engine.connect() as connection:
        rows = connection.execute(select(FeedRow.id, FeedRow.last_checked_at)
                                  .where(FeedRow.id.in_(ids))).all()
    return {i: when for i, when in rows}


def _urls(engine: Any, ids: list[int]) -> list[str]:
    with engine.connect() as connection:
        return list(connection.scalars(select(FeedRow.url).where(FeedRow.id.in_(ids))))


SEED_STORIES = {frozenset({"000"}), frozenset({"001"}), frozenset({"002", "003", "004"})}


def test_two_backfills_of_the_seeds_at_once(tmp_path: Path, postgres_url: str) -> None:
    """Two `monitor backfill seeds/` processes started together, each ingesting all five
    articles: 5 items and 3 stories ({000}, {001}, {002, 003, 004}), as one backfill
    makes; every item has a story."""
    command = [sys.executable, "-m", "monitor", "--config", str(CONFIG), "--database-url",
               postgres_url, "backfill", str(SEEDS)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], results
    listed = subprocess.run([*command[:7], "stories", "--json"], capture_output=True,
                            text=True, timeout=120, check=True)
    stories = json.loads(listed.stdout)
    assert sum(len(s["items"]) for s in stories) == 5
    assert {frozenset(i["outlet"][:3] for i in s["items"]) for s in stories} == SEED_STORIES
    engine = db.make_engine(postgres_url)
    counts = consistency(db.session_factory(engine))
    engine.dispose()
    assert counts["items without a story"] == counts["stories without items"] == 0
