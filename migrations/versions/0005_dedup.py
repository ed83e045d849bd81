"""stories: near-duplicate and cross-lingual dedup state, reader decisions

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 02:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _item_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["item_id"], ["items.id"], ondelete="CASCADE",
                                   name=op.f(f"fk_{table}_item_id_items"))


def upgrade() -> None:
    op.create_table(
        "item_dedup",
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("event_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("order_key", sa.String(length=32), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=True),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("embed_state", sa.String(length=16), nullable=False),
        _item_fk("item_dedup"),
        sa.PrimaryKeyConstraint("item_id", name=op.f("pk_item_dedup")),
    )
    op.create_index(op.f("ix_item_dedup_event_at"), "item_dedup", ["event_at"])
    op.create_index(op.f("ix_item_dedup_embed_state"), "item_dedup", ["embed_state"])
    op.create_table(
        "minhash_bands",
        sa.Column("band_key", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        _item_fk("minhash_bands"),
        sa.PrimaryKeyConstraint("band_key", "item_id", name=op.f("pk_minhash_bands")),
        sqlite_with_rowid=False,
    )
    op.create_index(op.f("ix_minhash_bands_item_id"), "minhash_bands", ["item_id"])
    op.create_table(
        "item_anchors",
        sa.Column("anchor", sa.String(length=100), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        _item_fk("item_anchors"),
        sa.PrimaryKeyConstraint("anchor", "item_id", name=op.f("pk_item_anchors")),
        sqlite_with_rowid=False,
    )
    op.create_index(op.f("ix_item_anchors_item_id"), "item_anchors", ["item_id"])
    op.create_table(
        "anchor_stats",
        sa.Column("anchor", sa.String(length=100), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("anchor", name=op.f("pk_anchor_stats")),
    )
    op.create_table(
        "story_decisions",
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("other_id", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        _item_fk("story_decisions"),
        sa.ForeignKeyConstraint(["other_id"], ["items.id"], ondelete="CASCADE",
                                name=op.f("fk_story_decisions_other_id_items")),
        sa.PrimaryKeyConstraint("item_id", "other_id", name=op.f("pk_story_decisions")),
    )
    op.create_index(op.f("ix_story_decisions_other_id"), "story_decisions", ["other_id"])


def downgrade() -> None:
    op.drop_table("story_decisions")
    op.drop_table("anchor_stats")
    op.drop_table("item_anchors")
    op.drop_table("minhash_bands")
    op.drop_table("item_dedup")
