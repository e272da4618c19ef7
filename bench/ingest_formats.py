"""Benchmark: HL7 v2 ORU^R01 (10 OBX) over HTTP and over MLLP, Jiangsu CDA documents and Anhui
rows, through a real hub (its own process, SQLite, loopback): parse, map, validate, store.

    python bench/ingest_formats.py [--messages 3000] [--connections 4]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import hubproc  # noqa: E402
from bench.zj_load import resident_id  # noqa: E402
from hub.auth import create_token  # noqa: E402
from tests.support.common import FIXTURES, free_port  # noqa: E402

SH_H, JS_H, AH_H = "H31010100001", "H32050900012", "H34010400001"
OBX = ["GLU^葡萄糖^L|NM|6.8|mmol/L|3.9-6.1|H", "WBC^白细胞^L|NM|7.2|10*9/L|3.5-9.5|N",
       "HGB^血红蛋白^L|NM|128|g/L|115-150|N", "CRP^C反应蛋白^L|SN|<^0.5|mg/L|0-10|N",
       "HBSAG^乙肝表面抗原^L|CWE|260385009^阴性^SCT||阴性|N", "NOTE^备注^L|ST|标本合格||",
       "PLT^血小板^L|NM|210|10*9/L|125-350|N", "ALT^谷丙转氨酶^L|NM|35|U/L|9-50|N",
       "CREA^肌酐^L|NM|88|umol/L|57-111|N", "K^钾^L|NM|4.1|mmol/L|3.5-5.3|N"]


def oru(n: int) -> bytes:
    rid = resident_id(n % 2000)
    lines = [f"MSH|^~\\&|LIS|{SH_H}|YRDHUB|YRD|20240315110000||ORU^R01^ORU_R01|B{n:010d}|P|2.5|||AL|NE||UNICODE UTF-8",
             f"PID|1||{rid}^^^&2.16.156.10011.1.3&ISO^NNCHN||张^三||{rid[6:14]}|{'M' if int(rid[16]) % 2 else 'F'}",
             f"PV1|1|O|0301^^^{SH_H}^^^^^呼吸内科||||D0456^李^医生||||||||||||MZ{n:012d}|||||||||||||||||||||||||20240315093000",
             f"OBR|1|SQ{n:010d}|LIS{n:010d}|LAB001^血常规^L|||20240315094500|||||||||||||||20240315110000|||F"]
    lines += [f"OBX|{i + 1}|{o.split('|')[1]}|{o.split('|')[0]}||{'|'.join(o.split('|')[2:])}|||F"
              for i, o in enumerate(OBX)]
    return ("\r".join(lines) + "\r").encode()


def rate(label: str, count: int, seconds: float, unit: str) -> None:
    print(f"{label}: {count} {unit} in {seconds:.1f} s = {count / seconds:.0f} {unit}/s")


def http_hl7(base, token, messages, per_body, clients) -> float:
    bodies = [b"".join(messages[i:i + per_body]) for i in range(0, len(messages), per_body)]

    def send(body):
        r = hubproc.client(base, token).post("/ingest/sh", content=body,
                                              headers={"Content-Type": "x-application/hl7-v2+er7"})
        assert r.content.count(b"MSA|AA") == body.count(b"MSH|"), r.content[:300]

    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, bodies))
    return time.perf_counter() - t


def mllp_hl7(port, messages, connections) -> float:
    def send_all(chunk):
        with socket.create_connection(("127.0.0.1", port)) as s:
            for m in chunk:
                s.sendall(b"\x0b" + m + b"\x1c\r")
                data = b""
                while not data.endswith(b"\x1c\r"):
                    data += s.recv(65536)
                assert b"MSA|AA" in data, data[:300]

    chunks = [messages[i::connections] for i in range(connections)]
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(connections) as pool:
        list(pool.map(send_all, chunks))
    return time.perf_counter() - t


def cda_docs(base, token, count, clients) -> float:
    """Lab reports of different visits: document, report and visit numbers made unique."""
    template = (FIXTURES / "js" / "lab_report.xml").read_text("utf-8").replace("H32010600001", JS_H)
    numbers = ("DOC-H32010600001-20240402-LAB-004417", "LAB20240402004417", "LAB20240402004418",
               "MZ2024040200317")
    docs = []
    for i in range(count):
        doc = template.replace("DOC-" + JS_H, "DOC-H32010600001")
        for number in numbers:
            doc = doc.replace(number, f"{number}-{i}")
        docs.append(doc.encode())

    def send(doc):
        r = hubproc.client(base, token).post("/ingest/js", content=doc,
                                              headers={"Content-Type": "application/xml"})
        assert r.status_code == 200, r.text[:300]

    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, docs))
    return time.perf_counter() - t


def anhui_rows(base, token, rows: int) -> tuple[int, float]:
    lines = (FIXTURES / "ah" / "labs_gbk.csv").read_bytes().decode("gb18030").splitlines()
    header, sample = lines[0], [l for l in lines[1:] if l.strip() and "合计" not in l][0]
    cells = sample.split(",")
    body_lines = [header]
    for i in range(rows):
        c = list(cells)
        c[_column(header, "报告单号")] = f"R{i // 5:09d}"
        c[_column(header, "检验项目编码")] = f"I{i % 5}"
        body_lines.append(",".join(c))
    body = "\r\n".join(body_lines).encode("gb18030")
    t = time.perf_counter()
    with httpx.Client(base_url=base, timeout=600, headers={"Authorization": f"Bearer {token}"}) as c:
        r = c.post("/ingest/ah", content=body, headers={"Content-Type": "text/csv"})
        assert r.status_code == 200, r.text[:300]
        stored = r.json()["stored"]
    return stored, time.perf_counter() - t


def _column(header: str, name: str) -> int:
    return [h.strip() for h in header.split(",")].index(name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--per-body", type=int, default=100)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--documents", type=int, default=500)
    ap.add_argument("--rows", type=int, default=10000)
    args = ap.parse_args()
    from hub.db import get_engine

    url = f"sqlite:///{tempfile.mkdtemp(prefix='yrdhub-bench-')}/bench.db"
    mllp_port = free_port()
    port = free_port()
    server = hubproc.start(url, port, mllp_port)
    base = f"http://127.0.0.1:{port}"
    tokens = {h: create_token(get_engine(url), "hospital", h) for h in (SH_H, JS_H, AH_H)}
    messages = [oru(n) for n in range(2 * args.messages)]
    http_hl7(base, tokens[SH_H], messages[:200], args.per_body, 2)  # warm the mapper processes
    seconds = http_hl7(base, tokens[SH_H], messages[200:args.messages + 200], args.per_body, 2)
    rate("HL7 v2 ORU^R01 (10 OBX) over HTTP", args.messages, seconds, "messages")
    seconds = mllp_hl7(mllp_port, messages[args.messages + 200:], args.connections)
    rate(f"HL7 v2 ORU^R01 (10 OBX) over MLLP, {args.connections} connections",
         len(messages[args.messages + 200:]), seconds, "messages")
    seconds = cda_docs(base, tokens[JS_H], args.documents, 4)
    rate("Jiangsu CDA lab reports", args.documents, seconds, "documents")
    stored, seconds = anhui_rows(base, tokens[AH_H], args.rows)
    rate("Anhui lab rows (one CSV)", stored, seconds, "rows")
    hubproc.stop(server)


if __name__ == "__main__":
    main()
