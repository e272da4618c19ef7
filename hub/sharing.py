"""A patient's sharing choices (read by ``hub.access``, changed from the portal)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select, update, insert
from sqlalchemy.engine import Engine

from hub.db import writer
from hub.models import Sharing
from hub.sensitivity import CATEGORIES


@dataclass(frozen=True)
class SharingChoices:
    cross_province: bool = True
    mental: bool = False
    hiv: bool = False
    sti: bool = False

    def as_json(self) -> dict:
        return {"cross_province": self.cross_province,
                "sensitive": {c: getattr(self, c) for c in CATEGORIES}}

    @classmethod
    def from_json(cls, body: dict) -> "SharingChoices":
        """The PUT body of /api/me/sharing; raises ValueError naming what is wrong."""
        if not isinstance(body, dict) or not isinstance(body.get("cross_province"), bool):
            raise ValueError("cross_province must be true or false")
        sensitive = body.get("sensitive", {})
        if not isinstance(sensitive, dict) or set(sensitive) - set(CATEGORIES):
            raise ValueError(f"sensitive takes only {', '.join(CATEGORIES)}")
        if not all(isinstance(v, bool) for v in sensitive.values()):
            raise ValueError("each sensitive category must be true or false")
        return cls(body["cross_province"], **{c: sensitive.get(c, False) for c in CATEGORIES})


def get_choices(engine: Engine, patient_id: str) -> SharingChoices:
    S = Sharing.__table__
    with engine.connect() as conn:
        row = conn.execute(select(S.c.cross_province, S.c.mental, S.c.hiv, S.c.sti)
                           .where(S.c.patient_id == patient_id)).first()
    return SharingChoices(*row) if row else SharingChoices()


def set_choices(engine: Engine, patient_id: str, choices: SharingChoices) -> None:
    values = {"cross_province": choices.cross_province, "mental": choices.mental,
              "hiv": choices.hiv, "sti": choices.sti, "updated": datetime.now(timezone.utc)}
    with writer(engine).begin() as conn:
        done = conn.execute(update(Sharing).where(Sharing.patient_id == patient_id)
                            .values(**values)).rowcount
        if not done:
            conn.execute(insert(Sharing), [{"patient_id": patient_id, **values}])
