"""The patient portal: pages under /portal, JSON under /api/me.

Placeholder router: the portal work fills it in.
"""

from fastapi import APIRouter

router = APIRouter()
