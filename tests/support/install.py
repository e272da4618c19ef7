"""Installing the project as a user would (``pip install .``, not ``-e``), into a fresh venv:
a wheel built from a source folder, installed on the system's site-packages for the dependencies
(nothing is downloaded but the build backend), so that the venv's own yrdhub shadows the
editable install of the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


def run(*args: str, cwd: Path, env: dict | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    """Run a command; with ``ok``, AssertionError (with its output) unless it exits 0."""
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert not ok or done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def install_in_venv(src: Path, workdir: Path) -> Path:
    """Build a wheel of ``src`` and install it into a new venv under ``workdir``; returns the venv."""
    wheels, venv = workdir / "wheels", workdir / "venv"
    run(*PIP, "wheel", "--no-deps", "-w", str(wheels), str(src), cwd=workdir)
    [wheel] = wheels.glob("yrdhub-*.whl")
    run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv), cwd=workdir)
    run(*PIP, "--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index", "--force-reinstall",
        str(wheel), cwd=workdir)
    return venv


def clean_env() -> dict[str, str]:
    """The environment without PYTHONPATH (which would put a checkout before the venv)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
