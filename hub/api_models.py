"""Models of the JSON that ``/ingest``, ``/admin``, ``/api/me``, ``/corrections`` and ``/healthz``
answer, for ``/openapi.json`` (the edge's own answers; settlement's and transfers' domain answers
are ``settlement.schemas``).

The routes still write their answers themselves (``orjson``, as ``hub-interface.md`` fixes them
byte for byte); these models document them (``responses=`` on the route), and a test validates
real answers against them, with no field unaccounted for, so the document cannot drift from what
is answered.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import HTMLResponse, RedirectResponse

from settlement.schemas import LocalTime, request_body


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


# -- the patient's /api/me ---------------------------------------------------------------------------


class Coverage(_Exact):
    insutype: str = Field(examples=["310"])
    insuplc_admdvs: str | None = Field(examples=["330421"])
    psn_insu_stas: str | None = Field(examples=["1"])


class Me(_Exact):
    """The signed-in person, as 1101 gave them at sign-in (the resident ID masked)."""

    name: str
    resident_id: str = Field(description="masked", examples=["3304**********002X"])
    province: Literal["SH", "JS", "ZJ", "AH"] = Field(description="whose platform signed them in")
    coverage: list[Coverage]


class Organisation(_Exact):
    code: str | None = Field(examples=["H31011800012", "SELF"])
    name: str | None


class AccessLogEntry(_Exact):
    time: LocalTime
    organisation: Organisation
    purpose: str = Field(examples=["treatment", "emergency", "patient"])
    reason: str | None = Field(description="the X-Emergency-Reason given")
    outcome: Literal["allowed", "refused"]
    what: str


class AccessLog(_Exact):
    """Every read of the person's records, newest first."""

    entries: list[AccessLogEntry]


class Sensitive(_Exact):
    mental: bool = False
    hiv: bool = False
    sti: bool = False


class SharingChoices(_Exact):
    """What the person shares: across provinces, and each sensitive category."""

    cross_province: bool
    sensitive: Sensitive = Field(default_factory=Sensitive, description="absent categories are false")


class Confirmation(BaseModel):
    """Any JSON object, ``{}`` or none (not read): the call requires ``Content-Type:
    application/json``, which a cross-site form cannot send."""


class Bundle(BaseModel):
    """A FHIR R4 ``Bundle`` of type ``collection`` (application/fhir+json): everything held."""

    resourceType: Literal["Bundle"]
    type: Literal["collection"]
    entry: list[dict[str, Any]] = Field(description="{fullUrl, resource} per resource")


# -- corrections ------------------------------------------------------------------------------------

Kind = Literal["not_mine", "wrong", "incomplete", "other"]
Decision = Literal["corrected", "rejected"]
TEXT = Field(min_length=1, max_length=500)
# "Type/id" as the hub stores them (ids of make_id, or a sender's own FHIR ids)
RESOURCE_PATTERN = r"^[A-Z][A-Za-z]{1,39}/[A-Za-z0-9\-.]{1,64}$"


class CorrectionRequest(BaseModel):
    """The body of ``POST /api/me/corrections``, parsed by ``hub.corrections`` (a bad field:
    422 ``INVALID_CORRECTION``, naming it in Chinese)."""

    model_config = ConfigDict(str_strip_whitespace=True)
    resource: str = Field(pattern=RESOURCE_PATTERN, examples=["Condition/8f3c"])
    kind: Kind
    text: str = TEXT


class AnswerRequest(BaseModel):
    """The body of ``POST /corrections/{id}/answer``, parsed by ``hub.corrections`` (a bad
    field: 422 ``INVALID_ANSWER``)."""

    model_config = ConfigDict(str_strip_whitespace=True)
    decision: Decision
    reason: str = TEXT


class CorrectionAnswer(_Exact):
    decision: Decision
    reason: str
    time: LocalTime


class Versions(_Exact):
    before: int = Field(description="the resource's version when the correction was opened")
    after: int | None = Field(description="its version when it was answered")


class CorrectionPublic(_Exact):
    """A correction (数据异议); ``deadline`` is 10 working days after ``created``."""

    id: str
    status: Literal["open", "corrected", "rejected", "withdrawn"]
    resource: str = Field(examples=["Condition/8f3c"])
    hospital: Organisation
    kind: Kind
    text: str
    created: LocalTime
    deadline: str = Field(description="yyyy-mm-dd", examples=["2026-12-18"])
    overdue: bool
    answer: CorrectionAnswer | None
    withdrawn: LocalTime | None
    versions: Versions


class CorrectionList(_Exact):
    corrections: list[CorrectionPublic]


class Health(_Exact):
    """200 while the hub can serve, else 503 (the same body)."""

    status: Literal["ok", "unavailable"]
    database: bool
    platforms: dict[str, Literal["reachable", "unreachable", "not configured"]]


# -- the portal's pages ------------------------------------------------------------------------------

_HTML = {"text/html": {"schema": {"type": "string"}}}


def page(*, form: dict[str, str] | None = None, redirect: str = "") -> dict:
    """Route keyword arguments that document a portal page (HTML in Chinese, for a person): its
    ``text/html`` answer; with ``form``, the url-encoded fields it posts (name -> meaning; the
    session's ``csrf`` token always); with ``redirect``, the ``303`` that answers success."""
    kw: dict = {"response_class": HTMLResponse,
                "responses": {200: {"description": "the page", "content": _HTML}}}
    if redirect:
        kw.update(status_code=303, response_class=RedirectResponse, responses={
            303: {"description": f"done: see {redirect}"},
            "4XX": {"description": "the form again, saying what is wrong", "content": _HTML}})
    if form is not None:
        fields = {"csrf": "the token of the form (CSRF)", **form}
        kw["openapi_extra"] = {"requestBody": {"required": True, "content": {
            "application/x-www-form-urlencoded": {"schema": {
                "type": "object", "required": ["csrf"],
                "properties": {name: {"type": "string", "description": what} for name, what in fields.items()}}}}}}
    return kw


def answers(ok: type[BaseModel], *errors: int, description: str = "", status: int = 200) -> dict:
    """``responses=`` for a route: ``ok`` for ``status``, ``ErrorBody`` for 401 and each error."""
    out: dict = {status: {"model": ok, "description": description or ok.__doc__ or "OK"}}
    out.update({code: {"model": ErrorBody} for code in (401, *errors)})
    return out


def body(model: type[BaseModel], required: bool = True) -> dict:
    """``openapi_extra`` for a JSON body the handler parses itself, keeping its coded answers
    (``settlement.schemas.request_body``)."""
    return request_body(model, required=required)
