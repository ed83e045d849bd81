"""Stories: which story an item belongs to, decided in stages and recorded on the link
with the reason and score; and a reader's corrections (split, merge), remembered.

    ingest (pipeline.py, inline, cheap)   exact identity -> stage 2, near duplicates
                                          (:func:`place_near`: LSH bands in the database)
                                          -> fingerprints stored, embedding ``pending``
    sweep (story_sweep.py, a daemon job)  anchors and embeddings in batches -> stage 3:
                                          a provisional story that matches another joins
                                          it (:func:`merge_into`; the emptied one goes)
    settle (story_sweep.py: backfill's    items placed again one by one in the canonical
    end, `dedup --rebuild`)               order, every stage (:func:`decide_item`)

The pure parts (fingerprints, anchors, scores, the decision) are :mod:`monitor.dedup`;
this module reads what they compare against (:class:`Placed`) and writes what they
decide. Functions here take the caller's session and never commit.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, cast

import numpy as np
from sqlalchemy import Table, and_, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from monitor import band_index, dedup, store, views
from monitor.anchors import Rarity
from monitor.config import DedupSettings
from monitor.dedup import Candidate, Decision, Fingerprint, Probe, StoryView, Thresholds
from monitor.errors import StoryError
from monitor.models import (
    AnchorStatRow,
    ItemAnchorRow,
    ItemDedupRow,
    ItemRow,
    ItemTopicRow,
    MinhashBandRow,
    StoryDecisionRow,
    StoryItemRow,
    StoryRow,
)
from monitor.store import chunks, insert_ignore
from monitor.types import Placement, Prepared

# Cross-lingual candidates share an anchor that at most this many items have, and at
# most this many of them, those sharing the most anchors, are scored.
MAX_POSTINGS = 5000
MAX_CANDIDATES = 200
ALL_ITEMS = "*"
DEDUP = cast(Table, ItemDedupRow.__table__)
BANDS = cast(Table, MinhashBandRow.__table__)
ANCHORS = cast(Table, ItemAnchorRow.__table__)
STATS = cast(Table, AnchorStatRow.__table__)


def thresholds(settings: DedupSettings) -> Thresholds:
    return Thresholds(near=settings.near_threshold, crosslingual=settings.crosslingual_threshold,
                      min_evidence=settings.min_evidence, min_cosine=settings.min_cosine,
                      min_cosine_same_language=settings.min_cosine_same_language,
                      window=timedelta(days=settings.window_days),
                      memory_index=settings.memory_index)


# --- writing fingerprints -----------------------------------------------------------------


def record(session: Session, prints: Mapping[int, Fingerprint], embed: bool) -> None:
    """Store the fingerprints of new items (by item id): signature and band keys; the
    embedding is ``pending`` (``off`` without an embedder)."""
    if not prints:
        return
    state = "pending" if embed else "off"
    rows = [(i, f.event_at, f.order_key,
             dedup.to_bytes(f.signature) if f.signature.size else None,
             state if f.embeddable else "empty") for i, f in prints.items()]
    bands = [(k, i) for i, f in prints.items() for k in set(f.bands)]
    for chunk in chunks(rows):
        store.insert_many(session, DEDUP,
                          ("item_id", "event_at", "order_key", "signature", "embed_state"), chunk)
    for chunk in chunks(bands):
        store.insert_many(session, BANDS, ("band_key", "item_id"), chunk)
    band_index.wrote(session, {i: f.bands for i, f in prints.items()})


def record_anchors(session: Session, anchors: Mapping[int, Sequence[str]]) -> None:
    """Store the anchors of items (by item id) and count them for the rarity weights."""
    rows = [{"anchor": a, "item_id": i} for i, found in anchors.items() for a in found]
    for chunk in chunks(rows):
        session.execute(insert_ignore(session, ANCHORS), list(chunk))
    counts: Counter[str] = Counter(str(r["anchor"]) for r in rows)
    counts[ALL_ITEMS] += len(anchors)
    if anchors:
        _count_anchors(session, counts)


def _count_anchors(session: Session, counts: Mapping[str, int]) -> None:
    """Add to the anchors' document frequencies, in key order (two writers then lock the
    rows in the same order and cannot deadlock)."""
    module = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    values = [{"anchor": a, "items": n} for a, n in sorted(counts.items())]
    for chunk in chunks(values):
        stmt = module.insert(STATS)
        stmt = stmt.on_conflict_do_update(index_elements=[STATS.c.anchor],
                                          set_={"items": STATS.c["items"] + stmt.excluded["items"]})
        session.execute(stmt, list(chunk))


# --- reading what decisions compare against ---------------------------------------------


class Placed:
    """Read access to the placed items (those linked to a story) for the decisions;
    ``hidden`` items count as not placed (a settle has yet to place them again).
    ``memory``: ask the process's copy of the band index (:mod:`monitor.band_index`)
    where there is one, rather than the table."""

    def __init__(self, session: Session, hidden: AbstractSet[int] = frozenset(), *,
                 memory: bool = False) -> None:
        self.session = session
        self.hidden = hidden
        self.memory = memory

    def near(self, keys: Sequence[int]) -> tuple[dict[int, set[int]], dict[int, np.ndarray]]:
        """Placed items sharing any of these band keys, by key, and their signatures.
        Through the copy, both come from its own connection: no statement in the session
        (what the copy finds, the callers confirm there)."""
        index = band_index.of(self.session) if self.memory else None
        if index is not None:
            try:
                hits = index.lookup(keys)
                signatures = self._signatures({i for ids in hits.values() for i in ids}, index)
            except sqlite3.Error:  # the copy cannot read the file: the table answers
                index = None
        if index is None:
            return self._near_in_table(keys)
        if mine := self._own(keys):  # the transaction's own rows, which the copy cannot see
            for key, ids in mine.items():
                hits.setdefault(key, []).extend(ids)
            signatures |= self._signatures({i for ids in mine.values() for i in ids})
        found = {key: kept for key, ids in hits.items()
                 if (kept := {i for i in ids if i in signatures})}
        return found, signatures

    def _own(self, keys: Sequence[int]) -> dict[int, list[int]]:
        written = band_index.own(self.session)
        if not written or written.keys().isdisjoint(keys):
            return {}
        return {key: band_index.listed(written[key]) for key in set(keys) if key in written}

    def _near_in_table(self, keys: Sequence[int]
                       ) -> tuple[dict[int, set[int]], dict[int, np.ndarray]]:
        """:meth:`near` asking the band table. This runs for every new item on the polling
        path (without a copy in memory), so it is one statement sent to the driver's
        connection (inside the session's transaction) as plain SQL: SQLAlchemy's
        statement and result layers would cost several times the indexed probes."""
        found: dict[int, set[int]] = {}
        signatures: dict[int, np.ndarray] = {}
        for key, item_id, blob in self._raw(_near_sql, sorted(set(keys))):
            if item_id not in self.hidden:
                found.setdefault(key, set()).add(item_id)
                if item_id not in signatures:
                    signatures[item_id] = dedup.signature_from(bytes(blob) if blob else None)
        return found, signatures

    def _signatures(self, ids: AbstractSet[int], index: band_index.BandIndex | None = None
                    ) -> dict[int, np.ndarray]:
        """The signatures of those of ``ids`` that are placed (and not hidden): as the
        session sees them, or as committed, through ``index``'s own connection."""
        wanted = sorted(ids - self.hidden)
        if not wanted:
            return {}
        rows = (self._raw(_signatures_sql, wanted) if index is None
                else index.read(_signatures_sql, wanted))
        return {item_id: dedup.signature_from(bytes(blob) if blob else None)
                for item_id, blob in rows}

    def _raw(self, sql: Callable[[str, int], str], values: Sequence[Any]) -> Iterator[Any]:
        """Rows of ``sql(mark, count)`` for ``values`` in chunks, through the driver's
        connection inside the session's transaction (the polling path's statements)."""
        driver = self._driver()
        mark = "?" if isinstance(driver, sqlite3.Connection) else "%s"
        for chunk in chunks(values):
            cursor = driver.cursor()
            cursor.execute(sql(mark, len(chunk)), tuple(chunk))
            yield from cursor.fetchall()
            cursor.close()

    def _driver(self) -> Any:
        driver = self.session.connection().connection.driver_connection
        assert driver is not None
        return driver

    def same_content(self, content_hash: str | None) -> set[int]:
        if not content_hash:
            return set()
        return set(self.session.scalars(
            select(ItemRow.id).join(StoryItemRow, StoryItemRow.item_id == ItemRow.id)
            .where(ItemRow.content_hash == content_hash))) - self.hidden

    def rarity(self, anchors: Iterable[str]) -> Rarity:
        wanted = sorted(set(anchors) | {ALL_ITEMS})
        df: dict[str, int] = {}
        for chunk in chunks(wanted):
            df.update(self.session.execute(
                select(STATS.c.anchor, STATS.c["items"]).where(STATS.c.anchor.in_(chunk))).all())
        return Rarity(df.pop(ALL_ITEMS, 0), df)

    def sharing_anchors(self, probe: Probe, rarity: Rarity, window: timedelta) -> set[int]:
        """Placed items within the window that share the probe's rarer anchors, those
        sharing the most first (ties in the canonical order), at most MAX_CANDIDATES."""
        rare = sorted(a for a in probe.anchors if rarity.df.get(a, 0) <= MAX_POSTINGS)
        if not rare:
            return set()
        shared = func.count().label("shared")
        query = (select(ANCHORS.c.item_id, shared)
                 .join(DEDUP, DEDUP.c.item_id == ANCHORS.c.item_id)
                 .join(StoryItemRow, StoryItemRow.item_id == ANCHORS.c.item_id)
                 .where(ANCHORS.c.anchor.in_(rare), ANCHORS.c.item_id != probe.item_id)
                 .group_by(ANCHORS.c.item_id, DEDUP.c.order_key)
                 .order_by(shared.desc(), DEDUP.c.order_key)
                 .limit(MAX_CANDIDATES + min(len(self.hidden), 4 * MAX_CANDIDATES)))
        if probe.event_at is not None:
            lo, hi = probe.event_at - window, probe.event_at + window
            query = query.where(or_(DEDUP.c.event_at.is_(None),
                                    DEDUP.c.event_at.between(lo, hi)))
        found = [i for i in self.session.scalars(query) if i not in self.hidden]
        return set(found[:MAX_CANDIDATES])

    def candidates(self, ids: Iterable[int], *, anchors: bool) -> list[Candidate]:
        ids = sorted(set(ids) - self.hidden)
        rows: list[Any] = []
        for chunk in chunks(ids):
            rows.extend(self.session.execute(
                select(DEDUP.c.item_id, StoryItemRow.story_id, DEDUP.c.event_at,
                       DEDUP.c.order_key, DEDUP.c.signature, DEDUP.c.embedding,
                       ItemRow.content_hash, ItemRow.language)
                .join(StoryItemRow, StoryItemRow.item_id == DEDUP.c.item_id)
                .join(ItemRow, ItemRow.id == DEDUP.c.item_id)
                .where(DEDUP.c.item_id.in_(chunk))).all())
        marks = self.anchors_of(ids) if anchors else {}
        return [Candidate(r.item_id, r.story_id,
                          dedup.canonical_order(_utc(r.event_at), r.order_key),
                          dedup.signature_from(r.signature), frozenset(marks.get(r.item_id, ())),
                          r.content_hash, dedup.embedding_from(r.embedding), r.language)
                for r in rows]

    def anchors_of(self, ids: Sequence[int]) -> dict[int, list[str]]:
        found: dict[int, list[str]] = {}
        for chunk in chunks(sorted(set(ids))):
            for item_id, anchor in self.session.execute(
                    select(ANCHORS.c.item_id, ANCHORS.c.anchor)
                    .where(ANCHORS.c.item_id.in_(chunk))):
                found.setdefault(item_id, []).append(anchor)
        return found

    def stories(self, story_ids: Iterable[int]) -> dict[int, StoryView]:
        """The stories with their members' span and topics."""
        members: dict[int, list[tuple[int, datetime | None]]] = {}
        for chunk in chunks(sorted(set(story_ids))):
            for story_id, item_id, when in self.session.execute(
                    select(StoryItemRow.story_id, StoryItemRow.item_id, DEDUP.c.event_at)
                    .outerjoin(DEDUP, DEDUP.c.item_id == StoryItemRow.item_id)
                    .where(StoryItemRow.story_id.in_(chunk))):
                if item_id not in self.hidden:
                    members.setdefault(story_id, []).append((item_id, _utc(when)))
        topics = topics_of(self.session, [i for m in members.values() for i, _ in m])
        views = {}
        for story_id, rows in members.items():
            times = [t for _, t in rows if t is not None]
            views[story_id] = StoryView(
                story_id, frozenset(i for i, _ in rows),
                (min(times), max(times)) if times else None,
                frozenset(t for i, _ in rows for t in topics.get(i, ())))
        return views


@lru_cache(maxsize=64)
def _near_sql(mark: str, count: int) -> str:
    return ("SELECT b.band_key, b.item_id, d.signature FROM minhash_bands b "
            "JOIN story_items s ON s.item_id = b.item_id "
            "JOIN item_dedup d ON d.item_id = b.item_id "
            f"WHERE b.band_key IN ({', '.join([mark] * count)})")


@lru_cache(maxsize=64)
def _signatures_sql(mark: str, count: int) -> str:
    return ("SELECT d.item_id, d.signature FROM item_dedup d "
            "JOIN story_items s ON s.item_id = d.item_id "
            f"WHERE d.item_id IN ({', '.join([mark] * count)})")


def topics_of(session: Session, item_ids: Sequence[int]) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for chunk in chunks(sorted(set(item_ids))):
        for item_id, topic in session.execute(
                select(ItemTopicRow.item_id, ItemTopicRow.topic)
                .where(ItemTopicRow.item_id.in_(chunk))):
            found.setdefault(item_id, set()).add(topic)
    return found


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def reader_decisions(session: Session, item_id: int) -> tuple[frozenset[int], frozenset[int]]:
    """The items a reader split this one from (apart) and merged it with (together)."""
    rows = session.execute(select(StoryDecisionRow).where(or_(
        StoryDecisionRow.item_id == item_id, StoryDecisionRow.other_id == item_id))).scalars()
    apart: set[int] = set()
    together: set[int] = set()
    for row in rows:
        other = row.other_id if row.item_id == item_id else row.item_id
        (apart if row.decision == "apart" else together).add(other)
    return frozenset(apart), frozenset(together)


def without_neighbours(session: Session, item_ids: Sequence[int]) -> set[int]:
    """The items of ``item_ids`` that no stage could join to any other item: no band key
    or content hash shared with another item, no embedding (the cross-lingual stage
    needs one), no reader's "together". :func:`decide_item` would find no candidate for
    them, so a settle places them without asking (four statements for a chunk instead of
    a dozen per item). Checked against every item, placed or not: a superset of what the
    decision reads."""
    ids = sorted(set(item_ids))
    busy: set[int] = set()
    mates = BANDS.alias("mates")
    twin = ItemRow.__table__.alias("twin")
    for chunk in chunks(ids):
        busy.update(session.scalars(
            select(BANDS.c.item_id).distinct()
            .join(mates, (mates.c.band_key == BANDS.c.band_key)
                  & (mates.c.item_id != BANDS.c.item_id))
            .where(BANDS.c.item_id.in_(chunk))))
        busy.update(session.scalars(
            select(ItemRow.id).join(twin, (twin.c.content_hash == ItemRow.content_hash)
                                    & (twin.c.id != ItemRow.id))
            .where(ItemRow.id.in_(chunk), ItemRow.content_hash.is_not(None))))
        busy.update(session.scalars(
            select(DEDUP.c.item_id).where(DEDUP.c.item_id.in_(chunk),
                                          DEDUP.c.embedding.is_not(None))))
        busy.update(session.scalars(
            select(StoryDecisionRow.item_id).where(StoryDecisionRow.item_id.in_(chunk),
                                                   StoryDecisionRow.decision == "together")))
        busy.update(session.scalars(
            select(StoryDecisionRow.other_id).where(StoryDecisionRow.other_id.in_(chunk),
                                                    StoryDecisionRow.decision == "together")))
    return set(ids) - busy


# --- deciding one stored item --------------------------------------------------------------


def probe_of(session: Session, item_id: int) -> Probe | None:
    """A stored item as the stages see it (None when it has no fingerprint)."""
    row = session.execute(
        select(DEDUP.c.event_at, DEDUP.c.signature, DEDUP.c.embedding, ItemRow.content_hash,
               ItemRow.language)
        .join(ItemRow, ItemRow.id == DEDUP.c.item_id).where(DEDUP.c.item_id == item_id)).first()
    if row is None:
        return None
    placed = Placed(session)
    apart, together = reader_decisions(session, item_id)
    return Probe(item_id, _utc(row.event_at), dedup.signature_from(row.signature),
                 frozenset(placed.anchors_of([item_id]).get(item_id, ())),
                 frozenset(topics_of(session, [item_id]).get(item_id, ())),
                 row.content_hash, dedup.embedding_from(row.embedding), row.language, apart,
                 together)


def decide_item(session: Session, probe: Probe, limits: Thresholds,
                stages: Sequence[str] = dedup.STAGES, exclude_story: int | None = None,
                hidden: AbstractSet[int] = frozenset()) -> Decision:
    """Find the candidates of every stage among placed items (but ``hidden`` ones) and
    decide (see :func:`monitor.dedup.decide`); ``exclude_story`` is the probe's own."""
    placed = Placed(session, hidden)
    ids: set[int] = set(probe.together)
    if "content" in stages:
        ids |= placed.same_content(probe.content_hash)
    if "near" in stages and probe.signature.size:
        ids |= set().union(*placed.near(dedup.band_keys(probe.signature))[0].values())
    cross = "crosslingual" in stages and probe.embedding is not None
    rarity = placed.rarity(probe.anchors) if cross else Rarity(0, {})
    if cross:
        ids |= placed.sharing_anchors(probe, rarity, limits.window)
    ids.discard(probe.item_id)
    candidates = [c for c in placed.candidates(ids, anchors=cross)
                  if c.story_id != exclude_story]
    if cross:
        rarity = placed.rarity(probe.anchors | {a for c in candidates for a in c.anchors})
    views = placed.stories({c.story_id for c in candidates})
    return dedup.decide(probe, candidates, views, rarity, limits, stages)


# --- writing decisions --------------------------------------------------------------------


def _seen(item: Any) -> datetime:
    return cast(datetime, _utc(item.published_at or item.fetched_at))


def attach(session: Session, item_id: int, decision: Decision, now: datetime) -> int:
    """Link the item where the decision says (a new story of its own if none); its id."""
    item = session.execute(select(ItemRow.title, ItemRow.published_at, ItemRow.fetched_at)
                           .where(ItemRow.id == item_id)).one()
    story_id = decision.story_id
    if story_id is None:
        story_id = session.scalars(insert(StoryRow).returning(StoryRow.id), [{
            "headline": item.title, "first_seen": _seen(item), "last_seen": _seen(item),
            "created_at": now}]).one()
    session.execute(insert(StoryItemRow), [{
        "item_id": item_id, "story_id": story_id, "reason": decision.reason,
        "score": decision.score, "created_at": now}])
    if decision.story_id is not None:
        refresh(session, [story_id], headline=False)
    return story_id


def unlink(session: Session, item_id: int) -> int | None:
    """Take the item out of its story (kept even if empty: see :func:`refresh`); the
    story's id, or None if it had none."""
    story = session.scalar(select(StoryItemRow.story_id).where(StoryItemRow.item_id == item_id))
    if story is not None:
        session.execute(delete(StoryItemRow).where(StoryItemRow.item_id == item_id)
                        .execution_options(synchronize_session=False))
    return story


def refresh(session: Session, story_ids: Sequence[int], *, headline: bool = True) -> None:
    """Delete the stories that have no item; give the others the span of their items
    (and, with ``headline``, the title of their first item as the headline)."""
    for chunk in chunks(sorted(set(story_ids))):
        rows = session.execute(
            select(StoryItemRow.story_id, ItemRow.id, ItemRow.title, ItemRow.published_at,
                   ItemRow.fetched_at)
            .join(ItemRow, ItemRow.id == StoryItemRow.item_id)
            .where(StoryItemRow.story_id.in_(chunk))).all()
        members: dict[int, list[Any]] = {}
        for row in rows:
            members.setdefault(row.story_id, []).append(row)
        empty = [s for s in chunk if s not in members]
        if empty:
            session.execute(delete(StoryRow).where(StoryRow.id.in_(empty))
                            .execution_options(synchronize_session=False))
        for story_id, items in members.items():
            first = min(items, key=lambda r: (_seen(r), r.id))
            values: dict[str, Any] = {"first_seen": _seen(first),
                                      "last_seen": max(_seen(r) for r in items)}
            if headline:
                values["headline"] = first.title
            session.execute(update(StoryRow).where(StoryRow.id == story_id).values(**values)
                            .execution_options(synchronize_session=False))


def merge_into(session: Session, source: int, target: int, *, item_id: int,
               decision: Decision) -> bool:
    """Move every item of story ``source`` into ``target`` (the deciding item's link
    takes the decision's reason and score) and delete ``source``; False, and nothing
    moved, when a reader split any two of their items apart."""
    left = set(session.scalars(select(StoryItemRow.item_id)
                               .where(StoryItemRow.story_id == source)))
    right = set(session.scalars(select(StoryItemRow.item_id)
                                .where(StoryItemRow.story_id == target)))
    if _apart_between(session, left, right):
        return False
    session.execute(update(StoryItemRow).where(StoryItemRow.story_id == source)
                    .values(story_id=target).execution_options(synchronize_session=False))
    session.execute(update(StoryItemRow).where(StoryItemRow.item_id == item_id)
                    .values(reason=decision.reason, score=decision.score)
                    .execution_options(synchronize_session=False))
    refresh(session, [source, target], headline=False)
    return True


def _apart_between(session: Session, left: set[int], right: set[int]) -> bool:
    for chunk in chunks(sorted(left)):
        rows = session.execute(select(StoryDecisionRow.item_id, StoryDecisionRow.other_id)
                               .where(StoryDecisionRow.decision == "apart", or_(
                                   StoryDecisionRow.item_id.in_(chunk),
                                   StoryDecisionRow.other_id.in_(chunk)))).all()
        if any((a in left and b in right) or (b in left and a in right) for a, b in rows):
            return True
    return False


# --- stage 2 inline, for the pipeline ------------------------------------------------------


def place_near(session: Session, batch: Sequence[Prepared], placements: Sequence[Placement],
               prints: Mapping[int, Fingerprint], limits: Thresholds) -> list[Placement]:
    """Stage 2, inline in the ingest: an article that exact identity left to start a
    story joins instead the story of a near duplicate among placed items, or of an
    earlier article of the same batch. Cheap: one indexed lookup of the batch's band
    keys, then signatures of the few items found."""
    result = list(placements)
    open_ = [i for i, pl in enumerate(placements) if pl.duplicate_of is None
             and pl.story_id is None and pl.leader is None and i in prints
             and prints[i].signature.size]
    if not open_:
        return result
    placed = Placed(session, memory=limits.memory_index)
    hits, stored = placed.near([k for i in open_ for k in prints[i].bands])
    near = {x for i in open_ for k in prints[i].bands for x in hits.get(k, ())
            if dedup.jaccard(prints[i].signature, stored[x]) >= limits.near}
    found = {c.item_id: c for c in placed.candidates(near, anchors=False)}
    views = dict(placed.stories({c.story_id for c in found.values()}))
    roots: dict[int, int] = {}  # batch index -> index of the article leading its new story
    by_band: dict[int, list[int]] = {}  # band key -> batch indexes in ``roots`` with it
    for i in open_:
        bands = prints[i].bands
        mine = [found[x] for k in bands for x in hits.get(k, ()) if x in found]
        sharing = sorted({j for k in bands for j in by_band.get(k, ())})
        mine += _batch_candidates(sharing, prints, batch, roots, views)
        if not mine:  # most items: nothing to decide between
            decision = Decision(None)
        else:
            probe = Probe(-(i + 1), prints[i].event_at, prints[i].signature, frozenset(),
                          frozenset(m.topic for m in batch[i].topics))
            decision = dedup.decide(probe, mine, views, Rarity(0, {}), limits, ("near",))
        if decision.story_id is None:
            roots[i] = i
        elif decision.story_id < 0:
            roots[i] = -decision.story_id - 1
            result[i] = Placement(leader=roots[i], reason="near", score=decision.score)
        else:
            result[i] = Placement(story_id=decision.story_id, reason="near",
                                  score=decision.score)
        if i in roots:
            for k in set(prints[i].bands):
                by_band.setdefault(k, []).append(i)
    return result


def _batch_candidates(sharing: Sequence[int], prints: Mapping[int, Fingerprint],
                      batch: Sequence[Prepared], roots: dict[int, int],
                      views: dict[int, StoryView]) -> list[Candidate]:
    """Earlier articles of the batch that lead or joined a new story and share a band key
    with the article being placed (``sharing``, in batch order), in stories numbered
    ``-(leader index + 1)``."""
    out = []
    for j in sharing:
        root = roots[j]
        story = -(root + 1)
        group = [k for k, r in roots.items() if r == root]
        times = [t for k in group if (t := prints[k].event_at) is not None]
        views[story] = StoryView(story, frozenset(-(k + 1) for k in group),
                                 (min(times), max(times)) if times else None,
                                 frozenset(m.topic for k in group for m in batch[k].topics))
        out.append(Candidate(-(j + 1), story,
                             dedup.canonical_order(prints[j].event_at, prints[j].order_key),
                             prints[j].signature, frozenset()))
    return out


# --- fingerprints of stored items -----------------------------------------------------------


def fingerprint_item(item: Any) -> Fingerprint:
    """The fingerprint of a stored item (as the pipeline computes it for a new one)."""
    return dedup.fingerprint(item.title, item.text or item.summary or "",
                             published=_utc(item.published_at),
                             fetched=cast(datetime, _utc(item.fetched_at)),
                             polled=item.feed_id is not None, source_key=item.source_key,
                             guid=item.guid)


def ensure_fingerprints(session: Session, item_ids: Sequence[int] | None,
                        embed: bool) -> int:
    """Fingerprint the given items (None: every item) that have none yet, such as items
    stored before this stage existed; how many."""
    query = (select(ItemRow).outerjoin(DEDUP, DEDUP.c.item_id == ItemRow.id)
             .where(DEDUP.c.item_id.is_(None)))
    done = 0
    groups = [None] if item_ids is None else list(chunks(sorted(set(item_ids))))
    for chunk in groups:
        bounded = query if chunk is None else query.where(ItemRow.id.in_(chunk))
        items = list(session.scalars(bounded))
        record(session, {item.id: fingerprint_item(item) for item in items}, embed)
        done += len(items)
    return done


def canonical(session: Session, item_ids: Sequence[int]) -> list[int]:
    """The items in the canonical order (see :func:`monitor.dedup.canonical_order`)."""
    keys: list[Any] = []
    for chunk in chunks(sorted(set(item_ids))):
        keys.extend(session.execute(select(DEDUP.c.item_id, DEDUP.c.event_at, DEDUP.c.order_key)
                                    .where(DEDUP.c.item_id.in_(chunk))).all())
    keys.sort(key=lambda r: dedup.canonical_order(_utc(r.event_at), r.order_key))
    return [r.item_id for r in keys]


def orphans(session: Session) -> list[int]:
    """Fingerprinted items without a story (a rebuild that was interrupted leaves some)."""
    return list(session.scalars(select(DEDUP.c.item_id).outerjoin(
        StoryItemRow, StoryItemRow.item_id == DEDUP.c.item_id)
        .where(StoryItemRow.item_id.is_(None))))


# --- a reader's corrections ---------------------------------------------------------------


def _link(session: Session, item_id: int) -> Any:
    link = session.execute(select(StoryItemRow.story_id, StoryItemRow.reason)
                           .where(StoryItemRow.item_id == item_id)).first()
    if link is None:
        raise StoryError(f"item {item_id} not found (or not in a story): see `monitor items`")
    return link


def _members(session: Session, story_id: int) -> list[int]:
    return sorted(session.scalars(select(StoryItemRow.item_id)
                                  .where(StoryItemRow.story_id == story_id)))


def _decide_pairs(session: Session, pairs: Iterable[tuple[int, int]], decision: str,
                  now: datetime) -> None:
    """Record a reader's decision about item pairs, replacing any earlier one."""
    rows = sorted({(min(a, b), max(a, b)) for a, b in pairs if a != b})
    for chunk in chunks(rows):
        session.execute(delete(StoryDecisionRow).where(or_(*(
            and_(StoryDecisionRow.item_id == a, StoryDecisionRow.other_id == b)
            for a, b in chunk))).execution_options(synchronize_session=False))
        session.execute(insert(StoryDecisionRow), [
            {"item_id": a, "other_id": b, "decision": decision, "created_at": now}
            for a, b in chunk])


def split(session: Session, item_id: int, now: datetime) -> tuple[int, int]:
    """Move the item into a story of its own (link reason ``manual``) and remember that
    it is apart from every other item of its story, so no later run merges it back.
    Returns (old story, new story)."""
    old = _link(session, item_id).story_id
    others = [i for i in _members(session, old) if i != item_id]
    if not others:
        raise StoryError(f"item {item_id} is alone in story {old}: nothing to split")
    session.execute(delete(StoryItemRow).where(StoryItemRow.item_id == item_id))
    new = attach(session, item_id, Decision(None, "manual", 1.0), now)
    _decide_pairs(session, ((item_id, o) for o in others), "apart", now)
    refresh(session, [old])
    return old, new


def merge(session: Session, target: int, source: int, now: datetime) -> list[int]:
    """Move every item of story ``source`` into ``target`` (links ``manual``), delete
    ``source``, and remember the items belong together (each with the first of them in
    the canonical order, which a rebuild places first); earlier splits between them are
    forgotten. Returns the items of the merged story."""
    if target == source:
        raise StoryError(f"story {target} cannot be merged with itself")
    left, right = _members(session, target), _members(session, source)
    for story, members in ((target, left), (source, right)):
        if not members:
            raise StoryError(f"story {story} not found: see `monitor stories`")
    session.execute(update(StoryItemRow).where(StoryItemRow.story_id == source)
                    .values(story_id=target, reason="manual", score=1.0)
                    .execution_options(synchronize_session=False))
    refresh(session, [source, target], headline=False)
    members = canonical(session, left + right) or sorted(left + right)
    center = members[0]
    for chunk in chunks(members):
        session.execute(delete(StoryDecisionRow).where(
            StoryDecisionRow.item_id.in_(chunk), StoryDecisionRow.other_id.in_(members))
            .execution_options(synchronize_session=False))
    _decide_pairs(session, ((center, m) for m in members[1:]), "together", now)
    return sorted(left + right)


def detail(session: Session, story_id: int) -> dict[str, Any]:
    """A story as `monitor stories show` prints it: the shape of `stories --json`, each
    item also with the anchors it shares with the story's other items (rarest first)."""
    rows = store.story_rows(session, story_ids=[story_id])
    if not rows:
        raise StoryError(f"story {story_id} not found: see `monitor stories`")
    story = views.stories(session, rows)[0]
    marks = Placed(session).anchors_of([i["id"] for i in story["items"]])
    rarity = Placed(session).rarity(a for found in marks.values() for a in found)
    for item in story["items"]:
        others = {a for i, found in marks.items() if i != item["id"] for a in found}
        shared = set(marks.get(item["id"], ())) & others
        item["shared_anchors"] = sorted(shared, key=lambda a: (-rarity.weight(a), a))
    return story
