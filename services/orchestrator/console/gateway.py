"""The web console and its JSON/SSE gateway, on the orchestrator's own HTTP port (--http-port).

The gateway is generated from the contract: POST /api/<Service>/<Method> with the request as JSON
(proto field names) calls that method of the public API (Orchestrator, Monitors, Events, Jobs)
on this orchestrator's gRPC port, as any client would, forwarding the caller's
`Authorization: Bearer <token>`: the same validation, limits and tokens apply. A unary method
answers JSON; a server-streaming one (Detect, WatchEvents, WatchJob) answers text/event-stream,
one `data:` line per message, then `event: end` (or `event: error` with the status). Client
streams (DetectStream) are not offered. GET / is the console (one static page, no build step);
GET /console/media lists the videos and frame folders under --media-roots for its picker.

Other web pages must not drive it through the browser: a POST must be `application/json` (a
cross-site one then needs a CORS preflight, which is never granted), an `Origin` must be this
console's, and the `Host` must be one this console answers to (a DNS-rebinding page's is not).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor

from anyanomaly.v1 import events_pb2, jobs_pb2, monitors_pb2, orchestrator_pb2
from services.common.errors import ServiceError, StartupError
from services.common.urls import is_loopback_host

log = logging.getLogger("anyanomaly.orchestrator.console")
PAGE = Path(__file__).with_name("index.html")
PUBLIC_FILES = (orchestrator_pb2.DESCRIPTOR, monitors_pb2.DESCRIPTOR, events_pb2.DESCRIPTOR, jobs_pb2.DESCRIPTOR)
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
MAX_MEDIA_ITEMS = 500
HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.OUT_OF_RANGE: 400,
               grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
               grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.ABORTED: 409,
               grpc.StatusCode.FAILED_PRECONDITION: 409, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
               grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.UNAVAILABLE: 503,
               grpc.StatusCode.DEADLINE_EXCEEDED: 504}
PING_SECONDS = 15.0  # an idle stream says it is alive (proxies drop silent connections)
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
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
    """Video files and folders of images under the roots (at most MAX_MEDIA_ITEMS; unreadable
    folders are passed over, links to folders are not followed)."""
    items: list[dict[str, str]] = []
    for root in roots:
        for folder, folders, files in os.walk(root, onerror=lambda error: None):
            folders.sort()
            if any(Path(name).suffix.lower() in IMAGE_SUFFIXES for name in files):
                items.append({"path": folder, "kind": "frame_folder"})
            items += [{"path": str(Path(folder) / name), "kind": "path"} for name in sorted(files)
                      if Path(name).suffix.lower() in VIDEO_SUFFIXES]
            if len(items) >= MAX_MEDIA_ITEMS:
                return items[:MAX_MEDIA_ITEMS]
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
    def __init__(self, grpc_address: str, media_roots: list[Path], authorize: Authorize | None,
                 hosts: tuple[str, ...], max_message_mb: int = 64) -> None:
        limit = max_message_mb * 1024 * 1024  # evidence and include_images carry pictures
        self._channel = grpc.aio.insecure_channel(grpc_address, options=[
            ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)])
        self._roots = media_roots
        self._authorize = authorize
        self._hosts = hosts  # the names this console answers to; empty: any (a wildcard bind)

    async def close(self) -> None:
        await self._channel.close()

    @web.middleware
    async def same_site_only(self, request: web.Request, handler: Any) -> web.StreamResponse:
        host = request.host.lower()
        if self._hosts and host not in self._hosts:
            return web.json_response({"code": "PERMISSION_DENIED", "message": f"this console does not answer to "
                                      f"{host!r}; open it as http://{self._hosts[0]}/"}, status=403)
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() not in (f"http://{host}", f"https://{host}"):
            return web.json_response({"code": "PERMISSION_DENIED", "message": "requests from other web pages are "
                                      "refused"}, status=403)
        if request.method == "POST" and request.content_type != "application/json":
            return web.json_response({"code": "INVALID_ARGUMENT", "message": "send the request as "
                                      "Content-Type: application/json"}, status=415)
        response: web.StreamResponse = await handler(request)
        return response

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024, middlewares=[self.same_site_only])
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
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        updates: asyncio.Queue[Any] = asyncio.Queue(maxsize=16)

        async def pump() -> None:  # the call's messages, then None; an error is handed over as it is
            try:
                async for update in call:
                    await updates.put(update)
                await updates.put(None)
            except grpc.aio.AioRpcError as error:
                await updates.put(error)

        reader = asyncio.create_task(pump())
        try:
            while True:
                try:
                    update = await asyncio.wait_for(updates.get(), PING_SECONDS)
                except TimeoutError:
                    await response.write(b": ping\n\n")
                    continue
                if update is None:
                    await response.write(b"event: end\ndata: {}\n\n")
                    break
                if isinstance(update, grpc.aio.AioRpcError):
                    payload = json.dumps({"code": update.code().name,
                                          "message": update.details() or update.code().name})
                    await response.write(f"event: error\ndata: {payload}\n\n".encode())
                    break
                await response.write(f"data: {_json(update)}\n\n".encode())
        finally:  # done, or the browser went away (the handler is cancelled): end the call too
            call.cancel()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        return response


class Console:
    """The HTTP server of the console, started and stopped with the orchestrator."""

    def __init__(self, host: str, port: int, grpc_address: str, media_roots: list[Path],
                 authorize: Authorize | None, max_message_mb: int = 64) -> None:
        self._host, self._port = host, port
        wildcard = host in ("0.0.0.0", "::", "")
        names = () if wildcard else tuple(dict.fromkeys(
            [f"[{host}]" if ":" in host else host, *(LOOPBACK_NAMES if is_loopback_host(host) else ())]))
        self._gateway = Gateway(grpc_address, media_roots, authorize, tuple(f"{n}:{port}" for n in names),
                                max_message_mb)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        # Cancelled when the browser goes away, so an idle stream's gRPC call ends with it.
        self._runner = web.AppRunner(self._gateway.app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise StartupError(f"cannot serve the console on {self._host}:{self._port}: {exc.strerror or exc}; "
                               "choose another --http-port") from None
        if not is_loopback_host(self._host):
            log.warning("serving the web console WITHOUT TLS on %s:%s: tokens typed into it cross the network in "
                        "the clear; bind 127.0.0.1 and put an HTTPS proxy in front", self._host, self._port)
        log.info("console", extra={"http_port": self._port})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self._gateway.close()
