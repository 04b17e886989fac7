"""Reading a Service's endpoints from its EndpointSlices (the API's JSON) and kubernetes:/// targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common import discovery
from services.common.discovery import KubernetesTarget, endpoint_addresses, parse_target


def slice_(endpoints: list[dict[str, Any]], port: int = 50053, name: str = "grpc",
           address_type: str = "IPv4") -> dict[str, Any]:
    return {"addressType": address_type, "ports": [{"name": name, "port": port}], "endpoints": endpoints}


def endpoint(ip: str, **conditions: bool) -> dict[str, Any]:
    return {"addresses": [ip], "conditions": conditions}


def test_ready_endpoints_take_calls_and_terminating_ones_do_not() -> None:
    slices = [slice_([endpoint("10.0.0.1", ready=True), endpoint("10.0.0.2", ready=False, terminating=True),
                      endpoint("10.0.0.3", ready=False), endpoint("10.0.0.4")]),  # unset ready counts as ready
              slice_([endpoint("10.0.1.1", ready=True, serving=True, terminating=True)])]  # serving but leaving
    usable, terminating = endpoint_addresses(slices, "grpc")
    assert usable == {"10.0.0.1:50053", "10.0.0.4:50053"}
    assert terminating == {"10.0.0.2:50053", "10.0.1.1:50053"}


def test_the_port_is_found_by_name_or_number_per_slice() -> None:
    slices = [slice_([endpoint("10.0.0.1")], port=8000), slice_([endpoint("10.0.0.2")], port=9000, name="http")]
    assert endpoint_addresses(slices, "grpc")[0] == {"10.0.0.1:8000"}
    assert endpoint_addresses(slices, "9000")[0] == {"10.0.0.2:9000"}
    assert endpoint_addresses(slices, "metrics") == (set(), set())


def test_ipv6_endpoints_are_bracketed_and_fqdn_slices_skipped() -> None:
    slices = [slice_([endpoint("fd00::5")], address_type="IPv6"),
              slice_([endpoint("pod.example")], address_type="FQDN")]
    assert endpoint_addresses(slices, "grpc")[0] == {"[fd00::5]:50053"}


def test_an_empty_or_missing_endpoint_list_means_no_endpoints() -> None:
    assert endpoint_addresses([{"addressType": "IPv4", "ports": [{"name": "grpc", "port": 1}], "endpoints": None}],
                              "grpc") == (set(), set())


def test_kubernetes_targets_name_service_namespace_and_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery, "NAMESPACE_FILE", tmp_path / "none")  # not in a pod
    assert parse_target("kubernetes:///lvlm.prod:grpc") == KubernetesTarget("lvlm", "prod", "grpc")
    assert parse_target("kubernetes:///lvlm.prod.svc.cluster.local:50053") == KubernetesTarget("lvlm", "prod", "50053")
    assert parse_target("kubernetes:///lvlm:grpc") == KubernetesTarget("lvlm", "default", "grpc")  # not in a pod
    assert parse_target("dns:///lvlm:50053") is None and parse_target("10.0.0.1:50053") is None
    (tmp_path / "namespace").write_text("vms\n")  # in a pod: its own namespace
    monkeypatch.setattr(discovery, "NAMESPACE_FILE", tmp_path / "namespace")
    assert parse_target("kubernetes:///lvlm:grpc") == KubernetesTarget("lvlm", "vms", "grpc")


@pytest.mark.parametrize("address", ["kubernetes:///lvlm", "kubernetes:///:grpc", "kubernetes:///lvlm:"])
def test_an_incomplete_kubernetes_target_says_how_to_write_one(address: str) -> None:
    with pytest.raises(ValueError, match=r"SERVICE\[\.NAMESPACE\]:PORT"):
        parse_target(address)
