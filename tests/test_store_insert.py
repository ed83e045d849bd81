"""store.insert_many: the hot path's bulk insert stores exactly what SQLAlchemy stores."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from monitor import db, store
from monitor.store import ITEM_TOPICS, STORIES, STORY_ITEMS, insert_ignore


def test_insert_many_stores_what_sqlalchemy_stores(tmp_path: Path) -> None:
    """Aware datetimes in other zones, naive ones, JSON lists, NULLs and floats are stored
    as the same bytes by both ways, and a repeated row is ignored, not an error."""
    path = tmp_path / "s.db"
    engine = db.make_engine(f"sqlite:///{path}")
    db.ensure_schema(engine)
    when = datetime(2025, 8, 20, 21, 5, 7, 123456, tzinfo=timezone(timedelta(hours=9)))
    with db.transaction(db.session_factory(engine)) as session:
        session.execute(STORIES.insert(), [
            {"id": i, "headline": "h", "first_seen": when, "last_seen": when,
             "created_at": when} for i in (1, 2)])
        session.execute(store.ITEMS.insert(), [
            {"id": i, "source_key": "s", "guid": f"g{i}", "outlet": "o", "title": "t",
             "fetched_at": when, "language": "en", "language_confidence": 1.0,
             "language_method": "m", "translation_status": "not_needed", "title_hash": ""}
            for i in (1, 2)])
        columns = ("item_id", "story_id", "reason", "score", "created_at")
        store.insert_many(session, STORY_ITEMS, columns, [(1, 1, "new", 1.0, when)] * 2)
        session.execute(insert_ignore(session, STORY_ITEMS), [dict(zip(
            columns, (2, 2, "near", 0.875, when.replace(tzinfo=None)), strict=True))])
        store.insert_many(session, STORY_ITEMS, columns,
                          [(2, 2, "near", 0.875, when.replace(tzinfo=None))])
        store.insert_topics(session, [{"item_id": 1, "topic": "t", "matched_on": "original",
                                       "keywords": ["drone*", "İHA"]}])
        session.execute(ITEM_TOPICS.insert(), [{"item_id": 2, "topic": "t",
                                                "matched_on": "original",
                                                "keywords": ["drone*", "İHA"]}])
    engine.dispose()
    con = sqlite3.connect(path)
    links = con.execute("SELECT item_id, reason, score, created_at FROM story_items "
                        "ORDER BY item_id").fetchall()
    stamps = con.execute("SELECT fetched_at FROM items").fetchall()
    topics = con.execute("SELECT keywords FROM item_topics ORDER BY item_id").fetchall()
    con.close()
    assert links == [(1, "new", 1.0, stamps[0][0]), (2, "near", 0.875, links[1][3])]
    assert stamps[0][0] == (when.astimezone(UTC).replace(tzinfo=None)
                            .isoformat(sep=" ", timespec="microseconds"))
    assert links[1][3] == when.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    assert topics[0] == topics[1]


def test_insert_many_refuses_what_breaks_a_constraint(tmp_path: Path) -> None:
    """Only a conflict on a unique key is ignored: a NULL where none may be is an error,
    as with SQLAlchemy's insert (SQLite's OR IGNORE would drop the row silently)."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'n.db'}")
    db.ensure_schema(engine)
    with pytest.raises(IntegrityError), db.transaction(db.session_factory(engine)) as session:
        store.insert_many(session, STORIES, ("headline", "first_seen", "last_seen",
                                              "created_at"), [(None, None, None, None)])
    engine.dispose()
