"""The settlement state machine as data: its states, what a caller sees of each, and every
transition there is. The driver (``settlement.service``) checks each state it writes against
``TRANSITIONS``: a write this table does not hold is a bug (``IllegalTransition``), refused before
anything is written.

The picture (``settlement.state``; the caller sees ``STATUS_OF_STATE``)::

    received --1101, compute--> sending(msgid M) --2207 ok / DUPLICATE_SETL_ID--> settled
       |  \\-- refusal (NOT_FILED, PERSON_NOT_FOUND, ...) --> refused       (final)
       |   \\-- request breaks the rules (INSUPLC_MISMATCH) --> invalid     (final, 422)
       \\-- deadline passed, nothing ever sent --> refused PLATFORM_UNAVAILABLE
    sending --ACCUM_CONFLICT / INSUFFICIENT_BALANCE--> 1101, recompute, new msgid --> sending
    sending --unknown outcome--> SH/JS/ZJ: resend M later (the platform deduplicates M)
                                 AH: 5205(M) first: processed -> its answer; not -> new msgid
    sending --deadline passed, outcome still unknown--> reversing --2601 every msgid--> reversed
    settled --POST void--> voiding --2208--> voided

``FINAL`` is where the driver has no more work. Every final state but ``settled`` is terminal;
``settled`` is left only by the caller's void (``POST /settlement/{id}/void``), never by the
driver. A retry (the same state, later) writes no state and is no transition.
"""

from __future__ import annotations

from typing import NamedTuple

INITIAL = "received"
FINAL = frozenset({"settled", "refused", "invalid", "reversed", "voided"})
STATUS_OF_STATE = {"received": "pending", "sending": "pending", "reversing": "pending", "voiding": "pending",
                   "settled": "settled", "refused": "refused", "invalid": "refused", "reversed": "refused",
                   "voided": "voided"}
STATES = frozenset(STATUS_OF_STATE)
# The states a driver still has work in. Queries name them (IN) rather than exclude FINAL (NOT
# IN): an IN is a few look-ups in ix_settlement_state, a NOT IN a scan of every settlement ever
# made (the resume sweep runs every few seconds).
OPEN = STATES - FINAL

DRIVER, CALLER = "driver", "caller"


class Transition(NamedTuple):
    by: str  # DRIVER (a step of settlement.service) or CALLER (a request)
    why: str


TRANSITIONS: dict[tuple[str, str], Transition] = {
    ("received", "sending"): Transition(DRIVER, "1101 read and split computed: the 2207 recorded under a new msgid"),
    ("received", "refused"): Transition(DRIVER, "1101 or the rules refuse, or the deadline passed with nothing sent"),
    ("received", "invalid"): Transition(DRIVER, "the request breaks the rules (422, e.g. INSUPLC_MISMATCH)"),
    ("sending", "sending"): Transition(DRIVER, "ACCUM_CONFLICT, INSUFFICIENT_BALANCE, ...: recomputed, new msgid"),
    ("sending", "settled"): Transition(DRIVER, "2207 answered, or DUPLICATE_SETL_ID: committed"),
    ("sending", "voided"): Transition(DRIVER, "DUPLICATE_SETL_ID of a settlement the platform holds voided"),
    ("sending", "refused"): Transition(DRIVER, "2207 refused, or the 1101 or rules of a recomputation refuse"),
    ("sending", "invalid"): Transition(DRIVER, "a recomputation finds the request breaks the rules"),
    ("sending", "reversing"): Transition(DRIVER, "deadline passed, outcome still unknown"),
    ("reversing", "reversed"): Transition(DRIVER, "2601 answered for every msgid the 2207 ever had"),
    ("settled", "voiding"): Transition(CALLER, "POST void: whoever drives it next sends the 2208"),
    ("voiding", "voided"): Transition(DRIVER, "2208 answered"),
    ("voiding", "settled"): Transition(DRIVER, "2208 refused (SETL_NOT_FOUND): stays settled, the error noted"),
}


def allowed(before: str, after: str) -> bool:
    """Whether the table holds ``before -> after`` (a state written again is no exception)."""
    return (before, after) in TRANSITIONS
