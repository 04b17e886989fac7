"""Channel and server settings that must agree with each other."""

from __future__ import annotations

import json

import pytest

from services.common.clients import IDEMPOTENT_METHODS, channel_options, channel_target
from services.common.server import server_options


@pytest.mark.parametrize("keepalive", [1.0, 30.0, 300.0])
def test_the_servers_accept_the_keepalive_pings_their_clients_send(keepalive: float) -> None:
    """A server hangs up ("too many pings") on a client that pings more often than it allows;
    the interval a service's channels ping at must be one its peers accept."""
    client = dict(channel_options(64, keepalive))
    server = dict(server_options(64, keepalive))
    assert client["grpc.keepalive_time_ms"] >= server["grpc.http2.min_recv_ping_interval_without_data_ms"]
    assert client["grpc.http2.max_pings_without_data"] == server["grpc.http2.max_pings_without_data"] == 0
    assert server["grpc.keepalive_permit_without_calls"] == 1


def test_retries_are_declared_per_idempotent_method_with_a_retry_buffer_for_big_requests() -> None:
    options = dict(channel_options(64))
    config = json.loads(options["grpc.service_config"])
    names = [name for entry in config["methodConfig"] for name in entry["name"]]
    assert all(set(name) == {"service", "method"} for name in names)  # no catch-all entry
    assert {(n["service"], n["method"]) for n in names} == {
        (service, method) for service, methods in IDEMPOTENT_METHODS.items() for method in methods}
    assert options["grpc.per_rpc_retry_buffer_size"] == options["grpc.max_send_message_length"]
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]


def test_endpoint_lists_become_one_balanced_target() -> None:
    assert channel_target("clip:50051") == "clip:50051"
    assert channel_target("dns:///clip-headless:50051") == "dns:///clip-headless:50051"
    assert channel_target("10.0.0.1:1, 10.0.0.2:2") == "ipv4:10.0.0.1:1,10.0.0.2:2"
    assert channel_target("[::1]:1,[fe80::2]:2") == "ipv6:[::1]:1,[fe80::2]:2"
    assert channel_target("localhost:7,127.0.0.2:8") == "ipv4:127.0.0.1:7,127.0.0.2:8"
    with pytest.raises(ValueError, match="not host:port"):
        channel_target("10.0.0.1,10.0.0.2:2")
    with pytest.raises(ValueError, match="mixes IPv4 and IPv6"):
        channel_target("10.0.0.1:1,[::1]:2")
