"""The web console and its JSON/SSE gateway, on the orchestrator's own HTTP port (--http-port).

The gateway is generated from the contract: POST /api/<Service>/<Method> with the request as JSON
(proto field names) calls that method of the public API (Orchestrator, Monitors, Events, Jobs)
on this orchestrator's gRPC port, as any client would, forwarding the caller's
`Authorization: Bearer <token>`: the same validation, limits and tokens apply. A unary method
answers JSON; a server-streaming one (Detect, WatchEvents, WatchJob) answers text/event-stream,
one `data:` line per message, then `event: end` (or `event: error` with the status). Client
streams (DetectStream) are not offered. GET / is the console (one static page, no build step);
GET /console/media lists the videos and frame folders under --media-roots for its picker.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor

from anyanomaly.v1 import events_pb2, jobs_pb2, monitors_pb2, orchestrator_pb2
from services.common.errors import ServiceError

log = logging.getLogger("anyanomaly.orchestrator.console")
PAGE = Path(__file__).with_name("index.html")
PUBLIC_FILES = (orchestrator_pb2.DESCRIPTOR, monitors_pb2.DESCRIPTOR, events_pb2.DESCRIPTOR, jobs_pb2.DESCRIPTOR)
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts"}
MAX_MEDIA_ITEMS = 500
HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
               grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
               grpc.StatusCode.FAILED_PRECONDITION: 409, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
               grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504}
Authorize = Callable[[str, str], None]  # (gRPC method path, Authorization header); raises ServiceError


def public_method(service: str, method: str) -> MethodDescriptor | None:
    for file in PUBLIC_FILES:
        found = file.services_by_name.get(service)
        if found is not None:
            return found.methods_by_name.get(method)
    return None


def _json(message: Any) -> str:
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True))


def _error(code: grpc.StatusCode, message: str) -> web.Response:
    return web.json_response({"code": code.name, "message": message}, status=HTTP_STATUS.get(code, 500))


def media_items(roots: list[Path]) -> list[dict[str, str]]:
    """Video files and folders of images under the roots (sorted, at most MAX_MEDIA_ITEMS)."""
    items: list[dict[str, str]] = []
    for root in roots:
        for path in sorted(root.rglob("*")):
            if len(items) >= MAX_MEDIA_ITEMS:
                return items
            if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
                items.append({"path": str(path), "kind": "path"})
            elif path.is_dir() and any(p.suffix.lower() in {".jpg", ".jpeg", ".png"} for p in path.iterdir()):
                items.append({"path": str(path), "kind": "frame_folder"})
    return items


class HttpCaller:
    """What TokenFile.authorize reads of a gRPC context, for an HTTP request (no certificates)."""

    def __init__(self, authorization: str) -> None:
        self._authorization = authorization

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", self._authorization),) if self._authorization else ()

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}


class Gateway:
    def __init__(self, grpc_address: str, media_roots: list[Path], authorize: Authorize | None) -> None:
        self._channel = grpc.aio.insecure_channel(grpc_address)
        self._roots = media_roots
        self._authorize = authorize

    async def close(self) -> None:
        await self._channel.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_get("/", self.page)
        app.router.add_get("/console/media", self.media)
        app.router.add_post("/api/{service}/{method}", self.call)
        return app

    async def page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGE, headers={"Cache-Control": "no-cache",
                                               "Content-Security-Policy": "default-src 'self' 'unsafe-inline' data:"})

    async def media(self, request: web.Request) -> web.Response:
        if self._authorize is not None:  # whoever may run detections may see what there is to detect on
            try:
                self._authorize("/anyanomaly.v1.Orchestrator/Detect", request.headers.get("Authorization", ""))
            except ServiceError as error:
                return _error(error.code, str(error))
        items = await asyncio.to_thread(media_items, self._roots)
        return web.json_response({"roots": [str(r) for r in self._roots], "items": items})

    async def call(self, request: web.Request) -> web.StreamResponse:
        service, name = request.match_info["service"], request.match_info["method"]
        method = public_method(service, name)
        if method is None or method.client_streaming:
            return _error(grpc.StatusCode.NOT_FOUND, f"no method {service}/{name} here; the gateway offers the "
                          "unary and server-streaming methods of Orchestrator, Monitors, Events and Jobs")
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        try:
            body = await request.text()
            message = json_format.Parse(body or "{}", request_class())
        except (json_format.ParseError, UnicodeDecodeError) as exc:
            return _error(grpc.StatusCode.INVALID_ARGUMENT, f"the body is not a {method.input_type.name} in JSON: "
                          f"{exc}")
        path = f"/{method.containing_service.full_name}/{method.name}"
        metadata = (("authorization", request.headers["Authorization"]),) if "Authorization" in request.headers \
            else ()
        if not method.server_streaming:
            call = self._channel.unary_unary(path, request_serializer=request_class.SerializeToString,
                                             response_deserializer=response_class.FromString)
            try:
                answer = await call(message, metadata=metadata, timeout=60)
            except grpc.aio.AioRpcError as error:
                return _error(error.code(), error.details() or error.code().name)
            return web.Response(text=_json(answer), content_type="application/json")
        return await self._stream(request, path, message, request_class, response_class, metadata)

    async def _stream(self, request: web.Request, path: str, message: Any, request_class: Any,
                      response_class: Any, metadata: tuple[tuple[str, str], ...]) -> web.StreamResponse:
        call = self._channel.unary_stream(path, request_serializer=request_class.SerializeToString,
                                          response_deserializer=response_class.FromString)(message, metadata=metadata)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            async for update in call:
                await response.write(f"data: {_json(update)}\n\n".encode())
            await response.write(b"event: end\ndata: {}\n\n")
        except grpc.aio.AioRpcError as error:
            payload = json.dumps({"code": error.code().name, "message": error.details() or error.code().name})
            await response.write(f"event: error\ndata: {payload}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):  # the browser went away: end the call too
            call.cancel()
            raise
        finally:
            call.cancel()
        return response


class Console:
    """The HTTP server of the console, started and stopped with the orchestrator."""

    def __init__(self, host: str, port: int, grpc_address: str, media_roots: list[Path],
                 authorize: Authorize | None) -> None:
        self._host, self._port = host, port
        self._gateway = Gateway(grpc_address, media_roots, authorize)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self._gateway.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            raise OSError(f"cannot bind the console on {self._host}:{self._port}: {exc}; choose another "
                          "--http-port") from exc
        log.info("console", extra={"http_port": self._port})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self._gateway.close()
