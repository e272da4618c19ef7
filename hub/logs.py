"""Structured logs in which a resident ID number never appears in full.

Every line, from structlog (the hub's own loggers) or from the standard library (settlement's,
uvicorn's access and error logs), goes through one ``structlog.stdlib.ProcessorFormatter``:
JSON lines (``json=True``: a traceback becomes a dict of frames, ``dict_tracebacks``) or a
readable console rendering; timestamps are ISO 8601 local time with its UTC offset. The last
step masks, in the finished line, anything shaped like an 18- or 15-character resident ID
(``3304**********002X``): event values, exception messages, uvicorn's query strings such as
``identifier=...|33042119850412002X`` and traceback text alike, whatever the renderer wrote.

Tracebacks carry no local variables: they would hold patients' names and diagnoses, which the
ID scrubber does not recognise.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from datetime import datetime

import structlog

from mappers.region import scrub# one definition of "what could be an ID"

# The loggers uvicorn writes to; they hand their records to the root logger's handler.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def _timestamp(_logger, _name, event_dict):
    # structlog's TimeStamper writes local ISO time without its offset (or UTC with "Z").
    event_dict["timestamp"] = datetime.now().astimezone().isoformat(timespec="milliseconds")
    return event_dict


def _scrub_line(_logger, _name, line: str) -> str:
    return scrub(line)


# What every line gets, whoever wrote it.
_SHARED = [structlog.contextvars.merge_contextvars, structlog.stdlib.add_log_level,
           structlog.stdlib.add_logger_name, _timestamp]


def _renderers(json: bool, colors: bool) -> list:
    if json:
        traceback = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
        return [traceback, structlog.processors.JSONRenderer(ensure_ascii=False)]
    return [structlog.dev.ConsoleRenderer(colors=colors,
                                          exception_formatter=structlog.dev.plain_traceback)]


def dict_config(level: str = "INFO", json: bool = True, stream=None) -> dict:
    """A ``logging.config.dictConfig`` schema (uvicorn's ``log_config`` takes it too): one handler
    on the root logger, formatted by structlog; uvicorn's loggers propagate to it. Loggers that
    exist already stay enabled."""
    stream = stream or sys.stderr
    formatter = {"()": structlog.stdlib.ProcessorFormatter, "foreign_pre_chain": _SHARED,
                 "processors": [structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                                *_renderers(json, stream.isatty()), _scrub_line]}
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"structlog": formatter},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "structlog",
                                 "stream": stream}},
        "root": {"handlers": ["default"], "level": level},
        "loggers": {name: {"handlers": [], "propagate": True} for name in UVICORN_LOGGERS},
    }


def configure(level: str = "INFO", json: bool = True, stream=None) -> dict:
    """Route structlog and the standard library's loggers through the formatter above; returns
    the ``dictConfig`` schema applied, for ``uvicorn.run(log_config=...)``."""
    config = dict_config(level, json, stream)
    logging.config.dictConfig(config)
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *_SHARED,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    return config
