"""SQLAlchemy 2 models. The schema exists only through Alembic migrations."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}



class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both dialects (SQLite stores no offset: we store UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class FeedRow(Base):
    """A polled feed and its fetch state: a broken feed is a row, never a crash."""

    __tablename__ = "feeds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(2048), unique=True)
    # The URL as first configured; ``url`` follows permanent redirects, this stays the
    # feed's identity (config sync, item source keys). NULL until the first move.
    config_url: Mapped[str | None] = mapped_column(String(2048))
    outlet: Mapped[str | None] = mapped_column(String(200))
    title: Mapped[str | None] = mapped_column(String(500))
    language: Mapped[str | None] = mapped_column(String(16))
    topics: Mapped[list[str]] = mapped_column(JSON, default=list)
    user_agent: Mapped[str | None] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(16), default="active")
    etag: Mapped[str | None] = mapped_column(String(500))
    last_modified: Mapped[str | None] = mapped_column(String(100))
    checksum: Mapped[str | None] = mapped_column(String(64))
    interval_minutes: Mapped[int] = mapped_column(Integer, default=60)
    fixed_interval: Mapped[bool] = mapped_column(default=False)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    next_check_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The URL's host, lower-cased: workers never poll one host at the same time.
    host: Mapped[str | None] = mapped_column(String(255))


class ItemRow(Base):
    """One article: what the outlet said, what we detected, and its translation."""

    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("source_key", "guid"),
        Index("ix_items_outlet_title_hash", "outlet", "title_hash"),
        Index("ix_items_content_hash", "content_hash"),
        Index("ix_items_published_at", "published_at"),
        Index("ix_items_translation_status", "translation_status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    feed_id: Mapped[int | None] = mapped_column(ForeignKey("feeds.id", ondelete="SET NULL"))
    source_key: Mapped[str] = mapped_column(String(2048))
    guid: Mapped[str] = mapped_column(String(2048))
    outlet: Mapped[str] = mapped_column(String(200))
    url: Mapped[str | None] = mapped_column(Text)
    canonical_url: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    summary: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str | None] = mapped_column(String(300))
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime())
    language: Mapped[str] = mapped_column(String(16))
    language_confidence: Mapped[float] = mapped_column(Float)
    language_method: Mapped[str] = mapped_column(String(40))
    translation_status: Mapped[str] = mapped_column(String(16))
    translation_reason: Mapped[str | None] = mapped_column(Text)
    translated_title: Mapped[str | None] = mapped_column(Text)
    translated_summary: Mapped[str | None] = mapped_column(Text)
    translated_text: Mapped[str | None] = mapped_column(Text)
    translation_engine: Mapped[str | None] = mapped_column(String(60))
    translation_package: Mapped[str | None] = mapped_column(String(200))
    translation_package_version: Mapped[str | None] = mapped_column(String(40))
    translated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    title_hash: Mapped[str] = mapped_column(String(32))
    content_hash: Mapped[str | None] = mapped_column(String(32))
    # A translation sweep's lease on a pending item (see store.claim_translations).
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ItemUrlRow(Base):
    """Every URL variant seen for an item: a canonical URL identifies one item."""

    __tablename__ = "item_urls"

    url: Mapped[str] = mapped_column(String(2048), primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)


class StoryRow(Base):
    """A story: the items that report the same event, whatever the outlet or language."""

    __tablename__ = "stories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    headline: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class StoryItemRow(Base):
    """The link from an item to its story, with the reason and score that decided it."""

    __tablename__ = "story_items"

    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    story_id: Mapped[int] = mapped_column(
        ForeignKey("stories.id", ondelete="CASCADE"), index=True)
    reason: Mapped[str] = mapped_column(String(40))
    score: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ItemTopicRow(Base):
    """A topic an item matched, on which text, and which keywords."""

    __tablename__ = "item_topics"

    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    topic: Mapped[str] = mapped_column(String(100), primary_key=True, index=True)
    matched_on: Mapped[str] = mapped_column(String(16))
    keywords: Mapped[list[str]] = mapped_column(JSON, default=list)


class TranslationCacheRow(Base):
    """A translated text, keyed by the package (and version) that made it and the hash of
    its source, so a repeated text is never translated twice."""

    __tablename__ = "translation_cache"
    __table_args__ = (UniqueConstraint("package", "version", "source_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    package: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(40))
    source_hash: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DigestSentRow(Base):
    """A digest the SMTP server accepted for one recipient. Written only after the server
    accepted it, and unique per (digest date, recipient): that is what sends it once."""

    __tablename__ = "digests_sent"
    __table_args__ = (UniqueConstraint("digest_date", "recipient"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest_date: Mapped[date] = mapped_column(Date)
    recipient: Mapped[str] = mapped_column(String(320))
    message_id: Mapped[str] = mapped_column(String(300))
    story_count: Mapped[int] = mapped_column(Integer)
    # The window the digest covered: the next digest starts where this one ended.
    window_start: Mapped[datetime] = mapped_column(UTCDateTime())
    window_end: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DigestAttemptRow(Base):
    """Tries at delivering one (digest date, recipient): bounds the retries, keeps the last
    error, and is a short lease so two daemons sharing a database never send it twice."""

    __tablename__ = "digest_attempts"
    __table_args__ = (UniqueConstraint("digest_date", "recipient"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest_date: Mapped[date] = mapped_column(Date)
    recipient: Mapped[str] = mapped_column(String(320))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ItemDedupRow(Base):
    """What the near-duplicate and cross-lingual stages keep about an item.

    ``event_at`` is the item's published date, or its fetch time when it came from a feed
    poll; NULL when unknown (a backfilled article without a date), which passes every
    time window. ``order_key`` breaks ties in the canonical order (event time, then this
    digest of source and GUID), which unlike the id does not depend on insertion order."""

    __tablename__ = "item_dedup"

    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    event_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    order_key: Mapped[str] = mapped_column(String(32))
    signature: Mapped[bytes | None] = mapped_column(LargeBinary)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    # pending | done | skipped (no anchors that could ever be evidence enough) |
    # empty (nothing to embed) | off (no embedder configured)
    embed_state: Mapped[str] = mapped_column(String(16), index=True)
    # An embedding sweep's lease on a pending item (see store.claim_embeddings).
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class MinhashBandRow(Base):
    """The LSH index: one row per (band key, item). Items sharing a key are candidates."""

    __tablename__ = "minhash_bands"
    __table_args__ = ({"sqlite_with_rowid": False},)

    band_key: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True, index=True)


class ItemAnchorRow(Base):
    """An anchor of an item (``name:nakatani``, ``amount:2e+11``): the posting list that
    finds cross-lingual candidates."""

    __tablename__ = "item_anchors"
    __table_args__ = ({"sqlite_with_rowid": False},)

    anchor: Mapped[str] = mapped_column(String(100), primary_key=True)
    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True, index=True)


class AnchorStatRow(Base):
    """How many items have an anchor (its document frequency, for rarity weights); the
    row with anchor ``*`` counts the items. Counts only grow: deleting items leaves them
    slightly high, which makes the weights slightly low, never wrong in kind."""

    __tablename__ = "anchor_stats"

    anchor: Mapped[str] = mapped_column(String(100), primary_key=True)
    items: Mapped[int] = mapped_column(Integer)


class StoryDecisionRow(Base):
    """A reader's decision about two items: ``apart`` (split: never in one story) or
    ``together`` (merge). Stored with ``item_id < other_id``; every later run, and
    ``monitor dedup --rebuild``, honours it."""

    __tablename__ = "story_decisions"

    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    other_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True, index=True)
    decision: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WorkerRow(Base):
    """A `monitor run` process: its heartbeat, role, the claims it held at its last beat
    and its coordination counters (lock waits, retries, lost leases)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)  # host:pid:random
    role: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claims: Mapped[int] = mapped_column(Integer, default=0)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
