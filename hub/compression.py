"""gzip for answers the client accepts it for, above a small size.

Every answer passes Starlette's ``GZipMiddleware`` (zlib, level 1: JSON shrinks about as much as
at 6 for a fraction of the CPU). FHIR answers, which reach tens of MB for a ``$everything``, are
gzipped by their handler instead, in the worker thread it already runs in, with ISA-L (``isal``):
about eight times faster than zlib's level 1 at a slightly better ratio, so a large answer costs
no more time than it did uncompressed (``bench/fhir_results.py``). The middleware passes on an
answer that already has a ``Content-Encoding``. MLLP is not HTTP and never passes through here.
"""

from __future__ import annotations

from isal import igzip

MIN_BYTES = 1024
MIDDLEWARE_LEVEL = 1  # zlib's scale
FAST_LEVEL = 1  # ISA-L's scale (0-3)


def accepts_gzip(accept_encoding: str | None) -> bool:
    """The middleware's rule, so that every answer decides alike."""
    return "gzip" in (accept_encoding or "")


def gzipped(accept_encoding: str | None, body: bytes, headers: dict) -> bytes:
    """``body`` gzipped when the client accepts it and it is over ``MIN_BYTES``, with
    ``Content-Encoding`` and ``Vary`` added to ``headers``; else ``body`` as it is."""
    if len(body) < MIN_BYTES or not accepts_gzip(accept_encoding):
        return body
    headers["Content-Encoding"] = "gzip"
    headers["Vary"] = "Accept-Encoding"
    return igzip.compress(body, FAST_LEVEL)
