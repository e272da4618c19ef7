"""The settlement package's one exception tree. No class here knows HTTP: the hub maps each
class to its answer in one table (``hub.errors.ANSWERS``)::

    DomainError (code, message, headers)    refusals of a caller's request, answered as they are
    ├── NotPermitted         FORBIDDEN             a party asking for another province's work
    ├── NotFound             NOT_FOUND             no such settlement
    ├── Conflict             (code given)          REQUEST_KEY_REUSED, NOT_SETTLED
    ├── InvalidRequest       (the rules' code)     the request breaks settlement-rules.md;
    │                                              INVALID_BODY, INVALID_MONTH
    ├── PlatformUnavailable  PLATFORM_UNAVAILABLE  the insured place's platform cannot answer
    │   └── ReconcileUnavailable                   a platform gave no answer to 3201 or 3202
    └── TransferError        INVALID_TRANSFER      a transfer request the saga will not take
        ├── TransferInProgress   TRANSFER_IN_PROGRESS
        ├── TransferNotFound     NOT_FOUND
        └── CancelTooLate        CANNOT_CANCEL

    SettlementError          a failure inside the service (never shown to a caller as it is)
    ├── RunnerLost           another runner took this settlement over (its lease lapsed)
    └── IllegalTransition    a state write settlement.states does not allow (a bug, refused unwritten)

    PlatformError (code, message; province, infno, msgid)   any failure of a platform call
    ├── PlatformNotConfigured  no base URL for that province: nothing sent
    ├── NotSent                nothing left the hub: sending again is always safe
    ├── OutcomeUnknown         sent, no usable answer: the platform may have processed it
    │   └── PlatformBusy       HTTP 429/502/503/504, with ``retry_after``
    └── Refused                a business refusal: ``err_code`` (also its ``code``), ``err_msg``

    ValueError
    ├── RequestInvalid       a settle request breaks a rule: ``code`` (a key of
    │                        ``REQUEST_ERRORS``), ``location``, ``message``
    ├── PersonInfoInvalid    the 1101 answer is unusable (the platform's fault)
    └── ReferenceDataError   the reference data cannot be used (file, row and field)

``PlatformError`` is explained where it is classified (``settlement.platform``); the service
turns a ``PlatformError`` or ``PersonInfoInvalid`` that a caller waits on into a
``PlatformUnavailable`` and a ``RequestInvalid`` into an ``InvalidRequest``. Messages never hold a
resident ID number.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The codes of a RequestInvalid (settlement-rules.md), each with what breaks it
REQUEST_ERRORS: Mapping[str, str] = {
    "INVALID_BODY": "the body is not a JSON object",
    "MISSING_FIELD": "a required field is absent or empty",
    "INVALID_FIELD": "a field has the wrong type or a value outside its codes",
    "INVALID_AMOUNT": "money must be a decimal string >= 0 with at most two places",
    "INVALID_QUANTITY": "a quantity must be > 0 with at most four places",
    "INVALID_VISIT_TIME": "visit_time is not an ISO 8601 date and time",
    "INVALID_CERT_NO": "the resident ID number fails its check (GB 11643)",
    "NO_LINES": "a settlement needs at least one fee line",
    "LINE_AMOUNT_MISMATCH": "a line's det_item_fee_sumamt is not cnt x pric to two places",
    "UNKNOWN_HOSPITAL": "fixmedins_code is not a hospital of hospitals.csv",
    "UNKNOWN_INSUPLC": "insuplc_admdvs is not a current GB/T 2260 area code of the region",
    "INSUPLC_MISMATCH": "the insured place's platform places the coverage in another province",
}


class DomainError(Exception):
    """A request refused for a reason the caller is told: ``code``, ``message`` (shown as it is)
    and ``headers`` (e.g. ``Retry-After``) for the answer."""

    code = "SETTLEMENT_ERROR"

    def __init__(self, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.headers = headers or {}


class NotPermitted(DomainError):
    """The caller may not do this (only the hospital province's platform, or an administrator)."""

    code = "FORBIDDEN"


class NotFound(DomainError):
    code = "NOT_FOUND"


class Conflict(DomainError):
    """The request contradicts what is recorded (a reused request key, nothing to void)."""

    code = "CONFLICT"


class InvalidRequest(DomainError):
    """The request breaks its rules; ``code`` is the rule's (``REQUEST_ERRORS`` and the
    body's own: INVALID_BODY, INVALID_MONTH)."""

    code = "UNPROCESSABLE"


class PlatformUnavailable(DomainError):
    """The insured place's platform cannot answer now (a presettle or reconcile waits on it)."""

    code = "PLATFORM_UNAVAILABLE"


class ReconcileUnavailable(PlatformUnavailable):
    """A platform gave no answer to 3201 or 3202 (names the province, never a person)."""


class TransferError(DomainError):
    """A request the saga will not take: ``code`` and a Chinese ``message``."""

    code = "INVALID_TRANSFER"


class TransferInProgress(TransferError):
    code = "TRANSFER_IN_PROGRESS"


class TransferNotFound(TransferError):
    code = "NOT_FOUND"


class CancelTooLate(TransferError):
    code = "CANNOT_CANCEL"


class SettlementError(Exception):
    """A failure inside the service (never shown to a caller as it is)."""


class IllegalTransition(SettlementError):
    """A state write ``settlement.states.TRANSITIONS`` does not hold: a bug, refused unwritten."""


class RunnerLost(SettlementError):
    """Another runner took this settlement over (ours lapsed): stop driving it."""


class PlatformError(Exception):
    """A platform call that did not give an answer the caller can use as it is."""

    code = "PLATFORM_ERROR"

    def __init__(self, message: str, *, province: str | None = None, infno: str | None = None,
                 msgid: str | None = None):
        super().__init__(message)
        self.message = message
        self.province, self.infno, self.msgid = province, infno, msgid


class PlatformNotConfigured(PlatformError):
    """No base URL for the province (``YRDHUB_INSURER_<P>_URL`` unset); nothing was sent."""

    code = "PLATFORM_NOT_CONFIGURED"


class NotSent(PlatformError):
    """Nothing left the hub (refused, DNS, connect timeout, pool exhausted): safe to resend."""

    code = "NOT_SENT"


class OutcomeUnknown(PlatformError):
    """The message may have been processed; on a platform that does not deduplicate, ask 5205
    before sending it again."""

    code = "OUTCOME_UNKNOWN"


class PlatformBusy(OutcomeUnknown):
    """HTTP 429/502/503/504. ``retry_after``: seconds the platform asked to wait, or None."""

    code = "PLATFORM_BUSY"

    def __init__(self, message: str, *, status_code: int, retry_after: float | None, **kw: Any):
        super().__init__(message, **kw)
        self.status_code, self.retry_after = status_code, retry_after


class Refused(PlatformError):
    """A business refusal: ``err_code`` (e.g. ``ACCUM_CONFLICT``; also its ``code``), ``err_msg``
    (Chinese, ID numbers masked), ``output`` (the whole output: e.g. the current ``accum`` or the
    committed settlement of a ``DUPLICATE_SETL_ID``)."""

    def __init__(self, err_code: str, err_msg: str, output: dict[str, Any], **kw: Any):
        super().__init__(f"{err_code}: {err_msg}", **kw)
        self.err_code, self.err_msg, self.output = err_code, err_msg, output
        self.code = err_code


class RequestInvalid(ValueError):
    """422: ``code`` (a key of REQUEST_ERRORS), ``location`` (the field) and a message.

    The message never holds a resident ID number.
    """

    def __init__(self, code: str, message: str, location: str = "") -> None:
        assert code in REQUEST_ERRORS, code
        super().__init__(f"{location}: {message}" if location else message)
        self.code, self.location, self.message = code, location, message


class PersonInfoInvalid(ValueError):
    """The 1101 answer is unusable (the platform's fault); the message names the field only."""

    code = "PERSON_INFO_INVALID"

    @property
    def message(self) -> str:
        return str(self)


class ReferenceDataError(ValueError):
    """The reference data cannot be used; the message names the file, row and field."""

    code = "REFERENCE_DATA_INVALID"

    @property
    def message(self) -> str:
        return str(self)
