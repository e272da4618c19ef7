"""Visits of 李四 as hospitals send them, dated relative to now so the 30-day rule bites.

ZJ_H is a Zhejiang hospital (JSON uploads), SH_H a Shanghai one (HL7 v2), OTHER a Shanghai
hospital that never saw her.
"""

from __future__ import annotations

import json
from datetime import datetime

from mappers.region import CST
from tests.support.common import FIXTURES

RID = "33042119850412002X"
ZJ_H, SH_H, OTHER = "H33042100015", "H31010400007", "H31011800012"


def zj_visit(when: datetime, code: str = "F32.900", name: str = "抑郁发作", *,
             extra_diagnosis: bool = True, glucose: str = "6.8") -> bytes:
    """The Zhejiang fixture's visit at ``when``, with a second diagnosis ``code``/``name``
    (left out with ``extra_diagnosis=False``) and the glucose result ``glucose``."""
    doc = json.loads((FIXTURES / "zj" / "upload_basic.json").read_bytes())
    visit = doc["jzjl"][0]
    visit["jzsj"] = when.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S")
    visit["jyjg"][0]["jgz"] = glucose
    if extra_diagnosis:
        visit["zdxx"].append({"zdlx": "2", "zddm": code, "zdmc": name,
                              "zdsj": when.astimezone(CST).strftime("%Y-%m-%d %H:%M")})
    return json.dumps(doc, ensure_ascii=False).encode()


def sh_visit(hospital: str, when: datetime, visit_no: str = "ZY2099") -> bytes:
    stamp = when.astimezone(CST).strftime("%Y%m%d%H%M%S")
    return "\r".join([
        f"MSH|^~\\&|HIS|{hospital}|YRDHUB|YRD|{stamp}||ADT^A04^ADT_A01|C{visit_no}|P|2.5|||AL|NE||UNICODE UTF-8",
        f"EVN|A04|{stamp}",
        f"PID|1||{RID}^^^&2.16.156.10011.1.3&ISO^NNCHN||李^四||19850412|F|||徐汇区漕溪北路100号^^上海市^^200030^CHN||^PRN^PH^^^^13812345678",
        f"PV1|1|O|0301^^^{hospital}^^^^^呼吸内科||||D1^王^医生||||||||||||{visit_no}|||||||||||||||||||||||||{stamp}",
        "DG1|1||J20.900^急性支气管炎^ICD10CN||" + stamp[:8] + "|F", ""]).encode()
