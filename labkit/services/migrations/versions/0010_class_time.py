"""class time: a course lab's time window, allowance, idle pause and exam mode; one attempt per student and lab

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 01:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

_LAB_COLUMNS = ('opens_at', 'closes_at', 'allowance_minutes', 'idle_minutes', 'exam', 'results_released_at')


def upgrade() -> None:
    # Not batch mode (see 0005): SQLite adds nullable columns and ones with a constant default in place. Every lab
    # provisioned before this has no window, no limit, no idle pause and is not an exam.
    op.add_column('course_labs', sa.Column('opens_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('course_labs', sa.Column('closes_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('course_labs', sa.Column('allowance_minutes', sa.Integer(), nullable=True))
    op.add_column('course_labs', sa.Column('idle_minutes', sa.Integer(), nullable=True))
    op.add_column('course_labs', sa.Column('exam', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column('course_labs', sa.Column('results_released_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        'attempts',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('student_id', sa.Integer(), sa.ForeignKey('students.id', ondelete='CASCADE'), nullable=False),
        sa.Column('course_lab_id', sa.Integer(), sa.ForeignKey('course_labs.id', ondelete='CASCADE'), nullable=False),
        sa.Column('began_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('extra_minutes', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('warned_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('closed_reason', sa.String(16), nullable=True),
        sa.UniqueConstraint('student_id', 'course_lab_id'),
    )
    op.create_index('ix_attempts_student_id', 'attempts', ['student_id'])
    op.create_index('ix_attempts_course_lab_id', 'attempts', ['course_lab_id'])


def downgrade() -> None:
    op.drop_index('ix_attempts_course_lab_id', 'attempts')
    op.drop_index('ix_attempts_student_id', 'attempts')
    op.drop_table('attempts')
    with op.batch_alter_table('course_labs') as batch:
        for column in _LAB_COLUMNS:
            batch.drop_column(column)
