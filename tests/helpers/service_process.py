"""A service in a process of its own on 127.0.0.1 (a pod, for the tests that kill one)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.clients import open_channel
from tests.helpers.fixtures import REPO_ROOT


class ServiceProcess:
    """The service dies with the test process (--parent-pid: the kernel kills it). No preexec_fn:
    forking a process whose gRPC threads run, then running Python in the child, can crash the
    child before it execs (seen: "epoll_wait error: Bad file descriptor")."""

    def __init__(self, module: str, args: list[str], folder: Path, port: int = 0) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._port_file = folder / "port"
        self._log = (folder / "log").open("w")
        self.module = module
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port), "--port-file",
             str(self._port_file), "--log-format", "text", "--parent-pid", str(os.getpid()), *args],
            cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HOME": str(folder)})
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def serving(self, timeout: float = 120) -> ServiceProcess:
        """Once the port file is written and the health service answers SERVING."""
        deadline = time.monotonic() + timeout
        while not self._port_file.exists():  # polling a file another process writes
            assert self.process.poll() is None, f"{self.module} exited"
            assert time.monotonic() < deadline, "no port file"
            await asyncio.sleep(0.05)
        self.port = int(self._port_file.read_text())
        async with open_channel(self.address) as channel:
            health: Any = health_pb2_grpc.HealthStub(channel)  # the stubs type it for sync channels
            while (await health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=timeout)
                   ).status != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline, "not SERVING"
                await asyncio.sleep(0.05)
        return self

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
