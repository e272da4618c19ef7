"""The mappers' exceptions, all ``ValueError``s (``hub`` maps them to HTTP in one place)::

    ValueError
    ├── InvalidValue       a source value cannot be read; ``str(exc)`` is the reason shown to the
    │                      sender (mappers turn it into a located ``Rejection``)
    ├── UnreadableUpload   the body cannot be read at all as this format (400)
    └── ForeignSender      the upload names another hospital as its sender (403)
"""

from __future__ import annotations


class InvalidValue(ValueError):
    """A source value that cannot be read; ``str(exc)`` is the reason shown to the sender."""


class UnreadableUpload(ValueError):
    """The body cannot be read at all as this format (the hub answers 400 with ``str(exc)``)."""


class ForeignSender(ValueError):
    """The upload names another hospital as its sender (the hub answers 403)."""
