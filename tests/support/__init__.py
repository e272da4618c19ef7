"""Helpers shared by tests (imported, never a test module)."""
