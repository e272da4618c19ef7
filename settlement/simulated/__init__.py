"""Simulated insurance platforms of the four provinces: real HTTP servers with fault injection.

For the demo (``yrdhub simulate``, ``yrdhub demo``), the tests and the benchmarks only: the
running hub never imports this package (an import-linter contract), and the hub's image does
not ship it. It imports nothing of ``hub``.

- ``platform``: one province's state and business logic (persons, accounts, ledgers, the
  handlers of every ``infno`` of ``world/insurer-api.md``), with no HTTP;
- ``faults``: the fault settings and what is drawn for each message;
- ``server``: the ``aiohttp.web`` servers on one event loop in a background thread
  (``start_simulators``, ``Simulators``);
- ``cli``: ``python -m settlement.simulated``.

Faults are set per province at runtime (``Simulators.set_faults`` or ``POST /_sim/faults``):
fixed latency, slow answers, 503 (maintenance or random, with or without ``Retry-After``), abrupt
connection resets before processing, answers dropped after processing, non-JSON answers, and a
queue of faults for the next messages (``next_faults=["reset", "drop", ...]``) for exact tests.
What the platform received (every arrival, faulted or not) and committed (the ledger) can be read
back, and the ledger can be written to a JSON file after every change.
"""

from settlement.simulated.faults import BUSY_FAULTS, FAULT_KINDS, Faults, Plan
from settlement.simulated.platform import (LEDGER_KINDS, PROVINCE_ADMDVS, PROVINCE_OF_PREFIX, Platform,
                                           SimRefusal, World, load_persons)
from settlement.simulated.server import (CLOSE_AFTER_ANSWER, ProvinceServer, Simulators,
                                         start_simulators)

__all__ = ["BUSY_FAULTS", "CLOSE_AFTER_ANSWER", "FAULT_KINDS", "LEDGER_KINDS", "PROVINCE_ADMDVS",
           "PROVINCE_OF_PREFIX", "Faults", "Plan", "Platform", "ProvinceServer", "SimRefusal", "Simulators",
           "World", "load_persons", "start_simulators"]
