"""The patient's own audit: every read of their records, newest first (``GET /api/me/access-log``).

Clinical reads go through ``hub.access``; this reads only ``audit_event`` rows of the signed-in
patient, which are the patient's to see. Hospital names come from the reference data (an unknown
code shows the code). Reads by the region's administrators are shown too (purpose
``administration``, organisation ``YRDHUB``): the patient sees every read of their data, and a platform's refused attempt
under its province's platform name. The person's own reads through the portal (their records,
purpose ``patient``) are shown as theirs (organisation ``SELF``, "本人").
"""

from __future__ import annotations

from datetime import timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from hub import audit

from hub.models import AuditRecord
from mappers.region import CST
from settlement.reference import default_reference

HUB_ORGANISATION = {"code": "YRDHUB", "name": "长三角医疗数据枢纽（管理员）"}
SELF_ORGANISATION = {"code": "SELF", "name": "本人（患者服务门户）"}
PURPOSE_LABELS = {"treatment": "诊疗", "emergency": "急诊紧急查阅", "administration": "管理",
                  "patient": "本人查阅"}
OUTCOME_LABELS = {"allowed": "已允许", "refused": "已拒绝"}


# What was read, in words for the page: the audit's interaction and resource type (data).
INTERACTIONS = {"everything": "全部健康档案", "search": "检索", "read": "查看"}
TYPES = {"Patient": "基本信息", "Encounter": "就诊记录", "Condition": "诊断", "Observation": "检验结果",
         "DiagnosticReport": "检验/检查报告", "ImagingStudy": "影像检查",
         "MedicationRequest": "处方", "AllergyIntolerance": "过敏史"}


def describe(what: str) -> str:
    """``everything Patient/…`` -> ``全部健康档案``; ``search Condition`` -> ``检索：诊断``."""
    interaction, _, target = what.partition(" ")
    if interaction == "everything":
        return INTERACTIONS["everything"]
    kind = TYPES.get(target.split("/")[0], target.split("/")[0])
    return f"{INTERACTIONS.get(interaction, interaction)}：{kind}"


INSURER_NAMES = {"SH": "上海市医保信息平台", "JS": "江苏省医保信息平台", "ZJ": "浙江省医保信息平台",
                 "AH": "安徽省医保信息平台"}


def organisation(kind: str, code: str | None) -> dict[str, str | None]:
    """``{"code", "name"}`` of the party that read: a hospital by its reference name, a
    province's platform by its name, the person themselves as ``SELF``, an administrator as
    the hub."""
    if kind == "insurer":
        return {"code": code, "name": INSURER_NAMES.get(code or "", code)}
    if kind == "patient":
        return dict(SELF_ORGANISATION)
    if kind != "hospital":
        return dict(HUB_ORGANISATION)
    hospital = default_reference().hospital(code or "")
    return {"code": code, "name": hospital.name if hospital else code}


def access_log(engine: Engine, patient_id: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The patient's entries, newest first (ties: latest written first); ``limit`` None: all."""
    A = AuditRecord.__table__
    query = (select(A.c.recorded, A.c.party_kind, A.c.party_code, A.c.purpose, A.c.reason, A.c.outcome, A.c.what)
             .where(A.c.patient_id == patient_id)
             .order_by(A.c.recorded.desc(), A.c.id.desc()))
    if limit is not None:
        query = query.limit(limit)
    audit.flush(engine)  # reads still being written belong in the log
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [{"time": (r.recorded if r.recorded.tzinfo else r.recorded.replace(tzinfo=timezone.utc))
             .astimezone(CST).isoformat(),
             "organisation": organisation(r.party_kind, r.party_code), "purpose": r.purpose,
             "reason": r.reason, "outcome": r.outcome, "what": r.what} for r in rows]
