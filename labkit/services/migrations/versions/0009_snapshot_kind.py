"""snapshot kind: whether a snapshot keeps the disk only or also the running state

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 18:05:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Not batch mode (see 0005): SQLite adds a column with a constant default in place. Every snapshot made before
    # this is a copy of the disk only.
    op.add_column('snapshots', sa.Column('kind', sa.String(16), nullable=False, server_default='disk'))


def downgrade() -> None:
    op.drop_column('snapshots', 'kind')
