"""The translation sweep: pending items become translated items, with provenance.

    store.pending_items: oldest first, only languages that have an installed route
      -> title and summary of every item     (the cache first, then one batched call)
      -> topics matched again on the translation
      -> full text of the items that match a topic   (``translation.full_text``)
      -> one transaction: cache rows, item provenance, new item_topics rows

The ingest pipeline never translates: it marks items ``pending`` and the daemon's sweep
job (or ``monitor translate --pending``) catches up, a batch at a time. Each batch is
claimed (a lease, see :mod:`monitor.coordination`), so sweeps of several workers translate
different items, and written only for the items whose lease is still held. Reads and
writes are short transactions and the model runs outside any, so the poller keeps writing
while a sweep translates. A language without a model waits, its items still ``pending``
with the install hint; a model that fails marks its items ``failed`` with the reason.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor import db, logs, store
from monitor.config import Settings, Topic
from monitor.coordination import STATS
from monitor.errors import MonitorError, TranslateError
from monitor.packages import Route
from monitor.store import PendingItem
from monitor.topics import TopicMatch, match_topics
from monitor.translate import Translator, shared_translator
from monitor.workers import Worker, worker_for

log = logs.get("monitor.translating")
RETRY_HINT = "retry with `monitor translate --pending --retry-failed`"


@dataclass(frozen=True)
class SweepReport:
    """What one sweep did; ``waiting`` names languages that have pending items and no
    model, ``errors`` what stopped a batch."""

    done: int = 0
    failed: int = 0
    translated: int = 0  # texts sent to the model
    cached: int = 0  # texts found in the cache
    new_topics: int = 0
    waiting: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    def __add__(self, other: SweepReport) -> SweepReport:
        return SweepReport(
            self.done + other.done, self.failed + other.failed,
            self.translated + other.translated, self.cached + other.cached,
            self.new_topics + other.new_topics, self.waiting or other.waiting,
            self.errors + other.errors)

    def line(self) -> str:
        text = (f"translated {self.done} items ({self.translated} texts by the model, "
                f"{self.cached} from the cache), {self.failed} failed, "
                f"{self.new_topics} new topic matches")
        if self.waiting:
            text += (f"; no model for {', '.join(self.waiting)}: "
                     + "; ".join(f"`monitor models install {lang}`" for lang in self.waiting))
        return text


def source_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class _Cached:
    """Translations along one route: the cache first, the model for the rest."""

    def __init__(self, sessions: sessionmaker[Session], translator: Translator,
                 route: Route) -> None:
        self.sessions, self.translator, self.route = sessions, translator, route
        self.known: dict[str, str] = {}
        self.new: dict[str, str] = {}
        self.translated = self.cached = 0

    def __call__(self, texts: Sequence[str]) -> list[str]:
        wanted = {source_hash(t): t for t in texts if t.strip()}
        missing = [h for h in wanted if h not in self.known]
        if missing:
            with self.sessions() as session:
                found = store.cached_translations(session, self.route.name,
                                                  self.route.version, missing)
            self.known.update(found)
            self.cached += len(found)
            rest = [h for h in missing if h not in found]
            if rest:
                out = self.translator.translate(self.route, [wanted[h] for h in rest])
                self.new.update(zip(rest, out, strict=True))
                self.known.update(self.new)
                self.translated += len(rest)
        return [self.known[source_hash(t)] if t.strip() else "" for t in texts]


# --- pure decisions ----------------------------------------------------------------------


def new_topics(topics: Sequence[Topic], item: PendingItem,
               translated: Sequence[str]) -> tuple[TopicMatch, ...]:
    """Topics that the translation matches and the original did not."""
    open_topics = [t for t in topics if t.name not in item.topics
                   and (not item.feed_topics or t.name in item.feed_topics)]
    found = match_topics(open_topics, (item.title, item.summary, item.text), translated)
    return tuple(m for m in found if m.matched_on == "translation")


def wants_full_text(mode: str, item: PendingItem, matches: Sequence[TopicMatch]) -> bool:
    """Triage: the body is translated for every item (``all``), for none (``never``), or
    only for items that match a topic on either text (``matched``), as GDELT does under
    load: titles and summaries are cheap and tell a reader what to open."""
    if not item.text.strip() or mode == "never":
        return False
    return mode == "all" or bool(item.topics or matches)


def _skipped_reason(mode: str, full: bool, item: PendingItem) -> str | None:
    if full or not item.text.strip():
        return None
    why = "no topic matched" if mode == "matched" else "translation.full_text = never"
    return f"title and summary translated; full text not ({why})"


# --- one batch -----------------------------------------------------------------------------


@dataclass
class _Batch:
    rows: list[dict[str, Any]] = field(default_factory=list)
    topics: list[dict[str, Any]] = field(default_factory=list)
    report: SweepReport = SweepReport()


def _translate_group(settings: Settings, items: Sequence[PendingItem], cached: _Cached,
                     engine: str, now: datetime, out: _Batch) -> None:
    mode, n = settings.translation.full_text, len(items)
    heads = cached([i.title for i in items] + [i.summary for i in items])
    pairs = list(zip(heads[:n], heads[n:], strict=True))
    first = [new_topics(settings.topics, i, p) for i, p in zip(items, pairs, strict=True)]
    full = [wants_full_text(mode, i, m) for i, m in zip(items, first, strict=True)]
    bodies = iter(cached([i.text for i, f in zip(items, full, strict=True) if f]))
    for item, (title, summary), matches, whole in zip(items, pairs, first, full, strict=True):
        body = next(bodies) if whole else None
        if body is not None:
            matches = new_topics(settings.topics, item, (title, summary, body))
        out.rows.append({
            "id": item.id, "translation_status": "done",
            "translation_reason": _skipped_reason(mode, whole, item),
            "translated_title": title, "translated_summary": summary,
            "translated_text": body, "translation_engine": engine,
            "translation_package": cached.route.name,
            "translation_package_version": cached.route.version, "translated_at": now})
        out.topics += [{"item_id": item.id, "topic": m.topic, "matched_on": m.matched_on,
                        "keywords": list(m.keywords)} for m in matches]


def _failed(items: Sequence[PendingItem], exc: MonitorError) -> list[dict[str, Any]]:
    return [{"id": i.id, "translation_status": "failed",
             "translation_reason": f"{exc}; {RETRY_HINT}"} for i in items]


def sweep_batch(settings: Settings, sessions: sessionmaker[Session], translator: Translator,
                routes: dict[str, Route], batch: Sequence[PendingItem],
                worker: Worker) -> SweepReport:
    """Translate one claimed batch and store, in one transaction, the results of the
    items whose lease ``worker`` still holds."""
    now, started = datetime.now(UTC), time.monotonic()
    out = _Batch()
    caches = []
    for language in sorted({i.language for i in batch}):
        items = [i for i in batch if i.language == language]
        cached = _Cached(sessions, translator, routes[language])
        caches.append(cached)
        try:
            _translate_group(settings, items, cached, translator.engine, now, out)
        except TranslateError as exc:
            log.warning("translation.failed", language=language, error=str(exc))
            out.rows += _failed(items, exc)
    with db.transaction(sessions) as session:
        kept = store.hold(session, "translations", worker.id, [i.id for i in batch])
        for c in caches:
            store.cache_translations(session, c.route.name, c.route.version, c.new, now)
        out.rows = [r for r in out.rows if r["id"] in kept]
        store.record_translations(session, out.rows)
        store.insert_topics(session, [t for t in out.topics if t["item_id"] in kept])
    worker.held.drop("translations", [i.id for i in batch])
    if lost := len(batch) - len(kept):
        STATS.add("lost", (time.monotonic() - started) * lost / len(batch), lost)
        log.warning("translation.lease_lost", items=lost, worker=worker.id)
    failed = sum(1 for r in out.rows if r["translation_status"] == "failed")
    return SweepReport(done=len(out.rows) - failed, failed=failed,
                       translated=sum(c.translated for c in caches),
                       cached=sum(c.cached for c in caches), new_topics=len(out.topics))


# --- the sweep -----------------------------------------------------------------------------


def _routes(translator: Translator, languages: Sequence[str],
            target: str) -> tuple[dict[str, Route], tuple[str, ...]]:
    routes = {lang: translator.route(lang, target) for lang in languages}
    found = {lang: r for lang, r in routes.items() if r is not None}
    return found, tuple(lang for lang, r in routes.items() if r is None)


def pending_count(settings: Settings, sessions: sessionmaker[Session],
                  translator: Translator | None = None) -> int:
    """Pending items that an installed model can translate now."""
    translator = translator or shared_translator(settings.translation)
    with sessions() as session:
        languages = store.pending_languages(session, ("pending",))
        routes, _ = _routes(translator, languages, settings.translation.target)
        return store.count_pending(session, list(routes), ("pending",)) if routes else 0


def sweep(settings: Settings, sessions: sessionmaker[Session], limit: int | None = None, *,
          translator: Translator | None = None,
          progress: Callable[[int], None] | None = None, worker: Worker | None = None,
          stop: threading.Event | None = None) -> SweepReport:
    """Translate up to ``limit`` pending items (all when None) that no other worker
    holds, oldest first, in claimed batches of ``translation.sweep_batch``, until
    ``stop`` is set; errors are logged and reported, never raised."""
    if not settings.translation.enabled:
        return SweepReport()
    worker = worker or worker_for(settings, "cli")
    report = SweepReport()
    try:
        translator = translator or shared_translator(settings.translation)
        with sessions() as session:
            languages = store.pending_languages(session, ("pending",))
        routes, waiting = _routes(translator, languages, settings.translation.target)
        report = replace(report, waiting=waiting)
        report += _drain(settings, sessions, translator, routes, limit, progress, worker,
                         stop or threading.Event())
    except (MonitorError, SQLAlchemyError) as exc:
        log.error("translation.sweep_failed", error=str(exc).splitlines()[0])
        report += SweepReport(errors=(str(exc).splitlines()[0],))
    (log.info if report.done or report.failed or report.errors else log.debug)(
        "translation.swept", done=report.done, failed=report.failed,
             translated=report.translated, cached=report.cached, waiting=report.waiting)
    return report


def _claim(sessions: sessionmaker[Session], worker: Worker, languages: Sequence[str],
           size: int) -> list[PendingItem]:
    now = datetime.now(UTC)
    with STATS.timed("claim"), db.transaction(sessions) as session:
        batch = store.claim_translations(session, worker.id, languages, size, now,
                                         now + worker.lease)
    worker.held.add("translations", [i.id for i in batch])
    return batch


def _release(sessions: sessionmaker[Session], worker: Worker) -> None:
    ids = worker.held.snapshot()["translations"]
    if ids:
        with STATS.timed("claim"), db.transaction(sessions) as session:
            store.release_held(session, "translations", worker.id, ids)
        worker.held.drop("translations", ids)


def _drain(settings: Settings, sessions: sessionmaker[Session], translator: Translator,
           routes: dict[str, Route], limit: int | None,
           progress: Callable[[int], None] | None, worker: Worker,
           stop: threading.Event) -> SweepReport:
    report, seen = SweepReport(), set[int]()
    remaining = limit if limit is not None else -1
    while routes and remaining != 0 and not stop.is_set():
        size = settings.translation.sweep_batch
        batch = _claim(sessions, worker, list(routes),
                       size if remaining < 0 else min(size, remaining))
        if not batch or seen.issuperset(i.id for i in batch):
            _release(sessions, worker)
            break
        seen.update(i.id for i in batch)
        try:
            report += sweep_batch(settings, sessions, translator, routes, batch, worker)
        finally:
            _release(sessions, worker)  # what an error left held goes back at once
        remaining = remaining - len(batch) if remaining > 0 else remaining
        if progress is not None:
            progress(len(batch))
    return report


def requeue_failed(sessions: sessionmaker[Session]) -> int:
    """Mark every failed item pending again; how many there were."""
    with db.transaction(sessions) as session:
        return store.requeue_failed(session)
