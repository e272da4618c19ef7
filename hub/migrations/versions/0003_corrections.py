"""corrections (数据异议): a patient's request that the sending hospital correct a resource

Revision ID: 0003
Revises: 0005
Create Date: 2026-11-26 10:00:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0003'
down_revision = '0005'
branch_labels = None
depends_on = None

OPEN = sa.text("status = 'open'")


def upgrade() -> None:
    op.create_table('correction',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('patient_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('res_type', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('res_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('hospital', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('text', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('created', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('deadline', sa.Date(), nullable=False),
    sa.Column('version_before', sa.Integer(), nullable=False),
    sa.Column('version_after', sa.Integer(), nullable=True),
    sa.Column('decision', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=True),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('answered', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('withdrawn', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('correction', schema=None) as batch_op:
        batch_op.create_index('ux_correction_open_resource', ['res_type', 'res_id'], unique=True,
                              sqlite_where=OPEN, postgresql_where=OPEN)
        batch_op.create_index('ix_correction_patient_status', ['patient_id', 'status'], unique=False)
        batch_op.create_index('ix_correction_hospital_status', ['hospital', 'status', 'created'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('correction', schema=None) as batch_op:
        batch_op.drop_index('ix_correction_hospital_status')
        batch_op.drop_index('ix_correction_patient_status')
        batch_op.drop_index('ux_correction_open_resource')
    op.drop_table('correction')
