"""record.row_digests: the digests of the rows a record was made of (Anhui counts rows)

Revision ID: 0005
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: records stored before this count as having held no rows, so their
    # rows count as stored once more when they are next replaced (and never again after).
    op.add_column('record', sa.Column('row_digests', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('record') as batch_op:
        batch_op.drop_column('row_digests')
