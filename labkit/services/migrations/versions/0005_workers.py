"""workers: jobs record their runner process; login failures shared by every web worker

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Not batch mode: rebuilding jobs is not needed to add a nullable column (SQLite's ADD COLUMN does it in place),
    # and batch mode's copy-and-drop is what cascades deletes on tables other rows reference (see 0004).
    op.add_column('jobs', sa.Column('runner', sa.String(length=64), nullable=True))
    op.create_table('login_failures',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_login_failures_key'), 'login_failures', ['key'], unique=False)
    op.create_index(op.f('ix_login_failures_at'), 'login_failures', ['at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_login_failures_at'), table_name='login_failures')
    op.drop_index(op.f('ix_login_failures_key'), table_name='login_failures')
    op.drop_table('login_failures')
    # SQLite (3.35+) drops a column nothing else uses in place
    op.drop_column('jobs', 'runner')
