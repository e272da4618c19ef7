"""The hub's tables (SQLModel). Alembic migrations in ``hub/migrations`` create them.

- ``resource``: the current version of every FHIR resource, its JSON as orjson bytes, with the
  columns the access layer and the ordering need (patient, sending hospital and its province,
  the owning record, the sort date). ``resource_history`` keeps every earlier version: together
  they are the whole history (a first version is written once, not twice).
- ``search_index``: one row per (resource, search parameter, value); searches never scan JSON.
- ``record``: the unit a sender replaces as a whole (a visit, a document, a report), with the
  digest of what was last stored, so a re-send of the same thing answers ``unchanged`` (and,
  for records made of spreadsheet rows, the digest of each row, so each row is counted).
- ``patient_key``: the patient index, many match keys -> one Patient id.
- ``upload``: every accepted upload's original bytes, who sent it and when.
- ``api_token``: bearer tokens, only their SHA-256 stored.
- ``rate_limit``: the state of the ``limits`` library's rate limits (``hub/ratelimit.py``), here so
  that every hub process on the database shares it.
- ``record_arrival``: one row per record an ingest answer counted (stored, unchanged, or one per
  rejection with its reason), with the month it arrived in (+08:00) and, for a stored one, the
  delay from its visit's start: what the cooperation indicators (``hub/indicators.py``) count.
- ``admin_session``: administrators' sessions of the indicators page (``hub/admin_pages.py``).
- ``correction``: a patient's request that the sending hospital correct one resource (数据异议),
  with its answer and the resource's versions before and after.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Column, Index, LargeBinary, Text, false, text
from sqlmodel import Field, SQLModel


class Resource(SQLModel, table=True):
    __tablename__ = "resource"
    __table_args__ = (
        Index("ix_resource_patient_type_sort", "patient_id", "res_type", "sort_date"),
        Index("ix_resource_record", "record_key"),
        # the treating window across patients (hub.access.treated_patients), migration 0008
        Index("ix_resource_type_hospital_sort", "res_type", "hospital", "sort_date",
              "patient_id"),
    )
    res_type: str = Field(primary_key=True, max_length=40)
    res_id: str = Field(primary_key=True, max_length=64)
    version: int
    patient_id: str | None = Field(default=None, max_length=64)
    hospital: str | None = Field(default=None, max_length=20)
    province: str | None = Field(default=None, max_length=2)
    record_key: str | None = Field(default=None, max_length=200)
    # ISO UTC text of the type's date element, for "newest first" (NULLs last).
    sort_date: str | None = Field(default=None, max_length=20)
    # Sensitive category of a diagnosis/result ("mental", "hiv", "sti"), None when not sensitive.
    sensitive: str | None = Field(default=None, max_length=10)
    deleted: bool = False
    last_updated: datetime
    # The upload that brought this version.
    upload_id: int | None = None
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class ResourceHistory(SQLModel, table=True):
    __tablename__ = "resource_history"
    res_type: str = Field(primary_key=True, max_length=40)
    res_id: str = Field(primary_key=True, max_length=64)
    version: int = Field(primary_key=True)
    deleted: bool = False
    last_updated: datetime
    upload_id: int | None = None
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class SearchIndex(SQLModel, table=True):
    __tablename__ = "search_index"
    __table_args__ = (
        Index("ix_search_token", "res_type", "param", "value", "system"),
        Index("ix_search_date", "res_type", "param", "date_lo"),
        Index("ix_search_resource", "res_type", "res_id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    res_type: str = Field(max_length=40)
    res_id: str = Field(max_length=64)
    param: str = Field(max_length=40)
    system: str | None = Field(default=None, max_length=200)
    value: str | None = Field(default=None, max_length=200)
    # Half-open [date_lo, date_hi) in ISO UTC text, for date parameters.
    date_lo: str | None = Field(default=None, max_length=20)
    date_hi: str | None = Field(default=None, max_length=20)


class Record(SQLModel, table=True):
    __tablename__ = "record"
    # "<channel>:<hospital>|<source key>"
    key: str = Field(primary_key=True, max_length=200)
    hospital: str = Field(max_length=20)
    patient_id: str = Field(max_length=64)
    digest: str = Field(max_length=64)
    # A source's own version (CDA versionNumber); an older one never replaces a newer one.
    source_version: int | None = None
    upload_id: int | None = None
    updated: datetime
    # The digests of the source rows last stored (Record.row_digests, space-separated, each
    # once), so a re-sent row is counted unchanged; NULL for records not made of rows.
    row_digests: str | None = Field(default=None, sa_column=Column(Text))


class Patient(SQLModel, table=True):
    __tablename__ = "patient"
    id: str = Field(primary_key=True, max_length=64)
    # The strongest match key this patient was created under.
    primary_key: str = Field(max_length=200)
    created: datetime


class PatientKey(SQLModel, table=True):
    __tablename__ = "patient_key"
    key: str = Field(primary_key=True, max_length=200)
    patient_id: str = Field(index=True, max_length=64)


class Upload(SQLModel, table=True):
    __tablename__ = "upload"
    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=10)
    sender: str = Field(max_length=20, index=True)
    received_at: datetime
    content_type: str | None = Field(default=None, max_length=200)
    filename: str | None = Field(default=None, max_length=300)
    sha256: str = Field(max_length=64, index=True)
    # Upload this one re-ran (a re-map of an archived original).
    rerun_of: int | None = None
    summary: str | None = Field(default=None, sa_column=Column(Text))
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_token"
    token_hash: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=10)  # hospital | insurer | admin
    subject: str | None = Field(default=None, max_length=20)
    created: datetime
    revoked: bool = False


class MessageControl(SQLModel, table=True):
    """HL7 v2 control ids already answered, per sender: a repeat gets the same ACK, no change."""

    __tablename__ = "message_control"
    sender: str = Field(primary_key=True, max_length=20)
    control_id: str = Field(primary_key=True, max_length=100)
    upload_id: int
    ack: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    received_at: datetime


LOOKUPS = text("lookup AND party_kind = 'hospital'")


class AuditRecord(SQLModel, table=True):
    """One read of a patient's data, allowed or refused (served as a FHIR AuditEvent).

    Append-only: no code path updates or deletes these rows.
    """

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_patient_time", "patient_id", "recorded"),
                      Index("ix_audit_time", "recorded"),
                      # covering, so the month's lookups read no row of the table
                      Index("ix_audit_lookups", "recorded", "party_code", "purpose", "outcome",
                            "party_kind", "lookup", sqlite_where=LOOKUPS, postgresql_where=LOOKUPS))
    id: int | None = Field(default=None, primary_key=True)
    recorded: datetime
    party_kind: str = Field(max_length=10)
    party_code: str | None = Field(default=None, max_length=20)
    patient_id: str | None = Field(default=None, max_length=64)
    purpose: str = Field(max_length=20)  # treatment | emergency | administration
    reason: str | None = Field(default=None, max_length=500)
    outcome: str = Field(max_length=10)  # allowed | refused
    what: str = Field(max_length=300)
    detail: str | None = Field(default=None, max_length=500)
    # True on the first (or only) row of one request's events (a search writes one row per
    # patient it showed): the indicators count requests by it.
    lookup: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


class Sharing(SQLModel, table=True):
    """A patient's sharing choices; no row means the defaults (cross-province on, no sensitive)."""

    __tablename__ = "sharing"
    patient_id: str = Field(primary_key=True, max_length=64)
    cross_province: bool = True
    mental: bool = False
    hiv: bool = False
    sti: bool = False
    updated: datetime


class RateLimit(SQLModel, table=True):
    """One rate-limit key of ``hub.ratelimit.DatabaseStorage`` (a ``limits`` storage).

    Fixed window: ``count`` hits in the window that ends at ``expires``. Moving window:
    ``moments``, a JSON list of the newest acquisitions (epoch seconds, newest first, at most the
    limit's amount). ``expires`` is when the row stops mattering either way: it may be deleted then.
    """

    __tablename__ = "rate_limit"
    key: str = Field(primary_key=True, max_length=200)
    count: int = 0
    expires: float = Field(default=0.0, index=True)
    moments: str = Field(default="[]", sa_column=Column(Text, nullable=False))

class Correction(SQLModel, table=True):
    """A patient's request that the hospital that sent a resource correct it (数据异议).

    Kept whole: who asked (``patient_id``), when, about what (``res_type``/``res_id`` at
    ``version_before``), the answer (``decision``, ``reason``, ``answered``) and the version
    the resource had when it was answered (``version_after``). Rows are never deleted.
    At most one open correction per resource (a partial unique index, so a race of two
    requests cannot open two).
    """

    __tablename__ = "correction"
    __table_args__ = (
        Index("ux_correction_open_resource", "res_type", "res_id", unique=True,
              sqlite_where=text("status = 'open'"), postgresql_where=text("status = 'open'")),
        # the disputed tag: one look-up per answer, by the answer's patients
        Index("ix_correction_patient_status", "patient_id", "status"),
        Index("ix_correction_hospital_status", "hospital", "status", "created"),
    )
    id: str = Field(primary_key=True, max_length=40)
    patient_id: str = Field(max_length=64)
    res_type: str = Field(max_length=40)
    res_id: str = Field(max_length=64)
    hospital: str = Field(max_length=20)  # the hospital that sent the resource
    kind: str = Field(max_length=20)  # not_mine | wrong | incomplete | other
    text: str = Field(max_length=500)
    status: str = Field(max_length=10)  # open | corrected | rejected | withdrawn
    created: datetime
    deadline: date  # 10 working days after ``created`` (the transfer calendar)
    version_before: int
    version_after: int | None = None
    decision: str | None = Field(default=None, max_length=10)  # corrected | rejected
    reason: str | None = Field(default=None, max_length=500)
    answered: datetime | None = None
    withdrawn: datetime | None = None


class Subscription(SQLModel, table=True):
    """A hospital's FHIR R4 Subscription (rest-hook) to one patient's resources of one type
    (``hub.subscriptions``). ``content`` is the Subscription as the hospital sent it (validated
    R4); ``id``, ``status`` and ``error`` are the hub's and override it when shown. Rows of an
    ended one (``DELETE``) are removed with their pending notifications."""

    __tablename__ = "subscription"
    __table_args__ = (
        # the store's decision: active subscriptions of the patients an upload touched
        Index("ix_subscription_patient_status", "patient_id", "status"),
        Index("ix_subscription_hospital", "hospital", "created"),
    )
    id: str = Field(primary_key=True, max_length=40)
    hospital: str = Field(max_length=20)
    patient_id: str = Field(max_length=64)
    res_type: str = Field(max_length=40)
    endpoint: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(max_length=10)  # active | off | error
    error: str | None = Field(default=None, sa_column=Column(Text))
    # Subscription.end: after it the subscription is ``off``
    ends_at: datetime | None = None
    created: datetime
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Notification(SQLModel, table=True):
    """The outbox: one notification owed to one subscription, written in the transaction that
    stored what it is about (``hub.notify``). Deleted once delivered, dropped when withheld at
    send time or its subscription ended. ``event_id`` is sent as ``X-Yrdhub-Event`` and kept by
    every retry; ``next_attempt_at`` holds the retry pause (so it survives a restart) and
    ``claimed_until`` the lease of the process sending it."""

    __tablename__ = "notification"
    __table_args__ = (
        Index("ix_notification_due", "next_attempt_at"),
        Index("ix_notification_subscription", "subscription_id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=40, unique=True)
    subscription_id: str = Field(max_length=40)
    endpoint: str = Field(sa_column=Column(Text, nullable=False))
    # "Type/id Type/id": what it is about, checked again against the rules at send time
    resources: str = Field(sa_column=Column(Text, nullable=False))
    created: datetime
    next_attempt_at: datetime
    claimed_until: datetime | None = None
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_column=Column(Text))


class RecordArrival(SQLModel, table=True):
    """One record an ingest answer counted, written in the transaction that stored the upload.

    ``units`` is what the answer counted for it (1, or for a record made of spreadsheet rows
    its rows); a rejection is one row with ``outcome`` ``rejected``, ``units`` 1 and its
    ``reason``. ``month`` is the arrival's month in +08:00 (so a month's rows are one index
    range, read in order of delay for the medians); ``delay_s`` runs from the visit's start to
    the arrival, for records stored (new or changed) whose visit start is known, else NULL.
    Append-only.
    """

    __tablename__ = "record_arrival"
    __table_args__ = (
        Index("ix_arrival_counts", "month", "hospital", "outcome", "units", "delay_s"),
        Index("ix_arrival_reasons", "month", "outcome", "hospital", "reason"),
        Index("ix_arrival_delay_hospital", "month", "hospital", "delay_s"),
        Index("ix_arrival_delay_province", "month", "province", "delay_s"),
    )
    id: int | None = Field(default=None, primary_key=True)
    upload_id: int
    hospital: str = Field(max_length=20)
    province: str | None = Field(default=None, max_length=2)
    month: str = Field(max_length=7)
    arrived: datetime
    outcome: str = Field(max_length=10)  # stored | unchanged | rejected
    units: int
    reason: str | None = Field(default=None, max_length=500)
    delay_s: int | None = None


class AdminSession(SQLModel, table=True):
    """An administrator's session of the indicators page: only the SHA-256 of the cookie's
    random id is kept (as the portal's), with the CSRF token of its forms."""

    __tablename__ = "admin_session"
    id_hash: str = Field(primary_key=True, max_length=64)
    csrf: str = Field(max_length=64)
    created: datetime
    expires: datetime = Field(index=True)
