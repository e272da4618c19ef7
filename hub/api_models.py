"""Models of the JSON that ``/ingest`` and ``/admin`` answer, for ``/openapi.json``.

The routes still write their answers themselves (``orjson``, as ``hub-interface.md`` fixes them
byte for byte); these models document them (``responses=`` on the route), and a test validates
real answers against them, with no field unaccounted for, so the document cannot drift from what
is answered.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Exact(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Exact):
    code: str = Field(examples=["UNREADABLE"])
    message: str


class ErrorBody(_Exact):
    """Every error outside ``/fhir`` (hub-interface.md, "Who is calling")."""

    error: ErrorDetail


class Rejection(_Exact):
    location: str = Field(description="file, row, column, field path", examples=["jzjl[0].zdxx[1].zddm"])
    reason: str


class IngestSummary(_Exact):
    """What an upload came to (hub-interface.md, "Hospitals: sending records")."""

    stored: int = Field(description="records newly stored or replaced")
    unchanged: int = Field(description="records that were already there exactly so")
    rejected: list[Rejection]
    notes: list[str] = Field(description="what the mapper noticed without rejecting anything")
    upload_id: int = Field(description="the archived original (GET /admin/uploads)")


class SetAside(_Exact):
    """The summary kept for a body that could not be read at all."""

    error: str
    set_aside: Literal[True]


class Hl7Summary(_Exact):
    """The summary kept for one HL7 v2 message (its ACK is the answer)."""

    ack: str = Field(examples=["AA", "AE", "AR"])
    control_id: str | None
    stored: int
    unchanged: int
    rejected: list[Rejection]
    errors: list[str]
    notes: list[str]
    set_aside: bool


class UploadListing(_Exact):
    id: int
    channel: str = Field(examples=["zj", "js", "ah", "sh"])
    sender: str = Field(examples=["H33042100015"])
    received_at: str = Field(description="ISO 8601 with offset")
    filename: str | None
    rerun_of: int | None = Field(description="the original this re-run came from")
    summary: IngestSummary | Hl7Summary | SetAside | dict = Field(
        description="what the upload came to ({} while it is being stored)")


class Uploads(_Exact):
    uploads: list[UploadListing]


class RerunDone(IngestSummary):
    rerun_of: int


class RerunError(_Exact):
    upload_id: int
    error: str = Field(description="why the original still cannot be read")


class Remap(_Exact):
    channel: str
    uploads: int = Field(description="archived originals re-mapped")
    stored: int
    unchanged: int
    errors: list[RerunError]


class Reason(_Exact):
    reason: str
    count: int


class RecordFigures(_Exact):
    received: int = Field(description="records the answers counted: stored + unchanged + one per rejection")
    rejected: int
    top_reasons: list[Reason] = Field(description="the most frequent rejection reasons, at most 5")
    median_delay_hours: str | None = Field(description="from a visit's start to its arrival (stored "
                                                       "records); null when none was measured",
                                           examples=["36.50"])


class LookupFigures(_Exact):
    allowed: int = Field(description="under the treating relationship")
    refused: int = Field(description="answered 403")
    emergency: int = Field(description="allowed by X-Emergency-Reason (not also in allowed)")


class SettlementFigures(_Exact):
    settled: int = Field(description="standing settled now")
    refused: int
    voided: int
    amount: str = Field(description="sum of medfee_sumamt of those settled", examples=["1234.50"])
    refusals: dict[str, int] = Field(description="refused, by code")


class TransferFigures(_Exact):
    completed: int
    refused: int
    on_time: int = Field(description="completed with every step done by its deadline")


class CorrectionFigures(_Exact):
    opened: int
    answered_on_time: int
    overdue: int


class HospitalIndicators(_Exact):
    records: RecordFigures
    lookups: LookupFigures
    settlements: SettlementFigures = Field(description="as the treating hospital")
    corrections: CorrectionFigures = Field(description="addressed to it")


class ProvinceIndicators(HospitalIndicators):
    settlements: SettlementFigures = Field(description="as the insured place")
    transfers: TransferFigures = Field(description="as the origin")


class Indicators(_Exact):
    """One month's cooperation indicators (hub-interface.md, "Administrators: cooperation
    indicators"); with ``Accept: text/csv`` the same as ``party,figure,value`` rows."""

    month: str = Field(examples=["2026-11"])
    provinces: dict[str, ProvinceIndicators]
    hospitals: dict[str, HospitalIndicators]


def answers(ok: type[BaseModel], *errors: int, description: str = "") -> dict:
    """``responses=`` for a route: ``ok`` for 200, ``ErrorBody`` for each error status."""
    out: dict = {200: {"model": ok, "description": description or ok.__doc__ or "OK"}}
    out.update({status: {"model": ErrorBody} for status in (401, *errors)})
    return out
