"""``yrdhub demo``: the hub on its embedded default (SQLite), with the four provinces' simulated
insurance platforms, walked through both of its jobs (``story.STEPS``) with the shipped data, then
left running for a person to click through the portal.

Everything listens on loopback. The database is ``<workdir>/demo.db``, made afresh on every start.
Ctrl-C (SIGINT) or SIGTERM stops the hub and the platforms and exits 0: that is how a demo is
meant to end, so it is no error and prints no traceback, whichever step it interrupts.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import uvicorn

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
    from settlement.simulator import start_simulators

    if check() != 0:
        return 2
    started = time.monotonic()
    try:
        with persons_file() as persons:
            sims = start_simulators(persons_path=persons)
            try:
                _serve(port, workdir, sims, started)
            finally:
                sims.stop()
    except KeyboardInterrupt:  # before the server took the signals over, or re-raised by it
        pass
    print("yrdhub demo stopped.", flush=True)
    return 0


def _serve(port: int, workdir: Path, sims, started: float) -> None:
    from hub import logs
    from hub.app import create_app
    from hub.config import Settings, get_settings

    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("demo.db*"):
        stale.unlink()
    # Mapping in a thread (map_workers=0): a dozen small uploads do not pay for spawning mapper
    # processes, and a terminal's Ctrl-C would reach those too.
    settings = Settings(database_url=f"sqlite:///{workdir.resolve()}/demo.db", map_workers=0,
                        mllp_port=get_settings().mllp_port,
                        **{f"insurer_{p.lower()}_url": u for p, u in sims.urls.items()})
    # The hub's log goes to a file beside the database (JSON lines): the terminal is the story's.
    logs.configure(settings.log_level, json=True, stream=open(workdir / "hub.log", "w", encoding="utf-8"))
    base = f"http://127.0.0.1:{port}"
    print(f"yrdhub demo: starting the hub at {base} with the simulated platforms of SH, JS, ZJ and "
          f"AH (database and log in {workdir}/) ...", flush=True)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    ctx = story.Ctx(base, app.state.engine, sims)
    threading.Thread(target=_tell, args=(server, ctx, started), name="demo-story", daemon=True).start()
    server.run()


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
