"""`monitor backfill`: every source through the pipeline. Sources share a transaction
until it holds GROUP_ITEMS new items or GROUP_SECONDS have passed (a commit per small
source would cost more than its items: SQLite rewrites every index page a commit
touched); a database error rolls the group back and its sources are ingested again one
per transaction, so only the failing one fails. An error or Ctrl-C loses nothing that
was already committed, a source is reported once its transaction commits, and a rerun
completes the rest."""

from __future__ import annotations

import signal
import sys
import threading
import time
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
from monitor.pipeline import Filters, Pipeline, SourceContext, ingest
from monitor.sources import Source, discover, read
from monitor.stories import orphans
from monitor.story_sweep import Bars, Progress, SettleReport, settle_stored
from monitor.types import Article, IngestReport

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


GROUP_ITEMS = 1_000
GROUP_SECONDS = 2.0


@dataclass(frozen=True)
class _Read:
    """A source read and parsed, kept until its transaction commits (to ingest it again
    alone if the group it was in rolls back)."""

    source: Source
    articles: list[Article]
    ctx: SourceContext


class _Group:
    """Sources ingested in one transaction; their outcomes are given out after it commits.

    The caller owns the group: ``add`` each source, ``flush`` at the end, ``close`` always
    (an open transaction is rolled back, and what it held is not reported)."""

    def __init__(self, sessions: sessionmaker[Session], options: Options,
                 pipeline: Pipeline) -> None:
        self.sessions, self.options, self.pipeline = sessions, options, pipeline
        self.filters = Filters(options.since, options.until)
        self.session: Session | None = None
        self.pending: list[tuple[_Read | None, Outcome]] = []  # in source order
        self.items = 0
        self.started = 0.0

    def add(self, source: Source) -> list[Outcome]:
        """Ingest ``source``; the outcomes of the sources whose transaction committed."""
        try:
            loaded = self._read(source)
        except MonitorError as exc:
            self.pending.append((None, _failed(source.label, exc)))
            return self._done() if self.session is None else []
        if self.session is None:
            self.session, self.started = self.sessions(), time.monotonic()
            self.session.begin()
        try:
            report = self._ingest(self.session, loaded)
        except SQLAlchemyError as exc:
            _reraise_interrupt(exc)
            return self._one_by_one(loaded)
        self.pending.append((loaded, Outcome(source.label, report=report)))
        self.items += report.new
        if self.items >= GROUP_ITEMS or time.monotonic() - self.started >= GROUP_SECONDS:
            return self.flush()
        return []

    def flush(self) -> list[Outcome]:
        """Commit the open transaction; every pending outcome."""
        if self.session is not None:
            try:
                self.session.commit()
            except SQLAlchemyError as exc:
                _reraise_interrupt(exc)
                return self._one_by_one(None)
            self._end()
        return self._done()

    def close(self) -> None:
        """Roll back whatever is not committed."""
        self._end()
        self.pending.clear()

    def _one_by_one(self, failed: _Read | None) -> list[Outcome]:
        """The group's transaction failed: roll it back, then each of its sources (and
        ``failed``, the one that broke it) in a transaction of its own."""
        self._end()
        redo = self.pending + ([(failed, Outcome(failed.source.label))] if failed else [])
        self.pending = [(None, outcome if loaded is None else self._alone(loaded))
                        for loaded, outcome in redo]
        return self._done()

    def _alone(self, loaded: _Read) -> Outcome:
        try:
            with db.transaction(self.sessions) as session:
                return Outcome(loaded.source.label, report=self._ingest(session, loaded))
        except SQLAlchemyError as exc:
            _reraise_interrupt(exc)
            return _failed(loaded.source.label, StoreError(
                f"{loaded.source.label}: database error: {str(exc).splitlines()[0]}"))

    def _read(self, source: Source) -> _Read:
        articles, ctx = read(source, outlet=self.options.outlet, limits=self.options.limits)
        if self.options.published is not None:
            ctx = replace(ctx, published=self.options.published)
        return _Read(source, articles, ctx)

    def _ingest(self, session: Session, loaded: _Read) -> IngestReport:
        return ingest(session, loaded.articles, loaded.ctx, self.pipeline, datetime.now(UTC),
                      self.filters)

    def _done(self) -> list[Outcome]:
        out = [outcome for _loaded, outcome in self.pending]
        self.pending, self.items = [], 0
        for outcome in out:
            _logged(outcome)
        return out

    def _end(self) -> None:
        if self.session is not None:
            self.session.close()  # rolls back a transaction still open
            self.session = None


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
    group = _Group(sessions, options, Pipeline.from_settings(settings))
    try:
        with _sigint_noted() as stop, _bar(sources, progress) as bar:
            for source in bar:
                summary.outcomes.extend(group.add(source))
                _check(stop)
            summary.outcomes.extend(group.flush())
            if settle:
                summary.settled = _settle(settings, sessions, summary, progress)
                _check(stop)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        group.close()
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


def _logged(outcome: Outcome) -> None:
    if (report := outcome.report) is not None:
        log.info("source.ingested", source=outcome.label, new=report.new,
                 duplicates=report.duplicate_total)


def _failed(label: str, exc: MonitorError) -> Outcome:
    message = str(exc)
    click.echo(f"monitor: {message}", err=True)
    prefix = f"{label}: "
    return Outcome(label, error=message[len(prefix):] if message.startswith(prefix) else message)
