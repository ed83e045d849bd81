"""`monitor run` as a user runs it: ``--once`` against unreachable feeds, JSON logs, and
SIGTERM/SIGINT sent to a real process in the middle of a cycle."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from monitor import db
from tests.conftest import Invoke
from tests.httpserver import LoopbackServer, Reply
from tests.pollkit import (
    FEW_ITEMS_DETECTOR,
    MANY_ITEMS_DETECTOR,
    consistency,
    item_counts,
    rows,
    rss,
    write_config,
)


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as running:
        yield running


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def monitor_process(config: Path, database_url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", "--config", str(config), "--database-url",
         database_url, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def sqlite_ok(database_url: str) -> bool:
    """SQLite's integrity check passes (PostgreSQL: nothing to check)."""
    if not database_url.startswith("sqlite"):
        return True
    engine = create_engine(database_url)
    with engine.connect() as conn:
        verdict = conn.execute(text("PRAGMA integrity_check")).scalar()
    engine.dispose()
    return verdict == "ok"


def test_once_against_unreachable_feeds(tmp_path: Path, database_url: str,
                                        monitor: Invoke) -> None:
    """A refused connection and an unknown host: the run finishes, exits 1, says per feed
    what went wrong and when it is tried again, and records both errors on the rows."""
    refused = f"http://127.0.0.1:{closed_port()}/feed"
    unknown = "http://no-such-host.invalid/feed"
    config = write_config(tmp_path / "c.toml", [{"url": refused}, {"url": unknown}])
    started = time.monotonic()
    result = monitor("run", "--once", config=config)
    assert time.monotonic() - started < 10
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [
        f"FAILED {refused}: connection refused (1 failure in a row; next try in 5 min)",
        f"FAILED {unknown}: DNS lookup failed (1 failure in a row; next try in 5 min)",
        "polled 2 feeds: 0 new items, 0 unchanged, 2 failed",
    ]
    engine = db.make_engine(database_url)
    stored = {r.url: r for r in rows(db.session_factory(engine)).values()}
    engine.dispose()
    assert {u: (r.error_count, r.last_error) for u, r in stored.items()} == {
        refused: (1, "connection refused"), unknown: (1, "DNS lookup failed")}
    again = monitor("run", "--once", config=config)
    assert again.exit_code == 0 and again.stdout.startswith("no feed was due")
    row = stored[refused]
    assert row.next_check_at and row.last_checked_at
    assert row.next_check_at - row.last_checked_at == timedelta(minutes=5)
    assert row.last_success_at is None and row.claimed_by is None


def test_once_json_logs(tmp_path: Path, server: LoopbackServer) -> None:
    """`--log-format json -v run --once` writes one JSON event per stderr line, and each
    polled feed's event carries its status, new items and duration."""
    ok = server.route("/ok", Reply(body=rss("jsonok", 2)))
    missing = server.route("/missing", Reply(status=404))
    config = write_config(tmp_path / "c.toml", [{"url": ok}, {"url": missing}],
                          detector=FEW_ITEMS_DETECTOR)
    process = monitor_process(config, f"sqlite:///{tmp_path / 'm.db'}", "--log-format", "json",
                              "-v", "run", "--once")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    events = [json.loads(line) for line in err.splitlines()]
    polled = {e["feed"]: e for e in events if e["event"] == "feed.polled"}
    assert polled[ok]["status"] == "ok" and polled[ok]["new"] == 2
    assert polled[missing]["level"] == "warning" and polled[missing]["error"] == "404 Not Found"
    assert all(isinstance(e["duration"], float) for e in polled.values())
    assert all("timestamp" in e for e in events)
    assert "polled 2 feeds: 2 new items, 0 unchanged, 1 failed" in out


FEEDS, ITEMS = 20, 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_mid_cycle_then_restart(tmp_path: Path, server: LoopbackServer,
                                       database_url: str, signum: int) -> None:
    """A signal mid-cycle exits 0 within 10 s leaving every feed whole or untouched and
    no claim behind; a restart polls only the rest, and nothing is stored twice."""
    for i in range(FEEDS):
        server.route(f"/f{i}", Reply(body=rss(f"slow{i}", ITEMS), delay=0.3))
    # Realistic deadlines: this test is about signals, and a fresh process on two loaded
    # cores can stall its event loop for a second or two (imports, the detector's first use).
    config = write_config(tmp_path / "c.toml",
                          [{"url": server.url(f"/f{i}")} for i in range(FEEDS)],
                          read_timeout=10, total_deadline=20, detector=FEW_ITEMS_DETECTOR)
    url = database_url
    process = monitor_process(config, url, "run")
    wait_for(lambda: len(server.requests()) >= 5)
    process.send_signal(signum)
    started = time.monotonic()
    _out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert time.monotonic() - started < 10
    engine = db.make_engine(url)
    sessions = db.session_factory(engine)
    polled = {r.url for r in rows(sessions).values() if r.last_checked_at}
    assert 0 < len(polled) < FEEDS
    assert sum(item_counts(sessions).values()) == ITEMS * len(polled)
    assert set(consistency(sessions).values()) == {0} and sqlite_ok(url)
    for i in range(FEEDS):
        server.route(f"/f{i}", Reply(body=rss(f"slow{i}", ITEMS)))
    rerun = monitor_process(config, url, "run", "--once")
    out, err = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, err
    assert f"polled {FEEDS - len(polled)} feeds: {ITEMS * (FEEDS - len(polled))} new" in out
    assert sum(item_counts(sessions).values()) == ITEMS * FEEDS
    assert set(consistency(sessions).values()) == {0}
    engine.dispose()
    assert all(len(server.requests(f"/f{i}")) == 1
               for i in range(FEEDS) if server.url(f"/f{i}") in polled)


def test_second_signal_exits_at_once(tmp_path: Path, server: LoopbackServer,
                                     database_url: str) -> None:
    """A second signal while the first one's stop waits for a big feed to be written exits
    at once (128 + the signal); that feed's items are stored whole or not at all."""
    big = 1000  # the most one poll stores (fetch.max_items_per_poll at its ceiling)
    server.route("/big", Reply(body=rss("big", big)))
    config = write_config(tmp_path / "c.toml", [{"url": server.url("/big")}],
                          max_items_per_poll=big, detector=MANY_ITEMS_DETECTOR)
    url = database_url
    process = monitor_process(config, url, "run")
    wait_for(lambda: any(r.end for r in server.requests("/big")))
    time.sleep(0.2)  # the body is being parsed and stored: a graceful stop waits for it
    process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _out, err = process.communicate(timeout=10)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert time.monotonic() - started < 1
    assert sqlite_ok(url)
    engine = db.make_engine(url)
    sessions = db.session_factory(engine)
    assert sum(item_counts(sessions).values()) in (0, big)
    counts = consistency(sessions)
    engine.dispose()
    assert counts["items without a story"] == counts["stories without items"] == 0
