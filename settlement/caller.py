"""Who is calling, as the domain needs to know it: the hub authenticates, the domain only reads
``kind`` and ``code`` (``hub.auth.Party`` satisfies this)."""

from __future__ import annotations

from typing import Protocol


class Caller(Protocol):
    """``kind``: ``hospital``, ``insurer``, ``admin`` or ``patient``; ``code``: the hospital code,
    the province code (an insurer) or None."""

    @property
    def kind(self) -> str: ...

    @property
    def code(self) -> str | None: ...
