"""The auth tokens file and the scope of every public method."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest

from anyanomaly.v1 import events_pb2, jobs_pb2, monitors_pb2, orchestrator_pb2
from services.common.auth import SCOPES, Grant, Grants, TokenFile, method_scope, new_token, parse_grants, token_hash
from services.common.errors import PermissionDenied, StartupError, Unauthenticated

HASH = token_hash("aat_example")


def test_every_public_method_needs_a_scope_of_its_service() -> None:
    """A service added to the contract must be given a scope, or only admin may call it."""
    scopes = {module: {method_scope(f"/{service.full_name}/{method.name}")
                       for service in module.DESCRIPTOR.services_by_name.values() for method in service.methods}
              for module in (orchestrator_pb2, events_pb2, jobs_pb2, monitors_pb2)}
    assert scopes == {orchestrator_pb2: {"detect"}, events_pb2: {"events"}, jobs_pb2: {"jobs"},
                      monitors_pb2: {"monitors"}}
    assert method_scope("/anyanomaly.v1.Admin/Anything") == "admin" == SCOPES[-1]


def test_a_tokens_file_maps_hashes_and_certificates_to_names_and_scopes() -> None:
    other = token_hash("aat_other")
    grants = parse_grants(f"# comment\n\n{HASH} events,monitors vms  # the VMS\n{other} admin\n"
                          "cert:vms-2.example.org events\n", "tokens")
    unnamed = "token-" + other.removeprefix("sha256:")[:8]
    assert grants == Grants({HASH: Grant("vms", frozenset({"events", "monitors"})),
                             other: Grant(unnamed, frozenset({"admin"}))},
                            {"vms-2.example.org": Grant("vms-2.example.org", frozenset({"events"}))})
    assert grants.tokens[other].allows("jobs") and not grants.tokens[HASH].allows("jobs")


@pytest.mark.parametrize(("line", "problem"), [
    ("events", "write 'sha256:HEX SCOPES"),
    (f"{HASH} events,read", "unknown scope 'read'"),
    ("aat_the-token-itself events", "never the token itself"),
    ("sha256:abc events", "64 hex digits"),
    (f"{HASH} events vms\n{HASH} events backup", "line 2: the same token as 'vms'"),
    ("cert:a events\ncert:A jobs", "line 2: the certificate identity 'a' is listed twice"),
])
def test_a_wrong_line_is_named_with_what_to_write(line: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_grants(line, "tokens")


def test_a_caller_may_hold_several_credentials_under_one_name() -> None:
    """Rotation: the old and the new token (and a certificate) count as one caller."""
    new = token_hash("aat_new")
    grants = parse_grants(f"{HASH} events vms\n{new} events vms\ncert:VMS.Site events vms\n", "tokens")
    assert {g.name for g in (*grants.tokens.values(), *grants.certificates.values())} == {"vms"}
    assert set(grants.certificates) == {"vms.site"}


def test_tokens_are_long_random_and_recognisable() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100 and all(t.startswith("aat_") and len(t) >= 40 for t in tokens)
    assert token_hash("aat_x") == "sha256:" + hashlib.sha256(b"aat_x").hexdigest()


def test_a_tokens_file_that_cannot_work_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"cannot use the auth tokens file: .*none"):
        TokenFile(str(tmp_path / "none"), certificates_verified=False)
    (tmp_path / "empty").write_text("# nobody yet\n")
    with pytest.raises(StartupError, match="grants nothing: every call would be refused"):
        TokenFile(str(tmp_path / "empty"), certificates_verified=False)
    (tmp_path / "bad").write_text("vms events\n")
    with pytest.raises(StartupError, match="line 1: the first word must be sha256:"):
        TokenFile(str(tmp_path / "bad"), certificates_verified=False)
    (tmp_path / "certs").write_text("cert:vms events\n")
    with pytest.raises(StartupError, match="cert: lines need --tls-client-ca"):
        TokenFile(str(tmp_path / "certs"), certificates_verified=False)


class Peer:
    """What the interceptor hands to authorize: grpc's metadata and auth context of a call."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = (), names: tuple[str, ...] = ()) -> None:
        self.metadata, self.names = metadata, names

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_common_name": [n.encode() for n in self.names[:1]],
                "x509_subject_alternative_name": [n.encode() for n in self.names[1:]]} if self.names else {}


def test_a_call_is_let_in_by_its_token_or_its_certificate_and_scoped(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{HASH} detect analyst\ncert:vms.site events vms\n")
    tokens = TokenFile(str(path), certificates_verified=True)
    detect, events = "/anyanomaly.v1.Orchestrator/Detect", "/anyanomaly.v1.Events/ListEvents"
    bearer: Any = Peer((("authorization", "Bearer aat_example"),))
    assert tokens.authorize(detect, bearer) == "analyst"
    assert tokens.authorize(events, Peer(names=("camera-7", "vms.site"))) == "vms"  # a SAN
    assert tokens.authorize(events, Peer(names=("VMS.Site",))) == "vms"  # DNS names ignore case
    with pytest.raises(PermissionDenied, match=re.escape(
            "'analyst' may not call Events.ListEvents: that needs the scope 'events' (it has detect)")):
        tokens.authorize(events, bearer)
    with pytest.raises(PermissionDenied, match=re.escape("'vms' may not call Orchestrator.Detect")):
        tokens.authorize(detect, Peer(names=("vms.site",)))
    for stranger in (Peer(), Peer(names=("other.site",))):
        with pytest.raises(Unauthenticated, match=r"needs a token.*or a client certificate listed"):
            tokens.authorize(detect, stranger)
    with pytest.raises(Unauthenticated, match="not known here"):  # a wrong token is not rescued by a certificate
        tokens.authorize(events, Peer((("authorization", "Bearer aat_wrong"),), ("vms.site",)))
