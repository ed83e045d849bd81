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
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations()
