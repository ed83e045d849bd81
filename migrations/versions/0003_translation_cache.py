"""translation cache

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 00:24:55.356155
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('translation_cache',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('package', sa.String(length=200), nullable=False),
    sa.Column('version', sa.String(length=40), nullable=False),
    sa.Column('source_hash', sa.String(length=32), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_translation_cache')),
    sa.UniqueConstraint('package', 'version', 'source_hash', name=op.f('uq_translation_cache_package_version_source_hash'))
    )


def downgrade() -> None:
    op.drop_table('translation_cache')
