"""The embedded single-machine stack: the four services as child processes on this
machine, each started through its own entry point (`python -m services.<name>`).

Used by `anyanomaly serve` and by `anyanomaly detect` without `--address`. Ports are
picked by the services (port 0) and read from their "listening" log line; readiness
is the standard gRPC health status, watched (not polled) until SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.clients import open_channel

START_TIMEOUT_SECONDS = 600.0  # the default models may be loaded from a cold disk


class StackError(RuntimeError):
    """A service of the embedded stack could not start; the message says which and why."""


@dataclass(frozen=True)
class StackOptions:
    models: str = "default"  # "default" or "tiny"
    lvlm_url: str = ""  # an OpenAI-compatible server (e.g. vllm serve) instead of a local model
    lvlm_model: str = ""
    host: str = "127.0.0.1"
    orchestrator_port: int = 0
    log_dir: Path | None = None  # service logs; None keeps only the last lines for error messages
    profile: str = "default"  # the services' profile for requests that name none


@dataclass
class ServiceProcess:
    name: str
    process: asyncio.subprocess.Process
    log_file: IO[str] | None
    port: asyncio.Future[int]
    last_lines: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    reader: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port.result()}"

    def last_error(self) -> str:
        for line in reversed(self.last_lines):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("level") in ("error", "critical"):
                return str(entry.get("msg"))
        return self.last_lines[-1] if self.last_lines else "no output"

    async def pump(self) -> None:
        """Read the service's log lines: the port from 'listening', the rest to the log file."""
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.last_lines.append(line)
            if self.log_file is not None:
                self.log_file.write(line + "\n")
                self.log_file.flush()
            if not self.port.done():
                with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
                    entry = json.loads(line)
                    if entry["msg"] == "listening":
                        self.port.set_result(int(entry["port"]))
        if not self.port.done():
            self.port.set_exception(StackError(f"{self.name} exited before listening: {self.last_error()}"))


class EmbeddedStack:
    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.services: dict[str, ServiceProcess] = {}

    @property
    def orchestrator_address(self) -> str:
        return self.services["orchestrator"].address

    def addresses(self) -> dict[str, str]:
        return {name: service.address for name, service in self.services.items()}

    async def _spawn(self, name: str, args: Sequence[str], port: int = 0) -> ServiceProcess:
        log_file = None
        if self.options.log_dir is not None:
            self.options.log_dir.mkdir(parents=True, exist_ok=True)
            log_file = (self.options.log_dir / f"{name}.log").open("a")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"services.{name}", "--host", self.options.host, "--port", str(port),
            "--log-format", "json", "--profile", self.options.profile, *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        service = ServiceProcess(name, process, log_file, asyncio.get_running_loop().create_future())
        service.reader = asyncio.create_task(service.pump())
        self.services[name] = service
        return service

    async def _until_serving(self, service: ServiceProcess) -> None:
        """Watch the service's health until SERVING; fail if the process exits first."""
        async with open_channel(service.address, default_timeout=START_TIMEOUT_SECONDS) as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=START_TIMEOUT_SECONDS,
                               wait_for_ready=True)
            serving = asyncio.ensure_future(self._first_serving(watch))
            exited = asyncio.ensure_future(service.process.wait())
            done, _ = await asyncio.wait({serving, exited}, return_when=asyncio.FIRST_COMPLETED)
            if serving not in done:
                serving.cancel()
                watch.cancel()
                assert service.reader is not None
                await service.reader
                raise StackError(f"{service.name} failed to start: {service.last_error()}")
            exited.cancel()
            serving.result()

    @staticmethod
    async def _first_serving(watch: Any) -> None:
        async for update in watch:
            if update.status == health_pb2.HealthCheckResponse.SERVING:
                watch.cancel()
                return

    async def start(self) -> None:
        options = self.options
        try:
            clip = await self._spawn("clip_service", ["--models", options.models])
            if options.lvlm_url:
                lvlm_args = ["--backend", "openai", "--openai-url", options.lvlm_url,
                             "--openai-model", options.lvlm_model]
            else:
                lvlm_args = ["--backend", "transformers", "--models", options.models]
            lvlm = await self._spawn("lvlm_service", lvlm_args)
            clip_port = await clip.port
            context = await self._spawn("context_service", ["--clip-address", f"127.0.0.1:{clip_port}"])
            addresses = [f"127.0.0.1:{await s.port}" for s in (clip, context, lvlm)]
            orchestrator = await self._spawn(
                "orchestrator",
                ["--clip-address", addresses[0], "--context-address", addresses[1], "--lvlm-address", addresses[2]],
                port=options.orchestrator_port,
            )
            await orchestrator.port
            await asyncio.gather(*(self._until_serving(s) for s in self.services.values()))
        except BaseException:
            await self.stop()
            raise

    async def stop(self, grace_seconds: float = 30.0) -> None:
        """SIGTERM every service (they drain), then wait; kill what does not exit in time."""
        for service in reversed(list(self.services.values())):
            if service.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    service.process.send_signal(signal.SIGTERM)
        for service in self.services.values():
            try:
                await asyncio.wait_for(service.process.wait(), grace_seconds)
            except TimeoutError:
                service.process.kill()
                await service.process.wait()
            if service.reader is not None:
                await service.reader
            if service.log_file is not None:
                service.log_file.close()
            if not service.port.done():
                service.port.cancel()
