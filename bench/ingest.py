"""Benchmark ingest: a generated corpus through `monitor backfill`, against feedparser alone.

    .venv/bin/python bench/ingest.py [--files 200] [--items-per-file 100] [--seed 1]
                                     [--rounds 3] [--output bench/results/ingest.md]

In one run, on the same bytes: (1) feedparser.parse over every file, (2) the real backfill
path (``run_backfill``, progress off) into a fresh SQLite file built by the migrations, with
translation pending, (1) and (2) in interleaved rounds (the best of each is reported), then
the backfill again with a timer around each stage for the breakdown, and
(3) ``store.insert_items`` against raw sqlite3 ``executemany`` into an identical ``items``
table, in transactions of 500 rows each, with the same row values (checked afterwards).

Goals (foundation issue): the whole pipeline costs at most 2.0x feedparser's parse per item;
the store stage at most 2.0x raw ``executemany`` in batches of 500.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import import_module, metadata
from pathlib import Path
from typing import Any
from unittest import mock

import feedparser
from sqlalchemy import Engine, event

from monitor import db, logs, store
from monitor.backfill import Options, run_backfill
from monitor.config import Settings, load
from monitor.models import ItemRow
from monitor.types import Prepared

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `bench` must import from the repository
    sys.path.insert(0, str(ROOT))

from bench.corpus import Corpus, generate  # noqa: E402  (needs the path set just above)

OUTPUT = ROOT / "bench" / "results" / "ingest.md"
CONFIG = ROOT / "config.toml"
PIPELINE_GOAL = 2.0
STORE_GOAL = 2.0
RAW_BATCH = 500
STORE_ROUNDS = 3
ROUNDS = 3  # of feedparser alone and the whole pipeline, interleaved; the best is reported
# (label, module, functions): a stage is the time spent inside those functions; an indented
# label is part of the stage above it. The backfill calls each through its module attribute.
STAGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("parse (monitor.parse.parse_feed)", "monitor.sources", ("parse_feed",)),
    ("  feedparser.parse", "feedparser", ("parse",)),
    ("  clean_text, clean_title, html_to_text", "monitor.parse",
     ("clean_text", "clean_title", "html_to_text")),
    ("  canonical_url (of entry links)", "monitor.parse", ("canonical_url",)),
    ("language (detect_all: a source's articles at once)", "monitor.pipeline", ("detect_all",)),
    ("prepare", "monitor.pipeline", ("prepare",)),
    ("  topics (match_topics)", "monitor.pipeline", ("match_topics",)),
    ("  fingerprints (title_key, content_key)", "monitor.pipeline", ("fingerprints",)),
    ("  canonical_url (in prepare)", "monitor.pipeline", ("canonical_url",)),
    ("place", "monitor.pipeline", ("place",)),
    ("near-duplicate fingerprints (fingerprints_of: shingles, MinHash, bands)",
     "monitor.pipeline", ("fingerprints_of",)),
    ("near-duplicate lookup and index (place_near, record)", "monitor.stories",
     ("place_near", "record")),
    ("find_existing", "monitor.store", ("find_existing",)),
    ("insert_items", "monitor.store", ("insert_items",)),
    ("stories, links, urls, topics", "monitor.store",
     ("insert_stories", "link_items", "touch_stories", "insert_urls", "insert_topics")),
)
COMMIT = "commit"


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float

    def micros(self, items: int) -> float:
        return self.wall / max(items, 1) * 1e6

    def cpu_micros(self, items: int) -> float:
        return self.cpu / max(items, 1) * 1e6


@contextmanager
def clock() -> Iterator[list[Timing]]:
    """Wall and CPU time of the block, in the list it yields once the block ends."""
    box: list[Timing] = []
    wall, cpu = time.perf_counter(), time.process_time()
    yield box
    box.append(Timing(time.perf_counter() - wall, time.process_time() - cpu))


@dataclass(frozen=True)
class StoreTimings:
    """store.insert_items and raw executemany of the same rows (best of the rounds)."""

    rows: int
    rounds: int
    store: Timing
    raw: Timing
    raw_building_rows: Timing
    same_rows: bool


@dataclass(frozen=True)
class Results:
    corpus: Corpus
    feedparser: Timing
    feedparser_as_monitor: Timing
    pipeline: Timing
    stored: int
    errors: int
    instrumented: Timing
    stages: dict[str, Timing]
    store: StoreTimings
    load: float  # the 1-minute load average when the run began
    rounds: dict[str, list[Timing]] = field(default_factory=dict)  # every round, in order


# --- (1) feedparser alone -------------------------------------------------------------------


def time_feedparser(blobs: Sequence[bytes], **options: Any) -> Timing:
    """feedparser.parse over every document (streams: bytes would be tried as a file name)."""
    with clock() as box:
        for blob in blobs:
            feedparser.parse(io.BytesIO(blob), **options)
    return box[0]


# --- (2) the backfill -----------------------------------------------------------------------


def fresh_engine(path: Path) -> Engine:
    """A new SQLite file with the schema built by the real migrations."""
    engine = db.make_engine(f"sqlite:///{path}")
    db.ensure_schema(engine)
    return engine


def backfill(settings: Settings, sources: list[str], path: Path) -> tuple[Timing, int, int]:
    """The real `monitor backfill` path; (timing, items stored, sources failed)."""
    engine = fresh_engine(path)
    sessions = db.session_factory(engine)
    with clock() as box:
        summary = run_backfill(settings, sessions, sources, Options(), progress=False,
                                   settle=False)
    with sessions() as session:
        stored = store.count(session, ItemRow)
    engine.dispose()
    return box[0], stored, summary.errors


class Stopwatch:
    """Wall and CPU seconds spent inside wrapped functions (and commits), summed by label."""

    def __init__(self) -> None:
        self.wall: defaultdict[str, float] = defaultdict(float)
        self.cpu: defaultdict[str, float] = defaultdict(float)
        self.commit_started = (0.0, 0.0)

    def wrap(self, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = _now()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(label, started)
        return timed

    def add(self, label: str, started: tuple[float, float]) -> None:
        wall, cpu = _now()
        self.wall[label] += wall - started[0]
        self.cpu[label] += cpu - started[1]

    def start_commit(self, _session: Any) -> None:
        self.commit_started = _now()

    def stop_commit(self, _session: Any) -> None:
        self.add(COMMIT, self.commit_started)

    def timings(self) -> dict[str, Timing]:
        return {label: Timing(self.wall[label], self.cpu[label]) for label in self.wall}


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.thread_time()


def instrumented_backfill(settings: Settings, corpus: Corpus,
                          path: Path) -> tuple[Timing, dict[str, Timing], list[Prepared]]:
    """The backfill again with a timer around each stage; also what insert_items stored."""
    watch, inserted = Stopwatch(), list[Prepared]()
    engine = fresh_engine(path)
    sessions = db.session_factory(engine)
    event.listen(sessions, "before_commit", watch.start_commit)
    event.listen(sessions, "after_commit", watch.stop_commit)
    with ExitStack() as patches:
        for label, module_name, names in STAGES:
            module = import_module(module_name)
            for name in names:
                timed = watch.wrap(label, getattr(module, name))
                patches.enter_context(mock.patch.object(module, name, timed))
        patches.enter_context(mock.patch.object(
            store, "insert_items", _recording(store.insert_items, inserted)))
        with clock() as box:
            run_backfill(settings, sessions, [str(corpus.root)], Options(), progress=False,
                                   settle=False)
    engine.dispose()
    return box[0], watch.timings(), inserted


def _recording(insert_items: Callable[..., Any], into: list[Prepared]) -> Callable[..., Any]:
    def record(session: Any, batch: Sequence[Prepared], fetched_at: datetime) -> Any:
        into.extend(batch)
        return insert_items(session, batch, fetched_at)
    return record


# --- (3) the store stage against raw executemany -------------------------------------------


def _chunks(values: Sequence[Any], size: int = RAW_BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def time_store(prepared: Sequence[Prepared], path: Path, now: datetime) -> Timing:
    """store.insert_items, one transaction per 500 rows."""
    engine = fresh_engine(path)
    sessions = db.session_factory(engine)
    with clock() as box:
        for chunk in _chunks(prepared):
            with db.transaction(sessions) as session:
                store.insert_items(session, chunk, now)
    engine.dispose()
    return box[0]


def _sqlite_value(value: Any) -> Any:
    """A value as SQLAlchemy stores it in SQLite (datetimes as naive UTC text)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def _row(p: Prepared, now: datetime) -> tuple[Any, ...]:
    """The values store.insert_items writes, in the order of :data:`COLUMNS`."""
    a, d = p.article, p.detection
    return (p.feed_id, p.source_key, p.guid, p.outlet, a.url, p.canonical_url, a.title,
            a.summary, a.text, a.author, _sqlite_value(a.published), _sqlite_value(now),
            d.language, d.confidence, d.method, p.translation_status, p.translation_reason,
            p.title_hash, p.content_hash)


COLUMNS = ("feed_id", "source_key", "guid", "outlet", "url", "canonical_url", "title",
           "summary", "text", "author", "published_at", "fetched_at", "language",
           "language_confidence", "language_method", "translation_status",
           "translation_reason", "title_hash", "content_hash")
INSERT = (f"INSERT INTO items ({', '.join(COLUMNS)}) "
          f"VALUES ({', '.join('?' * len(COLUMNS))})")


def _raw_connection(path: Path) -> sqlite3.Connection:
    fresh_engine(path).dispose()
    connection = sqlite3.connect(path)
    db._sqlite_pragmas(connection, None)  # the very pragmas the engine sets
    return connection


def time_raw(rows: Sequence[tuple[Any, ...]], path: Path) -> Timing:
    """Raw sqlite3 executemany of prebuilt rows, one transaction per 500 rows."""
    connection = _raw_connection(path)
    with clock() as box:
        for chunk in _chunks(rows):
            connection.executemany(INSERT, chunk)
            connection.commit()
    connection.close()
    return box[0]


def time_raw_building_rows(prepared: Sequence[Prepared], path: Path, now: datetime) -> Timing:
    """Raw executemany again, building each row from its Prepared inside the timer."""
    connection = _raw_connection(path)
    with clock() as box:
        for chunk in _chunks(prepared):
            connection.executemany(INSERT, [_row(p, now) for p in chunk])
            connection.commit()
    connection.close()
    return box[0]


def stored_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as connection:
        return connection.execute(f"SELECT {', '.join(COLUMNS)} FROM items ORDER BY id").fetchall()


def _best(timings: Sequence[Timing]) -> Timing:
    return Timing(min(t.wall for t in timings), min(t.cpu for t in timings))


def store_side_by_side(prepared: Sequence[Prepared], workdir: Path,
                       rounds: int = STORE_ROUNDS) -> StoreTimings:
    """The three ways in turn, ``rounds`` times, each into a fresh migrated database."""
    now, same = datetime.now(UTC), True
    timings: dict[str, list[Timing]] = {"store": [], "raw": [], "building": []}
    rows = [_row(p, now) for p in prepared]
    for n in range(rounds):
        paths = {name: workdir / f"{name}-{n}.db" for name in timings}
        timings["store"].append(time_store(prepared, paths["store"], now))
        timings["raw"].append(time_raw(rows, paths["raw"]))
        timings["building"].append(time_raw_building_rows(prepared, paths["building"], now))
        same = same and all(stored_rows(path) == rows for path in paths.values())
    best = {name: _best(runs) for name, runs in timings.items()}
    return StoreTimings(len(rows), rounds, best["store"], best["raw"], best["building"], same)


# --- the run --------------------------------------------------------------------------------


def run(files: int, items_per_file: int, seed: int, workdir: Path, *,
        store_rounds: int = STORE_ROUNDS, rounds: int = ROUNDS, config: Path = CONFIG) -> Results:
    """Every measurement of one benchmark run, in ``workdir``."""
    load_average = os.getloadavg()[0]
    settings = load(config, database_url=f"sqlite:///{workdir / 'unused.db'}")
    corpus = generate(workdir / "corpus", files, items_per_file, seed)
    blobs = [path.read_bytes() for path in corpus.files]
    # Models load and patterns compile on first use: a daemon pays that once, not per item.
    backfill(settings, [str(path) for path in corpus.files[:2]], workdir / "warm-up.db")
    # Interleaved rounds, the best of each kept: other jobs on the machine only ever add
    # time (to CPU time too: caches, memory bandwidth, clock), so the least is the truest.
    plain, as_monitor, pipeline = [], [], []
    for round_ in range(rounds):
        plain.append(time_feedparser(blobs))
        as_monitor.append(time_feedparser(blobs, sanitize_html=False,
                                          resolve_relative_uris=False))
        timing, stored, errors = backfill(settings, [str(corpus.root)],
                                          workdir / f"backfill{round_}.db")
        pipeline.append(timing)
    instrumented, stages, prepared = instrumented_backfill(settings, corpus,
                                                           workdir / "instrumented.db")
    return Results(corpus, _best(plain), _best(as_monitor), _best(pipeline), stored, errors,
                   instrumented, stages, store_side_by_side(prepared, workdir, store_rounds),
                   load_average, {"feedparser.parse (defaults)": plain,
                                  "whole pipeline": pipeline})


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text(encoding="utf-8").splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines
                if line.startswith("model name")), platform.processor())
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("feedparser", "sqlalchemy"))
    return (f"{platform.platform()}; {cpu}; {os.cpu_count()} cores; "
            f"Python {platform.python_version()}; SQLite {sqlite3.sqlite_version}; {versions}")


def _ratios(t: Timing, base: Timing) -> tuple[float, float]:
    return t.wall / base.wall, t.cpu / base.cpu


def _timing_row(label: str, t: Timing, items: int, base: Timing) -> str:
    wall, cpu = _ratios(t, base)
    return (f"| {label} | {items} | {t.wall:.2f} | {t.cpu:.2f} | {t.micros(items):.1f} | "
            f"{t.cpu_micros(items):.1f} | {wall:.2f}x | {cpu:.2f}x |")


def timings(r: Results) -> list[str]:
    n, s = r.corpus.items, r.store
    return [
        "| measurement | items | wall s | CPU s | µs/item (wall) | µs/item (CPU) "
        "| x baseline (wall) | x baseline (CPU) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        _timing_row("feedparser.parse, defaults (baseline)", r.feedparser, n, r.feedparser),
        _timing_row("feedparser.parse as monitor.parse calls it", r.feedparser_as_monitor, n,
                    r.feedparser),
        _timing_row("whole pipeline: `run_backfill` into SQLite", r.pipeline, n, r.feedparser),
        _timing_row("raw sqlite3 executemany, rows prebuilt (baseline)", s.raw, s.rows, s.raw),
        _timing_row("raw executemany, building rows from Prepared", s.raw_building_rows, s.rows,
                    s.raw),
        _timing_row("store.insert_items", s.store, s.rows, s.raw),
    ]


def _goal_row(label: str, t: Timing, base: Timing, goal: float) -> str:
    wall, cpu = _ratios(t, base)
    verdict = "met" if max(wall, cpu) <= goal else "met on CPU time" if cpu <= goal else "NOT met"
    return f"| {label} | {goal:.1f}x | **{wall:.2f}x** | **{cpu:.2f}x** | {verdict} |"


def goals(r: Results) -> list[str]:
    s = r.store
    return [
        "| goal | at most | wall | CPU | verdict |", "| --- | ---: | ---: | ---: | --- |",
        _goal_row("whole pipeline / feedparser.parse (defaults), per item", r.pipeline,
                  r.feedparser, PIPELINE_GOAL),
        _goal_row("whole pipeline / feedparser.parse as monitor calls it", r.pipeline,
                  r.feedparser_as_monitor, PIPELINE_GOAL),
        _goal_row("store.insert_items / raw executemany, rows prebuilt", s.store, s.raw,
                  STORE_GOAL),
        _goal_row("store.insert_items / raw executemany building the same rows", s.store,
                  s.raw_building_rows, STORE_GOAL),
    ]


def breakdown(r: Results) -> list[str]:
    n, total, none = r.corpus.items, r.instrumented, Timing(0.0, 0.0)
    timed = [(label, r.stages.get(label, none)) for label, _, _ in [*STAGES, (COMMIT, "", ())]]
    top = [t for label, t in timed if not label.startswith(" ")]
    other = Timing(total.wall - sum(t.wall for t in top), total.cpu - sum(t.cpu for t in top))
    timed.append(("other (reading files, sessions, orchestration)", other))
    timed.append(("total (instrumented run)", total))
    lines = ["| stage | wall s | CPU s | µs/item (wall) | µs/item (CPU) | share (CPU) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {label.replace('  ', '&nbsp;&nbsp;')} | {t.wall:.2f} | {t.cpu:.2f} | "
              f"{t.micros(n):.1f} | {t.cpu_micros(n):.1f} | {t.cpu / total.cpu:.0%} |"
              for label, t in timed]
    return lines


def report(r: Results, command: str) -> list[str]:
    c, s = r.corpus, r.store
    languages = ", ".join(f"{k} {v}" for k, v in c.languages.most_common())
    return [
        "# Ingest benchmark", "",
        f"Command: `{command}`  ", f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Machine: {machine()}  ",
        f"Load average when the run began: {r.load:.2f} (other processes share the cores: "
        "CPU time, from time.process_time, is the steadier figure)", "",
        f"Corpus (`bench/corpus.py`): {len(c.files)} feed files (RSS 2.0 and Atom), {c.items} "
        f"items, {c.size / 2**20:.1f} MiB, {c.on_topic} items on topic; languages: "
        f"{languages}.", "",
        f"Backfill stored {r.stored} of {c.items} items ({r.errors} sources failed), "
        "translation left pending (the default), after a warm-up backfill of two files "
        "(models load once per process).", "",
        f"Feedparser alone and the whole pipeline ran {len(r.rounds.get('whole pipeline', []))} "
        "times each, interleaved; the tables give the best of each (other jobs only ever add "
        "time). Every round, CPU s: " + "; ".join(
            f"{label} " + ", ".join(f"{t.cpu:.2f}" for t in runs)
            for label, runs in r.rounds.items()) + ".", "",
        "## Goals", "", *goals(r), "",
        "## Timings", "", *timings(r), "",
        f"Store rows: the {s.rows} items the backfill inserted, in transactions of {RAW_BATCH} "
        "rows, each way into a fresh database built by the migrations (same columns, indexes "
        f"and unique constraints, same pragmas); best of {s.rounds} rounds. Rows read back "
        f"identical to the raw rows: {'yes' if s.same_rows else 'NO'}.", "",
        "## Where the pipeline's time goes", "",
        "A second backfill into a fresh database, with a timer around each stage (indented "
        "rows are part of the row above; the timers add a little). Commits wait for the disk: "
        "their CPU time is small, their wall time is not.", "", *breakdown(r), "",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--items-per-file", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help="interleaved rounds of feedparser alone and the pipeline")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    command = " ".join([".venv/bin/python bench/ingest.py", *(sys.argv[1:] if argv is None
                                                              else argv)])
    logs.configure("console", 0)  # as the CLI does: warnings only
    with tempfile.TemporaryDirectory(prefix="monitor-bench-") as tmp:
        results = run(args.files, args.items_per_file, args.seed, Path(tmp), rounds=args.rounds)
    text = "\n".join(report(results, command))
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
