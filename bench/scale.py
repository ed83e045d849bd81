"""Benchmark scale-out: items/s ingested by 1 worker on SQLite, 1 worker on PostgreSQL and
3 workers on PostgreSQL, over the same generated corpus served on loopback, in one run.

    .venv/bin/python bench/scale.py [--feeds 240] [--items 25] [--repeat 1]
                                    [--postgres-url URL] [--output bench/results/scale.md]

The corpus comes from bench/corpus.py; bench/poll.py's server process serves it, one
loopback address per feed. Each run gets its own URL paths and a fresh database (a new
SQLite file, or a new schema in the PostgreSQL of ``--postgres-url``, default
``$MONITOR_TEST_POSTGRES_URL``), built by the migrations with every feed row present but
not due. The workers are real ``monitor run`` processes (translation off, no embedding
model: the ingest pipeline alone, near duplicates included). Once each has written its
first heartbeat (models loaded, feeds synced), this process makes every feed due at once
and times until every feed is written.

Reported per run: wall time and items/s; CPU per item of the workers (all threads, from
/proc) and of the PostgreSQL server (every ``postgres`` process on the machine, so other
users of the server count too); and coordination overhead, from the counters each worker
keeps (see monitor/coordination.py) and writes on its row when it stops, as a share of
the workers' wall time (wall x workers): time waiting for locks (taking the story locks
included), in transactions retried after a deadlock, and on work thrown away after a lost
lease (the issue's definition); and, apart, the lease bookkeeping (claiming, renewing and
releasing leases, heartbeats), which runs beside the work in other threads.

Each worker runs in a session of its own, as separate services would: with Linux's
autogroup scheduling, the processes of one session share that session's CPU share, so
three workers started from one shell would get no more CPU than one.

Goals (issue 7): 3 workers >= 1.5x one worker on PostgreSQL; overhead < 10% of wall.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `bench` and `monitor` import from here
    sys.path.insert(0, str(ROOT))

from bench.poll import Server, cpu_seconds, machine, serving  # noqa: E402

OUTPUT = ROOT / "bench" / "results" / "scale.md"
CONFIG = ROOT / "config.toml"
SPEEDUP_GOAL = 1.5
OVERHEAD_GOAL = 0.10
RUN_TIMEOUT = 1800.0
OVERHEAD_KEYS = ("lock_wait_seconds", "retry_seconds", "lost_seconds")
BOOKKEEPING_KEYS = ("claim_seconds",)
SCENARIOS = (("SQLite", "sqlite", 1), ("PostgreSQL", "postgresql", 1),
             ("PostgreSQL", "postgresql", 3))


@dataclass(frozen=True)
class Run:
    """One timed ingest of the whole corpus."""

    label: str
    workers: int
    items: int
    wall: float
    worker_cpu: float
    server_cpu: float
    stats: dict[str, float]
    load: tuple[float, float, float]
    per_worker: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.items / self.wall

    def overhead(self, *keys: str) -> float:
        """Coordination costs (lock waits, retries, lost work without ``keys``) as a share
        of the workers' wall time."""
        return (sum(self.stats.get(k, 0.0) for k in keys or OVERHEAD_KEYS)
                / (self.wall * self.workers))


# --- measuring -------------------------------------------------------------------------


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL server process on this machine."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if "(postgres)" in text:
            fields = text.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@contextmanager
def database(kind: str, work: Path, postgres_url: str) -> Iterator[str]:
    """A fresh SQLite file or PostgreSQL schema, dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{work / f'scale-{uuid.uuid4().hex[:8]}.db'}"
        return
    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in postgres_url else "?"
    try:
        yield f"{postgres_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def write_config(path: Path, urls: Sequence[str]) -> Path:
    """The shipped topics; ingest only (no translation, no embedding model); short ticks."""
    shipped = CONFIG.read_text(encoding="utf-8")
    topics = shipped[shipped.index("[[topics]]"):shipped.index("[[feeds]]")]
    lines = ["[fetch]", "concurrency = 8", "", "[workers]", "tick_seconds = 0.5",
             "claim_seconds = 60", "", "[translation]", "enabled = false", "",
             "[dedup]", 'embedder = "none"', "", topics.strip(), ""]
    lines += [f'[[feeds]]\nurl = "{url}"\n' for url in urls]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class Database:
    """This process's view of the workers' database."""

    def __init__(self, url: str, config_path: Path) -> None:
        from monitor import config, db
        from monitor.poll import Poller

        self.engine = db.make_engine(url)
        db.ensure_schema(self.engine)
        settings = config.load(config_path, database_url=url)
        self.sessions = db.session_factory(self.engine)
        poller = Poller(settings, self.sessions)
        poller.sync()
        poller.writer.shutdown()
        self.set_due(datetime.now(UTC) + timedelta(days=365))

    def scalar(self, query: Any) -> Any:
        with self.engine.connect() as connection:
            return connection.scalar(query)

    def set_due(self, when: datetime) -> None:
        from sqlalchemy import update

        from monitor.models import FeedRow

        with self.engine.begin() as connection:
            connection.execute(update(FeedRow).values(next_check_at=when))

    def ready(self) -> int:
        from sqlalchemy import func, select

        from monitor.models import WorkerRow

        return int(self.scalar(select(func.count()).select_from(WorkerRow)) or 0)

    def done(self, since: datetime) -> int:
        from sqlalchemy import func, select

        from monitor.models import FeedRow

        return int(self.scalar(select(func.count()).select_from(FeedRow).where(
            FeedRow.last_checked_at >= since, FeedRow.claimed_by.is_(None))) or 0)

    def items(self) -> int:
        from sqlalchemy import func, select

        from monitor.models import ItemRow

        return int(self.scalar(select(func.count()).select_from(ItemRow)) or 0)

    def stats(self) -> list[dict[str, Any]]:
        from sqlalchemy import select

        from monitor.models import WorkerRow

        with self.engine.connect() as connection:
            return [dict(s) for s in connection.scalars(select(WorkerRow.stats))]


def _summed(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    keys = (*OVERHEAD_KEYS, *BOOKKEEPING_KEYS, "claims", "lock_waits", "retries",
            "lost_leases")
    return {k: sum(float(r.get(k, 0.0)) for r in rows) for k in keys}


def _wait(procs: Sequence[subprocess.Popen[bytes]], done: Any, what: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    while not done():
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a worker exited while waiting for {what}; see its log")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def timed_run(label: str, kind: str, workers: int, server: Server, work: Path,
              postgres_url: str, feeds: int) -> Run:
    """Start ``workers`` `monitor run` processes, make every feed due, time the ingest."""
    run = f"{kind}{workers}-{uuid.uuid4().hex[:6]}"
    config_path = write_config(work / f"{run}.toml", server.urls(run))
    with database(kind, work, postgres_url) as url:
        rows = Database(url, config_path)
        command = [sys.executable, "-m", "monitor", "--config", str(config_path),
                   "--database-url", url, "--log-format", "json", "-v", "run"]
        logs = [(work / f"{run}-{n}.log").open("wb") for n in range(workers)]
        # A session each, as separate services would have: with Linux's autogroup
        # scheduling, the processes of one session share one session's CPU share.
        procs = [subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                  start_new_session=True) for log in logs]
        try:
            _wait(procs, lambda: rows.ready() == workers, "the workers to start")
            before = _summed(rows.stats())
            load = os.getloadavg()
            cpu, server_cpu = sum(cpu_seconds(p.pid) for p in procs), postgres_cpu()
            started, t0 = time.perf_counter(), datetime.now(UTC)
            rows.set_due(t0)
            _wait(procs, lambda: rows.done(t0) >= feeds, "every feed to be written")
            wall = time.perf_counter() - started
            cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu
            server_cpu = postgres_cpu() - server_cpu
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(60)
            for log in logs:
                log.close()
        after = _summed(rows.stats())
        items = rows.items()
        rows.engine.dispose()
    stats = {k: after[k] - before[k] for k in after}
    polled = [(work / f"{run}-{n}.log").read_text(errors="replace").count('"feed.polled"')
              for n in range(workers)]
    return Run(label, workers, items, wall, cpu, server_cpu if kind != "sqlite" else 0.0,
               stats, load, polled)


# --- the report -------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _median_run(runs: Sequence[Run]) -> Run:
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]


def report(runs: dict[str, list[Run]], command: str, feeds: int, items: int,
           load: tuple[float, ...]) -> list[str]:
    rows = []
    for name, group in runs.items():
        r = _median_run(group)
        rows.append(
            f"| {name} | {r.items} | {r.wall:.1f} | **{r.rate:.0f}** | "
            f"{1000 * r.worker_cpu / r.items:.2f} | "
            f"{(f'{1000 * r.server_cpu / r.items:.2f}' if r.server_cpu else '-')} | "
            f"**{100 * r.overhead():.2f}%** | {100 * r.overhead('lock_wait_seconds'):.2f}% | "
            f"{int(r.stats['retries'])} / {int(r.stats['lost_leases'])} | "
            f"{100 * r.overhead('claim_seconds'):.2f}% | "
            f"{' / '.join(map(str, r.per_worker))} | "
            f"{', '.join(f'{x:.1f}' for x in r.load)} | "
            f"{', '.join(f'{g.rate:.0f}' for g in group)} |")
    one, three = (_median_run(runs[k]) for k in ("1 worker, PostgreSQL",
                                                 "3 workers, PostgreSQL"))
    sqlite = _median_run(runs["1 worker, SQLite"])
    speedup = three.rate / one.rate
    worst = max(r.overhead() for group in runs.values() for r in group)
    bookkeeping = max(r.overhead("claim_seconds") for group in runs.values() for r in group)
    return [
        "# Scale-out benchmark", "",
        f"Command: `{command}`  ",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Machine: {machine()}  ",
        f"Load average (1, 5, 15 min) when the run started: "
        f"{', '.join(f'{x:.1f}' for x in load[:3])}, when it ended: "
        f"{', '.join(f'{x:.1f}' for x in load[3:])}. Other jobs share these 2 cores: the "
        "ceiling for 3 workers is about 2x one worker, less what the others take.", "",
        f"Corpus: {feeds} feeds generated by bench/corpus.py (seed 1), {items} items, one "
        "loopback address per feed, answered at once by bench/poll.py's server process. "
        "Workers: real `monitor run` processes, `fetch.concurrency = 8`, translation off, "
        "`dedup.embedder = none` (the ingest pipeline: parse, language, topics, exact "
        "identity, near duplicates, store). Timed from the moment every feed is made due "
        "(all workers started, models loaded) until every feed is written.", "",
        "## Goals", "",
        "| goal | target | measured | verdict |", "| --- | ---: | ---: | --- |",
        f"| 3 workers / 1 worker, PostgreSQL, items/s | >= {SPEEDUP_GOAL}x | "
        f"**{speedup:.2f}x** | {_verdict(speedup >= SPEEDUP_GOAL)} |",
        f"| coordination overhead (lock waits, retries, lost leases), worst run | "
        f"< {100 * OVERHEAD_GOAL:.0f}% of wall | **{100 * worst:.2f}%** | "
        f"{_verdict(worst < OVERHEAD_GOAL)} |",
        f"| the same with lease bookkeeping added, worst run | (< {100 * OVERHEAD_GOAL:.0f}%) "
        f"| {100 * (worst + bookkeeping):.2f}% at most | "
        f"{_verdict(worst + bookkeeping < OVERHEAD_GOAL)} |", "",
        "## Runs", "",
        "Medians by items/s when repeated (the last column lists every repeat). CPU per "
        "item: the workers' processes, and the PostgreSQL server's (every `postgres` "
        "process on the machine). Overhead: time waiting for locks (taking the story "
        "locks included), in retried transactions and on work lost with a lease, summed "
        "over the workers and divided by wall x workers; bookkeeping: claiming, renewing "
        "and releasing leases and heartbeats, which run beside the work in other threads. "
        "Each worker runs in a session of its own, as separate services would (Linux's "
        "autogroup scheduling gives one session's processes one session's CPU share).", "",
        "| run | items | wall s | items/s | worker CPU ms/item | PostgreSQL CPU ms/item | "
        "overhead | of which lock waits | retries / lost leases | lease bookkeeping | "
        "feeds per worker | load avg at start | items/s, each repeat |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- "
        "| --- |",
        *rows, "",
        f"PostgreSQL with one worker ingests at {one.rate / sqlite.rate:.2f}x the rate of "
        f"SQLite; three workers on PostgreSQL at {speedup:.2f}x one worker.",
    ]


def run(args: argparse.Namespace) -> tuple[dict[str, list[Run]], int, tuple[float, ...]]:
    from bench.corpus import generate

    load = os.getloadavg()
    runs: dict[str, list[Run]] = {}
    with tempfile.TemporaryDirectory(prefix="monitor-scale-bench-") as tmp:
        work = Path(tmp)
        corpus = generate(work / "feeds", args.feeds, args.items, args.seed)
        with serving(corpus.files, 0.0, 0.0) as server:
            for repeat in range(args.repeat):
                for name, kind, workers in SCENARIOS:
                    label = f"{workers} worker{'s' if workers > 1 else ''}, {name}"
                    _say(f"repeat {repeat + 1}: {label}")
                    got = timed_run(label, kind, workers, server, work, args.postgres_url,
                                    args.feeds)
                    _say(f"  {got.items} items in {got.wall:.1f} s: {got.rate:.0f}/s, "
                         f"overhead {100 * got.overhead():.2f}%")
                    runs.setdefault(label, []).append(got)
    return runs, corpus.items, load + os.getloadavg()


def _say(text: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=240)
    parser.add_argument("--items", type=int, default=25, help="items per feed")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--postgres-url", default=os.environ.get(
        "MONITOR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    shown = list(sys.argv[1:] if argv is None else argv)
    runs, items, load = run(args)
    text = "\n".join(report(runs, " ".join([".venv/bin/python bench/scale.py", *shown]),
                            args.feeds, items, load)) + "\n"
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
