"""The event loop's own SQLite connection: SQLAlchemy Core statements, compiled once, run on the
``sqlite3`` connection itself.

Why: a settlement commits three short transactions on the event loop, a dozen statements in
all. Through SQLAlchemy's ``Connection.execute`` each statement cost about 25 µs of Python
around 6 µs of SQLite (execution context, cache key, event dispatch, result set-up), about half
of the hub's database time per bill. Here a statement is compiled once per set of parameter
names (SQLAlchemy still writes every statement and its type conversions, so the SQL and the
stored values are the ones ``Connection.execute`` would produce) and each execution is a
lookup, the conversions of the values and ``cursor.execute``.

What is not supported raises ``NotSupported`` at the first execution: an expanding ``IN``
parameter given per execution (SQLAlchemy renders those per execution; an ``IN`` of the
statement's own values is rendered once). Errors are SQLAlchemy's classes
(``IntegrityError``, ``OperationalError`` with ``.orig`` the sqlite3 error), as callers written
against a SQLAlchemy ``Connection`` expect.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import exc as sa_exc


class NotSupported(Exception):
    """A statement this connection cannot run (use a SQLAlchemy Connection for it)."""


class Row:
    """One result row: ``row._mapping`` (as SQLAlchemy's Row) and ``row.column``."""

    __slots__ = ("_mapping",)

    def __init__(self, mapping: dict[str, Any]):
        self._mapping = mapping

    def __getattr__(self, name: str) -> Any:
        try:
            return self._mapping[name]
        except KeyError:
            raise AttributeError(name) from None


class Result:
    """What ``execute`` answers: ``rowcount`` (INSERT/UPDATE/DELETE), ``first()``, ``one()``, rows."""

    __slots__ = ("_cursor", "_plan", "rowcount")

    def __init__(self, cursor: sqlite3.Cursor, plan: _Plan):
        self._cursor, self._plan, self.rowcount = cursor, plan, cursor.rowcount

    def _row(self, values: tuple) -> Row:
        return Row({name: (conv(v) if conv is not None and v is not None else v)
                    for (name, conv), v in zip(self._plan.columns(self._cursor), values)})

    def first(self) -> Row | None:
        values = self._cursor.fetchone()
        self._cursor.close()
        return None if values is None else self._row(values)

    def one(self) -> Row:
        row = self.first()
        if row is None:
            raise sa_exc.NoResultFound("no row where one was required")
        return row

    def __iter__(self) -> Iterator[Row]:
        return (self._row(values) for values in self._cursor)


class _Plan:
    """One statement compiled for one set of parameter names: its SQL, its positional
    parameters in order (each with the statement's own value, if any, and its type's
    conversion), and the conversions of its result columns."""

    __slots__ = ("stmt", "sql", "params", "_columns", "_result_types", "_dialect")

    def __init__(self, stmt, keys: tuple[str, ...], dialect):
        compiled = stmt.compile(dialect=dialect, column_keys=[k for k in keys if not k.startswith("b_")])
        expanding = [name for name, bind in compiled.binds.items() if bind.expanding]
        if any(name in keys for name in expanding):
            raise NotSupported(f"expanding parameters given per execution: {expanding}")
        missing = [n for n in compiled.positiontup if n not in keys and compiled.binds[n].required]
        if missing:
            raise sa_exc.ArgumentError(f"no value for the parameters {missing}")
        # IN lists of the statement's own values are fixed: expanded once, here.
        state = compiled.construct_expanded_state(compiled.construct_params(_check=False))
        expanded = state.processors or {}
        self.stmt, self.sql, self._dialect = stmt, state.statement, dialect
        self.params = [(name, state.parameters.get(name),
                        compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
                        if name in compiled.binds else expanded.get(name))
                       for name in state.positiontup]
        self._result_types = {col[0]: col[3] for col in getattr(compiled, "_result_columns", [])}
        self._columns: list[tuple[str, Any]] | None = None

    def args(self, given: Mapping[str, Any]) -> list[Any]:
        out = []
        for name, own, conv in self.params:
            value = given.get(name, own)
            out.append(conv(value) if conv is not None else value)
        return out

    def columns(self, cursor: sqlite3.Cursor) -> list[tuple[str, Any]]:
        if self._columns is None:
            names = [d[0] for d in cursor.description]
            self._columns = [(n, self._result_types[n].dialect_impl(self._dialect).result_processor(self._dialect, None)
                              if n in self._result_types else None) for n in names]
        return self._columns


class LoopConnection:
    """A ``sqlite3`` connection (autocommit mode: ``isolation_level=None``, as the hub's
    engine makes them) that runs Core statements; ``begin()`` is a deferred transaction."""

    def __init__(self, raw: sqlite3.Connection, dialect):
        self.raw, self.dialect = raw, dialect
        self._plans: dict[tuple[int, tuple[str, ...]], _Plan] = {}

    @contextmanager
    def begin(self) -> Iterator[LoopConnection]:
        """BEGIN ... COMMIT; rolled back on any exception, a COMMIT that fails (busy) too."""
        self.raw.execute("BEGIN")
        try:
            yield self
            try:
                self.raw.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                raise sa_exc.OperationalError("COMMIT", None, exc) from exc
        except BaseException:
            if self.raw.in_transaction:
                self.raw.rollback()
            raise

    def execute(self, stmt, params: Mapping[str, Any] | None = None) -> Result:
        params = params or {}
        plan = self._plan(stmt, tuple(params))
        try:
            return Result(self.raw.execute(plan.sql, plan.args(params)), plan)
        except sqlite3.IntegrityError as exc:
            raise sa_exc.IntegrityError(plan.sql, None, exc) from exc
        except sqlite3.OperationalError as exc:
            raise sa_exc.OperationalError(plan.sql, None, exc) from exc

    def _plan(self, stmt, keys: tuple[str, ...]) -> _Plan:
        key = (id(stmt), keys)
        plan = self._plans.get(key)
        if plan is None or plan.stmt is not stmt:  # an id reused by a statement made per call
            if len(self._plans) > 512:  # statements made per call must not pile up
                self._plans.clear()
            plan = self._plans[key] = _Plan(stmt, keys, self.dialect)
        return plan
