"""Frozen values that travel between the pipeline's stages.

ORM rows and feedparser dicts never leave their modules; these do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from monitor.topics import TopicMatch


@dataclass(frozen=True)
class Article:
    """One entry as the parse stage read it: text already cleaned, dates in UTC."""

    title: str
    url: str | None = None
    guid: str | None = None
    summary: str = ""
    text: str = ""
    published: datetime | None = None
    author: str | None = None
    outlet: str | None = None
    # Language declared by metadata, most specific first (item xml:lang, HTML lang, feed language).
    language_hints: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParsedFeed:
    """A feed document: its own metadata and its entries."""

    articles: tuple[Article, ...]
    title: str | None = None
    link: str | None = None
    language: str | None = None
    ttl_minutes: int | None = None
    # Why the parser was unhappy (feedparser's bozo), even though it yielded entries.
    warning: str | None = None


@dataclass(frozen=True)
class Detection:
    """A language decision: ISO 639-1 code (``nb`` for Norwegian Bokmål, ``und`` unknown)."""

    language: str
    confidence: float
    method: str


@dataclass(frozen=True)
class FetchResult:
    """What one conditional GET brought back (``content`` is None when nothing changed)."""

    url: str
    status: int
    content: bytes | None
    headers: Mapping[str, str] = field(default_factory=dict)
    final_url: str | None = None
    permanent_redirect: bool = False
    etag: str | None = None
    last_modified: str | None = None
    checksum: str | None = None
    not_modified: bool = False
    elapsed: float = 0.0
    # Cache-Control max-age in seconds, a hint for the scheduler.
    max_age: int | None = None


@dataclass(frozen=True)
class Prepared:
    """An article after the pure stages: normalized, language known, topics matched."""

    article: Article
    source_key: str
    guid: str
    outlet: str
    canonical_url: str | None
    detection: Detection
    topics: tuple[TopicMatch, ...]
    translation_status: str
    translation_reason: str | None
    title_hash: str
    content_hash: str | None
    first_seen: datetime
    feed_id: int | None = None


@dataclass(frozen=True)
class Existing:
    """An exact-identity hit among stored items."""

    reason: str  # guid | url | title | content
    item_id: int
    story_id: int | None
    outlet: str


@dataclass(frozen=True)
class Placement:
    """Where one prepared article goes: nowhere (duplicate), an existing story, a new one.

    ``leader`` is the index, within the same batch, of the article whose new story this
    one joins (two outlets carrying the same wire text in one feed file)."""

    duplicate_of: str | None = None
    story_id: int | None = None
    leader: int | None = None
    reason: str = "new"
    score: float = 1.0


@dataclass(frozen=True)
class IngestReport:
    """What one ingest (a feed poll or a backfill source) did."""

    new: int = 0
    duplicates: Mapping[str, int] = field(default_factory=dict)
    skipped: int = 0
    new_stories: int = 0
    item_ids: tuple[int, ...] = ()
    story_ids: tuple[int, ...] = ()

    @property
    def duplicate_total(self) -> int:
        return sum(self.duplicates.values())
