"""Leases, fencing, heartbeats, roles, `monitor status`, the digest's sender lock and the
one-daemon rule of SQLite, on both databases where they apply."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text, update
from sqlalchemy.exc import OperationalError

from monitor import config, coordination, daemon, db, digest_job, mailer, store, workers
from monitor.cli import cli
from monitor.config import Feed, Settings
from monitor.models import FeedRow, ItemRow, StoryItemRow, WorkerRow
from monitor.workers import Worker
from tests.conftest import CONFIG, SEEDS, Invoke
from tests.httpserver import LoopbackServer, Reply, Request
from tests.pollkit import FEW_ITEMS_DETECTOR, item_counts, poller_for, rows, rss, write_config
from tests.test_translate import FakeTranslator, _setup

NOW = datetime(2025, 8, 21, 12, tzinfo=UTC)


def _sessions(database_url: str) -> Any:
    engine = db.make_engine(database_url)
    db.ensure_schema(engine)
    return db.session_factory(engine)


def _feeds(sessions: Any, n: int) -> None:
    with db.transaction(sessions) as session:
        store.add_feeds(session, [Feed(f"http://x.example/{i}") for i in range(n)], NOW, 60)
        for i in range(n):  # feed i is due since i minutes before NOW: the last is most overdue
            session.execute(update(FeedRow).where(FeedRow.url == f"http://x.example/{i}")
                            .values(next_check_at=NOW - timedelta(minutes=i)))


# --- leases -------------------------------------------------------------------------------


def test_claims_are_disjoint_limited_and_most_overdue_first(database_url: str) -> None:
    """Two workers claiming in turn get different feeds, at most ``limit`` each, the most
    overdue first; a lapsed lease is free again, and a feed not due is never claimed."""
    sessions = _sessions(database_url)
    _feeds(sessions, 7)
    later = NOW + timedelta(minutes=2)
    with db.transaction(sessions) as session:
        a = store.claim_feeds(session, "a", NOW, later, limit=3)
        b = store.claim_feeds(session, "b", NOW, later, limit=3)
        c = store.claim_feeds(session, "c", NOW - timedelta(minutes=4), later, limit=9)
    assert [f.url[-1] for f in a] == ["6", "5", "4"]
    assert [f.url[-1] for f in b] == ["3", "2", "1"]
    assert c == []  # at NOW - 4 min only feeds 4-6 were due, and they are held
    with db.transaction(sessions) as session:
        lapsed = store.claim_feeds(session, "d", later, later + timedelta(minutes=2))
    assert sorted(f.url[-1] for f in lapsed) == [str(i) for i in range(7)]


def test_polite_claims_keep_hosts_apart(database_url: str) -> None:
    """With politeness on, no worker claims a feed of a host another worker holds."""
    sessions = _sessions(database_url)
    with db.transaction(sessions) as session:
        store.add_feeds(session, [Feed(f"http://{h}.example/{i}") for h in "ab"
                                  for i in range(3)], NOW, 60)
    later = NOW + timedelta(minutes=2)
    with db.transaction(sessions) as session:
        a = store.claim_feeds(session, "a", NOW, later, limit=1, polite=True)
        b = store.claim_feeds(session, "b", NOW, later, polite=True)
        c = store.claim_feeds(session, "c", NOW, later, polite=True)
        a_again = store.claim_feeds(session, "a", NOW, later, polite=True)
    assert [f.url for f in a] == ["http://a.example/0"]
    assert [f.url for f in b] == [f"http://b.example/{i}" for i in range(3)]
    assert c == []
    assert [f.url for f in a_again] == ["http://a.example/1", "http://a.example/2"]


@pytest.mark.postgres
def test_claims_skip_locked_rows_without_waiting(postgres_url: str) -> None:
    """While one worker's claim transaction is open, another's claim returns other feeds
    at once (SKIP LOCKED) instead of waiting for the first to commit."""
    sessions = _sessions(postgres_url)
    _feeds(sessions, 6)
    later = NOW + timedelta(minutes=2)
    with sessions() as first, first.begin():
        mine = store.claim_feeds(first, "first", NOW, later, limit=3)
        with sessions() as second, second.begin():
            second.execute(text("SET LOCAL lock_timeout = '500ms'"))
            theirs = store.claim_feeds(second, "second", NOW, later, limit=6)
    assert len(mine) == len(theirs) == 3
    assert not {f.id for f in mine} & {f.id for f in theirs}


def test_a_lost_lease_writes_nothing(tmp_path: Path, database_url: str,
                                     loopback_server: LoopbackServer) -> None:
    """If the lease lapses while a feed is being fetched and another worker takes the feed
    over, this worker's result is dropped: no items, the row stays the other worker's,
    and the loss is counted."""
    engine = db.make_engine(database_url)

    def steal(_request: Request) -> Reply:
        with engine.begin() as connection:
            connection.execute(update(FeedRow).values(
                claimed_by="thief", claimed_until=datetime.now(UTC) + timedelta(hours=1)))
        return Reply(body=rss("stolen", 2))

    url = loopback_server.route("/feed", steal)
    before = coordination.STATS.snapshot()["lost_leases"]
    with poller_for(write_config(tmp_path / "c.toml", [{"url": url}]), database_url) as poller:
        assert [o.status for o in poller.cycle()] == ["lost"]
        (row,) = rows(poller.sessions).values()
        assert item_counts(poller.sessions) == {}
    engine.dispose()
    assert (row.claimed_by, row.last_checked_at) == ("thief", None)
    assert coordination.STATS.snapshot()["lost_leases"] == before + 1


def test_heartbeat_renews_held_leases_and_says_when_it_stops(database_url: str) -> None:
    """A worker's heartbeat keeps the leases it holds alive past their first expiry and
    writes its row; after stop() the row says stopped."""
    sessions = _sessions(database_url)
    _feeds(sessions, 1)
    worker = Worker(role="poller", lease=timedelta(seconds=1))
    with db.transaction(sessions) as session:
        (feed,) = store.claim_feeds(session, worker.id, datetime.now(UTC), worker.until())
    worker.held.add("feeds", [feed.id])
    with workers.running(worker, sessions):
        time.sleep(1.6)
        (row,) = rows(sessions).values()
        assert row.claimed_until and row.claimed_until > datetime.now(UTC)
    with sessions() as session:
        (beat,) = session.scalars(select(WorkerRow))
    assert (beat.id, beat.role, beat.claims) == (worker.id, "poller", 1)
    assert beat.stopped_at is not None and "lock_wait_seconds" in beat.stats


# --- translation --------------------------------------------------------------------------


class SlowTranslator(FakeTranslator):
    """The fake translator, slow enough that two sweeps overlap."""

    def translate(self, route: Any, texts: Any) -> list[str]:
        time.sleep(0.2)
        return super().translate(route, texts)


def test_two_sweeps_translate_each_item_once(database_url: str, tmp_path: Path) -> None:
    """Two workers sweeping at once share the pending items: each item is translated by
    one of them, and together they translate all four."""
    settings, sessions = _setup(database_url, tmp_path, "never")
    settings = replace(settings, translation=replace(settings.translation, sweep_batch=1))
    fakes = [SlowTranslator(), SlowTranslator()]
    reports: list[Any] = []

    def run(fake: FakeTranslator) -> None:
        from monitor.translating import sweep

        reports.append(sweep(settings, sessions, translator=fake,
                             worker=workers.worker_for(settings, "translator")))

    threads = [threading.Thread(target=run, args=(fake,)) for fake in fakes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    titles = [t for fake in fakes for t in fake.texts]
    assert sorted(r.done for r in reports) != [0, 4], "both workers translated"
    assert sum(r.done for r in reports) == 4
    assert len(titles) == len(set(titles))  # nothing went to the model twice


def test_a_translation_whose_lease_was_taken_is_not_written(database_url: str,
                                                            tmp_path: Path) -> None:
    """An item whose lease another worker took over while the model ran keeps that
    worker's claim and stays pending; the rest of the batch is written."""
    from monitor.translating import sweep

    settings, sessions = _setup(database_url, tmp_path, "never")

    class Thief(FakeTranslator):
        def translate(self, route: Any, texts: Any) -> list[str]:
            with db.transaction(sessions) as session:
                session.execute(update(ItemRow).where(ItemRow.outlet == "plain").values(
                    claimed_by="thief", claimed_until=datetime.now(UTC) + timedelta(hours=1)))
            return super().translate(route, texts)

    batch = replace(settings, translation=replace(settings.translation, sweep_batch=10))
    report = sweep(batch, sessions, translator=Thief())
    with sessions() as session:
        plain = session.scalars(select(ItemRow).where(ItemRow.outlet == "plain")).one()
    assert report.done == 3
    assert (plain.translation_status, plain.claimed_by) == ("pending", "thief")


# --- stories under concurrency -------------------------------------------------------------

WIRE = ("Japanese Defense Minister Gen Nakatani met his Turkish counterpart Yasar Guler in "
        "Ankara on Tuesday, pledging to expand defense industry cooperation as Tokyo weighs "
        "buying drones from the NATO member. The two ministers agreed to hold consultations "
        "between senior officials on defense equipment and technology, the ministry said, "
        "after talks that lasted about 100 minutes and ran longer than scheduled.")
COPIES = {
    "same text, another outlet": ("Japan defence chief visits Ankara", WIRE),
    "edited copy": ("Japan defence chief visits Ankara",  # another opening: another hash
                    WIRE.replace("Japanese Defense Minister", "Japan's defence minister")),
}


@pytest.mark.postgres
@pytest.mark.parametrize("copy", sorted(COPIES))
def test_two_copies_ingested_at_the_same_moment_make_one_story(postgres_url: str,
                                                              copy: str) -> None:
    """A second worker ingesting a copy of a story while the first one's transaction is
    still open waits for it (the advisory locks on identity and band keys), then joins
    its story instead of starting another."""
    from monitor.pipeline import Pipeline, SourceContext, ingest
    from monitor.types import Article

    sessions = _sessions(postgres_url)
    settings = replace(Settings(), dedup=replace(Settings().dedup, embedder="none"))
    pipeline = Pipeline.from_settings(settings)
    published = datetime(2025, 8, 20, 9, tzinfo=UTC)
    first = Article("Nakatani visits Ankara", url="https://a.example/1", text=WIRE,
                    published=published)
    title, text = COPIES[copy]
    second = Article(title, url="https://b.example/1", text=text, published=published)

    def ingest_second() -> None:
        with db.transaction(sessions) as session:
            ingest(session, [second], SourceContext("b", outlet="B"), pipeline, NOW)

    with db.transaction(sessions) as session:
        ingest(session, [first], SourceContext("a", outlet="A"), pipeline, NOW)
        racer = threading.Thread(target=ingest_second)
        racer.start()
        racer.join(1.0)
        assert racer.is_alive(), "the second ingest waits for the first to commit"
    racer.join(30)
    with sessions() as session:
        links = session.execute(select(StoryItemRow.story_id)).scalars().all()
    assert len(links) == 2 and len(set(links)) == 1


# --- the digest -----------------------------------------------------------------------------


@pytest.mark.postgres
def test_one_digest_sender_per_day(postgres_url: str, smtp_server: Any) -> None:
    """While another worker holds the day's digest lock, a delivery run sends nothing and
    says the recipient is held; once it is free, the digest goes out once."""
    result = CliRunner().invoke(cli, ["--config", str(CONFIG), "--database-url", postgres_url,
                                      "backfill", str(SEEDS)])
    assert result.exit_code == 0, result.output
    server = smtp_server()
    loaded = config.load(None, database_url=postgres_url, environ={})
    settings = replace(loaded, digest=replace(
        loaded.digest, recipients=("a@example.org",), smtp_host="127.0.0.1",
        smtp_port=server.port, smtp_tls="none", send_empty=True))
    sessions = _sessions(postgres_url)
    digest = digest_job.build(settings, sessions, NOW.date())
    target = mailer.target_of(settings.digest)
    with sessions() as other, other.begin():
        assert coordination.try_xact_lock(other, "digest", NOW.date().isoformat())
        held = digest_job.deliver(settings, sessions, digest, ["a@example.org"], target)
    sent = digest_job.deliver(settings, sessions, digest, ["a@example.org"], target)
    again = digest_job.deliver(settings, sessions, digest, ["a@example.org"], target)
    assert (held.held, held.sent) == (("a@example.org",), ())
    assert sent.sent == ("a@example.org",) and again.already == ("a@example.org",)
    assert len(server.messages) == 1


# --- status ----------------------------------------------------------------------------------


def test_status_shows_workers_backlog_and_last_digest(database_url: str,
                                                      monitor: Invoke) -> None:
    """`monitor status --json` lists a running worker with its role and claims, the
    backlog, and no digest yet; the text form says the same in lines."""
    monitor("backfill", str(SEEDS))
    sessions = _sessions(database_url)
    worker = Worker(role="translator")
    worker.held.add("translations", [1, 2])
    heartbeat = workers.Heartbeat(worker, sessions)
    heartbeat.beat()
    result = monitor("status", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    (shown,) = found["workers"]
    assert (shown["id"], shown["role"], shown["state"], shown["claims"]) == (
        worker.id, "translator", "running", 2)
    assert set(shown["stats"]) >= {"lock_wait_seconds", "retries", "lost_leases"}
    assert found["backlog"]["due_feeds"] == 0
    assert found["backlog"]["pending_translations"] >= 1
    assert set(found["backlog"]) == {"due_feeds", "claimed_feeds", "pending_translations",
                                     "pending_embeddings"}
    assert found["last_digest"] is None
    heartbeat.beat(stopped=True)
    lines = monitor("status").stdout.splitlines()
    assert lines[0] == "workers seen in the last 10 min: 1"
    assert "translator" in lines[1] and "stopped" in lines[1]
    assert lines[2].startswith("backlog: 0 feeds due") and lines[3] == "last digest: none sent"


# --- roles ---------------------------------------------------------------------------------


class Recorder:
    """Stands in for APScheduler's BackgroundScheduler: records the jobs added."""

    jobs: list[str] = []

    def __init__(self, **_kwargs: Any) -> None:
        Recorder.jobs = []

    def add_job(self, *_args: Any, id: str, **_kwargs: Any) -> None:  # noqa: A002
        Recorder.jobs.append(id)

    def start(self) -> None:
        """Nothing runs."""

    def shutdown(self, wait: bool = True) -> None:
        """Nothing to stop."""


@pytest.mark.parametrize(("role", "jobs"), [
    ("poller", ["poll", "digest", "digest-retry"]),
    ("translator", ["translate", "dedup-sweep"]),
    ("all", ["poll", "digest", "digest-retry", "translate", "dedup-sweep"])])
def test_roles_choose_the_jobs(role: str, jobs: list[str], tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A poller polls and sends the digest, a translator runs the two sweeps, all does
    everything."""
    import apscheduler.schedulers.background as background

    monkeypatch.setattr(background, "BackgroundScheduler", Recorder)
    settings = replace(Settings(), digest=replace(Settings().digest, recipients=("a@b.c",)))
    sessions = _sessions(f"sqlite:///{tmp_path / 'm.db'}")
    poller = daemon.Poller(settings, sessions) if role != "translator" else None
    stop = threading.Event()
    stop.set()
    worker = workers.worker_for(settings, role)
    assert daemon._forever(settings, sessions, worker, stop, poller, False) == 0
    assert Recorder.jobs == jobs


def test_once_needs_a_polling_role(monitor: Invoke) -> None:
    """`run --once --role translator` is a usage error."""
    result = monitor("run", "--once", "--role", "translator")
    assert result.exit_code == 2 and "--role poller or all" in result.output


# --- SQLite: one daemon per file --------------------------------------------------------------


def _run(config_path: Path, url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "monitor", "--config", str(config_path),
                             "--database-url", url, "run", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_daemon_on_one_sqlite_file_refuses(tmp_path: Path,
                                                    loopback_server: LoopbackServer) -> None:
    """While `monitor run` holds a SQLite file, a second one exits 1 with one line naming
    the first; after the first is killed (-9), a new daemon starts and frees the lease
    it left on a feed at once instead of waiting for it to lapse."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    feed = loopback_server.route("/feed", Reply(body=rss("single", 1)))
    path = write_config(tmp_path / "c.toml", [{"url": feed}], detector=FEW_ITEMS_DETECTOR)
    first = _run(path, url)
    sessions = _sessions(url)
    _wait(lambda: _count_workers(sessions) == 1, first)
    second = _run(path, url, "--once")
    out, err = second.communicate(timeout=60)
    assert second.returncode == 1, out + err
    assert err.strip().splitlines() == [
        f"monitor: another `monitor run` (pid {first.pid}) is using {tmp_path / 'm.db'}: "
        "a SQLite database serves one daemon; stop that one, or use PostgreSQL to run "
        "several workers"]
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    with db.transaction(sessions) as session:  # as if it died holding the feed
        session.execute(update(FeedRow).values(
            claimed_by="dead", claimed_until=datetime.now(UTC) + timedelta(hours=1),
            next_check_at=datetime.now(UTC)))
    third = _run(path, url, "--once")
    out, err = third.communicate(timeout=60)
    assert third.returncode == 0, err
    assert "polled 1 feeds" in out


def _count_workers(sessions: Any) -> int:
    try:
        with sessions() as session:
            return len(session.scalars(select(WorkerRow.id)).all())
    except OperationalError:
        return 0


def _wait(condition: Any, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# --- retries ---------------------------------------------------------------------------------


class Deadlock(Exception):
    sqlstate = "40P01"


def _failing(*errors: BaseException) -> Any:
    """A unit of work that raises ``errors`` one per call, then returns "done"."""
    pending = list(errors)

    def work() -> str:
        if pending:
            raise pending.pop(0)
        return "done"
    return work


def test_a_transaction_that_lost_a_deadlock_runs_again() -> None:
    """A deadlock victim is retried, and the retry is counted; other errors are not."""
    from sqlalchemy.exc import DBAPIError

    before = coordination.STATS.snapshot()["retries"]
    work = _failing(DBAPIError("UPDATE", {}, Deadlock()))
    assert coordination.retrying(work, "test") == "done"
    assert coordination.STATS.snapshot()["retries"] == before + 1
    with pytest.raises(DBAPIError):
        coordination.retrying(_failing(DBAPIError("SELECT", {}, ValueError("no"))), "test")
