"""Helpers shared by tests (imported as ``tests.support``; never import another test module)."""
