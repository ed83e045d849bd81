"""Migrations are the only source of the schema, on both databases."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect

from monitor import db
from monitor.models import Base


def test_upgrade_check_downgrade_upgrade(database_url: str) -> None:
    """Head has every model table, `alembic check` finds no drift, and the round trip works."""
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    command.check(db.alembic_config(engine))  # raises on drift
    db.downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    db.upgrade(engine)
    assert db.is_current(engine)
    engine.dispose()


def test_sqlite_pragmas(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SQLite runs in WAL mode with foreign keys and a busy timeout."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    engine.dispose()
