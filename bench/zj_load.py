"""Generated Zhejiang uploads for benchmarks: valid resident IDs, about 8 resources a visit."""

from __future__ import annotations

import json
import random

from mappers.region import check_character

HOSPITALS = ["H33042100015", "H33020300004", "H33010600001"]


def resident_id(n: int) -> str:
    body = f"330421{1950 + n % 60}{(n % 12) + 1:02d}{(n % 28) + 1:02d}{n % 1000:03d}"
    return body + check_character(body)


def visit(n: int, patient: int, day: str | None = None) -> dict:
    rid = resident_id(patient)
    day = day or f"2024-{(n % 12) + 1:02d}-{(n % 28) + 1:02d}"
    return {
        "jzlsh": f"MZ{n:014d}", "jzlx": "1", "jzsj": f"{day} 09:{n % 60:02d}:00",
        "ksdm": "0301", "ksmc": "呼吸内科", "ysgh": f"D{n % 50:04d}", "ysxm": "王芳",
        "hzxx": {"xm": f"患者{patient}", "xb": "1" if int(rid[16]) % 2 else "2",
                 "csrq": rid[6:14], "zjlx": "01", "zjhm": rid, "lxdh": "13857300000",
                 "xzz": "浙江省嘉兴市嘉善县罗星街道", "ybkh": f"A{patient:014d}", "cbd": "330421"},
        "zdxx": [{"zdlx": "1", "zddm": "J06.900", "zdmc": "急性上呼吸道感染", "zdsj": f"{day} 09:30"}],
        "jyjg": [{"bgdh": f"LIS{n:012d}", "jyxmdm": "GLU", "jyxmmc": "葡萄糖", "loinc": "2345-7",
                  "jgz": str(round(random.uniform(3, 9), 1)), "dw": "mmol/L", "ckfw": "3.9-6.1",
                  "ycts": "N", "bgsj": f"{day} 10:30:00"},
                 {"bgdh": f"LIS{n:012d}", "jyxmdm": "CRP", "jyxmmc": "C反应蛋白",
                  "jgz": "<0.5", "dw": "mg/L", "ckfw": "0-10", "ycts": "", "bgsj": f"{day} 10:30:00"}],
        "jcbg": [],
        "cfxx": [{"cfh": f"CF{n:012d}", "ypdm": "XJ01CAA040A001", "ypmc": "阿莫西林胶囊",
                  "gg": "0.25g*24粒", "dcjl": "0.5", "jldw": "g", "pc": "tid", "tj": "口服", "ts": "7"}],
        "gmxx": [{"gmy": "青霉素", "gmfy": "皮疹"}],
    }


def upload(hospital: str, start: int, count: int, patients: int, day: str | None = None) -> bytes:
    """Visits ``start``..``start+count`` of patients ``n % patients``; ``day`` pins the date."""
    doc = {"jgdm": hospital, "jgmc": "测试医院", "yydj": "2", "scsj": "2024-03-15 14:30:00",
           "jzjl": [visit(n, n % patients, day) for n in range(start, start + count)]}
    return json.dumps(doc, ensure_ascii=False).encode()
