"""Bearer tokens for the orchestrator's public API.

A tokens file holds one line per token: its name, its scopes and the SHA-256 of the token, never
the token itself, e.g.

    # name      scopes               hash
    vms-1       read,monitors        sha256:3f1c...
    analyst     detect,read,jobs     sha256:9a0b...

(`anyanomaly token new` makes a token and its line.) Several lines may grant the same scopes, so
a token is rotated by adding the new one, moving the clients over, then removing the old one; the
file is re-read when it changes (a mounted Kubernetes Secret), and a file that goes away lets
nobody in. A call carries `authorization: Bearer <token>`: without a known token it is refused
UNAUTHENTICATED, without the scope its method needs PERMISSION_DENIED. Health and reflection need no token (probes, and
the contract that ships with the client). Tokens are random and long, so one SHA-256 suffices;
they are compared in constant time, and neither they nor their hashes are ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import PermissionDenied, StartupError, Unauthenticated

log = logging.getLogger(__name__)

TOKEN_PREFIX = "aat_"  # recognisable by secret scanners
AUTHORIZATION_HEADER = "authorization"
ALL_SCOPES = "*"

# The scope each method of the public API needs; a method missing here is refused to all but "*".
METHOD_SCOPES: dict[str, str] = {
    "/anyanomaly.v1.Orchestrator/Detect": "detect",
    "/anyanomaly.v1.Orchestrator/DetectStream": "detect",
    "/anyanomaly.v1.Events/ListEvents": "read",
    "/anyanomaly.v1.Events/WatchEvents": "read",
    "/anyanomaly.v1.Events/GetEvidence": "read",
    "/anyanomaly.v1.Monitors/GetMonitor": "read",
    "/anyanomaly.v1.Monitors/ListMonitors": "read",
    "/anyanomaly.v1.Jobs/GetJob": "read",
    "/anyanomaly.v1.Jobs/ListJobs": "read",
    "/anyanomaly.v1.Jobs/WatchJob": "read",
    "/anyanomaly.v1.Monitors/CreateMonitor": "monitors",
    "/anyanomaly.v1.Monitors/UpdateMonitor": "monitors",
    "/anyanomaly.v1.Monitors/DeleteMonitor": "monitors",
    "/anyanomaly.v1.Monitors/PauseMonitor": "monitors",
    "/anyanomaly.v1.Monitors/ResumeMonitor": "monitors",
    "/anyanomaly.v1.Jobs/SubmitJob": "jobs",
    "/anyanomaly.v1.Jobs/CancelJob": "jobs",
}
SCOPES = ("detect", "read", "monitors", "jobs")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Grant:
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return ALL_SCOPES in self.scopes or scope in self.scopes


def parse_tokens(text: str, source: str) -> dict[str, Grant]:
    """{hash: grant} from a tokens file's text; ValueError naming the line that is wrong."""
    grants: dict[str, Grant] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{source} line {number}"
        if len(words) != 3:
            raise ValueError(f"{where}: write NAME SCOPES sha256:HEX (scopes: {','.join(SCOPES)} or *)")
        name, scope_list, digest = words
        scopes = frozenset(scope_list.split(","))
        unknown = scopes - {*SCOPES, ALL_SCOPES}
        if unknown:
            raise ValueError(f"{where}: unknown scope {sorted(unknown)[0]!r}; use {', '.join(SCOPES)} or *")
        hex_part = digest.removeprefix("sha256:")
        if not digest.startswith("sha256:") or len(hex_part) != 64 or set(hex_part) - set("0123456789abcdef"):
            raise ValueError(f"{where}: the third word must be sha256: and 64 hex digits (anyanomaly token new "
                             "prints the line); never the token itself")
        if digest in grants:
            raise ValueError(f"{where}: the same token as {grants[digest].name!r}")
        grants[digest] = Grant(name, scopes)
    return grants


class TokenFile:
    """The grants of a tokens file, re-read when the file changes (a bad new version is logged
    and the previous grants stay)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._stamp = self._version()
        try:
            self._grants = parse_tokens(self.path.read_text(), str(self.path))
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot use the tokens file: {exc}") from None
        if not self._grants:
            raise StartupError(f"the tokens file {self.path} grants no token: every call would be refused; "
                               "add a line (anyanomaly token new) or leave --tokens-file unset")
        log.info("tokens loaded", extra={"tokens": len(self._grants)})

    def _version(self) -> tuple[int, ...]:
        try:
            stat = self.path.stat()
        except OSError:
            return ()
        return (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)

    def grants(self) -> Mapping[str, Grant]:
        stamp = self._version()
        if stamp != self._stamp:
            self._stamp = stamp
            if not stamp:  # deleted or unreadable: nobody is let in (fail closed)
                log.error("the tokens file %s is gone; every call is refused until it is back", self.path)
                self._grants = {}
                return self._grants
            try:
                self._grants = parse_tokens(self.path.read_text(), str(self.path))
                log.info("tokens reloaded", extra={"tokens": len(self._grants)})
            except (OSError, ValueError) as exc:
                log.error("the tokens file changed but cannot be used; the previous tokens stay valid: %s", exc)
        return self._grants

    def authorize(self, method: str, metadata: Sequence[tuple[str, str | bytes]]) -> str:
        """The caller's name when it may call `method`; else Unauthenticated or PermissionDenied."""
        presented = next((str(v) for k, v in metadata if k == AUTHORIZATION_HEADER), "")
        scheme, _, token = presented.partition(" ")
        if not presented:
            raise Unauthenticated("this orchestrator needs a token: send the metadata 'authorization: Bearer "
                                  "<token>' (anyanomaly commands: --token-file FILE or ANYANOMALY_TOKEN)")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the authorization metadata must be 'Bearer <token>'")
        digest = token_hash(token.strip())
        grant = next((g for known, g in self.grants().items() if hmac.compare_digest(known, digest)), None)
        if grant is None:
            raise Unauthenticated("the token is not known here (mistyped, or revoked)")
        scope = METHOD_SCOPES.get(method, ALL_SCOPES)
        if not grant.allows(scope):
            has = ",".join(sorted(grant.scopes)) or "none"
            called = method.rsplit(".", 1)[-1].replace("/", ".")  # "Monitors.DeleteMonitor"
            raise PermissionDenied(f"token {grant.name!r} may not call {called}: that needs the scope {scope!r} "
                                   f"(it has {has})")
        return grant.name
