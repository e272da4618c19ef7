"""The tables of the insurance-transfer saga (转移接续): one ``transfer`` row per application and
one ``transfer_step`` row per platform step (4101, 4102, 4201, 4103).

``transfer.active_patient`` holds the patient id while the transfer is not final and NULL once it
is: its unique index is what makes "one running transfer per person" hold under concurrent
requests and across hub processes. The person's resident ID (``certno``) is kept because every
step needs it; it never leaves this table except in platform inputs.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class Transfer(SQLModel, table=True):
    __tablename__ = "transfer"
    __table_args__ = (Index("ix_transfer_patient", "patient_id", "created"),
                      Index("ix_transfer_due", "status", "next_attempt_at"))
    id: str = Field(primary_key=True, max_length=40)  # also the platforms' transfer_id
    patient_id: str = Field(max_length=64)
    active_patient: str | None = Field(default=None, max_length=64, unique=True)
    certno: str = Field(max_length=18)
    psn_name: str = Field(max_length=100)
    from_admdvs: str = Field(max_length=6)
    to_admdvs: str = Field(max_length=6)
    insutype: str = Field(max_length=3)
    status: str = Field(max_length=12)  # submitted | in_progress | completed | refused | cancelled
    created: datetime
    updated: datetime
    applied_on: date  # the application date (+08:00): the origin's 10 working days run from it
    cancel_requested: bool = False
    # Set once a step after 4101 is refused: the refusal that ends the transfer after compensation.
    refusal_code: str | None = Field(default=None, max_length=40)
    refusal_message: str | None = Field(default=None, max_length=500)
    # What the origin's 4101 and 4102 answered, needed by the later steps.
    cert_no: str | None = Field(default=None, max_length=60)
    insu_months: int | None = None
    acct_balc: str | None = Field(default=None, max_length=20)
    fund_txn_id: str | None = Field(default=None, max_length=60)
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = Field(default=None, max_length=300)


class TransferStep(SQLModel, table=True):
    __tablename__ = "transfer_step"
    __table_args__ = (UniqueConstraint("transfer_id", "infno", name="uq_transfer_step"),)
    id: int | None = Field(default=None, primary_key=True)
    transfer_id: str = Field(max_length=40, index=True)
    seq: int  # display order
    infno: str = Field(max_length=4)
    status: str = Field(max_length=8)  # pending | done | failed | undone
    # The msgid, fixed before the first send and reused by every resend (null: never tried).
    msgid: str | None = Field(default=None, max_length=30)
    # none: never left the hub (only NotSent / not configured so far), safe to drop;
    # inflight: marked just before a send (a crash leaves it so: it may have arrived);
    # reached: answered, or sent with an unknown outcome. Anything but none is resolved by resending.
    delivery: str = Field(default="none", max_length=8)
    started_on: date  # the day the step became due: its deadline counts from it
    deadline: date
    done_at: datetime | None = None
    outcome: str | None = Field(default=None, sa_column=Column(Text))  # JSON: output or refusal
    attempts: int = 0
