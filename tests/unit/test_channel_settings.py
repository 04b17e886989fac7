"""Channel and server settings that must agree with each other."""

from __future__ import annotations

import json

import pytest

from services.clip_service import config as clip_config
from services.common.clients import IDEMPOTENT_METHODS, MIN_KEEPALIVE_SECONDS, channel_options, channel_target
from services.common.server import server_options


@pytest.mark.parametrize("server_keepalive", [10.0, 30.0, 300.0])
@pytest.mark.parametrize("client_keepalive", [MIN_KEEPALIVE_SECONDS, 30.0, 300.0])
def test_every_server_accepts_the_keepalive_pings_any_allowed_client_sends(
    server_keepalive: float, client_keepalive: float
) -> None:
    """A server hangs up ("too many pings") on a client that pings more often than it allows;
    whatever each side's --keepalive-seconds, the pings must be accepted."""
    client = dict(channel_options(64, client_keepalive))
    server = dict(server_options(64, server_keepalive))
    assert client["grpc.keepalive_time_ms"] >= server["grpc.http2.min_recv_ping_interval_without_data_ms"]
    assert client["grpc.http2.max_pings_without_data"] == server["grpc.http2.max_pings_without_data"] == 0
    assert server["grpc.keepalive_permit_without_calls"] == 1


def test_a_keepalive_below_what_servers_accept_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        clip_config.load(["--keepalive-seconds", "2"], env={})
    assert "2 is below the smallest allowed value, 10" in capsys.readouterr().err


def test_retries_are_declared_per_idempotent_method_with_a_retry_buffer_for_big_requests() -> None:
    options = dict(channel_options(64))
    config = json.loads(options["grpc.service_config"])
    names = [name for entry in config["methodConfig"] for name in entry["name"]]
    assert all(set(name) == {"service", "method"} for name in names)  # no catch-all entry
    assert {(n["service"], n["method"]) for n in names} == {
        (service, method) for service, methods in IDEMPOTENT_METHODS.items() for method in methods}
    assert options["grpc.per_rpc_retry_buffer_size"] == options["grpc.max_send_message_length"]
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["retryThrottling"]["maxTokens"] > 0  # retries at several hops cannot multiply without end


def test_endpoint_lists_become_one_balanced_target() -> None:
    assert channel_target("clip:50051") == "clip:50051"
    assert channel_target("dns:///clip-headless:50051") == "dns:///clip-headless:50051"
    assert channel_target("10.0.0.1:1, 10.0.0.2:2") == "ipv4:10.0.0.1:1,10.0.0.2:2"
    assert channel_target("[::1]:1,[fe80::2]:2") == "ipv6:[::1]:1,[fe80::2]:2"
    with pytest.raises(ValueError, match=r"'clip-0' .* is not an IP address; .*dns:///name:port"):
        channel_target("clip-0:7,127.0.0.2:8")  # resolved once, it would go stale when the pod moves
    with pytest.raises(ValueError, match="not ip:port"):
        channel_target("10.0.0.1,10.0.0.2:2")
    with pytest.raises(ValueError, match="mixes IPv4 and IPv6"):
        channel_target("10.0.0.1:1,[::1]:2")
