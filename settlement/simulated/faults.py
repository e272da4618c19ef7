"""The fault layer of the simulated platforms: what a province's settings say, and what is
drawn for each message as it arrives (``draw``). The server (``server``) acts on the ``Plan``
on the wire: a reset before processing, an answer dropped after it, a busy status, a non-JSON
page, a slow answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Busy answers: (processed first?). 429 and 503 turn the message away; 502 and 504 are what a
# gateway says when the platform behind it took the message and did not answer in time.
BUSY_FAULTS: dict[str, tuple[int, bool]] = {"503": (503, False), "429": (429, False),
                                            "502": (502, True), "504": (504, True)}
FAULT_KINDS = frozenset({"reset", "drop", "non_json", "slow", *BUSY_FAULTS})


@dataclass
class Faults:
    """Fault settings of one province. ``set_faults`` replaces them whole (unnamed: defaults).

    Rates are probabilities per message. ``maintenance`` answers 503 to everything without
    processing. ``fail_503_rate`` answers 503 without processing; both send ``Retry-After:
    retry_after`` when it is set (maintenance: 60 when unset). ``reset_rate`` resets the connection
    (TCP RST) after the request arrived, before processing. ``drop_answer_rate`` processes, then
    resets instead of answering. ``non_json_rate`` processes, then answers 200 with an HTML page.
    ``slow_rate`` delays the answer by ``slow_ms`` more (processing at once, or only then with
    ``slow_before_processing``); ``latency_ms``: every answer leaves that long after its request
    arrived (processed at once, then held), whatever processing took. ``next_faults`` is a queue
    ("reset", "drop", "non_json", "slow", "503", "429" - not processed - or "502", "504" -
    processed, then the gateway's error) applied to the next messages before any rate.
    """

    latency_ms: int = 0
    slow_ms: int = 0
    slow_rate: float = 0.0
    slow_before_processing: bool = False
    fail_503_rate: float = 0.0
    retry_after: int | None = None
    maintenance: bool = False
    reset_rate: float = 0.0
    drop_answer_rate: float = 0.0
    non_json_rate: float = 0.0
    seed: int | None = None
    next_faults: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = set(self.next_faults) - FAULT_KINDS
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {sorted(FAULT_KINDS)}")


@dataclass
class Plan:
    """What happens to one message: drawn when it arrives."""

    kind: str | None = None  # one of FAULT_KINDS other than "slow", or None
    slow: bool = False
    maintenance: bool = False



# Rates drawn in this order; the first that hits decides (seeded: the same seed, the same plans).
_RATED_KINDS = (("503", "fail_503_rate"), ("reset", "reset_rate"), ("drop", "drop_answer_rate"),
                ("non_json", "non_json_rate"))


def draw(faults: Faults, rng: random.Random) -> Plan:
    """What happens to the message that just arrived: maintenance, else the next queued fault
    (taken off the queue), else the rates in order, else a slow answer by ``slow_rate``. The
    caller holds the platform's lock (the queue and the generator are shared)."""
    if faults.maintenance:
        return Plan(maintenance=True)
    if faults.next_faults:
        kind = faults.next_faults.pop(0)
        return Plan(slow=True) if kind == "slow" else Plan(kind=kind)
    for kind, name in _RATED_KINDS:
        rate = getattr(faults, name)
        if rate and rng.random() < rate:
            return Plan(kind=kind)
    return Plan(slow=bool(faults.slow_rate and rng.random() < faults.slow_rate))
