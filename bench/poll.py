"""Benchmark the daemon's polling: 1,000 feeds of 50 items on 1,000 loopback hosts.

    .venv/bin/python bench/poll.py [--feeds 1000] [--items 50] [--delay 0.05]
                                   [--concurrency 50] [--repeat 3] [--cycles 10]
                                   [--churn 0.02] [--output bench/results/poll.md]

A server process (``_serve`` below: asyncio, no framework, so that it costs little) listens
on 127.0.1.1, 127.0.1.2, ... (the whole 127.0.0.0/8 is loopback), one address per feed, and
answers every request after ``--delay``. The feeds come from bench/corpus.py (realistic
RSS and Atom in 16 languages, about 1.4 KB per item). Even feeds keep their ETag and answer
304 to If-None-Match; odd feeds send the same body with a new ETag every time. So a second
cycle is half 304, half "unchanged body", and costs no parsing. From the third request of
a URL on, a ``--churn`` share of the feeds publish one new item per request, so that later
cycles parse and store too.

1. Fetch layer, in this process: the daemon's fetching path (``make_client``, ``HostGate``,
   ``fetch``) over every feed at ``--concurrency``, for each transport, twice (no
   validators, then the validators the first fetch got); wall time against the ideal
   feeds x delay / concurrency, and this process's CPU per request (the server is another
   process).
2. and 3. The real ``monitor run`` (the CLI entry, its scheduler tick shortened to 1 s) on a
   fresh SQLite file for ``--cycles`` cycles; after each cycle this process makes every
   feed due again and reads the daemon's CPU time and VmRSS from /proc. Cycle 1 stores every
   item, cycle 2 is all 304 or unchanged. Cycle 1 also loads the language models on first
   use; a child process measures that cost (and the RSS of each import) on its own.

Goals (issue 3): (1) wall <= 1.3 x ideal and <= 1 ms CPU per request; (2) cycle 2 costs at
most 1/20 of cycle 1's CPU per feed; (3) RSS < 300 MB after 10 cycles, and it grows by at
most 5 % from cycle 5 to cycle 10.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `bench` and `monitor` import from here
    sys.path.insert(0, str(ROOT))

OUTPUT = ROOT / "bench" / "results" / "poll.md"
CONFIG = ROOT / "config.toml"
WALL_GOAL = 1.3
CPU_GOAL_MS = 1.0
RATIO_GOAL = 20
RSS_GOAL_MB = 300
GROWTH_GOAL = 0.05
PER_OCTET = 250
FIRST_CHURN = 3
TRANSPORTS = ("aiohttp", "httpx")
PARSE_SAMPLE = 50
ALL_LANGUAGES = "language detector: long and short texts in all 16 languages"
CYCLE_TIMEOUT = 1800.0
POLL_SECONDS = 0.1


def address(index: int) -> str:
    """The loopback address of feed ``index``: 127.0.1.1, 127.0.1.2, ..., 127.0.2.1, ..."""
    return f"127.0.{1 + index // PER_OCTET}.{1 + index % PER_OCTET}"


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError("VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the server (a separate process) -------------------------------------------------


class _Feeds:
    """What each address answers: its feed, with the ETag and churn policy described above."""

    def __init__(self, files: Sequence[Path], delay: float, churn: float) -> None:
        self.bodies = [path.read_bytes() for path in files]
        self.atom = [path.suffix == ".atom" for path in files]
        self.by_address = {address(i): i for i in range(len(files))}
        self.period = round(1 / churn) if churn > 0 else 0
        self.served: Counter[bytes] = Counter()
        self.delay = delay

    def answer(self, index: int, head: bytes) -> bytes:
        path = head.split(b" ", 2)[1]
        self.served[path] += 1
        count = self.served[path]
        changes = [n for n in range(FIRST_CHURN, count + 1)
                   if self.period and (index + n) % self.period == 0]
        stable = index % 2 == 0
        etag = b'"%d-%d"' % (index, len(changes) if stable else count)
        if stable and _header(head, b"if-none-match") == etag:
            return b"HTTP/1.1 304 Not Modified\r\nETag: %s\r\n\r\n" % etag
        body = self._body(index, changes)
        kind = b"application/atom+xml" if self.atom[index] else b"application/rss+xml"
        return (b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\nETag: %s\r\n"
                b"\r\n%s" % (kind, len(body), etag, body))

    def _body(self, index: int, changes: Sequence[int]) -> bytes:
        body = self.bodies[index]
        if not changes:
            return body
        marker = b"<entry>" if self.atom[index] else b"<item>"
        at = body.index(marker)
        news = b"".join(_news(index, n, self.atom[index]) for n in reversed(changes))
        return body[:at] + news + body[at:]


def _news(index: int, number: int, atom: bool) -> bytes:
    """One new item, unique to this feed and request, long enough to be fingerprinted."""
    title = f"Outlet {index} update {number}: talks on regional drone procurement go on"
    link = f"https://www.outlet{index:04d}.example/updates/{number}.html"
    text = (f"Update {number} from outlet {index}. Officials met again on Tuesday to "
            "discuss the procurement of surveillance drones, export rules and the budget "
            "for the coming fiscal year; no agreement was announced after the meeting.")
    if atom:
        return (f'<entry><title>{title}</title><link rel="alternate" href="{link}"/>'
                f"<id>{link}</id><updated>2025-06-02T08:00:00+00:00</updated>"
                f"<summary>{text}</summary></entry>\n").encode()
    return (f"<item><title>{title}</title><link>{link}</link><guid>{link}</guid>"
            f"<pubDate>Mon, 02 Jun 2025 08:00:00 GMT</pubDate>"
            f"<description>{text}</description></item>\n").encode()


def _header(head: bytes, name: bytes) -> bytes | None:
    start = head.lower().find(b"\r\n" + name + b":")
    if start < 0:
        return None
    return head[start + len(name) + 3:].split(b"\r\n", 1)[0].strip()


class _Connection(asyncio.Protocol):
    """HTTP/1.1 keep-alive, GET only, each answer ``delay`` seconds after its request."""

    def __init__(self, feeds: _Feeds) -> None:
        self.feeds = feeds
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.index = self.feeds.by_address[transport.get_extra_info("sockname")[0]]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        loop = asyncio.get_running_loop()
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            loop.call_later(self.feeds.delay, self._reply, head)

    def _reply(self, head: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(self.feeds.answer(self.index, head))


async def _serve(files: Sequence[Path], delay: float, churn: float) -> None:
    loop = asyncio.get_running_loop()
    feeds = _Feeds(files, delay, churn)
    first = await loop.create_server(lambda: _Connection(feeds), address(0), 0)
    port = first.sockets[0].getsockname()[1]
    for index in range(1, len(files)):
        await loop.create_server(lambda: _Connection(feeds), address(index), port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(port, flush=True)
    await stop.wait()


@dataclass(frozen=True)
class Server:
    """The running server: its process id, port and files (feed ``i`` is file ``i``)."""

    pid: int
    port: int
    files: tuple[Path, ...]

    def urls(self, run: str) -> list[str]:
        """Every feed's URL; each ``run`` has its own paths, hence its own request counts."""
        return [f"http://{address(i)}:{self.port}/{run}/{path.name}"
                for i, path in enumerate(self.files)]


@contextmanager
def serving(files: Sequence[Path], delay: float, churn: float) -> Iterator[Server]:
    """Run the server in its own process over ``files`` until the block ends."""
    command = [sys.executable, __file__, "_serve", str(delay), str(churn)]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n".join(map(str, files)))  # too many for a command line
    proc.stdin.close()
    try:
        yield Server(proc.pid, int(proc.stdout.readline()), tuple(files))
    finally:
        proc.terminate()
        proc.wait(10)


# --- 1. the fetch layer --------------------------------------------------------------


@dataclass(frozen=True)
class FetchRun:
    """One fetch-layer cycle over every feed."""

    transport: str
    cycle: int
    wall: float
    cpu: float
    server_cpu: float
    answers: Counter[str]

    @property
    def requests(self) -> int:
        return sum(self.answers.values())


def _fetch_all(urls: Sequence[str], validators: dict[str, Any], transport: str,
               concurrency: int) -> tuple[list[Any], float, float]:
    """Fetch every URL as the poller does; returns the results, wall and CPU seconds."""
    from monitor.config import FetchSettings, Settings
    from monitor.errors import FetchError
    from monitor.fetch import HostGate, Validators, fetch, make_client
    from monitor.poll import limits_of

    settings = FetchSettings(concurrency=concurrency)
    limits = limits_of(Settings(fetch=settings))

    async def one(client: Any, gate: HostGate, url: str) -> Any:
        async with gate.slot(urlsplit(url).hostname or url):
            try:
                return await fetch(client, url, validators.get(url, Validators()), limits)
            except FetchError as exc:
                return exc

    async def cycle() -> list[Any]:
        gate = HostGate(settings.per_host_delay, concurrency)
        async with make_client(limits, transport) as client:  # type: ignore[arg-type]
            return list(await asyncio.gather(*(one(client, gate, url) for url in urls)))

    return _timed(cycle)


def _timed(cycle: Callable[[], Coroutine[Any, Any, list[Any]]],
           ) -> tuple[list[Any], float, float]:
    """Run one cycle on a fresh event loop; returns its results, wall and CPU seconds."""
    cpu, wall = time.process_time(), time.perf_counter()
    results = asyncio.run(cycle())
    return results, time.perf_counter() - wall, time.process_time() - cpu


async def _aiohttp_alone(urls: Sequence[str], concurrency: int) -> list[str]:
    """A reference: aiohttp's own client, without httpx and monitor; bodies read and hashed."""
    import aiohttp

    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        async def one(url: str) -> str:
            async with gate, session.get(url) as response:
                hashlib.sha256(await response.read()).hexdigest()
                return str(response.status)
        return list(await asyncio.gather(*map(one, urls)))


async def _raw_sockets(urls: Sequence[str], concurrency: int) -> list[str]:
    """A reference: what this machine and server allow, one GET per connection, no library."""
    gate = asyncio.Semaphore(concurrency)

    async def one(url: str) -> str:
        parts = urlsplit(url)
        async with gate:
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            writer.write(f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(int(_header(head, b"content-length") or 0))
            writer.close()
            return head.split(b" ", 2)[1].decode()
    return list(await asyncio.gather(*map(one, urls)))


Reference = Callable[[Sequence[str], int], Coroutine[Any, Any, list[str]]]
REFERENCES: dict[str, Reference] = {"aiohttp alone": _aiohttp_alone, "raw sockets": _raw_sockets}


def _answer(result: Any) -> str:
    from monitor.errors import FetchError

    if isinstance(result, str):
        return result
    if isinstance(result, FetchError):
        return "error"
    if result.status == 304:
        return "304"
    return "200 unchanged" if result.not_modified else "200"


def fetch_layer(server: Server, concurrency: int, repeat: int) -> list[FetchRun]:
    """Per transport, cycle 1 (no validators) then cycle 2 (cycle 1's validators); then
    cycle 1 of each reference. Interleaved, so that load on the machine hits them all."""
    from monitor.fetch import Validators

    runs: list[FetchRun] = []
    for attempt in range(repeat):
        for transport in TRANSPORTS:
            urls, validators = server.urls(f"{transport}{attempt}"), dict[str, Any]()
            for number in (1, 2):
                served = cpu_seconds(server.pid)
                results, wall, cpu = _fetch_all(urls, validators, transport, concurrency)
                runs.append(FetchRun(transport, number, wall, cpu,
                                     cpu_seconds(server.pid) - served,
                                     Counter(map(_answer, results))))
                validators = {url: Validators(r.etag, r.last_modified, r.checksum)
                              for url, r in zip(urls, results, strict=True)
                              if _answer(r) != "error"}
        for name, reference in REFERENCES.items():
            urls, served = server.urls(f"{name.split()[0]}{attempt}"), cpu_seconds(server.pid)
            results, wall, cpu = _timed(functools.partial(reference, urls, concurrency))
            runs.append(FetchRun(name, 1, wall, cpu, cpu_seconds(server.pid) - served,
                                 Counter(map(_answer, results))))
    return runs


def parse_costs(files: Sequence[Path]) -> dict[str, float]:
    """CPU seconds per feed of feedparser alone and of monitor's whole parse stage."""
    import feedparser

    from monitor.parse import parse_feed

    bodies = [path.read_bytes() for path in files]
    costs = {}
    for label, parse in (("feedparser.parse", feedparser.parse),
                         ("monitor.parse.parse_feed", parse_feed)):
        parse(bodies[0])  # first-use imports
        cpu = own_cpu()
        for body in bodies:
            parse(body)
        costs[label] = (own_cpu() - cpu) / len(bodies)
    return costs


# --- what the process is made of (a child process) -----------------------------------


def _child_steps(config_path: str) -> None:
    """Run in the child: print RSS and CPU after each import and each model load."""
    _step("python started")
    import sqlalchemy  # noqa: F401

    import monitor.models  # noqa: F401
    _step("SQLAlchemy, models")
    import httpx_aiohttp  # noqa: F401
    _step("httpx, aiohttp")
    import feedparser  # noqa: F401
    _step("feedparser")
    from monitor import config
    from monitor.pipeline import Pipeline
    from monitor.poll import Poller  # noqa: F401
    _step("rest of monitor.poll")
    import apscheduler.schedulers.background  # noqa: F401
    import click  # noqa: F401

    import monitor.cli  # noqa: F401
    import monitor.db
    monitor.db.alembic_config(monitor.db.make_engine("sqlite://"))
    _step("CLI, APScheduler, Alembic")
    _warm(Pipeline.from_settings(config.load(config_path)).detector)


def _warm(detector: Any) -> None:
    """Load what the detector needs for a long text, then for the corpus's 16 languages,
    long texts and short (the default detector asks lingua about short ones only)."""
    from bench.corpus import sentences

    texts = sentences()
    detector.detect(" ".join(texts["en"][:5]))
    _step("language detector: one long English text")
    for lines in texts.values():
        detector.detect(" ".join(lines[:5]))
        for line in lines[:5]:
            detector.detect(line[:40])
    _step(ALL_LANGUAGES)


def _step(label: str) -> None:
    print(json.dumps({"label": label, "rss": rss_mb(), "cpu": own_cpu()}), flush=True)


@dataclass(frozen=True)
class Step:
    label: str
    rss: float
    cpu: float


def process_steps(config_path: Path) -> list[Step]:
    command = [sys.executable, __file__, "_steps", str(config_path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"the breakdown child failed:\n{done.stderr[-4000:]}")
    return [Step(**json.loads(line)) for line in done.stdout.splitlines()]


# --- 2. and 3. the real `monitor run` ------------------------------------------------


@dataclass(frozen=True)
class DaemonCycle:
    """One cycle of the daemon: seconds and CPU from its claim to its last feed written."""

    number: int
    wall: float
    cpu: float
    rss: float
    items: int
    new: int
    failed: int


class _Rows:
    """This process's view of the daemon's database."""

    def __init__(self, database_url: str) -> None:
        from monitor import db

        self.engine = db.make_engine(database_url)

    def _count(self, query: Any) -> int:
        from sqlalchemy.exc import OperationalError

        try:
            with self.engine.connect() as connection:
                return int(connection.scalar(query) or 0)
        except OperationalError:  # the daemon has not built the schema yet
            return 0

    def claimed(self) -> int:
        from sqlalchemy import func, select

        from monitor.models import FeedRow

        return self._count(select(func.count()).select_from(FeedRow)
                           .where(FeedRow.claimed_by.is_not(None)))

    def checked_since(self, when: datetime) -> int:
        """Feeds written since ``when`` whose claim is gone: the cycle's finished feeds."""
        from sqlalchemy import func, select

        from monitor.models import FeedRow

        return self._count(select(func.count()).select_from(FeedRow).where(
            FeedRow.last_checked_at >= when, FeedRow.claimed_by.is_(None)))

    def failed_since(self, when: datetime) -> int:
        from sqlalchemy import func, select

        from monitor.models import FeedRow

        return self._count(select(func.count()).select_from(FeedRow)
                           .where(FeedRow.last_error_at >= when))

    def items(self) -> int:
        from sqlalchemy import func, select

        from monitor.models import ItemRow

        return self._count(select(func.count()).select_from(ItemRow))

    def make_all_due(self, now: datetime) -> None:
        from sqlalchemy import update

        from monitor.models import FeedRow

        with self.engine.begin() as connection:
            connection.execute(update(FeedRow).values(next_check_at=now - timedelta(seconds=1)))


@dataclass(frozen=True)
class DaemonRun:
    startup_cpu: float
    cycles: list[DaemonCycle]
    exit_code: int


def daemon_cycles(config_path: Path, database_url: str, feeds: int, cycles: int,
                  log_path: Path) -> DaemonRun:
    """Run `monitor run` for ``cycles`` cycles, making every feed due after each."""
    rows = _Rows(database_url)
    command = [sys.executable, "-m", "monitor", "--config", str(config_path),
               "--database-url", database_url, "--log-format", "json", "run", "--force"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    samples, startup, items = [], 0.0, 0
    try:
        since = datetime.now(UTC)
        for number in range(1, cycles + 1):
            _wait(proc, lambda since=since: rows.claimed() > 0 or rows.checked_since(since) > 0)
            started, cpu = time.perf_counter(), cpu_seconds(proc.pid)
            startup = startup or cpu
            _wait(proc, lambda since=since: rows.checked_since(since) >= feeds)
            now_items = rows.items()
            samples.append(DaemonCycle(number, time.perf_counter() - started,
                                       cpu_seconds(proc.pid) - cpu, rss_mb(proc.pid),
                                       now_items, now_items - items, rows.failed_since(since)))
            items, since = now_items, datetime.now(UTC)
            rows.make_all_due(since)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        rows.engine.dispose()
    return DaemonRun(startup, samples, code)


def _wait(proc: subprocess.Popen[bytes], done: Any) -> None:
    deadline = time.monotonic() + CYCLE_TIMEOUT
    while not done():
        if proc.poll() is not None:
            raise RuntimeError(f"monitor run exited with {proc.returncode}; see its log")
        if time.monotonic() > deadline:
            raise RuntimeError(f"a daemon cycle took longer than {CYCLE_TIMEOUT:g} s")
        time.sleep(POLL_SECONDS)


# --- the report ----------------------------------------------------------------------


@dataclass(frozen=True)
class Results:
    args: argparse.Namespace
    command: str
    load: tuple[float, ...]
    corpus_items: int
    corpus_bytes: int
    fetches: list[FetchRun]
    parse: dict[str, float] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    daemon: DaemonRun | None = None


def _fetch_rows(results: Results) -> list[str]:
    ideal = results.args.feeds * results.args.delay / results.args.concurrency
    rows = ["| client | cycle | answers | wall s | x ideal | client CPU ms/request | "
            "server CPU ms/request | each run: wall s / client CPU ms |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for client, number in dict.fromkeys((r.transport, r.cycle) for r in results.fetches):
        runs = [r for r in results.fetches if r.transport == client and r.cycle == number]
        wall = statistics.median(r.wall for r in runs)
        cpu = statistics.median(r.cpu / r.requests * 1000 for r in runs)
        server = statistics.median(r.server_cpu / r.requests * 1000 for r in runs)
        each = ", ".join(f"{r.wall:.2f} / {r.cpu / r.requests * 1000:.2f}" for r in runs)
        answers = ", ".join(f"{n} x {k}" for k, n in sorted(runs[0].answers.items()))
        label = client if client in REFERENCES else f"monitor, {client} transport"
        rows.append(f"| {label} | {number} | {answers} | {wall:.2f} | {wall / ideal:.2f} | "
                    f"{cpu:.2f} | {server:.2f} | {each} |")
    return rows


def _load(values: Sequence[float]) -> str:
    return ", ".join(f"{x:.1f}" for x in values)


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _medians(results: Results, client: str, number: int = 1) -> tuple[float, float]:
    """Median wall seconds and client CPU ms per request of one client's cycle."""
    runs = [r for r in results.fetches if r.transport == client and r.cycle == number]
    return (statistics.median(r.wall for r in runs),
            statistics.median(r.cpu / r.requests * 1000 for r in runs))


def _fetch_summary(results: Results) -> list[str]:
    ideal = results.args.feeds * results.args.delay / results.args.concurrency
    wall, cpu = _medians(results, "aiohttp")
    floor, _ = _medians(results, "raw sockets")
    alone_wall, alone_cpu = _medians(results, "aiohttp alone")
    httpx_wall, httpx_cpu = _medians(results, "httpx")
    return [
        f"Default transport (aiohttp), cycle 1: **{wall / ideal:.2f}x** the ideal {ideal:g} s "
        f"(goal <= {WALL_GOAL}x: {_verdict(wall / ideal <= WALL_GOAL)}), **{cpu:.2f} ms** "
        f"client CPU per request (goal <= {CPU_GOAL_MS:g} ms: "
        f"{_verdict(cpu <= CPU_GOAL_MS)}). httpx's own transport: {httpx_wall / ideal:.2f}x, "
        f"{httpx_cpu:.2f} ms; the aiohttp transport stays the default.", "",
        f"For scale, in the same minutes: raw sockets (no HTTP library) took {floor:.2f} s, "
        "which is what this machine and server allow at the time; aiohttp alone (no httpx, "
        f"no monitor code) {alone_wall:.2f} s and {alone_cpu:.2f} ms per request. One event "
        f"loop spends about {cpu:.2f} s of CPU on {results.args.feeds} requests, so even on "
        f"an idle core the cycle cannot end before max(ideal, CPU) + {results.args.delay:g} s."]


def _cycles(results: Results) -> list[DaemonCycle]:
    assert results.daemon is not None
    return results.daemon.cycles


def _daemon_rows(results: Results) -> list[str]:
    rows = ["| cycle | what | wall s | CPU s | CPU ms/feed | new items | failed feeds | RSS MB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in _cycles(results):
        what = ("every feed new" if c.number == 1 else "304 / unchanged" if c.new == 0
                else f"304 / unchanged, {c.new} feeds changed")
        per_feed = c.cpu / results.args.feeds * 1000
        rows.append(f"| {c.number} | {what} | {c.wall:.1f} | {c.cpu:.2f} | {per_feed:.1f} | "
                    f"{c.new} | {c.failed} | {c.rss:.0f} |")
    return rows


def _models_cpu(results: Results) -> float:
    steps = {s.label: s for s in results.steps}
    last = [s for s in results.steps if "CLI" in s.label][0]
    return steps[ALL_LANGUAGES].cpu - last.cpu


def _ratio_summary(results: Results) -> list[str]:
    feeds, cycles = results.args.feeds, _cycles(results)
    # /proc counts CPU in 10 ms ticks: a tiny cycle 2 can read 0, so never divide by 0.
    first, second = cycles[0].cpu / feeds * 1000, max(cycles[1].cpu, 0.01) / feeds * 1000
    models = _models_cpu(results) / feeds * 1000
    warm = first - models
    parse = results.parse
    ideal = feeds * results.args.delay / results.args.concurrency
    return [
        f"Cycle 2 costs **1/{warm / second:.0f}** of cycle 1 per feed (goal <= 1/{RATIO_GOAL}: "
        f"{_verdict(warm / second >= RATIO_GOAL)}), counting cycle 1 without the first-use "
        f"loading of the language models ({models:.1f} ms per feed: {_models_cpu(results):.1f}"
        f" s measured on its own, an upper bound); with it, 1/{first / second:.0f}.",
        "",
        f"Cycle 1 took {cycles[0].wall:.0f} s of wall time for {cycles[0].cpu:.0f} s of CPU: "
        "parsing and storing run on the one writer thread, so the cycle is bound by one core "
        f"(the fetches themselves need about {ideal:g} s). What a changed 50-item feed "
        f"costs, measured on {PARSE_SAMPLE} of them in this process: feedparser.parse (defaults) "
        f"{parse['feedparser.parse'] * 1000:.0f} ms, monitor's whole parse stage "
        f"{parse['monitor.parse.parse_feed'] * 1000:.0f} ms; the rest of the "
        f"{warm:.0f} ms is the pipeline (language, topics, fingerprints) and the store.",
    ]


def _memory_summary(results: Results) -> list[str]:
    cycles = _cycles(results)
    last = cycles[-1]
    lines = [f"RSS after cycle {last.number}: **{last.rss:.0f} MB** (goal < {RSS_GOAL_MB} MB: "
             f"{_verdict(last.rss < RSS_GOAL_MB)})."]
    if len(cycles) >= 10:
        growth = cycles[9].rss / cycles[4].rss - 1
        lines[0] += (f" From cycle 5 to cycle 10: **{growth:+.1%}** (goal <= "
                     f"{GROWTH_GOAL:.0%}: {_verdict(growth <= GROWTH_GOAL)}).")
    lines += ["", "What the process is made of (a fresh child process, one step at a time):",
              "", "| step | RSS MB | + MB | CPU s |", "| --- | --- | --- | --- |"]
    previous: Step | None = None
    for step in results.steps:
        grown = step.rss - previous.rss if previous else step.rss
        cpu = step.cpu - previous.cpu if previous else step.cpu
        lines.append(f"| {step.label} | {step.rss:.0f} | {grown:+.0f} | {cpu:.2f} |")
        previous = step
    models = results.steps[-1].rss - results.steps[-3].rss
    return lines + [
        "", f"The language detector is the largest part: {models:.0f} MB once it has seen "
        "long and short texts in all 16 languages. It loads models on first use, and most "
        "items here are long (the default detector asks lingua about short texts only), so "
        "the daemon above loaded only part of that; a daemon that meets short texts in all "
        f"16 languages holds more than the {results.steps[-1].rss:.0f} MB this child reached "
        "before storing anything."]


def report(results: Results) -> list[str]:
    args = results.args
    ideal = args.feeds * args.delay / args.concurrency
    lines = [
        "# Poll benchmark", "",
        f"Command: `{results.command}`  ",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Machine: {machine()}  ",
        f"Load average (1, 5, 15 min) when the run started: {_load(results.load[:3])}, when it "
        f"ended: {_load(results.load[3:])}. Other jobs share this machine: wall times are "
        "inflated when it is busy, CPU times much less so.", "",
        f"Feeds: {args.feeds} generated by bench/corpus.py (seed {args.seed}), {args.items} "
        f"items each, {results.corpus_bytes / args.feeds / 1024:.0f} KiB per feed, on "
        f"{args.feeds} loopback addresses (127.0.1.1 ...); one asyncio server process answers "
        f"each request after {args.delay * 1000:g} ms. Even feeds answer 304 to their ETag, "
        "odd ones send the same body with a new ETag.", "",
        f"## 1. Fetch layer: make_client + HostGate + fetch, concurrency {args.concurrency}",
        "",
        f"{args.feeds} requests per cycle; ideal {args.feeds} x {args.delay * 1000:g} ms / "
        f"{args.concurrency} = {ideal:g} s; {args.repeat} runs each, interleaved; medians. "
        "Client CPU is this process's, all threads; the server runs in another process. "
        "Cycle 2 sends cycle 1's validators.", "",
        *_fetch_rows(results), "", *_fetch_summary(results), ""]
    return lines + (_daemon_sections(results) if results.daemon else [])


def _daemon_sections(results: Results) -> list[str]:
    assert results.daemon is not None
    args = results.args
    churn = (f" From cycle {FIRST_CHURN} on, {args.churn:.0%} of the feeds publish one new "
             "item per cycle, so that the later cycles parse and store too.") if args.churn else ""
    return [
        "## 2. Full cycles of `monitor run` (fetch, parse, pipeline, SQLite store)", "",
        "The real CLI entry (`python -m monitor --log-format json run --force` with the "
        "scheduler's tick shortened to 1 s) on a fresh SQLite file built by the migrations; "
        f"concurrency {args.concurrency}, default politeness. After each cycle this bench "
        "makes every feed due again. Wall and CPU count from the cycle's claim to its last "
        "feed written; CPU is the daemon's, all threads, from /proc." + churn, "",
        *_daemon_rows(results), "", *_ratio_summary(results), "",
        "## 3. Memory of `monitor run`", "",
        *_memory_summary(results), "",
        f"Before its first cycle (imports, migrations, syncing the feeds) the daemon used "
        f"{results.daemon.startup_cpu:.1f} s of CPU. It exited with {results.daemon.exit_code} "
        "on SIGTERM.",
    ]


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo
                if line.startswith("model name")), platform.processor())
    versions = ", ".join(f"{p} {metadata.version(p)}"
                         for p in ("httpx", "httpx-aiohttp", "aiohttp", "feedparser"))
    return (f"{platform.platform()}; {cpu}; {os.cpu_count()} cores; "
            f"Python {platform.python_version()}; {versions}")


# --- running it ----------------------------------------------------------------------


def write_config(path: Path, urls: Sequence[str], concurrency: int) -> Path:
    """The shipped config's topics, the daemon's defaults but a 1 s scheduler tick, and one
    [[feeds]] per URL."""
    shipped = CONFIG.read_text(encoding="utf-8")
    topics = shipped[shipped.index("[[topics]]"):shipped.index("[[feeds]]")]
    lines = ["[fetch]", f"concurrency = {concurrency}", "", "[workers]", "tick_seconds = 1",
             "", topics.strip(), ""]
    lines += [f'[[feeds]]\nurl = "{url}"\n' for url in urls]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def run(args: argparse.Namespace, command: str) -> Results:
    from bench.corpus import generate

    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="monitor-poll-bench-") as tmp:
        work = Path(tmp)
        corpus = generate(work / "feeds", args.feeds, args.items, args.seed)
        _say(f"{args.feeds} feeds, {corpus.size / 2**20:.0f} MiB; serving them")
        with serving(corpus.files, args.delay, args.churn) as server:
            fetches = fetch_layer(server, args.concurrency, args.repeat)
            results = Results(args, command, load, corpus.items, corpus.size, fetches)
            if args.cycles:
                results = _run_daemon(results, server, corpus.files, work)
    return replace(results, load=load + os.getloadavg())


def _run_daemon(results: Results, server: Server, files: Sequence[Path],
                work: Path) -> Results:
    args = results.args
    _say("fetch layer done; parsing a sample")
    parse = parse_costs(files[:PARSE_SAMPLE])
    config_path = write_config(work / "config.toml", server.urls("daemon"), args.concurrency)
    steps = process_steps(config_path)
    _say(f"breakdown done; running monitor run for {args.cycles} cycles")
    daemon = daemon_cycles(config_path, f"sqlite:///{work / 'daemon.db'}", args.feeds,
                           args.cycles, work / "daemon.log")
    return replace(results, parse=parse, steps=steps, daemon=daemon)


def _say(text: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--items", type=int, default=50, help="items per feed")
    parser.add_argument("--delay", type=float, default=0.05, help="server delay (seconds)")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="fetch-layer runs per transport")
    parser.add_argument("--cycles", type=int, default=10,
                        help="cycles of `monitor run` (0: the fetch layer only)")
    parser.add_argument("--churn", type=float, default=0.02,
                        help="share of feeds with a new item per cycle from cycle 3 on")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["_serve"]:
        files = [Path(line) for line in sys.stdin.read().splitlines() if line]
        asyncio.run(_serve(files, float(args[1]), float(args[2])))
    elif args[:1] == ["_steps"]:
        _child_steps(args[1])
    else:
        options = _parser().parse_args(args)
        command = " ".join([".venv/bin/python bench/poll.py", *args])
        text = "\n".join(report(run(options, command))) + "\n"
        print(text)
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
