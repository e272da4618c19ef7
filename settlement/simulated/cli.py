"""``python -m settlement.simulated --host 127.0.0.1 --base-port 9101``: SH, JS, ZJ, AH on
9101..9104, until SIGINT or SIGTERM; prints the hub's ``YRDHUB_INSURER_*_URL`` settings."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import threading

from settlement.simulated.platform import PROVINCE_ADMDVS
from settlement.simulated.server import CLOSE_AFTER_ANSWER, start_simulators


def tune_gc() -> None:
    """The collector's pauses would be the platforms' latency: move what is loaded out of its
    sight and collect the youngest generation less often. The same tuning as the hub's
    ``hub.cli.tune_gc`` (whose docstring has the measurement), written here because the
    simulated platforms import nothing of the hub."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Simulated province insurance platforms (SH, JS, ZJ, AH)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--base-port", type=int, default=9101, help="SH on it, then JS, ZJ, AH")
    p.add_argument("--persons", default=None, help="persons JSON (default fixtures/persons.json)")
    p.add_argument("--ledger-file", default=None, help="write the ledgers to this JSON file")
    p.add_argument("--latency-ms", type=int, default=0, help="answer every call after N ms")
    p.add_argument("--keep-alive", action="store_true",
                   help="every province keeps connections alive (default: SH and AH close them after each answer)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    tune_gc()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ports = {p: args.base_port + i for i, p in enumerate(PROVINCE_ADMDVS)}
    sims = start_simulators(ports, args.persons, host=args.host, ledger_path=args.ledger_file,
                            close_after_answer=frozenset() if args.keep_alive else CLOSE_AFTER_ANSWER)
    if args.latency_ms:
        sims.set_latency(args.latency_ms)
    for name, url in sims.env().items():
        print(f"{name}={url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    sims.stop()
