"""The embedded single-machine stack: the four services as child processes on this
machine, each started through its own entry point (`python -m services.<name>`).

Used by `anyanomaly serve` and by `anyanomaly detect` / `eval` without `--address`.
Each service picks its port (port 0) and writes it to a port file; readiness is the
standard gRPC health status, watched (not polled) until SERVING.

The children never outlive this process: each runs in a process group of its own (stopped
as a group, grandchildren included; a terminal's Ctrl-C reaches only the launcher, which
stops them in order) and is told this process's id (`--parent-pid`), so the kernel kills it
when this process dies, even by SIGKILL (services/common/lifeline.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.clients import open_channel
from services.common.config import environment

START_TIMEOUT_SECONDS = 600.0  # the default models may be loaded from a cold disk
PORT_FILE_POLL_SECONDS = 0.05


class StackError(RuntimeError):
    """A service of the embedded stack could not start or died; the message says which and why."""

    def __init__(self, message: str, service: str = "") -> None:
        super().__init__(message)
        self.service = service


def dial_host(bind_host: str) -> str:
    """The address to reach a service bound to `bind_host` from this machine."""
    if bind_host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bind_host in ("::", "[::]"):
        return "[::1]"
    return f"[{bind_host}]" if ":" in bind_host and not bind_host.startswith("[") else bind_host


@dataclass(frozen=True)
class StackOptions:
    models: str = "default"  # "default" or "tiny"
    lvlm_url: str = ""  # an OpenAI-compatible server (e.g. vllm serve) instead of a local model
    lvlm_model: str = ""
    host: str = "127.0.0.1"  # the orchestrator's; the other services always bind 127.0.0.1
    orchestrator_port: int = 0
    log_dir: Path | None = None  # service logs; None keeps only the last lines for error messages
    profile: str = "default"  # the services' profile for requests that name none
    data_dir: Path | None = None  # the orchestrator's jobs, monitors and events (None: none kept)
    orchestrator_args: tuple[str, ...] = ()  # more of its flags (tokens, media roots, allowed hosts, TLS)


@dataclass
class ServiceProcess:
    name: str
    process: asyncio.subprocess.Process
    port_file: Path
    host: str
    log_file: IO[str] | None
    last_lines: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    reader: asyncio.Task[None] | None = None
    port: int = 0
    health_port: int = 0  # a plaintext health-only port, where the service port speaks TLS

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def last_error(self) -> str:
        for line in reversed(self.last_lines):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
                return str(entry.get("msg"))
        return self.last_lines[-1] if self.last_lines else "no output"

    def exit_reason(self) -> str:
        code = self.process.returncode
        if code is not None and code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}: {self.last_error()}"

    async def pump(self) -> None:
        """Keep the service's last log lines (for error messages) and copy them to the log file."""
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.last_lines.append(line)
            if self.log_file is not None:
                self.log_file.write(line + "\n")
                self.log_file.flush()

    async def listening(self) -> None:
        """Wait for the service's port file (written once it listens); fail if it exits first."""
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_SECONDS
        while not self.port_file.exists():
            if self.process.returncode is not None:
                await self._drained()
                raise StackError(f"{self.name} exited before listening ({self.exit_reason()})", self.name)
            if asyncio.get_running_loop().time() > deadline:
                raise StackError(f"{self.name} did not listen within {START_TIMEOUT_SECONDS:g} s", self.name)
            await asyncio.sleep(PORT_FILE_POLL_SECONDS)
        self.port = int(self.port_file.read_text())

    async def _drained(self) -> None:
        if self.reader is not None:
            await self.reader


class EmbeddedStack:
    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.services: dict[str, ServiceProcess] = {}
        self._ports = Path(tempfile.mkdtemp(prefix="anyanomaly-ports-"))

    @property
    def orchestrator_address(self) -> str:
        return self.services["orchestrator"].address

    def addresses(self) -> dict[str, str]:
        return {name: service.address for name, service in self.services.items()}

    async def exit_reason(self, name: str, within: float = 2.0) -> str:
        """How the service `name` ended ("killed by SIGKILL", ...), waiting up to `within` seconds
        for an exit to be noticed; "" while it runs."""
        service = self.services[name]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(service.process.wait()), within)
        return service.exit_reason() if service.process.returncode is not None else ""

    async def _spawn(self, name: str, args: Sequence[str], port: int = 0, host: str = "127.0.0.1",
                     health_port: int = 0) -> ServiceProcess:
        log_file = None
        if self.options.log_dir is not None:
            self.options.log_dir.mkdir(parents=True, exist_ok=True)
            log_file = (self.options.log_dir / f"{name}.log").open("a")
        port_file = self._ports / f"{name}.port"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"services.{name}", "--host", host, "--port", str(port),
            "--port-file", str(port_file), "--parent-pid", str(os.getpid()),
            "--log-format", "json", "--profile", self.options.profile,
            *(["--health-port", str(health_port)] if health_port else []), *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        service = ServiceProcess(name, process, port_file, dial_host(host), log_file, health_port=health_port)
        service.reader = asyncio.create_task(service.pump())
        self.services[name] = service
        return service

    async def _until_serving(self, service: ServiceProcess) -> None:
        """Watch the service's health until SERVING; fail if the process exits first."""
        address = f"{service.host}:{service.health_port}" if service.health_port else service.address
        async with open_channel(address, default_timeout=START_TIMEOUT_SECONDS) as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=START_TIMEOUT_SECONDS,
                               wait_for_ready=True)
            serving = asyncio.ensure_future(self._first_serving(watch))
            exited = asyncio.ensure_future(service.process.wait())
            done, _ = await asyncio.wait({serving, exited}, return_when=asyncio.FIRST_COMPLETED)
            if serving not in done:
                serving.cancel()
                watch.cancel()
                await service._drained()
                raise StackError(f"{service.name} failed to start ({service.exit_reason()})", service.name)
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
            await clip.listening()
            context = await self._spawn("context_service", ["--clip-address", clip.address])
            await asyncio.gather(context.listening(), lvlm.listening())
            data_dir = ["--data-dir", str(options.data_dir)] if options.data_dir else []
            orchestrator = await self._spawn(
                "orchestrator",
                ["--clip-address", clip.address, "--context-address", context.address, "--lvlm-address",
                 lvlm.address, *data_dir, *options.orchestrator_args],
                port=options.orchestrator_port, host=options.host,
                # a TLS port needs the caller's CA; the launcher watches readiness on a plaintext one
                # (health only: SERVING or NOT_SERVING)
                health_port=free_port(options.host) if serves_tls(options.orchestrator_args) else 0,
            )
            await orchestrator.listening()
            await asyncio.gather(*(self._until_serving(s) for s in self.services.values()))
        except BaseException:
            await self.stop()
            raise

    async def stop(self, grace_seconds: float = 30.0) -> None:
        """SIGTERM every service's process group (they drain), then wait; kill what does not
        exit in time. Safe to call more than once, and when a service has died already."""
        for service in reversed(list(self.services.values())):
            if service.process.returncode is None:
                _signal_group(service.process, signal.SIGTERM)
        for service in self.services.values():
            try:
                await asyncio.wait_for(service.process.wait(), grace_seconds)
            except TimeoutError:
                _signal_group(service.process, signal.SIGKILL)
                await service.process.wait()
            await service._drained()
            if service.log_file is not None and not service.log_file.closed:
                service.log_file.close()
        for port_file in self._ports.glob("*.port"):
            port_file.unlink()
        with contextlib.suppress(OSError):
            self._ports.rmdir()


def serves_tls(orchestrator_args: Sequence[str]) -> bool:
    return "--tls-cert" in orchestrator_args or bool(environment("ANYANOMALY_ORCHESTRATOR_TLS_CERT"))


def free_port(host: str) -> int:
    """A port free on `host` now (another process may take it before the service binds it; the
    service then fails to start, with a message that says so)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.bind((host.strip("[]"), 0))
        return int(probe.getsockname()[1])


def _signal_group(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    """Signal the service and everything it started (its own process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
