"""cooperation indicators (考核评估): what arrived per record, one row per request in the read
audit, the admins' sessions, and the indexes the month's aggregates read in order

Revision ID: 0007
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0007'
down_revision = '0003'
branch_labels = None
depends_on = None

LOOKUPS = sa.text("lookup AND party_kind = 'hospital'")
# settlements written before: their refusal code and amount in fen, from their JSON
FILL_SQLITE = ("UPDATE settlement SET refusal_code = json_extract(refusal, '$.code'), "
               "medfee_fen = CAST(ROUND(json_extract(split, '$.medfee_sumamt') * 100) AS INTEGER)")
FILL_POSTGRESQL = ("UPDATE settlement SET refusal_code = CAST(refusal AS JSON) ->> 'code', "
                   "medfee_fen = CAST(ROUND(CAST(CAST(split AS JSON) ->> 'medfee_sumamt' AS NUMERIC) * 100) AS BIGINT)")


def upgrade() -> None:
    op.create_table('record_arrival',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('upload_id', sa.Integer(), nullable=False),
    sa.Column('hospital', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('province', sqlmodel.sql.sqltypes.AutoString(length=2), nullable=True),
    sa.Column('month', sqlmodel.sql.sqltypes.AutoString(length=7), nullable=False),
    sa.Column('arrived', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('units', sa.Integer(), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('delay_s', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('record_arrival') as batch_op:
        batch_op.create_index('ix_arrival_counts', ['month', 'hospital', 'outcome', 'units', 'delay_s'])
        batch_op.create_index('ix_arrival_reasons', ['month', 'outcome', 'hospital', 'reason'])
        batch_op.create_index('ix_arrival_delay_hospital', ['month', 'hospital', 'delay_s'])
        batch_op.create_index('ix_arrival_delay_province', ['month', 'province', 'delay_s'])
    # Rows written before this are not marked: the lookups of those months count zero.
    op.add_column('audit_event', sa.Column('lookup', sa.Boolean(), nullable=False,
                                           server_default=sa.false()))
    with op.batch_alter_table('audit_event') as batch_op:
        batch_op.create_index('ix_audit_lookups', ['recorded', 'party_code', 'purpose', 'outcome',
                                                   'party_kind', 'lookup'],
                              sqlite_where=LOOKUPS, postgresql_where=LOOKUPS)
    with op.batch_alter_table('settlement') as batch_op:
        batch_op.add_column(sa.Column('refusal_code', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))
        batch_op.add_column(sa.Column('medfee_fen', sa.BigInteger(), nullable=True))
    op.execute(FILL_SQLITE if op.get_bind().dialect.name == 'sqlite' else FILL_POSTGRESQL)
    with op.batch_alter_table('settlement') as batch_op:
        batch_op.create_index('ix_settlement_month', ['setl_time', 'state', 'insuplc', 'fixmedins_code',
                                                      'refusal_code', 'medfee_fen'])
        batch_op.create_index('ix_settlement_unsent', ['created_at', 'setl_time', 'state', 'insuplc',
                                                       'fixmedins_code', 'refusal_code'])
    op.create_table('admin_session',
    sa.Column('id_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('csrf', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('created', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('expires', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id_hash')
    )
    with op.batch_alter_table('admin_session') as batch_op:
        batch_op.create_index('ix_admin_session_expires', ['expires'])


def downgrade() -> None:
    op.drop_table('admin_session')
    with op.batch_alter_table('settlement') as batch_op:
        batch_op.drop_index('ix_settlement_unsent')
        batch_op.drop_index('ix_settlement_month')
        batch_op.drop_column('medfee_fen')
        batch_op.drop_column('refusal_code')
    with op.batch_alter_table('audit_event') as batch_op:
        batch_op.drop_index('ix_audit_lookups')
        batch_op.drop_column('lookup')
    op.drop_table('record_arrival')
