"""grade policy: a gradebook policy per course lab; results that could not be checked say why

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 14:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (no batch mode): SQLite adds a column in place, and a batch copy-and-drop would cascade
    # deletes to the rows that reference these tables (see 0004).
    op.add_column('course_labs', sa.Column('grade_policy', sa.String(length=16), server_default='best',
                                           nullable=False))
    op.add_column('grade_results', sa.Column('unchecked', sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column('grade_results', 'unchecked')
    op.drop_column('course_labs', 'grade_policy')
