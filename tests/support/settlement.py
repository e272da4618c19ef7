"""The settlement tests' shared pieces: the people and hospitals of the fixtures, a request body,
a hub with the settlement service on the platforms under test, and waiting for an outcome."""

from __future__ import annotations

import time

import httpx
import pytest

from settlement.service import Options
from tests.support.common import Hub, free_port, serve_in_thread

LISI = "33042119850412002X"  # ZJ 330421, the 1101 example
QINGPU = "H31011800012"  # SH 310118, level 2, demonstration zone
WUJIANG = "H32050900012"  # JS 320509, level 2, demonstration zone
HUANGPU = "H31010100001"  # SH 310101, level 3
XIHU = "H33010600001"  # ZJ 330106, level 3
LIUYANG = "340104197506060010"  # AH 340104, resident filing for all of Shanghai
FAST = Options(wait=1.5, give_up=30.0, runner_lease=2.0, person_lease=5.0, sweep=0.3, retry_min=0.05,
               retry_max=0.5)


def body(key: str, cert: str = LISI, insuplc: str = "330421", hospital: str = QINGPU, **over) -> dict:
    raw = {"request_key": key, "fixmedins_code": hospital, "mdtrt_id": f"MZ-{key}", "mdtrt_cert_type": "02",
           "mdtrt_cert_no": cert, "insuplc_admdvs": insuplc, "insutype": "310", "visit_type": "outpatient",
           "visit_time": "2024-03-15T09:30:00+08:00", "use_personal_account": True,
           "lines": [{"med_list_codg": "XJ01CAA040A001", "cnt": "2", "pric": "18.60", "det_item_fee_sumamt": "37.20"}]}
    raw.update(over)
    return raw




def start_hub(database_url, engine, sims, options: Options = FAST):
    from hub.app import create_app
    from hub.config import Settings

    urls = {f"insurer_{p.lower()}_url": u for p, u in sims.urls.items()}
    app = create_app(Settings(database_url=database_url, mllp_port=0, map_workers=0, **urls))
    app.state.settlement_options = options
    port = free_port()
    server = serve_in_thread(app, port)
    return Hub(f"http://127.0.0.1:{port}", engine, app), server


def stop_hub(server) -> None:
    server.should_exit = True
    server.thread.join(10)


@pytest.fixture
def shub(database_url, engine, db, sims):
    hub, server = start_hub(database_url, engine, sims)
    yield hub
    stop_hub(server)


def poll(client: httpx.Client, setl_id: str, timeout: float = 20.0, until=("settled", "refused", "voided")) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get(f"/settlement/{setl_id}").json()
        if answer["status"] in until or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


EXAMPLE_SPLIT = {"medfee_sumamt": "37.20", "fulamt_ownpay_amt": "0.00", "overlmt_selfpay": "0.00",
                 "preselfpay_amt": "0.00", "inscp_scp_amt": "37.20", "act_pay_dedc": "0.00",
                 "hifp_pay": "27.90", "fund_pay_sumamt": "27.90", "acct_pay": "9.30", "psn_cash_pay": "0.00"}


def row_of(engine, setl_id: str) -> dict:
    from settlement.service import Store

    return Store(engine, 1).get(setl_id)


