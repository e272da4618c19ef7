"""Anhui spreadsheets through the hub: raw and multipart, ZIP limits as 413, row rejections,
the same lab result twice stored once."""

import io
import zipfile

from sqlalchemy import func, select

from hub.models import Resource
from tests.conftest import FIXTURES

AH = FIXTURES / "ah"
SENDER = "H34010400001"


def post(hub, body, multipart=False, name="upload.csv"):
    with hub.client(hub.token("hospital", SENDER)) as c:
        if multipart:
            return c.post("/ingest/ah", files={"file": (name, body, "text/csv")})
        return c.post("/ingest/ah", content=body, headers={"Content-Type": "text/csv"})


def observations(engine):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Resource)
                            .where(Resource.res_type == "Observation")).scalar_one()


def test_raw_and_multipart_csv(hub):
    raw = post(hub, (AH / "visits_gbk.csv").read_bytes())
    assert raw.status_code == 200 and raw.json()["stored"] > 0
    again = post(hub, (AH / "visits_gbk.csv").read_bytes(), multipart=True, name="visits.csv")
    assert again.status_code == 200
    assert again.json()["stored"] == 0 and again.json()["unchanged"] == raw.json()["stored"]


def test_same_lab_result_in_two_uploads_is_stored_once(hub):
    post(hub, (AH / "labs_gbk.csv").read_bytes())
    once = observations(hub.engine)
    post(hub, (AH / "labs_gbk.csv").read_bytes(), multipart=True, name="again.csv")
    assert once > 0 and observations(hub.engine) == once


def test_quirk_rows_are_rejected_with_file_row_and_column(hub):
    answer = post(hub, (AH / "quirks.csv").read_bytes(), multipart=True, name="quirks.csv").json()
    assert answer["stored"] > 0 and answer["rejected"]
    for rejection in answer["rejected"]:
        assert rejection["location"].startswith("quirks.csv:row ")
        assert rejection["reason"]


def test_zip_upload_and_a_ratio_bomb_is_413(hub):
    assert post(hub, (AH / "upload.zip").read_bytes(), multipart=True, name="upload.zip").json()["stored"] > 0
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.csv", b"0" * (5 * 1024 * 1024))
    answer = post(hub, buffer.getvalue(), multipart=True, name="bomb.zip")
    assert answer.status_code == 413


def test_nested_archive_is_400(hub):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("a.csv", b"x")
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as z:
        z.writestr("inner.zip", inner.getvalue())
    assert post(hub, outer.getvalue(), multipart=True, name="outer.zip").status_code == 400
