"""``yrdhub demo``: the hub on its embedded default (SQLite), with the four provinces' simulated
insurance platforms, walked through both of its jobs (``story.STEPS``) with the shipped data, then
left running for a person to click through the portal.

Everything listens on loopback. The database is ``<workdir>/demo.db``, made afresh on every start.
Ctrl-C (SIGINT) stops the hub (uvicorn's graceful shutdown) and the platforms, and the hub's
server re-raises it as KeyboardInterrupt, which ``yrdhub demo`` takes as the normal end: exit 0,
no traceback, whichever step it interrupts.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import uvicorn

from hub.config import get_settings
from yrdhub_demo import shipped, story
from yrdhub_demo.simulate import persons_file


def check() -> int:
    """``yrdhub demo --check``: whether the shipped data is all there; 0 when it is, else 2 with
    a message naming what is missing."""
    try:
        root = shipped.require()
    except shipped.MissingData as exc:
        print(f"yrdhub demo: {exc}", file=sys.stderr)
        return 2
    print(f"yrdhub demo: data found: {len(shipped.NEEDED)} files in {root}")
    return 0


def run(port: int = 8000, workdir: Path = Path("demo-data")) -> int:
    from settlement.simulated import start_simulators

    if check() != 0:
        return 2
    taken = [f"{what} port {p}" for what, p in (("HTTP", port), ("MLLP", get_settings().mllp_port))
             if p and not _free(p)]
    if taken:
        print(f"yrdhub demo: {' and '.join(taken)} already in use on 127.0.0.1 (another hub?); "
              "choose others with --port and YRDHUB_MLLP_PORT (0: no MLLP)", file=sys.stderr)
        return 2
    started = time.monotonic()
    with persons_file() as persons:
        sims = start_simulators(persons_path=persons)
        try:
            served = _serve(port, workdir, sims, started)
        finally:
            sims.stop()
    if not served:
        print(f"yrdhub demo: the hub did not start; its log says why: {workdir}/hub.log", file=sys.stderr)
        return 1
    return 0


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _serve(port: int, workdir: Path, sims, started: float) -> bool:
    """Serve until stopped; False when the hub never started (the reason is in its log)."""
    from hub import logs
    from hub.app import create_app
    from hub.config import Settings

    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("demo.db*"):
        stale.unlink()
    # Mapping in a thread (map_workers=0): a dozen small uploads do not pay for spawning mapper
    # processes, and a terminal's Ctrl-C would reach those too.
    settings = Settings(database_url=f"sqlite:///{workdir.resolve()}/demo.db", map_workers=0,
                        mllp_port=get_settings().mllp_port,
                        **{f"insurer_{p.lower()}_url": u for p, u in sims.urls.items()})
    # The hub's log goes to a file beside the database (JSON lines): the terminal is the story's.
    log_config = logs.configure(settings.log_level, json=True, stream=open(workdir / "hub.log", "w", encoding="utf-8"))
    base = f"http://127.0.0.1:{port}"
    print(f"yrdhub demo: starting the hub at {base} with the simulated platforms of SH, JS, ZJ and "
          f"AH (database and log in {workdir}/) ...", flush=True)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=log_config))
    ctx = story.Ctx(base, app.state.engine, sims)
    threading.Thread(target=_tell, args=(server, ctx, started), name="demo-story", daemon=True).start()
    server.run()
    return server.started


def _tell(server: uvicorn.Server, ctx: story.Ctx, started: float) -> None:
    """Once the hub serves, run the story's steps and print what each did; then the ready line."""
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    for name, step in story.STEPS:
        try:
            lines = step(ctx)
        except Exception as exc:  # noqa: BLE001 - reported in one line, the hub keeps serving
            if not server.should_exit:  # stopping: the hub closed the call under us, say nothing
                print(f"yrdhub demo: step '{name}' failed: {exc}", file=sys.stderr, flush=True)
            return
        print("\n".join(lines), flush=True)
    print(f"yrdhub demo ready in {time.monotonic() - started:.1f} s at {ctx.base}; Ctrl-C stops it.",
          flush=True)
