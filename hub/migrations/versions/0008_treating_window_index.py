"""the treating window as an index read: a hospital's encounters by start time

``hub.access`` asks "which patients does this hospital treat now?" (a search across patients)
as the hospital's encounters that started in the last 30 days. Without this index that read
walked every encounter of the store; with it, only the window's (``patient_id`` included, so
the table is not read).

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-05 07:30:00
"""
from alembic import op


revision = '0008'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_resource_type_hospital_sort', 'resource',
                    ['res_type', 'hospital', 'sort_date', 'patient_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_resource_type_hospital_sort', table_name='resource')
