"""The two storage facts the domain needs of an engine it is given (the hub makes the engine and
its SQLite pragmas, ``hub.db``, which re-exports these).

``writer(engine)`` is the engine to open write transactions with: on SQLite it takes the write
lock at ``BEGIN`` (the hub's engine honours ``sqlite_immediate``; any other engine ignores it).
"""

from __future__ import annotations

from sqlalchemy.engine import Engine


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def writer(engine: Engine) -> Engine:
    """The engine to open write transactions with (``with writer(e).begin() as conn``)."""
    return engine.execution_options(sqlite_immediate=True)
