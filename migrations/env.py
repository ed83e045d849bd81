"""Alembic environment: the engine comes from monitor (``config.attributes['engine']``)
or from ``MONITOR_DATABASE_URL`` when alembic is run by hand."""

from __future__ import annotations

import os

from alembic import context

from monitor.db import make_engine
from monitor.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        engine = make_engine(os.environ.get("MONITOR_DATABASE_URL", "sqlite:///data/monitor.db"))
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=sqlite,
            compare_type=True,
            transactional_ddl=True if sqlite else None,
        )
        with context.begin_transaction():
            if sqlite:
                # pysqlite runs DDL outside any transaction, so a process killed halfway
                # through a migration left its tables without the version row, and every
                # later start failed on "table already exists". SQLite's DDL is
                # transactional: one explicit transaction makes the upgrade all or nothing.
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            context.run_migrations()
        connection.commit()


run_migrations()
