"""Alembic environment: the URL comes from the caller (``hub.migrate``) or YRDHUB_DATABASE_URL."""

from alembic import context
from sqlmodel import SQLModel

import hub.models  # noqa: F401  (registers the tables)
import settlement.models  # noqa: F401
import settlement.transfer_models  # noqa: F401
import hub.portal.models  # noqa: F401
from hub.config import get_settings
from hub.db import make_engine

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, target_metadata=target_metadata,
                          render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
