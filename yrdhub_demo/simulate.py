"""``yrdhub simulate`` (or ``python -m yrdhub_demo.simulate``): the four provinces' simulated
insurance platforms, seeded with the persons the demo ships, until SIGINT or SIGTERM.

The same options as ``python -m settlement.simulated`` (``--host``, ``--base-port``,
``--ledger-file``, ``--latency-ms``); ``--persons`` defaults to the shipped ``persons.json``
rather than the checkout's ``fixtures/``, which an installed package does not have.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from yrdhub_demo import shipped


@contextmanager
def persons_file():
    """A filesystem path to the shipped persons (a temporary copy if the package is zipped);
    raises MissingData when the data is incomplete."""
    with resources.as_file(shipped.require() / shipped.PERSONS) as path:
        yield Path(path)


def main(argv: list[str] | None = None) -> int:
    from settlement.simulated import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    with persons_file() as persons:
        # Given first, so that a --persons of the caller's, parsed later, wins.
        cli.main(["--persons", str(persons), *argv])
    return 0


if __name__ == "__main__":
    sys.exit(main())
