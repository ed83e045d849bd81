"""Crashes, full disks and read-only databases, with real processes, sockets and files:
`monitor run` killed with SIGKILL at random moments of its poll cycles and restarted (the
campaign of tests/crashkit.py; bench/crash.py runs a long one), a migration killed
halfway, a daemon whose database file may not grow, a read-only database, and one that
turns read-only under a running daemon."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, inspect, make_url, text

from monitor import db
from tests.crashkit import (
    Campaign,
    Checks,
    CrashFeeds,
    crash_config,
    inspect_database,
    make_due,
)
from tests.httpserver import LoopbackServer
from tests.scalekit import start_worker

SEED_ENV = "MONITOR_CRASH_SEED"
PASSWORD = "s3cret-pw"  # a fake one, to show that no message carries it


def crash_seed() -> int:
    """``$MONITOR_CRASH_SEED``, else a new seed; printed, so that a failure can be replayed."""
    seed = int(os.environ.get(SEED_ENV) or random.randrange(2**32))
    print(f"crash seed {seed} (replay: {SEED_ENV}={seed})")
    return seed


def test_sigkill_at_random_moments_of_poll_cycles(tmp_path: Path, database_url: str) -> None:
    """20 daemons (6 on PostgreSQL) killed with SIGKILL at drawn moments of their poll
    cycles, restarted each time with new items offered and every feed due: after every
    kill the database is whole (integrity_check, no item without its story, no story
    without items, nothing stored twice); after a final clean run every item offered is
    stored once and nothing else."""
    seed = crash_seed()
    kills = 20 if database_url.startswith("sqlite") else 6
    campaign = Campaign(tmp_path, database_url, kills=kills, feeds=6, seed=seed, per_round=2,
                        window=2 * (kills + 1))
    result = campaign.run()
    print(result.summary())
    assert result.problems == [], f"seed {seed}: {result.problems}"
    assert result.kills == kills and result.starts == kills + 1
    assert len(result.offered) == 6 * 2 * kills
    assert result.stored == result.offered
    assert result.final is not None and result.final.schema == "current"
    in_cycle = result.phases["fetching"] + result.phases["mid-cycle"]
    assert in_cycle >= max(1, kills // 4), f"seed {seed}: few kills mid-cycle: {result.phases}"


# A child that runs the migrations and kills itself with SIGKILL after its n-th statement.
MIGRATE_AND_DIE = """
import os, signal, sys
from sqlalchemy import event
from monitor import db
engine = db.make_engine(sys.argv[1])
seen = 0
def after(*_args):
    global seen
    seen += 1
    if seen == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
event.listen(engine, "after_cursor_execute", after)
db.upgrade(engine)
"""
KILL_POINTS = (5, 12, 24, 36, 48)  # of the 49 statements that build the schema today


def test_kill_during_the_first_migration(tmp_path: Path, database_url: str) -> None:
    """A process killed in the middle of building a fresh database's schema leaves no
    table behind (the upgrade is one transaction), so the next start migrates it whole;
    SQLite used to keep the tables made so far without their version, and every later
    start failed on "table already exists"."""
    for point in KILL_POINTS:
        child = subprocess.run([sys.executable, "-c", MIGRATE_AND_DIE, database_url,
                                str(point)], capture_output=True, text=True, timeout=120)
        assert child.returncode == -signal.SIGKILL, (point, child.stderr[-2000:])
        engine = db.make_engine(database_url)
        assert inspect(engine).get_table_names() == [], f"tables left by a kill at {point}"
        engine.dispose()
    engine = db.make_engine(database_url)
    db.ensure_schema(engine)
    assert db.is_current(engine)
    engine.dispose()
    assert inspect_database(database_url).problems(final=True) == []


# --- a database that may not grow ---------------------------------------------------------


class Output:
    """A process's merged output, read from a pipe (a pipe is not a file, so a file-size
    limit on the process does not apply to it)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def events(self, name: str) -> list[dict[str, object]]:
        found = []
        for line in list(self.lines):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == name:
                found.append(event)
        return found

    def close(self) -> str:
        self._thread.join(10)
        return "\n".join(self.lines)


def watched_daemon(config: Path, database_url: str, *, cwd: Path | None = None,
                   preexec_fn: Callable[[], None] | None = None) -> Output:
    """`monitor run` with JSON logs, its output read as it comes."""
    command = [sys.executable, "-m", "monitor", "--config", str(config), "--database-url",
               database_url, "--log-format", "json", "-v", "run"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=cwd, preexec_fn=preexec_fn)
    return Output(process)


def limited_daemon(config: Path, database_url: str, max_file_bytes: int) -> Output:
    """`monitor run` that may not make any file larger than ``max_file_bytes``: a write
    past it fails with EFBIG (Python ignores SIGXFSZ), as on a full disk."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, resource.RLIM_INFINITY))

    return watched_daemon(config, database_url, preexec_fn=limit)


def wait_until(condition: Callable[[], bool], what: str, output: Output,
               timeout: float = 90) -> None:
    """Poll ``condition``; fail if the daemon exits or the deadline passes first."""
    deadline = time.monotonic() + timeout
    while not condition():
        code = output.process.poll()
        assert code is None, f"the daemon exited with {code}: {output.close()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {output.lines[-20:]}"
        time.sleep(0.2)


def test_full_disk_daemon_keeps_retrying_then_catches_up(tmp_path: Path) -> None:
    """With the database file at a file-size limit, `monitor run` logs one line naming the
    database for every feed it cannot store, keeps running, and fails again when the
    feeds are due again; it stops cleanly on SIGTERM with the database whole. Restarted
    without the limit, it stores every item once."""
    path = tmp_path / "monitor.db"
    url = f"sqlite:///{path}"
    with LoopbackServer() as server:
        feeds = CrashFeeds(server, 3, per_round=60, window=120, max_delay=0, padding=30)
        config = crash_config(tmp_path / "c.toml", feeds.urls())
        feeds.per_round, feeds.round = 2, 1  # a small first round, then 120 long items each
        first = start_worker(config, url, tmp_path / "first.log", "--once")
        assert first.process.wait(120) == 0, first.log.read_text()
        feeds.per_round, feeds.round = 60, 2
        make_due(url)
        at_limit = path.stat().st_size
        daemon = limited_daemon(config, url, at_limit)

        def failed() -> int:
            return sum(e.get("during") == "feed" for e in daemon.events("database.failed"))

        try:
            wait_until(lambda: failed() >= 3, "three failed feed writes", daemon)
            make_due(url)  # time passes: the feeds are tried again
            wait_until(lambda: failed() >= 6, "the feeds retried", daemon)
            assert daemon.process.poll() is None
        finally:
            daemon.process.send_signal(signal.SIGTERM)
            code = daemon.process.wait(30)
        output = daemon.close()
        assert code == 0, output[-3000:]
        lines = daemon.events("database.failed")
        assert "Traceback" not in output
        assert {e["database"] for e in lines} == {str(path)}
        assert all("I/O error" in str(e["error"]) or "full" in str(e["error"]) for e in lines)
        stopped = inspect_database(url)
        assert stopped.problems(final=False) == []
        per_feed = Counter(feed for feed, _n in stopped.stored)
        assert set(per_feed.values()) == {2}, "the first round only, each feed whole"
        again = start_worker(config, url, tmp_path / "again.log", "--once", "--force")
        assert again.process.wait(120) == 0, again.log.read_text()[-3000:]
    final = inspect_database(url)
    assert final.problems(final=True) == [] and final.integrity == "ok"
    assert final.stored == feeds.offered and len(final.stored) == 3 * 120


def test_no_room_at_all_start_up_waits_for_space(tmp_path: Path) -> None:
    """A daemon whose database cannot take a single page (its write-ahead log may not grow
    at all), with a new feed to add at start-up, logs one line naming the database per
    try, keeps trying, and once the limit is lifted from the live process stores every
    item, without a restart."""
    path = tmp_path / "monitor.db"
    url = f"sqlite:///{path}"
    with LoopbackServer() as server:
        feeds = CrashFeeds(server, 4, per_round=2, window=100, max_delay=0)
        three = crash_config(tmp_path / "three.toml", feeds.urls()[:3])
        first = start_worker(three, url, tmp_path / "first.log", "--once")
        assert first.process.wait(120) == 0, first.log.read_text()
        feeds.round = 2
        make_due(url)
        # An idle connection keeps the shared-memory file (32 KiB) in place and the log
        # empty, so that only the writes are refused.
        with closing(sqlite3.connect(path)) as keep:
            keep.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            daemon = limited_daemon(crash_config(tmp_path / "four.toml", feeds.urls()), url,
                                    4096)

            def start_failures() -> list[dict[str, object]]:
                return [e for e in daemon.events("database.failed") if e["during"] == "start"]

            try:
                wait_until(lambda: len(start_failures()) >= 3, "start-up retried", daemon)
                assert daemon.events("daemon.started") == []
                resource.prlimit(daemon.process.pid, resource.RLIMIT_FSIZE,
                                 (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
                wait_until(lambda: inspect_database(url).stored == feeds.offered
                           and len(feeds.offered) == 3 * 4 + 4, "every item stored", daemon)
            finally:
                daemon.process.send_signal(signal.SIGTERM)
                code = daemon.process.wait(30)
    output = daemon.close()
    assert code == 0 and "Traceback" not in output, output[-3000:]
    assert {e["database"] for e in start_failures()} == {str(path)}
    final = inspect_database(url)
    assert final.problems(final=True) == [] and final.integrity == "ok"
    assert final.stored == feeds.offered


# --- a database that cannot be written at all ------------------------------------------------


def read_only_url(database_url: str) -> str:
    """The same database, opened read-only: SQLite's URI mode=ro (the tests run as root,
    so file permissions would not stop a write), PostgreSQL's read-only transactions."""
    path = db.sqlite_path(database_url)
    if path is not None:
        return f"sqlite:///file:{path}?mode=ro&uri=true"
    return database_url + "%20-cdefault_transaction_read_only%3Don"


def stored_once(tmp_path: Path, database_url: str, feeds: CrashFeeds) -> tuple[Path, Checks]:
    """A config for ``feeds``, their first round stored by `monitor run --once`, the
    database's state after it, and a second round offered with every feed due."""
    config = crash_config(tmp_path / "c.toml", feeds.urls())
    first = start_worker(config, database_url, tmp_path / "first.log", "--once")
    assert first.process.wait(120) == 0, first.log.read_text()
    before = inspect_database(database_url)
    feeds.round = 2
    make_due(database_url)
    return config, before


def with_password(database_url: str) -> str:
    """PostgreSQL: the URL with a password (one the server ignores under trust, if it had
    none), to show that no message carries it; SQLite: the URL."""
    url = make_url(database_url)
    if db.sqlite_path(database_url) is not None or url.password:
        return database_url
    return url.set(password=PASSWORD).render_as_string(hide_password=False)


def password_of(url: str) -> str:
    return str(make_url(url).password or PASSWORD)


def test_read_only_database_daemon_keeps_retrying(tmp_path: Path, database_url: str) -> None:
    """`monitor run` on a database it cannot write logs one line per tick naming the
    database and what to fix, and keeps trying without polling; SIGTERM stops it with
    exit code 0, without a traceback, a stray file, the password, or any change to what
    is stored."""
    with LoopbackServer() as server:
        feeds = CrashFeeds(server, 2, per_round=3, max_delay=0)
        config, before = stored_once(tmp_path, database_url, feeds)
        requests = feeds.requests
        work = tmp_path / "cwd"
        work.mkdir()
        url = read_only_url(with_password(database_url))
        daemon = watched_daemon(config, url, cwd=work)
        try:
            wait_until(lambda: len(daemon.events("database.failed")) >= 2, "two tries", daemon)
            assert daemon.process.poll() is None and daemon.events("daemon.started") == []
        finally:
            daemon.process.send_signal(signal.SIGTERM)
            code = daemon.process.wait(10)
        output = daemon.close()
        assert feeds.requests == requests, "nothing is fetched before the writes pass"
    assert code == 0 and "Traceback" not in output, output[-3000:]
    assert password_of(url) not in output
    lines = daemon.events("database.failed")
    assert {(e["database"], e["during"]) for e in lines} == {(db.display(url), "start")}
    assert all("readonly" in str(e["error"]) or "read-only" in str(e["error"]) for e in lines)
    assert all("writable" in str(e["hint"]) for e in lines)
    assert list(work.iterdir()) == []
    after = inspect_database(database_url)
    assert after.problems(final=True) == [] and after.stored == before.stored


def test_read_only_database_once_fails_at_once(tmp_path: Path, database_url: str) -> None:
    """`monitor run --once` on a database it cannot write does not wait: it exits 1 with
    one line naming the database and what to fix, and stores nothing."""
    with LoopbackServer() as server:
        feeds = CrashFeeds(server, 2, per_round=3, max_delay=0)
        config, before = stored_once(tmp_path, database_url, feeds)
        url = read_only_url(with_password(database_url))
        run = subprocess.run([sys.executable, "-m", "monitor", "--config", str(config),
                              "--database-url", url, "run", "--once"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("monitor: ")]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert db.display(url) in errors[0] and "cannot be written" in errors[0]
    assert "readonly" in errors[0] or "read-only" in errors[0]
    assert "writable" in errors[0] and password_of(url) not in run.stderr + run.stdout
    after = inspect_database(database_url)
    assert after.problems(final=True) == [] and after.stored == before.stored


# --- a database that turns read-only under a running daemon ----------------------------------


@dataclass(frozen=True)
class OwnRole:
    """A PostgreSQL role of the test's own that owns the test's schema: ``url`` reaches
    the schema as that role, and :meth:`read_only` changes that role's new sessions
    only, so other tests sharing the server are not touched."""

    admin: Engine
    name: str
    url: str

    def read_only(self, on: bool) -> None:
        """Make the role's sessions read-only (or writable again) and end the open ones,
        as a failover to a standby (and back) would: the daemon's pool reconnects."""
        setting = "SET default_transaction_read_only = on" if on else "RESET ALL"
        with self.admin.connect() as connection:
            connection.execute(text(f'ALTER ROLE "{self.name}" {setting}'))
            connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE usename = :role"), {"role": self.name})


@pytest.fixture
def own_role(postgres_url: str) -> Iterator[OwnRole]:
    name = f"r_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        schema = connection.scalar(text("SELECT current_schema()"))
        connection.execute(text(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{PASSWORD}'"))
        connection.execute(text(f'ALTER SCHEMA "{schema}" OWNER TO "{name}"'))
    url = make_url(postgres_url).set(username=name, password=PASSWORD)
    url = url.render_as_string(hide_password=False)
    role = OwnRole(admin, name, url)
    yield role
    role.read_only(False)
    with admin.connect() as connection:
        connection.execute(text(f'REASSIGN OWNED BY "{name}" TO CURRENT_USER'))
        connection.execute(text(f'DROP OWNED BY "{name}"'))
        connection.execute(text(f'DROP ROLE "{name}"'))
    admin.dispose()


@pytest.mark.postgres
def test_database_turning_read_only_mid_run_is_retried(tmp_path: Path, postgres_url: str,
                                                       own_role: OwnRole) -> None:
    """A PostgreSQL database that turns read-only under a running daemon: every tick logs
    one line naming the database and what to fix (``during=cycle``), nothing more is
    stored, the daemon keeps running, and once the database is writable again it stores
    every item once, without a restart. (SQLite has no honest equivalent for root: a file
    made immutable fails the open connections' writes with an I/O error, the full-disk
    case above.)"""
    with LoopbackServer() as server:
        feeds = CrashFeeds(server, 2, per_round=3, max_delay=0)
        daemon = watched_daemon(crash_config(tmp_path / "c.toml", feeds.urls()), own_role.url)

        def stored_all() -> bool:
            return bool(feeds.offered) and inspect_database(postgres_url).stored == feeds.offered

        def refused() -> list[dict[str, object]]:  # not a connection ended by the switch
            return [e for e in daemon.events("database.failed")
                    if e["during"] == "cycle" and "(25006)" in str(e["error"])]

        try:
            wait_until(stored_all, "the first round stored", daemon)
            first = set(feeds.offered)
            own_role.read_only(True)
            feeds.round = 2
            make_due(postgres_url)
            wait_until(lambda: len(refused()) >= 2, "two refused cycles", daemon)
            assert inspect_database(postgres_url).stored == first
            own_role.read_only(False)
            make_due(postgres_url)
            wait_until(lambda: stored_all() and len(feeds.offered) == 2 * 6, "the second round "
                       "stored", daemon)
        finally:
            daemon.process.send_signal(signal.SIGTERM)
            code = daemon.process.wait(10)
        output = daemon.close()
    assert code == 0 and "Traceback" not in output, output[-3000:]
    lines = refused()
    assert {e["database"] for e in lines} == {db.display(own_role.url)}
    assert all("read-only" in str(e["error"]) and "writable" in str(e["hint"]) for e in lines)
    final = inspect_database(postgres_url)
    assert final.problems(final=True) == [] and final.stored == feeds.offered
