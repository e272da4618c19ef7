"""Anhui spreadsheets through the hub: raw and multipart, ZIP limits as 413, row rejections,
the same lab result twice stored once, the answer counting rows (not records)."""

import csv
import io
import zipfile

import orjson
from sqlalchemy import func, select

from hub.models import Resource
from mappers.common import make_id
from tests.support.common import FIXTURES

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


# ---------------------------------------------------------------------------------------------
# The answer counts rows (anhui-csv.md): stored, unchanged, rejected per row, not per record
# ---------------------------------------------------------------------------------------------


def data_rows(name: str) -> int:
    """Rows under the header of a fixture (they all carry data)."""
    text = (AH / name).read_bytes().decode("gb18030")
    return len(list(csv.reader(io.StringIO(text)))) - 1


def counts(answer) -> tuple[int, int, int]:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return body["stored"], body["unchanged"], len(body["rejected"])


def encounter(engine, visit_no: str) -> dict:
    with engine.connect() as conn:
        content = conn.execute(select(Resource.content).where(
            Resource.res_type == "Encounter",
            Resource.res_id == make_id("Encounter", SENDER, visit_no))).scalar_one()
    return orjson.loads(content)


def test_each_diagnosis_row_of_a_visit_counts_as_stored(hub):
    # 5 rows, 3 visits: the first and the last visit have two diagnosis rows each
    first = post(hub, (AH / "visits_gbk.csv").read_bytes())
    assert counts(first) == (data_rows("visits_gbk.csv"), 0, 0) == (5, 0, 0)
    again = post(hub, (AH / "visits_gbk.csv").read_bytes())
    assert counts(again) == (0, 5, 0)


def test_a_visit_that_gains_a_row_counts_the_new_row_stored_and_the_rest_unchanged(hub):
    post(hub, (AH / "visits_gbk.csv").read_bytes())
    # The re-export adds a third diagnosis to MZ2024030500017 and writes one date another way
    answer = post(hub, (AH / "visits_gbk_reexport.csv").read_bytes(), multipart=True,
                  name="visits_reexport.csv")
    assert counts(answer) == (1, data_rows("visits_gbk_reexport.csv") - 1, 0) == (1, 5, 0)
    # The visit is still replaced as a whole: its Encounter now lists three diagnoses
    assert len(encounter(hub.engine, "MZ2024030500017")["diagnosis"]) == 3


def test_a_report_that_gains_a_row_counts_the_new_row_stored(hub):
    assert counts(post(hub, (AH / "labs_gbk.csv").read_bytes())) == (4, 0, 0)
    answer = post(hub, (AH / "labs_gbk_reexport.csv").read_bytes())
    assert counts(answer) == (1, 2, 0)
    assert observations(hub.engine) == 5


def test_a_patient_row_whose_details_changed_is_stored(hub):
    assert counts(post(hub, (AH / "patients_gbk.csv").read_bytes())) == (4, 0, 0)
    answer = post(hub, (AH / "patients_gbk_update.csv").read_bytes())
    assert counts(answer) == (1, 1, 0)


def test_a_row_repeated_in_one_upload_counts_once_stored_and_once_unchanged(hub):
    # Two exports pasted together: the second copy's header is skipped, its rows repeat
    text = (AH / "visits_gbk.csv").read_bytes()
    answer = post(hub, text + text)
    assert counts(answer) == (5, 5, 0)
    with hub.engine.connect() as conn:
        conditions = conn.execute(select(func.count()).select_from(Resource)
                                  .where(Resource.res_type == "Condition")).scalar_one()
    assert conditions == 5


def test_zip_counts_every_row_of_every_file(hub):
    # patients.csv 2 rows, visits.csv 2, labs_a.csv 2, labs_b.csv 2 (its AST row repeats
    # labs_a.csv's exactly: one result, stored once, the copy unchanged)
    body = (AH / "upload.zip").read_bytes()
    assert counts(post(hub, body, multipart=True, name="upload.zip")) == (7, 1, 0)
    assert counts(post(hub, body, multipart=True, name="upload.zip")) == (0, 8, 0)
