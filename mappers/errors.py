"""The mappers' exceptions, all ``ValueError``s (``hub.errors.ANSWERS`` answers them in HTTP)::

    ValueError
    ├── InvalidValue          a source value cannot be read; ``str(exc)`` is the reason shown to
    │                         the sender (mappers turn it into a located ``Rejection``)
    ├── UnreadableUpload      the body cannot be read at all as this format
    │   └── ArchiveTooLarge   the upload is over the size limits (body, archive, compression)
    └── ForeignSender         the upload names another hospital as its sender
"""

from __future__ import annotations


class InvalidValue(ValueError):
    """A source value that cannot be read; ``str(exc)`` is the reason shown to the sender."""


class UnreadableUpload(ValueError):
    """The body cannot be read at all as this format; ``str(exc)`` says where and why."""


class ArchiveTooLarge(UnreadableUpload):
    """The upload is over the hub's size limits; ``str(exc)`` says which.

    Raised for a body over 20 MB, and for a ZIP that unpacks (or says it unpacks) to more than
    200 MB or 1,000 files, or one of whose entries, or the whole, compresses more than 100:1.
    """


class ForeignSender(ValueError):
    """The upload names another hospital as its sender."""
