"""Servers ask old client connections to reconnect (so long-lived clients spread over replicas that
came later), without cutting calls in progress."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc

from services.common.config import ServerSettings
from services.common.server import ServiceSpec, start_server

SERVICE = "anyanomaly.test.Peers"


def _identity(data: bytes) -> bytes:
    return data


async def test_an_old_connection_is_replaced_and_its_stream_goes_on() -> None:
    released = asyncio.Event()

    async def peer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return context.peer().encode()

    async def slow(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        await released.wait()
        yield b"still here"

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
            "Peer": grpc.unary_unary_rpc_method_handler(peer, _identity, _identity),
            "Slow": grpc.unary_stream_rpc_method_handler(slow, _identity, _identity),
        })])

    settings = ServerSettings(host="127.0.0.1", port=0, log_format="text", grace_seconds=1.0,
                              max_connection_age_seconds=1.0)
    running = await start_server(ServiceSpec("peers", [SERVICE], register), settings)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            ask = channel.unary_unary(f"/{SERVICE}/Peer", _identity, _identity)
            stream = channel.unary_stream(f"/{SERVICE}/Slow", _identity, _identity)(b"")
            first = await ask(b"")
            deadline = time.monotonic() + 30
            while (now := await ask(b"")) == first:  # the client's port changes once it reconnected
                assert time.monotonic() < deadline, "the connection was never aged out"
                await asyncio.sleep(0.1)
            assert now != first
            released.set()
            assert await stream.read() == b"still here"  # the call begun on the old connection finished
    finally:
        await running.shutdown(1.0)
