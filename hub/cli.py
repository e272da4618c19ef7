"""The ``yrdhub`` command (hub-interface.md, "Starting and configuring it").

    yrdhub serve [--host 127.0.0.1] [--port 8000]
    yrdhub token create (--hospital CODE | --insurer SH | --admin)
    yrdhub db upgrade
    yrdhub demo [--port 8000] [--check]
                                   the hub on its embedded default, with the simulated
                                   provincial platforms, walked through records and settlement
    yrdhub simulate [--host 127.0.0.1] [--base-port 9101]
                                   the four provinces' simulated insurance platforms
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from hub.config import Settings, get_settings
from mappers.region import PROVINCES


def _serve(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    from hub import logs
    from hub.app import create_app

    signal.signal(signal.SIGTERM, _stop_cleanly)
    log_config = logs.configure(settings.log_level, settings.log_json)
    app = create_app(settings)
    tune_gc()
    uvicorn.run(app, host=host, port=port, log_config=log_config, access_log=True)


def _stop_cleanly(_signum, _frame) -> None:
    """SIGTERM outside uvicorn's own handling: before it starts, and the SIGTERM it raises again
    once it has shut down (so that the process would end "killed by SIGTERM", 143). The hub
    stopped as asked: it exits 0, through the interpreter's exit, which lets the mapper
    processes finish their exit rather than be killed with the hub."""
    sys.exit(0)


def tune_gc() -> None:
    """For a long-running process, once loaded (the hub, the simulated platforms, the
    benchmarks' load generators): move everything loaded so far (FHIR models, tables, the app)
    out of the collector's sight, and collect the youngest generation less often. A request allocates thousands of
    short-lived containers; with the defaults the collector ran every 700 of them and scanned
    the long-lived heap in its older passes: a fifth of the settlement path's CPU (measured with
    py-spy and ``bench/settle.py``). Cycles are still collected, just in larger batches."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def cmd_serve(args) -> int:
    _serve(get_settings(), args.host, args.port)
    return 0


def cmd_token(args) -> int:
    from hub.auth import create_token
    from hub.db import get_engine
    from hub.migrate import upgrade

    settings = get_settings()
    if args.hospital:
        kind, subject = "hospital", args.hospital.strip().upper()
        if not (len(subject) == 12 and subject[0] == "H" and subject[1:].isdigit()):
            print(f"not a hospital code: {args.hospital!r} (H + 11 digits)", file=sys.stderr)
            return 2
    elif args.insurer:
        kind, subject = "insurer", args.insurer.strip().upper()
        if subject not in PROVINCES:
            print(f"not a province: {args.insurer!r} (one of {', '.join(PROVINCES)})",
                  file=sys.stderr)
            return 2
    else:
        kind, subject = "admin", None
    engine = get_engine(settings.database_url)
    upgrade(engine)
    print(create_token(engine, kind, subject))
    return 0


def cmd_db_upgrade(_args) -> int:
    from hub.db import get_engine
    from hub.migrate import upgrade

    upgrade(get_engine(get_settings().database_url))
    print("database is at the newest revision")
    return 0


def _demo_module(name: str):
    """``yrdhub_demo.<name>``, or None after saying that the demo is not installed (the hub's
    production image leaves it out)."""
    import importlib

    try:
        return importlib.import_module(f"yrdhub_demo.{name}")
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "yrdhub_demo":
            raise  # the demo is there but something it needs is not: the traceback says what
        print("yrdhub: the demo and the simulated platforms are not installed here (package "
              "yrdhub_demo missing; the hub's production image leaves them out). Install yrdhub "
              "from its source: pip install .", file=sys.stderr)
        return None


def cmd_demo(args) -> int:
    """Start the simulated platforms and the hub on a fresh SQLite file, show records and
    settlement at work through the hub's HTTP endpoints, and serve. Everything runs on loopback."""
    try:
        demo = _demo_module("run")
        if demo is None:
            return 2
        if args.check:
            return demo.check()
        return demo.run(port=args.port, workdir=Path(args.workdir))
    except KeyboardInterrupt:  # Ctrl-C, at any moment: how a demo is meant to end, not an error
        print("yrdhub demo stopped.", flush=True)
        return 0


def cmd_simulate(args) -> int:
    simulate = _demo_module("simulate")
    return 2 if simulate is None else simulate.main(args.simulator_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yrdhub", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the hub")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(func=cmd_serve)
    token = sub.add_parser("token", help="manage bearer tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="print a new token (shown once)")
    who = create.add_mutually_exclusive_group(required=True)
    who.add_argument("--hospital", metavar="CODE")
    who.add_argument("--insurer", metavar="PROVINCE")
    who.add_argument("--admin", action="store_true")
    create.set_defaults(func=cmd_token)
    db = sub.add_parser("db", help="database")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)
    demo = sub.add_parser("demo", help="the hub with simulated platforms and sample records")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--workdir", default=os.environ.get("YRDHUB_DEMO_DIR", "demo-data"))
    demo.add_argument("--check", action="store_true",
                      help="only check that the demo's data is installed, then exit")
    demo.set_defaults(func=cmd_demo)
    simulate = sub.add_parser("simulate", add_help=False,
                              help="the simulated provincial platforms (--help for their options)")
    simulate.set_defaults(func=cmd_simulate)  # its options are the simulator's own (main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "simulate":
        args.simulator_args = rest  # parsed by the simulator itself
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
