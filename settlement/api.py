"""The settlement endpoints (hub-interface.md, "Insurance platforms: settling outpatient bills").

Placeholder router: the settlement service fills it in.
"""

from fastapi import APIRouter

router = APIRouter()


async def start(app):
    """Lifespan starter: resume what was in flight. Returns the coroutine that stops it."""

    async def stop():
        return None

    return stop
