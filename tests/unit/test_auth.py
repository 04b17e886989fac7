"""The tokens file and the scope of every public method."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from anyanomaly.v1 import events_pb2, jobs_pb2, monitors_pb2, orchestrator_pb2

from services.common.auth import METHOD_SCOPES, SCOPES, Grant, TokenFile, new_token, parse_tokens, token_hash
from services.common.errors import StartupError

HASH = token_hash("aat_example")


def test_every_public_method_has_a_scope() -> None:
    """A method added to the contract must be given a scope here, or only * may call it."""
    methods = {f"/{service.full_name}/{method.name}"
               for module in (orchestrator_pb2, events_pb2, jobs_pb2, monitors_pb2)
               for service in module.DESCRIPTOR.services_by_name.values() for method in service.methods}
    assert set(METHOD_SCOPES) == methods
    assert set(METHOD_SCOPES.values()) == set(SCOPES)


def test_a_tokens_file_maps_hashes_to_names_and_scopes() -> None:
    other = token_hash("aat_other")
    grants = parse_tokens(f"# comment\n\nvms read,monitors {HASH}  # the VMS\nroot * {other}\n", "tokens")
    assert grants == {HASH: Grant("vms", frozenset({"read", "monitors"})), other: Grant("root", frozenset({"*"}))}
    assert grants[other].allows("jobs") and not grants[HASH].allows("jobs")


@pytest.mark.parametrize(("line", "problem"), [
    ("vms read", "write NAME SCOPES sha256:HEX"),
    (f"vms read,admin {HASH}", "unknown scope 'admin'"),
    ("vms read aat_the-token-itself", "never the token itself"),
    ("vms read sha256:abc", "64 hex digits"),
    (f"vms read {HASH}\nbackup read {HASH}", "line 2: the same token as 'vms'"),
])
def test_a_wrong_line_is_named_with_what_to_write(line: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_tokens(line, "tokens")


def test_tokens_are_long_random_and_recognisable() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100 and all(t.startswith("aat_") and len(t) >= 40 for t in tokens)
    assert token_hash("aat_x") == "sha256:" + hashlib.sha256(b"aat_x").hexdigest()


def test_a_tokens_file_that_cannot_work_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"cannot use the tokens file: .*none"):
        TokenFile(str(tmp_path / "none"))
    (tmp_path / "empty").write_text("# nobody yet\n")
    with pytest.raises(StartupError, match="grants no token: every call would be refused"):
        TokenFile(str(tmp_path / "empty"))
    (tmp_path / "bad").write_text("vms read\n")
    with pytest.raises(StartupError, match="line 1: write NAME SCOPES"):
        TokenFile(str(tmp_path / "bad"))
