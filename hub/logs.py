"""Structured logs (structlog, JSON lines) in which a resident ID number never appears in full.

The scrubber runs on every event dict (structlog) and on every stdlib record (uvicorn's access log
carries query strings such as ``identifier=...|33042119850412002X``): anything shaped like an
18- or 15-character resident ID is masked as ``3304**********002X`` before it is written.
"""

from __future__ import annotations

import logging
import sys

import structlog


from mappers.common import scrub  # noqa: E402  (one definition of "what could be an ID")


def _scrub_value(value):
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub_value(v) for v in value)
    return value


def _scrub_processor(_logger, _name, event_dict):
    return {k: _scrub_value(v) for k, v in event_dict.items()}


class ScrubbingFormatter(logging.Formatter):
    """A stdlib formatter whose output passes through ``scrub``."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def configure(level: str = "INFO", json: bool = True, stream=None) -> None:
    """Configure structlog and the stdlib root logger (uvicorn's loggers propagate to it)."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ScrubbingFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=False),
                    _scrub_processor, renderer],
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
