"""`from anyanomaly import Client` in a fresh virtual environment with only the base install
(`pip install .`: no extras, so no torch, scipy, tqdm or matplotlib)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.fixtures import REPO_ROOT
from tests.helpers.processes import die_with_this_process

pytestmark = pytest.mark.slow


def test_the_client_imports_in_a_fresh_venv_with_the_base_install(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "node_modules", "out", "__pycache__", "*.egg-info", "build", ".mypy_cache", ".ruff_cache",
        ".pytest_cache", ".hypothesis"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                              str(source)], capture_output=True, text=True, timeout=900,
                             preexec_fn=die_with_this_process)
    assert install.returncode == 0, install.stderr[-3000:]
    code = ("import importlib.util as u\n"
            "from anyanomaly import AsyncClient, Client, AnyAnomalyError\n"
            "print(Client.__module__, [m for m in ('torch', 'scipy', 'tqdm', 'matplotlib', 'open_clip') "
            "if u.find_spec(m)])")
    done = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["anyanomaly.client", "[]"]  # and none of the extras is there
