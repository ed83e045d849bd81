"""scale-out: workers (heartbeats), claims on pending translations and embeddings, feed hosts

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 03:00:00
"""

from collections.abc import Sequence
from urllib.parse import urlsplit

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLAIMED = ("items", "item_dedup")


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claims", sa.Integer(), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_index(op.f("ix_workers_last_seen"), "workers", ["last_seen"])
    for table in CLAIMED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("claimed_by", sa.String(length=100), nullable=True))
            batch.add_column(sa.Column("claimed_until", sa.DateTime(timezone=True),
                                       nullable=True))
    with op.batch_alter_table("feeds") as batch:
        batch.add_column(sa.Column("host", sa.String(length=255), nullable=True))
    feeds = sa.table("feeds", sa.column("id", sa.Integer), sa.column("url", sa.String),
                     sa.column("host", sa.String))
    connection = op.get_bind()
    for feed_id, url in connection.execute(sa.select(feeds.c.id, feeds.c.url)).all():
        host = (urlsplit(url).hostname or url)[:255]
        connection.execute(feeds.update().where(feeds.c.id == feed_id).values(host=host))


def downgrade() -> None:
    with op.batch_alter_table("feeds") as batch:
        batch.drop_column("host")
    for table in CLAIMED:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("claimed_until")
            batch.drop_column("claimed_by")
    op.drop_index(op.f("ix_workers_last_seen"), table_name="workers")
    op.drop_table("workers")
