"""Shared test fixtures: a database (SQLite, and PostgreSQL when YRDHUB_TEST_POSTGRES_URL is set),
a real hub served by uvicorn on a loopback port, and tokens for its parties.

Every test that uses the hub runs once per database: the session-scoped ``database_url`` is
parametrised, so pytest runs the suite on SQLite and then on PostgreSQL.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import text
from sqlmodel import SQLModel

from tests.support.common import Hub, free_port, serve_in_thread

PG_URL = os.environ.get("YRDHUB_TEST_POSTGRES_URL")
DATABASES = ["sqlite"] + (["postgresql"] if PG_URL else [])
# Fixtures shared through tests/support: the platforms (``sims``), a settlement hub (``shub``), a
# portal hub (``portal``) and notification receivers and hubs (``receiver``, ``notify_hub``).
pytest_plugins = ["tests.support.platforms", "tests.support.settlement", "tests.support.portal_fixtures",
                  "tests.support.subscriptions"]


@pytest.fixture(scope="session", params=DATABASES)
def database_url(request, tmp_path_factory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db')}/hub.db"
    from hub.db import make_engine

    engine = make_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return PG_URL


@pytest.fixture(scope="session")
def engine(database_url):
    from hub.db import get_engine
    from hub.migrate import upgrade

    engine = get_engine(database_url)
    upgrade(engine)
    return engine


def wipe(engine) -> None:
    """Empty every table (faster than a new database per test), after the audit's write-behind
    has committed what earlier tests' reads recorded (else it lands in this test's tables)."""
    import hub.models  # noqa: F401
    from hub import audit

    audit.flush_all()

    tables = [t.name for t in reversed(SQLModel.metadata.sorted_tables)]
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE " + ", ".join(tables) + " RESTART IDENTITY CASCADE"))
        else:
            for name in tables:
                conn.execute(text(f"DELETE FROM {name}"))


@pytest.fixture()
def db(engine):
    wipe(engine)
    return engine


@pytest.fixture(scope="session")
def hub_server(engine, database_url):
    from hub.app import create_app
    from hub.config import Settings

    from settlement import api as settlement_api
    from settlement.transfer import start_transfers

    settings = Settings(database_url=database_url, mllp_port=0, log_json=True)
    app = create_app(settings)
    # This hub lives for the whole session and shares its database with the settlement and
    # transfer tests' own hubs; its workers (no platforms configured) would claim their work.
    app.state.starters = [s for s in app.state.starters
                          if s not in (settlement_api.start, start_transfers)]
    port = free_port()
    server = serve_in_thread(app, port)
    yield Hub(f"http://127.0.0.1:{port}", engine, app)
    server.should_exit = True
    server.thread.join(10)


@pytest.fixture()
def hub(hub_server, db) -> Hub:
    """A running hub with an empty database."""
    return hub_server


def pytest_sessionfinish(session, exitstatus):
    from tests.support.platforms import stop_sandbox

    stop_sandbox()
