"""Benchmark of the settlement store alone: one bill's three transactions (record the request;
take the person and record the 2207; record the outcome), as the service runs them from the
event loop on a SQLite file, repeated; prints the wall and CPU time per bill.

    python -m bench.settle_store [--n 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from hub.db import make_engine
from hub.migrate import upgrade
from settlement.service import Store, utcnow


def request_row(i: int, runner: str) -> dict:
    now = utcnow()
    return {"setl_id": f"YS{i:024d}", "fixmedins_code": "H31011800012", "request_key": f"K{i}", "body_digest": "d",
            "body": "{}", "state": "received", "mdtrtarea_admvs": "310118", "mdtrtarea": "SH",
            "insuplc_admdvs": "330421", "insuplc": "ZJ", "insutype": "310", "mdtrt_id": f"MZ{i}", "msgids": "[]",
            "attempts": 0, "conflicts": 0, "next_at": 0.0, "deadline": time.time() + 100, "runner": runner,
            "run_until": time.time() + 30, "created_at": now, "updated_at": now}


async def one_bill(store: Store, i: int) -> None:
    row, _ = await store.ainsert_or_get(request_row(i, "bench"))
    row = await store.awrite(row, {"state": "sending", "psn_no": "33000012345678", "split": "{}", "accum_year": 2024,
                                   "accum_version": 1, "setl_time": "2024-03-15 09:30:00", "setl_date": "2024-03-15",
                                   "msgid": f"M{i}", "msgids": "[]"},
                             msgid=f"M{i}", take_person=(f"ZJ:{i % 800}", 30.0))
    await store.awrite(row, {"state": "settled", "finished_at": utcnow(), "next_at": 0.0, "insurer_setl_id": "X"},
                       release_person=True)


async def run(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'hub.db'}")
        upgrade(engine)
        store = Store(engine, 30.0)
        for i in range(200):  # warm: statements compiled, pages cached
            await one_bill(store, i)
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(200, 200 + n):
            await one_bill(store, i)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        store.close()
        engine.dispose()
    print(f"{n} bills, 3 transactions each: {wall / n * 1e6:.0f} µs wall, {cpu / n * 1e6:.0f} µs CPU per bill")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    asyncio.run(run(parser.parse_args().n))


if __name__ == "__main__":
    main()
