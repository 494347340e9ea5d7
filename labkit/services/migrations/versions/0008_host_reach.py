"""host reach: the host ports a machine's guest may reach, and whether it has outbound traffic

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 14:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Not batch mode (see 0005): SQLite adds a column with a constant default in place. Machines made before this
    # reach no host port, the safe default, and keep outbound traffic, as before.
    op.add_column('machines', sa.Column('host_ports', sa.JSON(), nullable=False, server_default='[]'))
    op.add_column('machines', sa.Column('outbound', sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    op.drop_column('machines', 'outbound')
    op.drop_column('machines', 'host_ports')
