"""Running the `anyanomaly` command as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def serving(*args: str) -> Iterator[dict[str, str]]:
    """`anyanomaly serve ARGS` in the background until the block ends (then Ctrl-C, which must
    stop it cleanly); yields each service's address as it printed them."""
    process = subprocess.Popen([ANYANOMALY, "serve", *args], cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, preexec_fn=die_with_this_process)
    assert process.stdout is not None
    addresses = {}
    for line in process.stdout:
        if line.startswith("ready"):
            break
        name, _, address = line.partition(" ")
        addresses[name] = address.strip()
    try:
        assert set(addresses) >= {"clip_service", "context_service", "lvlm_service", "orchestrator"}
        yield addresses
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0 and "stopped" in out
