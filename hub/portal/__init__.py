"""The patient portal: pages under ``/portal`` (``pages``), JSON under ``/api/me`` (``api``),
sign-in and sessions (``sessions``), the patient's access log (``accesslog``), their own records
and corrections (``records``, shown by ``record_view``), small static files
under ``/portal/static``. The transfer saga itself is ``settlement.transfer``; its lifespan starter
is ``settlement.transfer.start_transfers``.
"""

import re
from pathlib import Path

from fastapi import APIRouter
from starlette.responses import FileResponse, Response

from hub.portal import api, pages, records

STATIC = Path(__file__).parent / "static"
_STATIC_NAME = re.compile(r"^[a-z0-9_-]+\.(css|js)$")

router = APIRouter()
router.include_router(pages.router)
router.include_router(api.router)
router.include_router(records.router)


@router.get("/portal/static/{name}", response_class=Response, responses={200: {
    "description": "a stylesheet or script of the pages", "content": {
        "text/css": {"schema": {"type": "string"}}, "text/javascript": {"schema": {"type": "string"}}}}})
def static(name: str) -> Response:
    """A file of ``static/`` by its plain name (no paths); 404 otherwise."""
    path = STATIC / name
    if not _STATIC_NAME.match(name) or not path.is_file():
        return Response("not found", 404)
    media = "text/css; charset=utf-8" if name.endswith(".css") else "text/javascript; charset=utf-8"
    return FileResponse(path, media_type=media, headers={"Cache-Control": "max-age=300",
                                                          "X-Content-Type-Options": "nosniff"})
