"""Fixtures of the portal's tests: the simulated platforms (one set per module) and a hub wired
to them, on an empty database."""

from __future__ import annotations

import pytest

from settlement.simulator import start_simulators
from tests.portal_support import start_hub


@pytest.fixture(scope="module")
def sims():
    s = start_simulators()
    yield s
    s.stop()


@pytest.fixture()
def portal(database_url, db, sims):
    hub = start_hub(database_url, sims, session_hours=2)
    yield hub
    hub.stop()
