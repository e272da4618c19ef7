"""The demo of yrdhub and the simulated provincial platforms: ``yrdhub demo`` and ``yrdhub simulate``.

Kept outside the hub's own packages (``hub``, ``mappers``, ``settlement``) so that a production
image can leave it out: it ships sample records and the simulated platforms' persons
(``yrdhub_demo/data``), which have no place next to a real hub.
"""
