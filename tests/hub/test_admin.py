"""Set-aside uploads: listed with reasons, re-run and re-mapped without duplicating anything."""

import json

from sqlalchemy import func, select

from hub.models import Resource, Upload
from tests.support.common import FIXTURES


def counts(engine):
    with engine.connect() as conn:
        return (conn.execute(select(func.count()).select_from(Resource)).scalar_one(),
                conn.execute(select(func.count()).select_from(Upload)).scalar_one())


def test_set_aside_listed_rerun_and_remapped_without_duplicates(hub):
    quirks = (FIXTURES / "zj" / "upload_quirks.json").read_bytes()
    sender = json.loads(quirks)["jgdm"]
    with hub.client(hub.token("hospital", sender)) as c:
        first = c.post("/ingest/zj", content=quirks).json()
        assert first["rejected"]
        assert c.post("/ingest/zj", content=b"{broken").status_code == 400
    admin = hub.client(hub.token("admin"))
    listed = admin.get("/admin/uploads").json()["uploads"]
    assert {u["id"] for u in listed} == {first["upload_id"], first["upload_id"] + 1}
    assert any(u["summary"].get("error") for u in listed)
    resources, uploads = counts(hub.engine)
    again = admin.post(f"/admin/uploads/{first['upload_id']}/rerun").json()
    assert again["rerun_of"] == first["upload_id"] and again["stored"] == 0
    assert again["unchanged"] == first["stored"] and again["rejected"] == first["rejected"]
    assert counts(hub.engine) == (resources, uploads + 1)
    remapped = admin.post("/admin/remap", params={"channel": "zj"}).json()
    assert remapped["uploads"] == 2 and remapped["stored"] == 0 and len(remapped["errors"]) == 1
    assert counts(hub.engine)[0] == resources
    with hub.engine.connect() as conn:
        reruns = conn.execute(select(Upload.rerun_of, func.length(Upload.body))
                              .where(Upload.rerun_of.is_not(None))).all()
    assert all(r.rerun_of == first["upload_id"] and r[1] == 0 for r in reruns)


def test_listing_stops_at_the_limit_newest_first(hub):
    quirks = (FIXTURES / "zj" / "upload_quirks.json").read_bytes()
    with hub.client(hub.token("hospital", json.loads(quirks)["jgdm"])) as c:
        for _ in range(3):
            assert c.post("/ingest/zj", content=b"{broken").status_code == 400
        assert c.post("/ingest/zj", content=quirks).status_code == 200
    admin = hub.client(hub.token("admin"))
    every = [u["id"] for u in admin.get("/admin/uploads", params={"set_aside": "false"}).json()["uploads"]]
    assert every == sorted(every, reverse=True) and len(every) >= 4
    for set_aside in ("true", "false"):
        two = admin.get("/admin/uploads", params={"set_aside": set_aside, "limit": 2}).json()["uploads"]
        assert [u["id"] for u in two] == every[:2]
    assert admin.get("/admin/uploads", params={"limit": -1}).status_code == 422


def test_only_admins(hub):
    with hub.client(hub.token("hospital", "H33042100015")) as c:
        assert c.get("/admin/uploads").status_code == 403
        assert c.post("/admin/remap", params={"channel": "zj"}).status_code == 403
    with hub.client() as c:
        assert c.get("/admin/uploads").status_code == 401
