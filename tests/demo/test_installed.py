"""``pip install .`` (not ``-e``) gives a ``yrdhub demo`` that finds its data from any folder: a
wheel built from a copy of the sources without ``fixtures/``, installed into a fresh venv, run
from a folder that is not the checkout."""

from __future__ import annotations

import shutil

from tests.support.common import ROOT
from tests.support.install import clean_env, install_in_venv, run

# What a built wheel must not depend on: the checkout's test data and working files.
NOT_SOURCES = shutil.ignore_patterns(".git", ".ci", "tests", "fixtures", "bench", "demo-data", "build",
                                     "*.egg-info", "__pycache__", "*.db*", ".venv", "test-artifacts")


def test_wheel_installed_elsewhere_finds_its_demo_data(tmp_path):
    shutil.copytree(ROOT, tmp_path / "src", ignore=NOT_SOURCES)
    venv = install_in_venv(tmp_path / "src", tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(str(venv / "bin" / "python"), "-c", "import hub, yrdhub_demo; print(hub.__file__, yrdhub_demo.__file__)",
                cwd=elsewhere, env=clean_env()).stdout.split()
    assert all(path.startswith(str(venv)) for path in where), where  # not the editable checkout

    checked = run(str(venv / "bin" / "yrdhub"), "demo", "--check", cwd=elsewhere, env=clean_env())
    assert "data found: 15 files in " + str(venv) in checked.stdout
