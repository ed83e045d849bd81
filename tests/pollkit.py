"""Helpers for the poll and daemon tests: small feeds, a config file with fast fetch limits,
a poller on a fresh database, and reads of what it stored."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from monitor import config, db, store
from monitor.models import FeedRow, ItemRow, StoryItemRow, StoryRow
from monitor.poll import Poller

# Short limits so that every misbehaving server costs well under two seconds.
FAST: dict[str, Any] = {"connect_timeout": 0.5, "read_timeout": 0.5, "total_deadline": 1.5,
                        "max_body_mib": 1, "per_host_delay": 0, "concurrency": 16}
# Language detectors for `monitor` subprocesses of tests that are not about languages: the
# default one loads lingua's models on a process's first short text, 4-5 s. langdetect
# starts at once but takes ~10 ms a short text (a few dozen items); py3langid starts in ~1 s
# and then takes 0.2 ms a text (hundreds of items).
FEW_ITEMS_DETECTOR = "langdetect"
MANY_ITEMS_DETECTOR = "py3langid"


def rss(name: str, count: int, *, guids: bool = True, dates: bool = True, ttl: int | None = None,
        encoding: str = "utf-8", words: str = "about regional drone procurement") -> bytes:
    """An RSS 2.0 feed titled ``name`` whose ``count`` items are unique to ``name``."""
    items = "".join(
        f"<item><title>{name} report {i} {words}</title>"
        f"<link>https://{name}.example/a/{i}</link>"
        + (f"<guid>{name}-{i}</guid>" if guids else "")
        + (f"<pubDate>Mon, 0{1 + i % 9} Jun 2025 10:00:00 GMT</pubDate>" if dates else "")
        + f"<description>Report {i} from {name}.</description></item>"
        for i in range(count))
    extra = f"<ttl>{ttl}</ttl>" if ttl is not None else ""
    return (f'<?xml version="1.0" encoding="{encoding}"?><rss version="2.0"><channel>'
            f"<title>{name}</title><link>https://{name}.example/</link>{extra}{items}"
            "</channel></rss>").encode()


def _toml(value: Any) -> str:
    return json.dumps(value)  # strings, numbers and lists of strings read the same in TOML


def write_config(path: Path, feeds: Sequence[Mapping[str, Any]], *, detector: str | None = None,
                 **fetch: Any) -> Path:
    """A config file with ``FAST`` fetch limits (overridden by ``fetch``) and ``feeds``, and
    ``detector`` as the language detector if given (else the default one)."""
    lines = ["[fetch]", *(f"{k} = {_toml(v)}" for k, v in {**FAST, **fetch}.items())]
    if detector is not None:
        lines += ["", "[language]", f"detector = {_toml(detector)}"]
    for feed in feeds:
        lines += ["", "[[feeds]]", *(f"{k} = {_toml(v)}" for k, v in feed.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@contextmanager
def poller_for(config_path: Path, database_url: str) -> Iterator[Poller]:
    """A synced poller on a migrated database; its engine is disposed afterwards."""
    settings = config.load(config_path, database_url=database_url)
    engine = db.make_engine(database_url)
    db.ensure_schema(engine)
    poller = Poller(settings, db.session_factory(engine))
    poller.sync()
    # Load the detector's models now: loading them mid-cycle holds the GIL for a second or
    # more, which the short fetch deadlines of these tests would count against a feed.
    poller.pipeline.detector.detect("Hei")
    try:
        yield poller
    finally:
        poller.writer.shutdown(wait=True)
        engine.dispose()


def rows(sessions: sessionmaker[Session]) -> dict[int, FeedRow]:
    with sessions() as session:
        return {row.id: row for row in store.feed_rows(session)}


def feed_id(sessions: sessionmaker[Session], url: str) -> int:
    with sessions() as session:
        found = store.find_feed(session, url)
        assert found is not None, url
        return found.id


def item_counts(sessions: sessionmaker[Session]) -> dict[int | None, int]:
    with sessions() as session:
        query = select(ItemRow.feed_id, func.count()).group_by(ItemRow.feed_id)
        return {feed: int(n) for feed, n in session.execute(query)}


def item_titles(sessions: sessionmaker[Session], feed: int) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(ItemRow.title).where(ItemRow.feed_id == feed)))


def make_all_due(sessions: sessionmaker[Session]) -> None:
    """Time passes: every feed's next check is now in the past."""
    with db.transaction(sessions) as session:
        session.execute(update(FeedRow).values(
            next_check_at=datetime.now(UTC) - timedelta(seconds=1)))


def consistency(sessions: sessionmaker[Session]) -> dict[str, int]:
    """Counts that must all be zero in a consistent database."""
    with sessions() as session:
        linked = select(StoryItemRow.item_id)
        return {
            "items without a story": session.scalar(select(func.count()).select_from(
                ItemRow).where(~ItemRow.id.in_(linked))) or 0,
            "stories without items": session.scalar(select(func.count()).select_from(
                StoryRow).where(~StoryRow.id.in_(select(StoryItemRow.story_id)))) or 0,
            "items stored twice": session.scalar(text(
                "SELECT count(*) FROM (SELECT feed_id, title FROM items "
                "GROUP BY feed_id, title HAVING count(*) > 1) AS d")) or 0,
            "claimed feeds": session.scalar(select(func.count()).select_from(FeedRow).where(
                FeedRow.claimed_by.is_not(None))) or 0,
        }
