"""``pip install .`` (not ``-e``) gives a ``yrdhub demo`` that finds its data from any folder: a
wheel built from a copy of the sources without ``fixtures/``, installed into a fresh venv (on the
system's site-packages for the dependencies, its own yrdhub shadowing the editable one), run from
a folder that is not the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.conftest import ROOT

# What a built wheel must not depend on: the checkout's test data and working files.
NOT_SOURCES = shutil.ignore_patterns(".git", ".ci", "tests", "fixtures", "bench", "demo-data", "build",
                                     "*.egg-info", "__pycache__", "*.db*", ".venv", "test-artifacts")


def run(*args: str, cwd, env=None) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def test_wheel_installed_elsewhere_finds_its_demo_data(tmp_path):
    src, wheels, venv, elsewhere = (tmp_path / n for n in ("src", "wheels", "venv", "elsewhere"))
    shutil.copytree(ROOT, src, ignore=NOT_SOURCES)
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run(*pip, "wheel", "--no-deps", "-w", str(wheels), str(src), cwd=tmp_path)
    [wheel] = wheels.glob("yrdhub-*.whl")
    run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv), cwd=tmp_path)
    python = venv / "bin" / "python"
    run(*pip, "--python", str(python), "install", "--no-deps", "--no-index", "--force-reinstall", str(wheel),
        cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    where = run(str(python), "-c", "import hub, yrdhub_demo; print(hub.__file__); print(yrdhub_demo.__file__)",
                cwd=elsewhere, env=env).stdout.split()
    assert all(path.startswith(str(venv)) for path in where), where  # not the editable checkout

    checked = run(str(venv / "bin" / "yrdhub"), "demo", "--check", cwd=elsewhere, env=env)
    assert "data found: 15 files in " + str(venv) in checked.stdout
