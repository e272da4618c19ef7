"""The portal tests' hub: a real hub wired to the platforms under test (``sims``, from
``tests.support.platforms``, once per implementation), on an empty database, whose sessions last
2 hours. Registered for every test module by ``tests/conftest.py``."""

from __future__ import annotations

import pytest

from tests.support.portal import start_hub


@pytest.fixture()
def portal(database_url, db, sims):
    hub = start_hub(database_url, sims, session_hours=2)
    yield hub
    hub.stop()
