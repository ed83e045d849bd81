"""`monitor backfill`: every source through the pipeline, one transaction per source,
so an error or Ctrl-C loses nothing that was already stored and a rerun completes."""

from __future__ import annotations

import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor import db, logs
from monitor.config import Settings
from monitor.embed import make_embedder
from monitor.errors import MonitorError, StoreError
from monitor.parse import DEFAULT_LIMITS, ParseLimits, limits_for
from monitor.pipeline import Filters, Pipeline, ingest
from monitor.sources import Source, discover, read
from monitor.stories import orphans
from monitor.story_sweep import Bars, Progress, SettleReport, settle_stored
from monitor.types import IngestReport

log = logs.get("monitor.backfill")


@dataclass(frozen=True)
class Options:
    outlet: str | None = None
    published: datetime | None = None
    since: datetime | None = None
    until: datetime | None = None
    limits: ParseLimits = DEFAULT_LIMITS  # run_backfill sets the configured [limits]


@dataclass(frozen=True)
class Outcome:
    label: str
    report: IngestReport | None = None
    error: str | None = None


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)
    interrupted: bool = False
    settled: SettleReport | None = None  # the stories of the stored items, placed again

    @property
    def errors(self) -> int:
        return sum(1 for o in self.outcomes if o.error)

    def totals(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for o in self.outcomes:
            if o.report:
                total["new"] += o.report.new
                total["skipped"] += o.report.skipped
                total["new_stories"] += o.report.new_stories
                total.update({f"duplicate_{k}": v for k, v in o.report.duplicates.items()})
        return total

    def lines(self) -> list[str]:
        lines = [_line(o) for o in self.outcomes]
        t = self.totals()
        dups = {k.removeprefix("duplicate_"): v for k, v in t.items()
                if k.startswith("duplicate_")}
        lines.append(f"total: {len(self.outcomes)} sources, {t['new']} new items, "
                     f"{sum(dups.values())} duplicates{_reasons(dups)}, "
                     f"{t['new_stories']} new stories, {self.errors} errors"
                     + (f", {t['skipped']} skipped by date" if t["skipped"] else ""))
        if self.settled is not None:
            lines.append(f"stories: {self.settled.line()}")
        if self.interrupted:
            lines.append("interrupted: run the same command again to finish "
                         "(what was stored is kept; duplicates are skipped)")
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "sources": [{"source": o.label, "error": o.error,
                         "new": o.report.new if o.report else 0,
                         "duplicates": dict(o.report.duplicates) if o.report else {},
                         "skipped": o.report.skipped if o.report else 0}
                        for o in self.outcomes],
            "totals": dict(self.totals()), "errors": self.errors,
            "interrupted": self.interrupted,
            "stories": None if self.settled is None else {
                "items": self.settled.items, "stories": self.settled.stories,
                "reasons": dict(self.settled.reasons)},
        }


def _reasons(dups: dict[str, int]) -> str:
    return f" ({', '.join(f'{k}: {v}' for k, v in sorted(dups.items()))})" if dups else ""


def _line(o: Outcome) -> str:
    if o.error:
        return f"{o.label}: ERROR {o.error}"
    r = o.report
    assert r is not None
    return (f"{o.label}: {r.new} new, {r.duplicate_total} duplicates{_reasons(dict(r.duplicates))}"
            + (f", {r.skipped} skipped by date" if r.skipped else ""))


def ingest_source(sessions: sessionmaker[Session], source: Source, options: Options,
                  pipeline: Pipeline) -> IngestReport:
    """One source in one transaction."""
    articles, ctx = read(source, outlet=options.outlet, limits=options.limits)
    if options.published is not None:
        ctx = replace(ctx, published=options.published)
    filters = Filters(options.since, options.until)
    try:
        with db.transaction(sessions) as session:
            return ingest(session, articles, ctx, pipeline, datetime.now(UTC), filters)
    except SQLAlchemyError as exc:
        _reraise_interrupt(exc)
        raise StoreError(f"{source.label}: database error: {str(exc).splitlines()[0]}") from exc


def _reraise_interrupt(exc: BaseException) -> None:
    """Ctrl-C inside a database call can surface as the driver's error about the call it
    broke (psycopg: "another command is already in progress"): it is still Ctrl-C."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            raise KeyboardInterrupt from exc
        seen.add(id(current))
        current = current.__cause__ or current.__context__


@contextmanager
def _bar(sources: Sequence[Source], show: bool) -> Iterator[Any]:
    if not show:
        yield iter(sources)
        return
    with click.progressbar(sources, label="backfill", file=sys.stderr,
                           show_pos=True, item_show_func=lambda s: s.label[-40:] if s else "",
                           ) as bar:
        yield bar


def run_backfill(settings: Settings, sessions: sessionmaker[Session], specs: Sequence[str],
                 options: Options, *, progress: bool = True, settle: bool = True) -> Summary:
    """Discover every SOURCE, then ingest each; errors are reported and the rest goes on.
    Then (unless ``settle`` is false: the daemon's sweep will embed them) the stored
    items are embedded and placed in stories again in the canonical order."""
    summary = Summary()
    options = replace(options, limits=limits_for(settings.limits))
    sources: list[Source] = []
    for spec in specs:
        try:
            sources.extend(discover(spec))
        except MonitorError as exc:
            summary.outcomes.append(_failed(spec, exc))
    pipeline = Pipeline.from_settings(settings)
    try:
        with _sigint_noted() as stop, _bar(sources, progress) as bar:
            for source in bar:
                summary.outcomes.append(_one(sessions, source, options, pipeline))
                _check(stop)
            if settle:
                summary.settled = _settle(settings, sessions, summary, progress)
                _check(stop)
    except KeyboardInterrupt:
        summary.interrupted = True
    return summary


@contextmanager
def _sigint_noted() -> Iterator[threading.Event]:
    """Ctrl-C raises KeyboardInterrupt as usual, and is also noted: Python drops an
    exception raised inside a weakref callback or a ``__del__`` (it prints "Exception
    ignored"), and a dropped Ctrl-C must not let the run go on. The loop checks the note
    between sources. Only in the main thread (signal handlers live there)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        stop.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _check(stop: threading.Event) -> None:
    if stop.is_set():
        raise KeyboardInterrupt


def _settle(settings: Settings, sessions: sessionmaker[Session], summary: Summary,
            progress: bool) -> SettleReport | None:
    """Embed the stored items and place them again in the canonical order (every dedup
    stage), so that the same sources backfilled in any order give the same stories.
    Items an interrupted run left without a story are placed too."""
    stored = [i for o in summary.outcomes if o.report for i in o.report.item_ids]
    with sessions() as session:
        stored += orphans(session)
    if not stored:
        return None
    try:
        return settle_stored(sessions, settings.dedup, make_embedder(settings.dedup.embedder),
                             stored, click_bars(progress))
    except SQLAlchemyError as exc:
        _reraise_interrupt(exc)
        click.echo(f"monitor: stories not settled: database error: {str(exc).splitlines()[0]}",
                   err=True)
    except MonitorError as exc:
        click.echo(f"monitor: stories not settled: {exc}", err=True)
    return None


def click_bars(show: bool) -> Bars:
    """Progress bars on stderr (none when ``show`` is false, e.g. with --json)."""

    @contextmanager
    def bars(label: str, total: int) -> Iterator[Progress]:
        if not show or total == 0:
            yield lambda _n: None
            return
        with click.progressbar(length=total, label=label, file=sys.stderr,
                               show_pos=True) as bar:
            yield bar.update

    return bars


def _one(sessions: sessionmaker[Session], source: Source, options: Options,
         pipeline: Pipeline) -> Outcome:
    try:
        report = ingest_source(sessions, source, options, pipeline)
    except MonitorError as exc:
        return _failed(source.label, exc)
    log.info("source.ingested", source=source.label, new=report.new,
             duplicates=report.duplicate_total)
    return Outcome(source.label, report=report)


def _failed(label: str, exc: MonitorError) -> Outcome:
    message = str(exc)
    click.echo(f"monitor: {message}", err=True)
    prefix = f"{label}: "
    return Outcome(label, error=message[len(prefix):] if message.startswith(prefix) else message)
