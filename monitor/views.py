"""Stored rows as plain dicts for the CLI's text and JSON output (one shape for both)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from monitor import store


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def item_dict(item: Any, link: Any | None) -> dict[str, Any]:
    return {
        "id": item.id, "title": item.title, "language": item.language,
        "language_confidence": round(item.language_confidence, 4), "outlet": item.outlet,
        "url": item.url, "published": _iso(item.published_at),
        "translation_status": item.translation_status,
        "translated_title": item.translated_title,
        "link_reason": link.reason if link else None,
        "link_score": round(link.score, 4) if link else None,
    }


def stories(session: Session, story_rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Stories with their items, in the order given."""
    pairs = store.items_of_stories(session, [s.id for s in story_rows])
    topics = store.topics_of(session, [item.id for item, _ in pairs])
    by_story: dict[int, list[Any]] = {}
    for item, link in pairs:
        by_story.setdefault(link.story_id, []).append((item, link))
    result = []
    for story in story_rows:
        members = by_story.get(story.id, [])
        result.append({
            "id": story.id, "headline": story.headline,
            "first_seen": _iso(story.first_seen), "last_seen": _iso(story.last_seen),
            "topics": sorted({t for item, _ in members for t in topics.get(item.id, [])}),
            "items": [item_dict(item, link) for item, link in members],
        })
    return result


def items(session: Session, rows: Sequence[Any]) -> list[dict[str, Any]]:
    topics = store.topics_of(session, [item.id for item, _ in rows])
    return [item_dict(item, link) | {"story_id": link.story_id if link else None,
                                     "topics": topics.get(item.id, [])}
            for item, link in rows]
