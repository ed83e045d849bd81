"""Every query monitor makes. Functions take the session and never commit: the caller
owns the transaction. Inserts are batched (one executemany per table per batch) and
idempotent through unique constraints on both SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any, cast
from urllib.parse import urlsplit

from sqlalchemy import (
    Executable,
    Select,
    Table,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from monitor.coordination import xact_lock
from monitor.models import (
    AnchorStatRow,
    DigestAttemptRow,
    DigestSentRow,
    FeedRow,
    ItemAnchorRow,
    ItemDedupRow,
    ItemRow,
    ItemTopicRow,
    ItemUrlRow,
    MinhashBandRow,
    StoryDecisionRow,
    StoryItemRow,
    StoryRow,
    TranslationCacheRow,
    UTCDateTime,
    WorkerRow,
)
from monitor.types import Existing, Placement, Prepared

TITLE_WINDOW = timedelta(days=7)
SQLITE_VARIABLES = 32_766  # bound parameters per statement (SQLite 3.32 and later)
CHUNK = 500
# Inserts go through the Core tables: an ORM bulk insert leaves out None values (so that
# column defaults apply) and so splits a batch into a statement per run of rows that have
# None in the same columns, often one or two rows each.
ITEMS = cast(Table, ItemRow.__table__)
ITEM_URLS = cast(Table, ItemUrlRow.__table__)
STORIES = cast(Table, StoryRow.__table__)
STORY_ITEMS = cast(Table, StoryItemRow.__table__)
ITEM_TOPICS = cast(Table, ItemTopicRow.__table__)


def chunks(values: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    """``values`` in slices of at most ``size`` (bound parameters per statement)."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def insert_ignore(session: Session, table: Any) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING for the session's dialect."""
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing()


def insert_many(session: Session, table: Table, columns: Sequence[str],
                rows: Sequence[Sequence[Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING of many rows (tuples in ``columns`` order).

    On SQLite it goes to the driver's ``executemany`` as one prepared statement, each value
    converted by its column's own bind processor (so what is stored is what SQLAlchemy
    would store): SQLAlchemy's per-row parameter handling costs as much as SQLite's own
    insert, and these tables take ~20 rows per new item. Elsewhere, the dialect's insert."""
    if not rows:
        return
    if not _is_sqlite(session):
        session.execute(insert_ignore(session, table),
                        [dict(zip(columns, row, strict=True)) for row in rows])
        return
    insert = _SqliteInsert.of(table, tuple(columns), session.get_bind().dialect)
    session.connection().exec_driver_sql(insert.sql(1), insert.rows(rows))


def _sqlite_insert_returning(session: Session, table: Table, columns: Sequence[str],
                             rows: Sequence[Sequence[Any]], returning: str) -> list[Any]:
    """SQLite: INSERT ... VALUES (...), (...) ... ON CONFLICT DO NOTHING RETURNING
    ``returning`` (columns, as SQL), as few statements as its variable limit allows; the
    rows inserted, as the driver returns them. Their ids grow in the order of ``rows``
    (a new rowid is one more than the largest, and the writer holds the only lock)."""
    insert = _SqliteInsert.of(table, tuple(columns), session.get_bind().dialect)
    connection = session.connection()
    out: list[Any] = []
    for chunk in chunks(rows, SQLITE_VARIABLES // len(columns)):
        flat = tuple(value for row in insert.rows(chunk) for value in row)
        out.extend(connection.exec_driver_sql(insert.sql(len(chunk), returning), flat).all())
    return out


@dataclass(frozen=True)
class _SqliteInsert:
    """An insert into ``table``'s ``columns`` on SQLite: its SQL and its value converters."""

    table: str
    columns: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]

    @classmethod
    @lru_cache(maxsize=64)
    def of(cls, table: Table, columns: tuple[str, ...], dialect: Any) -> _SqliteInsert:
        return cls(table.name, columns, tuple(
            table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in columns))

    def values(self, row: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(value if convert is None or value is None else convert(value)
                     for convert, value in zip(self.processors, row, strict=True))

    def rows(self, rows: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
        """``rows`` as the driver takes them: as they are when no column converts."""
        return [self.values(row) for row in rows] if any(self.processors) else rows

    @lru_cache(maxsize=64)  # noqa: B019 - few instances (one per table and columns), kept
    def sql(self, count: int, returning: str = "") -> str:
        """``count`` rows of values; ON CONFLICT, not OR IGNORE, which would also drop rows
        breaking a NOT NULL or CHECK."""
        names = ", ".join(f'"{name}"' for name in self.columns)
        row = "(" + ", ".join("?" for _ in self.columns) + ")"
        tail = f" RETURNING {returning}" if returning else ""
        return (f'INSERT INTO "{self.table}" ({names}) VALUES {", ".join([row] * count)} '
                f"ON CONFLICT DO NOTHING{tail}")


# --- exact identity ----------------------------------------------------------------


def _story_of(session: Session, rows: Sequence[Any]) -> dict[int, int]:
    ids = [r.id for r in rows]
    if not ids:
        return {}
    links = session.execute(select(StoryItemRow.item_id, StoryItemRow.story_id)
                            .where(StoryItemRow.item_id.in_(ids)))
    return {item_id: story_id for item_id, story_id in links}


def _lookup(session: Session, query: Callable[[Sequence[Any]], Executable],
            values: Sequence[Any]) -> list[Any]:
    rows: list[Any] = []
    for chunk in chunks(sorted(set(values))):
        rows.extend(session.execute(query(chunk)).all())
    return rows


def find_existing(session: Session, batch: Sequence[Prepared]) -> dict[int, Existing]:
    """For each index in ``batch``, the first exact identity hit among stored items,
    checked in order: GUID within the feed, canonical URL, title within the outlet over
    7 days, content hash."""
    cols = (ItemRow.id, ItemRow.outlet, ItemRow.source_key, ItemRow.guid, ItemRow.title_hash,
            ItemRow.content_hash, ItemRow.published_at, ItemRow.fetched_at)
    # A match needs the source key (the outlet) too: asking for it lets the lookup use the
    # (source_key, guid) and (outlet, title_hash) indexes instead of scanning every item.
    keys, outlets = sorted({p.source_key for p in batch}), sorted({p.outlet for p in batch})
    by_guid = _lookup(session, lambda c: select(*cols).where(
        ItemRow.source_key.in_(keys), ItemRow.guid.in_(c)), [p.guid for p in batch])
    by_url = _lookup(session, lambda c: select(ItemUrlRow.url, *cols).join(
        ItemRow, ItemRow.id == ItemUrlRow.item_id).where(ItemUrlRow.url.in_(c)),
        [u for p in batch for u in _urls(p)])
    by_title = _lookup(session, lambda c: select(*cols).where(
        ItemRow.outlet.in_(outlets), ItemRow.title_hash.in_(c)),
        [p.title_hash for p in batch if p.title_hash])
    by_content = _lookup(session, lambda c: select(*cols).where(ItemRow.content_hash.in_(c)),
                         [p.content_hash for p in batch if p.content_hash])
    stories = _story_of(session, by_guid + by_url + by_title + by_content)
    index = _IdentityIndex(by_guid, by_url, by_title, by_content)
    found = {}
    for position, prepared in enumerate(batch):
        hit = index.match(prepared)
        if hit is not None:
            reason, row = hit
            found[position] = Existing(reason, row.id, stories.get(row.id), row.outlet)
    return found


def _urls(prepared: Prepared) -> list[str]:
    urls = [prepared.canonical_url, prepared.article.url]
    return [u for u in dict.fromkeys(urls) if u]


class _IdentityIndex:
    """Stored rows keyed the four ways an item can be the same as a stored one."""

    def __init__(self, by_guid: list[Any], by_url: list[Any], by_title: list[Any],
                 by_content: list[Any]) -> None:
        self.guid = {(r.source_key, r.guid): r for r in by_guid}
        self.url = {r.url: r for r in by_url}
        self.title: dict[tuple[str, str], list[Any]] = {}
        for r in by_title:
            self.title.setdefault((r.outlet, r.title_hash), []).append(r)
        self.content = {r.content_hash: r for r in by_content}

    def match(self, p: Prepared) -> tuple[str, Any] | None:
        if (row := self.guid.get((p.source_key, p.guid))) is not None:
            return "guid", row
        for url in _urls(p):
            if (row := self.url.get(url)) is not None:
                return "url", row
        for row in self.title.get((p.outlet, p.title_hash), []):
            seen = row.published_at or row.fetched_at
            if abs(seen - p.first_seen) <= TITLE_WINDOW:
                return "title", row
        if p.content_hash and (row := self.content.get(p.content_hash)) is not None:
            return "content", row
        return None


# --- writing -----------------------------------------------------------------------


ITEM_COLUMNS = (
    "feed_id", "source_key", "guid", "outlet", "url", "canonical_url", "title", "summary",
    "text", "author", "published_at", "fetched_at", "language", "language_confidence",
    "language_method", "translation_status", "translation_reason", "title_hash",
    "content_hash")


def _item_values(p: Prepared, fetched_at: datetime) -> tuple[Any, ...]:
    """A new item's row, in ITEM_COLUMNS order."""
    a, d = p.article, p.detection
    return (p.feed_id, p.source_key, p.guid, p.outlet, a.url, p.canonical_url, a.title,
            a.summary, a.text, a.author, a.published, fetched_at, d.language, d.confidence,
            d.method, p.translation_status, p.translation_reason, p.title_hash, p.content_hash)


def insert_items(session: Session, batch: Sequence[Prepared],
                 fetched_at: datetime) -> list[int | None]:
    """Insert the batch; the id of each, or None where a concurrent writer won."""
    rows = [_item_values(p, fetched_at) for p in batch]
    if _is_sqlite(session):
        found = _sqlite_insert_returning(session, ITEMS, ITEM_COLUMNS, rows,
                                         "id, source_key, guid")
    else:
        found = []
        for chunk in chunks(rows):
            stmt = insert_ignore(session, ITEMS).returning(
                ITEMS.c.id, ITEMS.c.source_key, ITEMS.c.guid)
            found += session.execute(stmt, [dict(zip(ITEM_COLUMNS, row, strict=True))
                                            for row in chunk]).all()
    ids = {(source_key, guid): item_id for item_id, source_key, guid in found}
    return [ids.get((p.source_key, p.guid)) for p in batch]


def insert_stories(session: Session, headlines: Sequence[tuple[str, datetime]],
                   now: datetime) -> list[int]:
    """New stories, their ids in the order given."""
    if not headlines:
        return []
    if _is_sqlite(session):
        rows = [(h, t, t, now) for h, t in headlines]
        return sorted(i for (i,) in _sqlite_insert_returning(
            session, STORIES, ("headline", "first_seen", "last_seen", "created_at"), rows, "id"))
    values = [{"headline": h, "first_seen": t, "last_seen": t, "created_at": now}
              for h, t in headlines]
    stmt = insert(STORIES).returning(STORIES.c.id, sort_by_parameter_order=True)
    return list(session.scalars(stmt, values))


def link_items(session: Session, links: Sequence[tuple[int, int, Placement]],
               now: datetime) -> None:
    """Story links for (item id, story id, placement) triples."""
    insert_many(session, STORY_ITEMS, ("item_id", "story_id", "reason", "score", "created_at"),
                [(i, s, p.reason, p.score, now) for i, s, p in links])


def touch_stories(session: Session, seen: dict[int, list[datetime]]) -> None:
    """Widen the span of stories that gained items seen at the given times."""
    least, greatest = (func.min, func.max) if _is_sqlite(session) else (func.least,
                                                                        func.greatest)
    for story_id, times in seen.items():
        session.execute(update(StoryRow).where(StoryRow.id == story_id).values(
            first_seen=least(StoryRow.first_seen, literal(min(times), UTCDateTime())),
            last_seen=greatest(StoryRow.last_seen, literal(max(times), UTCDateTime()))))


def _is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def insert_urls(session: Session, pairs: Sequence[tuple[str, int]]) -> None:
    insert_many(session, ITEM_URLS, ("url", "item_id"), pairs)


def insert_topics(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    columns = ("item_id", "topic", "matched_on", "keywords")
    insert_many(session, ITEM_TOPICS, columns, [tuple(r[c] for c in columns) for r in rows])


# --- reading -----------------------------------------------------------------------


def story_rows(session: Session, *, since: datetime | None = None,
               topic: str | None = None, story_ids: Sequence[int] | None = None) -> list[Any]:
    """Stories newest first (by last_seen), optionally filtered."""
    query = select(StoryRow).order_by(StoryRow.last_seen.desc(), StoryRow.id.desc())
    if since is not None:
        query = query.where(StoryRow.last_seen >= since)
    if story_ids is not None:
        query = query.where(StoryRow.id.in_(story_ids))
    if topic is not None:
        query = query.where(StoryRow.id.in_(
            select(StoryItemRow.story_id).join(
                ItemTopicRow, ItemTopicRow.item_id == StoryItemRow.item_id)
            .where(ItemTopicRow.topic == topic)))
    return list(session.scalars(query))


def items_of_stories(session: Session, story_ids: Sequence[int]) -> list[Any]:
    """(item, link) pairs of the given stories, oldest item first."""
    rows: list[Any] = []
    for chunk in chunks(list(story_ids)):
        rows.extend(session.execute(
            select(ItemRow, StoryItemRow).join(StoryItemRow, StoryItemRow.item_id == ItemRow.id)
            .where(StoryItemRow.story_id.in_(chunk))
            .order_by(ItemRow.published_at, ItemRow.id)).all())
    return rows


def item_rows(session: Session, *, since: datetime | None = None,
              limit: int | None = None) -> list[Any]:
    """(item, link) pairs, newest first."""
    query = (select(ItemRow, StoryItemRow)
             .outerjoin(StoryItemRow, StoryItemRow.item_id == ItemRow.id)
             .order_by(ItemRow.fetched_at.desc(), ItemRow.id.desc()))
    if since is not None:
        query = query.where(func.coalesce(ItemRow.published_at, ItemRow.fetched_at) >= since)
    if limit is not None:
        query = query.limit(limit)
    return list(session.execute(query).all())


def topics_of(session: Session, item_ids: Sequence[int]) -> dict[int, list[str]]:
    """Topic names per item."""
    found: dict[int, list[str]] = {}
    for chunk in chunks(list(item_ids)):
        for item_id, topic in session.execute(
                select(ItemTopicRow.item_id, ItemTopicRow.topic)
                .where(ItemTopicRow.item_id.in_(chunk)).order_by(ItemTopicRow.topic)):
            found.setdefault(item_id, []).append(topic)
    return found


def count(session: Session, model: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def delete_all(session: Session) -> None:
    """Remove every item and story (used by tests and `dedup --rebuild`)."""
    dedup = (StoryDecisionRow, MinhashBandRow, ItemAnchorRow, AnchorStatRow, ItemDedupRow)
    for model in (*dedup, ItemTopicRow, StoryItemRow, ItemUrlRow, StoryRow, ItemRow):
        session.execute(delete(model))



# --- feeds ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedState:
    """A feed row as the poller needs it; ``key`` is its identity, whatever ``url`` became."""

    id: int
    url: str
    key: str
    outlet: str | None
    language: str | None
    topics: tuple[str, ...]
    user_agent: str | None
    etag: str | None
    last_modified: str | None
    checksum: str | None
    interval_minutes: int
    fixed_interval: bool
    error_count: int
    status: str


def _feed_state(row: FeedRow) -> FeedState:
    return FeedState(row.id, row.url, row.config_url or row.url, row.outlet, row.language,
                     tuple(row.topics or ()), row.user_agent, row.etag, row.last_modified,
                     row.checksum, row.interval_minutes, bool(row.fixed_interval),
                     row.error_count, row.status)


def host_of(url: str) -> str:
    """The host that politeness counts by (as the fetch stage's per-host gate does)."""
    return (urlsplit(url).hostname or url)[:255]


def sync_feeds(session: Session, feeds: Sequence[Any], now: datetime, interval: int) -> None:
    """Make every configured feed a row (new ones are due now); settings follow the file.

    A feed that moved (301/308) is found by the URL it was configured with."""
    rows = list(session.scalars(select(FeedRow)))
    by_key = {row.config_url or row.url: row for row in rows}
    by_url = {row.url: row for row in rows}
    for feed in feeds:
        row = by_key.get(feed.url) or by_url.get(feed.url)
        if row is None:
            row = FeedRow(url=feed.url, created_at=now, next_check_at=now, status="active",
                          interval_minutes=interval, error_count=0, topics=[])
            session.add(row)
            by_url[feed.url] = row
        row.outlet, row.language = feed.outlet, feed.language
        row.topics, row.user_agent = list(feed.topics), feed.user_agent
        row.fixed_interval = feed.interval_minutes is not None
        if feed.interval_minutes:
            row.interval_minutes = feed.interval_minutes
        row.host = host_of(row.url)
    session.flush()


def find_feed(session: Session, url: str) -> FeedRow | None:
    """The feed stored under ``url`` or first configured as ``url`` (it may have moved)."""
    return session.scalars(select(FeedRow).where(
        (FeedRow.url == url) | (FeedRow.config_url == url)).order_by(FeedRow.id)).first()


def claim_feeds(session: Session, owner: str, now: datetime, until: datetime, *,
                limit: int | None = None, force: bool = False,
                unchecked_since: datetime | None = None,
                polite: bool = False) -> list[FeedState]:
    """Claim up to ``limit`` due feeds for ``owner``, most overdue first; with ``force``
    every feed, muted ones too, that was not checked since ``unchecked_since``.

    See :func:`_claim`: workers claiming at the same moment get different feeds and
    none waits for another; a claim lapses at ``until`` unless renewed. ``polite``: no
    feed of a host that another worker is polling (claims then take turns, briefly, so
    that two workers never both start on a host at the same moment)."""
    if force:
        wanted: tuple[Any, ...] = () if unchecked_since is None else (
            FeedRow.last_checked_at.is_(None) | (FeedRow.last_checked_at < unchecked_since),)
    else:
        wanted = (FeedRow.status != "muted",
                  FeedRow.next_check_at.is_(None) | (FeedRow.next_check_at <= now))
    if polite:
        xact_lock(session, "claim")
        other = aliased(FeedRow)
        busy = select(other.host).where(other.claimed_until > now, other.claimed_by != owner,
                                        other.host.is_not(None))
        wanted = (*wanted, FeedRow.host.is_(None) | FeedRow.host.not_in(busy))
    ids = _claim(session, "feeds", owner, now, until, wanted,
                 (FeedRow.next_check_at.nulls_first(), FeedRow.id), limit)
    if not ids:
        return []
    query = (select(FeedRow).where(FeedRow.id.in_(ids), FeedRow.claimed_by == owner)
             .order_by(FeedRow.next_check_at.nulls_first(), FeedRow.id))
    return [_feed_state(row) for row in session.scalars(query)]


def release_feeds(session: Session, owner: str) -> None:
    """Drop what ``owner`` still holds (feeds a stop left unpolled stay due)."""
    session.execute(update(FeedRow).where(FeedRow.claimed_by == owner)
                    .values(claimed_by=None, claimed_until=None)
                    .execution_options(synchronize_session=False))


# --- claims (leases on feeds, pending translations, pending embeddings) ------------------

CLAIMABLE: dict[str, Any] = {"feeds": FeedRow, "translations": ItemRow,
                             "embeddings": ItemDedupRow}


def _key(model: Any) -> Any:
    return model.item_id if model is ItemDedupRow else model.id


def _claim(session: Session, kind: str, owner: str, now: datetime, until: datetime,
           wanted: Sequence[Any], order: Sequence[Any], limit: int | None) -> list[int]:
    """Lease up to ``limit`` free rows of ``kind`` matching ``wanted`` to ``owner``; the
    keys leased.

    One statement: UPDATE ... WHERE key IN (SELECT ... FOR UPDATE SKIP LOCKED), so that
    workers claiming at the same moment each take other rows and none waits for another
    on PostgreSQL; on SQLite the statement runs under the database's one write lock."""
    model = CLAIMABLE[kind]
    key = _key(model)
    free = model.claimed_until.is_(None) | (model.claimed_until <= now)
    candidates = (select(key).where(free, *wanted).order_by(*order).limit(limit)
                  .with_for_update(skip_locked=True))
    claim = (update(model).where(key.in_(candidates), free)
             .values(claimed_by=owner, claimed_until=until).returning(key)
             .execution_options(synchronize_session=False))
    return list(session.scalars(claim))


def claim_embeddings(session: Session, owner: str, limit: int, now: datetime,
                     until: datetime, item_ids: Sequence[int] | None = None) -> list[int]:
    """Lease up to ``limit`` items whose embedding is pending (among ``item_ids`` if
    given) to ``owner``, oldest event first (unknown times last)."""
    wanted: tuple[Any, ...] = (ItemDedupRow.embed_state == "pending",)
    if item_ids is not None:
        wanted = (*wanted, ItemDedupRow.item_id.in_(list(item_ids)))
    order = (ItemDedupRow.event_at.is_(None), ItemDedupRow.event_at, ItemDedupRow.order_key)
    return _claim(session, "embeddings", owner, now, until, wanted, order, limit)


def hold(session: Session, kind: str, owner: str, ids: Sequence[int]) -> set[int]:
    """Fencing: which of ``ids`` ``owner`` still holds, locking those rows until the
    transaction ends, so that a lease lost meanwhile (and taken over) is never written."""
    model = CLAIMABLE[kind]
    key = _key(model)
    found: set[int] = set()
    for chunk in chunks(sorted(set(ids))):
        found.update(session.scalars(select(key).where(key.in_(chunk),
                                                       model.claimed_by == owner)
                                     .with_for_update()))
    return found


def renew_held(session: Session, kind: str, owner: str, ids: Sequence[int],
               until: datetime) -> None:
    """Extend ``owner``'s leases on ``ids`` (by key: no scan of a big table)."""
    model = CLAIMABLE[kind]
    for chunk in chunks(sorted(set(ids))):
        session.execute(update(model).where(_key(model).in_(chunk), model.claimed_by == owner)
                        .values(claimed_until=until)
                        .execution_options(synchronize_session=False))


def release_held(session: Session, kind: str, owner: str, ids: Sequence[int]) -> None:
    """Give back ``owner``'s leases on ``ids``."""
    model = CLAIMABLE[kind]
    for chunk in chunks(sorted(set(ids))):
        session.execute(update(model).where(_key(model).in_(chunk), model.claimed_by == owner)
                        .values(claimed_by=None, claimed_until=None)
                        .execution_options(synchronize_session=False))


def release_all(session: Session, kinds: Sequence[str], owners: Sequence[str] | None = None,
                ) -> int:
    """Drop every lease of ``kinds`` (only those of ``owners`` if given): what a SQLite
    daemon does at start, when no other daemon can be alive. How many were dropped."""
    dropped = 0
    for kind in kinds:
        model = CLAIMABLE[kind]
        held_by = (model.claimed_by.in_(owners) if owners is not None
                   else model.claimed_by.is_not(None))
        result = session.execute(update(model).where(held_by)
                                 .values(claimed_by=None, claimed_until=None)
                                 .execution_options(synchronize_session=False))
        dropped += int(getattr(result, "rowcount", 0) or 0)
    return dropped


def url_taken(session: Session, url: str, other_than: int) -> bool:
    """Whether another feed row already has ``url`` (``feeds.url`` is unique)."""
    return session.scalar(select(func.count()).select_from(FeedRow).where(
        FeedRow.url == url, FeedRow.id != other_than)) != 0


def record_feed(session: Session, feed_id: int, owner: str, **values: Any) -> bool:
    """Write a poll's result on the feed's row if ``owner`` still holds its lease (the
    values end the lease); False when the lease lapsed and another worker took it over."""
    result = session.execute(update(FeedRow).where(FeedRow.id == feed_id,
                                                   FeedRow.claimed_by == owner)
                             .values(**values).execution_options(synchronize_session=False))
    return int(getattr(result, "rowcount", 0) or 0) == 1


def update_feed(session: Session, feed_id: int, **values: Any) -> None:
    session.execute(update(FeedRow).where(FeedRow.id == feed_id).values(**values)
                    .execution_options(synchronize_session=False))


def feed_rows(session: Session) -> list[FeedRow]:
    return list(session.scalars(select(FeedRow).order_by(FeedRow.id)))


# --- feed management (`monitor feeds`) -----------------------------------------------


@dataclass(frozen=True)
class FeedOverview:
    """A feed as `monitor feeds list` shows it, with its count of recent items."""

    id: int
    url: str
    key: str
    outlet: str | None
    status: str
    error_count: int
    last_error: str | None
    last_success_at: datetime | None
    next_check_at: datetime | None
    recent_items: int


def feed_overview(session: Session, since: datetime) -> list[FeedOverview]:
    """Every feed with the number of its items dated on or after ``since`` (an undated
    item counts from when it was fetched): one grouped query, not one per feed."""
    when = func.coalesce(ItemRow.published_at, ItemRow.fetched_at)
    recent = (select(ItemRow.feed_id, func.count().label("n"))
              .where(ItemRow.feed_id.is_not(None), when >= since)
              .group_by(ItemRow.feed_id).subquery())
    query = (select(FeedRow, func.coalesce(recent.c.n, 0))
             .outerjoin(recent, recent.c.feed_id == FeedRow.id).order_by(FeedRow.id))
    return [FeedOverview(row.id, row.url, row.config_url or row.url, row.outlet, row.status,
                         row.error_count, row.last_error, row.last_success_at,
                         row.next_check_at, int(n))
            for row, n in session.execute(query)]


def lookup_feed(session: Session, key: int | str) -> FeedState | None:
    """The feed with this id (an int) or URL (a str, current or as first configured)."""
    if isinstance(key, str):
        row = find_feed(session, key)
    else:
        row = session.scalars(select(FeedRow).where(FeedRow.id == key)).first()
    return None if row is None else _feed_state(row)


def feed_urls(session: Session) -> set[str]:
    """Every URL a stored feed answers to (current and as first configured)."""
    pairs = session.execute(select(FeedRow.url, FeedRow.config_url))
    return {url for pair in pairs for url in pair if url}


def add_feeds(session: Session, feeds: Sequence[Any], now: datetime, interval: int) -> None:
    """Insert feeds (values with the fields of config.Feed), each due now."""
    rows = [{"url": f.url, "outlet": f.outlet, "language": f.language,
             "topics": list(f.topics), "user_agent": f.user_agent,
             "interval_minutes": f.interval_minutes or interval,
             "fixed_interval": f.interval_minutes is not None, "status": "active",
             "error_count": 0, "created_at": now, "next_check_at": now,
             "host": host_of(f.url)} for f in feeds]
    for chunk in chunks(rows):
        session.execute(insert(FeedRow), list(chunk))


def delete_feed(session: Session, feed_id: int) -> None:
    """Delete a feed row; its items stay (ON DELETE SET NULL clears their feed_id)."""
    session.execute(delete(FeedRow).where(FeedRow.id == feed_id)
                    .execution_options(synchronize_session=False))


def count_feed_items(session: Session, feed_id: int) -> int:
    query = select(func.count()).select_from(ItemRow).where(ItemRow.feed_id == feed_id)
    return int(session.scalar(query) or 0)


# --- translation ---------------------------------------------------------------------


@dataclass(frozen=True)
class PendingItem:
    """An item waiting for translation, as the sweep needs it."""

    id: int
    language: str
    title: str
    summary: str
    text: str
    topics: tuple[str, ...]  # topics it already matched
    feed_topics: tuple[str, ...]  # its feed's topics (empty: every topic applies)


def pending_languages(session: Session, statuses: Sequence[str]) -> list[str]:
    """The languages of items in the given translation statuses."""
    query = select(ItemRow.language).where(ItemRow.translation_status.in_(statuses)).distinct()
    return sorted(session.scalars(query))


def _pending_query(languages: Sequence[str], statuses: Sequence[str]) -> Select[Any]:
    query = (select(ItemRow, FeedRow.topics).outerjoin(FeedRow, FeedRow.id == ItemRow.feed_id)
             .where(ItemRow.translation_status.in_(statuses), ItemRow.language.in_(languages)))
    return cast(Select[Any], query)


def count_pending(session: Session, languages: Sequence[str], statuses: Sequence[str]) -> int:
    query = _pending_query(languages, statuses).subquery()
    return int(session.scalar(select(func.count()).select_from(query)) or 0)


def pending_items(session: Session, languages: Sequence[str], limit: int,
                  statuses: Sequence[str] = ("pending",)) -> list[PendingItem]:
    """Up to ``limit`` items in ``languages`` and ``statuses``, oldest first."""
    query = _pending_query(languages, statuses).order_by(ItemRow.fetched_at, ItemRow.id)
    return _pending_of(session, query.limit(limit))


def claim_translations(session: Session, owner: str, languages: Sequence[str], limit: int,
                       now: datetime, until: datetime) -> list[PendingItem]:
    """Lease up to ``limit`` pending items in ``languages`` to ``owner``, oldest first
    (see :func:`_claim`): workers sweeping at once translate different items."""
    wanted = (ItemRow.translation_status == "pending", ItemRow.language.in_(languages))
    ids = _claim(session, "translations", owner, now, until, wanted,
                 (ItemRow.fetched_at, ItemRow.id), limit)
    if not ids:
        return []
    query = (_pending_query(languages, ("pending",))
             .where(ItemRow.id.in_(ids), ItemRow.claimed_by == owner)
             .order_by(ItemRow.fetched_at, ItemRow.id))
    return _pending_of(session, query)


def _pending_of(session: Session, query: Select[Any]) -> list[PendingItem]:
    rows = session.execute(query).all()
    topics = topics_of(session, [item.id for item, _ in rows])
    return [PendingItem(item.id, item.language, item.title, item.summary or "",
                        item.text or "", tuple(topics.get(item.id, ())),
                        tuple(feed_topics or ())) for item, feed_topics in rows]


def cached_translations(session: Session, package: str, version: str,
                        hashes: Sequence[str]) -> dict[str, str]:
    """Stored translations by source hash, for one package version."""
    found: dict[str, str] = {}
    for chunk in chunks(sorted(set(hashes))):
        found.update((h, t) for h, t in session.execute(
            select(TranslationCacheRow.source_hash, TranslationCacheRow.text).where(
                TranslationCacheRow.package == package,
                TranslationCacheRow.version == version,
                TranslationCacheRow.source_hash.in_(chunk))))
    return found


def cache_translations(session: Session, package: str, version: str,
                       texts: dict[str, str], now: datetime) -> None:
    """Keep translations by source hash (a concurrent writer's copy wins)."""
    rows = [{"package": package, "version": version, "source_hash": h, "text": t,
             "created_at": now} for h, t in texts.items()]
    for chunk in chunks(rows):
        session.execute(insert_ignore(session, TranslationCacheRow), list(chunk))


def record_translations(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Update items by id with translation results (dicts holding ``id``); their leases
    end with it."""
    if rows:
        session.execute(update(ItemRow), [
            {**row, "claimed_by": None, "claimed_until": None} for row in rows])


def requeue_failed(session: Session) -> int:
    """Mark every item whose translation failed as pending again; how many."""
    result = session.execute(
        update(ItemRow).where(ItemRow.translation_status == "failed")
        .values(translation_status="pending", translation_reason="queued again after a failure")
        .execution_options(synchronize_session=False))
    return int(getattr(result, "rowcount", 0) or 0)


# --- digest --------------------------------------------------------------------------

DIGEST_LEAD_CHARS = 600


@dataclass(frozen=True)
class DigestItem:
    """An item of a story in the digest; ``lead`` is its summary, else its text's start."""

    id: int
    story_id: int
    outlet: str
    language: str
    title: str
    translated_title: str | None
    lead: str
    translated_lead: str | None
    url: str | None
    seen: datetime
    translation_status: str
    topics: tuple[str, ...]
    in_window: bool


@dataclass(frozen=True)
class DigestStory:
    """A story with something new in the digest window, and every item it has."""

    id: int
    headline: str
    first_seen: datetime
    last_seen: datetime
    items: tuple[DigestItem, ...]


@dataclass(frozen=True)
class FeedHealth:
    url: str
    outlet: str | None
    title: str | None
    status: str
    error_count: int
    last_error: str | None
    last_error_at: datetime | None


@dataclass(frozen=True)
class DigestMark:
    """Where the previous digest ended, and when it was first accepted by the server."""

    window_end: datetime
    sent_at: datetime


def _new_in_window(since: datetime, until: datetime, late_after: datetime | None) -> Any:
    """Items first seen (published, else fetched) in (since, until]; plus, after a sent
    digest, items dated before ``since`` but fetched after that digest went out: they
    arrived too late for it and must not be lost."""
    seen = func.coalesce(ItemRow.published_at, ItemRow.fetched_at)
    window = (seen > since) & (seen <= until)
    if late_after is None:
        return window
    return window | ((seen <= since) & (ItemRow.fetched_at > late_after))


def digest_stories(session: Session, since: datetime, until: datetime,
                   late_after: datetime | None = None) -> list[DigestStory]:
    """Stories with an item new in the window, each with all its items, oldest first."""
    fresh = session.execute(select(StoryItemRow.story_id, ItemRow.id)
                            .join(ItemRow, ItemRow.id == StoryItemRow.item_id)
                            .where(_new_in_window(since, until, late_after))).all()
    new_ids = {item_id for _, item_id in fresh}
    story_ids = sorted({story_id for story_id, _ in fresh})
    lead = func.substr(func.coalesce(func.nullif(ItemRow.summary, ""), ItemRow.text),
                       1, DIGEST_LEAD_CHARS)
    translated = func.substr(func.coalesce(ItemRow.translated_summary, ItemRow.translated_text),
                             1, DIGEST_LEAD_CHARS)
    cols = (ItemRow.id, StoryItemRow.story_id, ItemRow.outlet, ItemRow.language, ItemRow.title,
            ItemRow.translated_title, lead.label("lead"), translated.label("translated_lead"),
            ItemRow.url, func.coalesce(ItemRow.published_at, ItemRow.fetched_at).label("seen"),
            ItemRow.translation_status)
    rows = _lookup(session, lambda c: select(*cols).join(
        StoryItemRow, StoryItemRow.item_id == ItemRow.id).where(StoryItemRow.story_id.in_(c)),
        story_ids)
    topics = topics_of(session, [r.id for r in rows])
    items: dict[int, list[DigestItem]] = {}
    for r in sorted(rows, key=lambda r: (_utc(r.seen), r.id)):
        items.setdefault(r.story_id, []).append(DigestItem(
            r.id, r.story_id, r.outlet, r.language, r.title, r.translated_title, r.lead or "",
            r.translated_lead, r.url, _utc(r.seen), r.translation_status,
            tuple(topics.get(r.id, ())), r.id in new_ids))
    stories = _lookup(session, lambda c: select(StoryRow).where(StoryRow.id.in_(c)), story_ids)
    return [DigestStory(s.id, s.headline, s.first_seen, s.last_seen, tuple(items[s.id]))
            for (s,) in sorted(stories, key=lambda row: row[0].id)]


def _utc(value: datetime) -> datetime:
    """A coalesce() result is not run through the column type: make it aware UTC."""
    if isinstance(value, str):  # SQLite returns the stored text for an expression
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def feed_health(session: Session, since: datetime, until: datetime) -> list[FeedHealth]:
    """Feeds that are muted or failed in (since, until]."""
    failed = FeedRow.last_error_at.is_not(None) & (FeedRow.last_error_at > since) & (
        FeedRow.last_error_at <= until)
    query = select(FeedRow).where((FeedRow.status == "muted") | failed).order_by(FeedRow.id)
    return [FeedHealth(f.url, f.outlet, f.title, f.status, f.error_count, f.last_error,
                       f.last_error_at) for f in session.scalars(query)]


def previous_digest(session: Session, day: date) -> DigestMark | None:
    """The newest digest sent for a date before ``day``."""
    row = session.execute(
        select(func.max(DigestSentRow.window_end), func.min(DigestSentRow.sent_at))
        .where(DigestSentRow.digest_date < day).group_by(DigestSentRow.digest_date)
        .order_by(DigestSentRow.digest_date.desc()).limit(1)).first()
    return None if row is None else DigestMark(_utc(row[0]), _utc(row[1]))


def sent_to(session: Session, day: date) -> set[str]:
    """The recipients whose digest for ``day`` the server accepted."""
    return set(session.scalars(select(DigestSentRow.recipient)
                               .where(DigestSentRow.digest_date == day)))


def claim_delivery(session: Session, day: date, recipient: str, now: datetime,
                   until: datetime, max_attempts: int | None = None) -> bool:
    """Count one more attempt at (day, recipient) and hold it until ``until``; False when
    it was already sent, another sender holds it, or ``max_attempts`` were made."""
    session.execute(insert_ignore(session, DigestAttemptRow), [
        {"digest_date": day, "recipient": recipient, "attempts": 0}])
    sent = select(DigestSentRow.id).where(DigestSentRow.digest_date == day,
                                          DigestSentRow.recipient == recipient)
    bounded = () if max_attempts is None else (DigestAttemptRow.attempts < max_attempts,)
    result = session.execute(
        update(DigestAttemptRow).where(
            DigestAttemptRow.digest_date == day, DigestAttemptRow.recipient == recipient,
            DigestAttemptRow.claimed_until.is_(None) | (DigestAttemptRow.claimed_until <= now),
            ~sent.exists(), *bounded)
        .values(attempts=DigestAttemptRow.attempts + 1, last_attempt_at=now,
                claimed_until=until)
        .execution_options(synchronize_session=False))
    return int(getattr(result, "rowcount", 0) or 0) == 1


def release_delivery(session: Session, day: date, recipient: str, error: str | None) -> None:
    """Drop the hold on (day, recipient), keeping the error of a failed attempt."""
    session.execute(update(DigestAttemptRow).where(
        DigestAttemptRow.digest_date == day, DigestAttemptRow.recipient == recipient)
        .values(claimed_until=None, last_error=error)
        .execution_options(synchronize_session=False))


def record_sent(session: Session, day: date, recipient: str, message_id: str,
                story_count: int, window: tuple[datetime, datetime], now: datetime) -> None:
    """The server accepted the digest for (day, recipient)."""
    session.execute(insert_ignore(session, DigestSentRow), [{
        "digest_date": day, "recipient": recipient, "message_id": message_id,
        "story_count": story_count, "window_start": window[0], "window_end": window[1],
        "sent_at": now}])
    release_delivery(session, day, recipient, None)


def failed_deliveries(session: Session, day: date) -> dict[str, int]:
    """Recipients whose digest for ``day`` failed and was not sent since: attempts made."""
    sent = select(DigestSentRow.id).where(DigestSentRow.digest_date == day,
                                          DigestSentRow.recipient == DigestAttemptRow.recipient)
    query = select(DigestAttemptRow.recipient, DigestAttemptRow.attempts).where(
        DigestAttemptRow.digest_date == day, DigestAttemptRow.last_error.is_not(None),
        ~sent.exists())
    return {recipient: attempts for recipient, attempts in session.execute(query)}


# --- workers and status ----------------------------------------------------------------


def beat(session: Session, values: dict[str, Any]) -> None:
    """Write a worker's heartbeat row (``values`` holds every column; ``id`` is the key)."""
    updated = session.execute(update(WorkerRow).where(WorkerRow.id == values["id"])
                              .values(**values).execution_options(synchronize_session=False))
    if not getattr(updated, "rowcount", 0):
        session.execute(insert(WorkerRow).values(**values))


def workers_seen(session: Session, since: datetime) -> list[WorkerRow]:
    """Workers whose last heartbeat is at or after ``since``, oldest start first."""
    return list(session.scalars(select(WorkerRow).where(WorkerRow.last_seen >= since)
                                .order_by(WorkerRow.started_at, WorkerRow.id)))


def dead_workers(session: Session, roles: Sequence[str]) -> list[str]:
    """Ids of workers in ``roles`` that never said they stopped (killed, or still running)."""
    return list(session.scalars(select(WorkerRow.id).where(
        WorkerRow.stopped_at.is_(None), WorkerRow.role.in_(roles))))


def prune_workers(session: Session, before: datetime) -> None:
    """Forget workers not seen since ``before``."""
    session.execute(delete(WorkerRow).where(WorkerRow.last_seen < before)
                    .execution_options(synchronize_session=False))


@dataclass(frozen=True)
class Backlog:
    """Work waiting for the cluster, and the last digest sent."""

    due_feeds: int
    claimed_feeds: int
    pending_translations: int
    pending_embeddings: int
    last_digest_date: date | None
    last_digest_sent_at: datetime | None
    last_digest_recipients: int


def backlog(session: Session, now: datetime) -> Backlog:
    """Due feeds (active, next check passed), feeds under a live claim, items waiting
    for translation or embedding, and the newest digest day sent."""
    due = select(func.count()).select_from(FeedRow).where(
        FeedRow.status != "muted",
        FeedRow.next_check_at.is_(None) | (FeedRow.next_check_at <= now))
    claimed = select(func.count()).select_from(FeedRow).where(FeedRow.claimed_until > now)
    translations = select(func.count()).select_from(ItemRow).where(
        ItemRow.translation_status == "pending")
    embeddings = select(func.count()).select_from(ItemDedupRow).where(
        ItemDedupRow.embed_state == "pending")
    last = session.execute(
        select(DigestSentRow.digest_date, func.max(DigestSentRow.sent_at), func.count())
        .group_by(DigestSentRow.digest_date).order_by(DigestSentRow.digest_date.desc())
        .limit(1)).first()
    return Backlog(int(session.scalar(due) or 0), int(session.scalar(claimed) or 0),
                   int(session.scalar(translations) or 0), int(session.scalar(embeddings) or 0),
                   last[0] if last else None, _utc(last[1]) if last else None,
                   int(last[2]) if last else 0)
