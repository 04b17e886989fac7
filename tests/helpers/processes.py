"""Finding a command's child processes through /proc, and waiting for them to be gone."""

from __future__ import annotations

import ctypes
import signal
import time
from pathlib import Path

from services.common.lifeline import PR_SET_PDEATHSIG


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return fields[0], int(fields[1])


def children(pid: int) -> dict[int, str]:
    """{pid: command line} of the processes whose parent is `pid`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None and stat[1] == pid:
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
    return found


def alive(pid: int) -> bool:
    """Running (a zombie, waiting to be reaped, holds no memory or ports and counts as gone)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def wait_until_gone(pids: list[int], timeout: float) -> list[int]:
    """Poll until none of `pids` is alive; the survivors after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (survivors := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return survivors


def service_pid(parent: int, name: str, timeout: float = 120) -> int:
    """The pid of the embedded stack's `name` service started by `parent`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, command in children(parent).items():
            if f"services.{name} " in command:
                return pid
        time.sleep(0.1)
    raise TimeoutError(f"{name} was not started by {parent}")


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, so a forked child only calls it


def die_with_this_process() -> None:
    """preexec_fn for commands a test starts: the kernel kills them if the test process dies
    (a timed-out or killed test run), and with them the services they started."""
    _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
