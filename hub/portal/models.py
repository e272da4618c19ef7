"""The portal's table: server-side sessions of signed-in patients.

Only the SHA-256 of the session id (the cookie's value) is stored, so a copy of the database
does not let anyone sign in. ``certno`` is the person's resident ID as the insured place's 1101
gave it (needed to apply for a transfer); it is never rendered: pages show ``masked_id``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel


class PortalSession(SQLModel, table=True):
    __tablename__ = "portal_session"
    id_hash: str = Field(primary_key=True, max_length=64)
    patient_id: str = Field(max_length=64, index=True)
    province: str = Field(max_length=2)  # the province whose platform checked the e-voucher
    certno: str = Field(max_length=18)
    masked_id: str = Field(max_length=18)
    psn_name: str = Field(max_length=100)
    insuinfo: str = Field(sa_column=Column(Text, nullable=False))  # JSON list from 1101
    csrf: str = Field(max_length=64)  # the token the session's forms carry
    created: datetime
    expires: datetime = Field(index=True)
