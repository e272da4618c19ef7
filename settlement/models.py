"""The settlement tables (SQLModel, same metadata as the hub's; created by the hub's Alembic
migrations).

- ``settlement``: one row per accepted ``POST /settlement/settle`` (hospital + request_key
  unique), written before any platform call and updated at every step of the state machine in
  ``settlement.service``. It holds everything needed to resume after a crash: the request body,
  the current 2207 msgid and every msgid ever used for it, the exact 2207 input (split, totals
  version, ``setl_time``), the runner lease (which process drives it, until when) and the
  schedule of the next attempt.
- ``settlement_person_lease``: at most one settlement of a person (insured province + psn_no)
  between reading its totals and learning its 2207's outcome, across hub processes.

Times that leases and schedules compare are epoch seconds (float): the same on SQLite and
PostgreSQL, no time-zone conversion. ``setl_time`` is kept exactly as sent to the platform
(``yyyy-MM-dd HH:mm:ss``, +08:00) and its day as ``setl_date`` (reconciliation and clearing).
Money lives in ``split`` (JSON of two-place strings), never as a float column.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class Settlement(SQLModel, table=True):
    __tablename__ = "settlement"
    __table_args__ = (
        UniqueConstraint("fixmedins_code", "request_key", name="uq_settlement_request"),
        Index("ix_settlement_state", "state"),
        Index("ix_settlement_setl_date", "setl_date"),
        # the cooperation indicators read a month by settlement time (or, never sent, by
        # creation) from these alone (covering: no row is read)
        Index("ix_settlement_month", "setl_time", "state", "insuplc", "fixmedins_code", "refusal_code",
              "medfee_fen"),
        Index("ix_settlement_unsent", "created_at", "setl_time", "state", "insuplc", "fixmedins_code",
              "refusal_code"),
    )
    setl_id: str = Field(primary_key=True, max_length=40)
    fixmedins_code: str = Field(max_length=20)
    request_key: str = Field(max_length=200)
    body_digest: str = Field(max_length=64)
    body: str = Field(sa_column=Column(Text, nullable=False))  # the request (holds the ID number)
    # received | sending | reversing | voiding | settled | refused | invalid | reversed | voided
    state: str = Field(max_length=12)
    mdtrtarea_admvs: str = Field(max_length=6)  # the hospital's area
    mdtrtarea: str = Field(max_length=2)  # treatment province
    insuplc_admdvs: str = Field(max_length=6)  # from the request; the coverage's once known
    insuplc: str = Field(max_length=2)  # insured province
    insutype: str = Field(max_length=3)
    mdtrt_id: str = Field(max_length=64)
    psn_no: str | None = Field(default=None, max_length=40)
    split: str | None = Field(default=None, sa_column=Column(Text))  # JSON, two-place strings
    refusal: str | None = Field(default=None, sa_column=Column(Text))  # JSON {code, message}
    refusal_code: str | None = Field(default=None, max_length=40)  # refusal's code (service.figures_of)
    medfee_fen: int | None = Field(default=None, sa_column=Column(BigInteger))  # split's medfee_sumamt in fen
    error_code: str | None = Field(default=None, max_length=40)  # state invalid: the 422 code
    insurer_setl_id: str | None = Field(default=None, max_length=64)
    accum_year: int | None = None
    accum_version: int | None = None
    setl_time: str | None = Field(default=None, max_length=19)  # fixed at the first 2207
    setl_date: str | None = Field(default=None, max_length=10)
    msgid: str | None = Field(default=None, max_length=30)  # the current 2207 message
    msgids: str = Field(default="[]", sa_column=Column(Text, nullable=False))  # JSON: every 2207 msgid
    attempts: int = 0
    conflicts: int = 0
    next_at: float = 0.0
    deadline: float = 0.0  # past it, an unknown outcome is reversed (2601)
    runner: str | None = Field(default=None, max_length=40)
    run_until: float = 0.0
    last_error: str | None = Field(default=None, max_length=200)
    void_msgid: str | None = Field(default=None, max_length=30)
    voided_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None


class SettlementPersonLease(SQLModel, table=True):
    __tablename__ = "settlement_person_lease"
    person_key: str = Field(primary_key=True, max_length=48)  # "ZJ:33000012345678"
    holder: str = Field(max_length=40)  # the setl_id
    until: float


class SettlementMsgid(SQLModel, table=True):
    """Every 2207 msgid the hub has used: unique across hub processes and restarts (a msgid
    is made from the time and a 4-digit sequence, which two processes could both pick; on AH a
    msgid that named two messages would make 5205 answer about the wrong one)."""

    __tablename__ = "settlement_msgid"
    msgid: str = Field(primary_key=True, max_length=30)
    setl_id: str = Field(max_length=40)
