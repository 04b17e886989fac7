"""A service started by a launcher dies with it, even when the launcher is killed with
SIGKILL and cannot stop its children (no orphans holding ports and gigabytes)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

log = logging.getLogger("anyanomaly.server")

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel send SIGKILL to this process when its parent thread ends, and exit at
    once if the launcher `parent_pid` is gone already (it died while this process started).
    0 means no launcher. Linux only; elsewhere the launcher's own stop is all there is."""
    if not parent_pid:
        return
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            log.warning("cannot ask to die with the launcher", extra={"errno": ctypes.get_errno()})
    if os.getppid() != parent_pid:
        log.error("the launcher that started this service is gone; exiting", extra={"parent_pid": parent_pid})
        os._exit(3)
