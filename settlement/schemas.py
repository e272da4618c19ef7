"""Models of the settlement and transfer answers and request bodies (hub-interface.md, "Insurance
platforms" and the transfers of "Patients: the portal"), for ``/openapi.json``.

They are domain answers (what ``service.view``, ``reconcile``, ``clearing`` and
``TransferService.view`` build), so they live here, beside what builds them, and import nothing of
``hub``. The handlers still write their answers themselves (byte for byte as the interface fixes
them); these models document them, and tests validate real answers against the document, with no
field unaccounted for (``extra="forbid"``: ``additionalProperties: false``).

Request bodies are parsed by the domain's own parsers (``rules.SettleRequest.from_json``,
``transfer.check_request``), which give the interface's coded 422/400 answers field by field; the
body models here declare the same rules for the document (``request_body``), and a test checks
that the parser and the model agree on examples. Only ``ReconcileRequest`` is the parser itself.

Money in an answer is ``Money``: a ``Decimal`` serialised as a string of exactly two places
(``"37.20"``), never a JSON number; in a request, a decimal string of at most two places.
"""

from __future__ import annotations

import re
import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema

from mappers.region import money_text

from .reference import INSUTYPES
from .rules import _MONEY_RE, _QUANTITY_RE, CERT_TYPES, VISIT_TYPES

ANSWER_MONEY = r"^-?\d+\.\d{2}$"
_ANSWER_MONEY_RE = re.compile(ANSWER_MONEY)


def _money(value: Any) -> Decimal:
    """Answer money: a decimal string with exactly two places (a Decimal passes as it is)."""
    if isinstance(value, Decimal):
        return value
    if not isinstance(value, str) or not _ANSWER_MONEY_RE.match(value):
        raise ValueError("money is a decimal string with two places, e.g. \"37.20\"")
    return Decimal(value)


Money = Annotated[Decimal, BeforeValidator(_money), PlainSerializer(money_text, return_type=str),
                  WithJsonSchema({"type": "string", "pattern": ANSWER_MONEY, "examples": ["37.20"]})]
RequestMoney = Annotated[str, Field(pattern=_MONEY_RE.pattern, examples=["18.60"],
                                    description="a decimal string >= 0 with at most two places")]
Province = Literal["SH", "JS", "ZJ", "AH"]
Area = Annotated[str, Field(pattern=r"^\d{6}$", examples=["330421"], description="GB/T 2260 area code")]
LocalTime = Annotated[str, Field(description="ISO 8601 with the +08:00 offset",
                                 examples=["2024-03-15T09:30:00+08:00"])]


class _Exact(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- request bodies ---------------------------------------------------------------------------------


class FeeLineCreate(BaseModel):
    med_list_codg: str = Field(min_length=1, examples=["XJ01CAA040A001"])
    cnt: Annotated[str, Field(pattern=_QUANTITY_RE.pattern)] | Annotated[int, Field(gt=0)] = Field(
        description="> 0, at most four places: a decimal string or a whole JSON number", examples=["2"])
    pric: RequestMoney
    det_item_fee_sumamt: RequestMoney = Field(description="cnt x pric rounded half up to 0.01 "
                                                          "(else 422 LINE_AMOUNT_MISMATCH)")


class SettlementCreate(BaseModel):
    """The body of ``POST /settlement/presettle`` and ``/settle`` (fields beyond these are ignored).
    A fault is 422 with the code of the first field at fault (``MISSING_FIELD``,
    ``INVALID_FIELD``, ``INVALID_AMOUNT``, ``INVALID_CERT_NO``, ...)."""

    request_key: str = Field(min_length=1, description="the caller's; hospital + key is unique",
                             examples=["K-20240315-000123"])
    fixmedins_code: str = Field(min_length=1, examples=["H31011800012"])
    mdtrt_id: str = Field(min_length=1, examples=["MZ2024031500077"])
    mdtrt_cert_type: Literal[tuple(CERT_TYPES)] = Field(description="01 e-voucher, 02 resident ID, "
                                                                    "03 social-security card")
    mdtrt_cert_no: str = Field(min_length=1)
    insuplc_admdvs: Area
    insutype: Literal[tuple(INSUTYPES)]
    visit_type: Literal[tuple(VISIT_TYPES)]
    visit_time: str = Field(min_length=16, description="ISO 8601 date and time; without an offset "
                                                       "+08:00", examples=["2024-03-15T09:30:00+08:00"])
    use_personal_account: bool = False
    lines: list[FeeLineCreate] = Field(min_length=1)


def _iso_date(value: Any) -> dt.date:
    """As ``date.fromisoformat`` reads it (what the endpoint always took); only a string."""
    if not isinstance(value, str):
        raise ValueError("a date is a string YYYY-MM-DD")
    return dt.date.fromisoformat(value)


class ReconcileRequest(BaseModel):
    """The body of ``POST /settlement/reconcile`` (anything else: 422 ``INVALID_DATE``)."""

    date: Annotated[dt.date, BeforeValidator(_iso_date)] = Field(examples=["2024-03-15"])


class TransferCreate(BaseModel):
    """The body of ``POST /api/me/transfers``. A place that is not a current county-level code
    of the region in another province is 400 (``BAD_PLACE``, ``UNKNOWN_PLACE``,
    ``SAME_PROVINCE``), an insurance type not held ``NOT_INSURED``."""

    to_admdvs: Area = Field(examples=["310118"])
    insutype: Literal[tuple(INSUTYPES)]


# -- answers ----------------------------------------------------------------------------------------


class Split(_Exact):
    """The ten amounts, in the interface's order."""

    medfee_sumamt: Money
    fulamt_ownpay_amt: Money
    overlmt_selfpay: Money
    preselfpay_amt: Money
    inscp_scp_amt: Money
    act_pay_dedc: Money
    hifp_pay: Money
    fund_pay_sumamt: Money
    acct_pay: Money
    psn_cash_pay: Money


class Refusal(_Exact):
    code: str = Field(examples=["NOT_FILED", "PLATFORM_UNAVAILABLE"])
    message: str


class SettlementPublic(_Exact):
    """A settlement, presettlement (``setl_id`` null, ``computed``) or its refusal."""

    setl_id: str | None
    status: Literal["computed", "settled", "refused", "pending", "voided"]
    insurer_setl_id: str | None
    split: Split | None
    refusal: Refusal | None


class Pair(_Exact):
    insuplc: Province = Field(description="the insured province")
    mdtrtarea: Province = Field(description="the treatment province")


class Amounts(_Exact):
    medfee_sumamt: Money
    fund_pay_sumamt: Money
    acct_pay: Money


class HubState(_Exact):
    """What the hub holds of a settlement it does not count as settled."""

    state: str


class InsurerAmounts(_Exact):
    insurer_setl_id: str | None
    medfee_sumamt: Money | None
    fund_pay_sumamt: Money | None
    acct_pay: Money | None


class Difference(Pair):
    setl_id: str
    kind: Literal["missing_at_insurer", "unknown_to_hub", "amount_mismatch"]
    hub: Amounts | HubState | None
    insurer: InsurerAmounts | None


class Reconciliation(_Exact):
    date: dt.date
    balanced: list[Pair]
    differences: list[Difference]


class Clearing(_Exact):
    """``owed[insured][treatment]``; ``net`` = receivable minus payable; provinces SH, JS, ZJ, AH."""

    month: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", examples=["2024-03"])
    owed: dict[Province, dict[Province, Money]]
    net: dict[Province, Money]


class TransferStep(_Exact):
    infno: Literal["4101", "4102", "4201", "4103"]
    status: Literal["pending", "done", "failed", "undone"]
    deadline: dt.date
    overdue: bool
    done_at: LocalTime | None
    outcome: dict[str, Any] = Field(description="the platform's output, or its refusal ({} before)")
    attempts: int


class TransferPublic(_Exact):
    id: str
    status: Literal["submitted", "in_progress", "completed", "refused", "cancelled"]
    from_admdvs: Area
    to_admdvs: Area
    insutype: Literal[tuple(INSUTYPES)]
    created: LocalTime
    refusal: Refusal | None
    cancel_requested: bool
    steps: list[TransferStep]


class Transfers(_Exact):
    transfers: list[TransferPublic] = Field(description="newest first")


# -- declaring them on routes -----------------------------------------------------------------------

BODY_MODELS: list[type[BaseModel]] = []  # what ``request_body`` named: the app adds them to components
ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}  # the hub's error dialect, named, not imported


def request_body(model: type[BaseModel], description: str = "", required: bool = True) -> dict:
    """``openapi_extra`` declaring a JSON body of ``model`` that the handler parses itself (so
    that its own coded answers stay): the schema is named, and ``BODY_MODELS`` lists it."""
    if model not in BODY_MODELS:
        BODY_MODELS.append(model)
    return {"requestBody": {"required": required, "description": description or (model.__doc__ or "").strip(),
                            "content": {"application/json": {
                                "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def answers(ok: dict[int, type[BaseModel]], errors: dict[int, str]) -> dict:
    """``responses=``: each 2xx with its model, each error status with the hub's error body and
    the codes it carries (``errors``: status -> description)."""
    out: dict[int, dict] = {status: {"model": model, "description": model.__doc__ or "OK"}
                            for status, model in ok.items()}
    out.update({status: {"description": what, "content": {"application/json": {"schema": ERROR_BODY}}}
                for status, what in errors.items()})
    return out
