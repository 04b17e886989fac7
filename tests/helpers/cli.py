"""Running the `anyanomaly` command as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.fixtures import REPO_ROOT
from tests.helpers.processes import die_with_this_process

ANYANOMALY = str(Path(sys.executable).parent / "anyanomaly")


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ANYANOMALY, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, preexec_fn=die_with_this_process)


def start(*args: str, log: Path) -> subprocess.Popen[str]:
    """The command in the background, its stdout and stderr going to `log`."""
    with log.open("w") as sink:
        return subprocess.Popen([ANYANOMALY, *args], cwd=REPO_ROOT, text=True, stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                                preexec_fn=die_with_this_process)
