"""Who may call the orchestrator's public API: bearer tokens and client-certificate identities.

An auth tokens file (`--auth-tokens-file`) holds one credential per line: what the caller
presents, its scopes, and optionally a name for the access log and the per-token limits, e.g.

    # credential                 scopes            name (optional)
    sha256:3f1c...64 hex digits  events,monitors   vms-1
    sha256:9a0b...               detect,jobs       analyst
    cert:vms-2.example.org       events            # a client certificate (mutual TLS)

`sha256:HEX` is the SHA-256 of a bearer token, never the token itself (`anyanomaly token new`
makes a token and its line). `cert:IDENTITY` lets in a caller whose client certificate, verified
against `--tls-client-ca`, names IDENTITY as its common name or a subject alternative name
(compared without regard to case). The name labels the caller in the access log and is what the
per-caller limits count by; several lines may share one (a caller with several credentials,
during a rotation). Without a name a line is labelled `token-` and the first 8 hex digits of its
hash (which tell nothing about the token), or by its certificate identity.
Scopes: `detect` (Detect, DetectStream), `events` (read events and evidence), `monitors` (manage
and read monitors), `jobs` (submit, cancel and read jobs), `admin` (everything). Several lines
may carry the same name and scopes, so a token is rotated by adding the new one, moving the
clients over, then removing the old one; the file is re-read when it changes (a mounted
Kubernetes Secret), and a file that goes away lets nobody in.

A call carries `authorization: Bearer <token>`; without it the client certificate is looked up.
Without a known credential a call is refused UNAUTHENTICATED, without the scope its method needs
PERMISSION_DENIED. Health and reflection need none (probes, and the contract that ships with the
client). Tokens are random and long, so one SHA-256 suffices; they are compared in constant time,
and neither they nor their full hashes are ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import PermissionDenied, StartupError, Unauthenticated

log = logging.getLogger(__name__)

TOKEN_PREFIX = "aat_"  # recognisable by secret scanners
AUTHORIZATION_HEADER = "authorization"
HASH_PREFIX = "sha256:"
CERT_PREFIX = "cert:"
ADMIN = "admin"
SCOPES = ("detect", "events", "monitors", "jobs", ADMIN)

# The scope each service of the public API needs; a method of any other service needs admin.
SERVICE_SCOPES: dict[str, str] = {
    "/anyanomaly.v1.Orchestrator/": "detect",
    "/anyanomaly.v1.Events/": "events",
    "/anyanomaly.v1.Monitors/": "monitors",
    "/anyanomaly.v1.Jobs/": "jobs",
}
# The peer's certificate names in grpc's auth context.
_CERT_NAME_KEYS = ("x509_common_name", "x509_subject_alternative_name")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def method_scope(method: str) -> str:
    return next((scope for prefix, scope in SERVICE_SCOPES.items() if method.startswith(prefix)), ADMIN)


@dataclass(frozen=True)
class Grant:
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return ADMIN in self.scopes or scope in self.scopes


@dataclass(frozen=True)
class Grants:
    tokens: Mapping[str, Grant]  # by the token's hash
    certificates: Mapping[str, Grant]  # by the certificate identity


def parse_grants(text: str, source: str) -> Grants:
    """The grants of an auth tokens file's text; ValueError naming the line that is wrong."""
    tokens: dict[str, Grant] = {}
    certificates: dict[str, Grant] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{source} line {number}"
        if len(words) not in (2, 3):
            raise ValueError(f"{where}: write 'sha256:HEX SCOPES [NAME]' or 'cert:IDENTITY SCOPES [NAME]' "
                             f"(scopes: {','.join(SCOPES)})")
        credential, scope_list = words[:2]
        scopes = frozenset(scope_list.split(","))
        unknown = scopes - set(SCOPES)
        if unknown:
            raise ValueError(f"{where}: unknown scope {sorted(unknown)[0]!r}; use {', '.join(SCOPES)}")
        if credential.startswith(CERT_PREFIX) and len(credential) > len(CERT_PREFIX):
            identity = credential.removeprefix(CERT_PREFIX).lower()  # DNS names are case-insensitive
            name = words[2] if len(words) == 3 else identity
            if identity in certificates:
                raise ValueError(f"{where}: the certificate identity {identity!r} is listed twice")
            certificates[identity] = Grant(name, scopes)
        else:
            hex_part = credential.removeprefix(HASH_PREFIX)
            if (not credential.startswith(HASH_PREFIX) or len(hex_part) != 64
                    or set(hex_part) - set("0123456789abcdef")):
                raise ValueError(f"{where}: the first word must be sha256: and 64 hex digits (anyanomaly token new "
                                 "prints the line; never the token itself) or cert:IDENTITY")
            name = words[2] if len(words) == 3 else "token-" + hex_part[:8]
            if credential in tokens:
                raise ValueError(f"{where}: the same token as {tokens[credential].name!r}")
            tokens[credential] = Grant(name, scopes)
    return Grants(tokens, certificates)


def certificate_names(context: Any) -> list[str]:
    """The names (common name, subject alternative names) of the caller's verified certificate."""
    found = context.auth_context() or {}
    return [value.decode(errors="replace").lower() for key in _CERT_NAME_KEYS for value in found.get(key, ())]


class TokenFile:
    """The grants of an auth tokens file, re-read when the file changes (a bad new version is
    logged and the previous grants stay). `certificates_verified`: the server checks client
    certificates against a CA, so cert: lines may be trusted."""

    def __init__(self, path: str, certificates_verified: bool) -> None:
        self.path = Path(path)
        self._verified = certificates_verified
        self._stamp = self._version()
        try:
            self._grants = self._read()
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot use the auth tokens file: {exc}") from None
        if not (self._grants.tokens or self._grants.certificates):
            raise StartupError(f"the auth tokens file {self.path} grants nothing: every call would be refused; add "
                               "a line (anyanomaly token new) or leave --auth-tokens-file unset")
        log.info("credentials loaded", extra={"tokens": len(self._grants.tokens),
                                              "certificates": len(self._grants.certificates)})

    def _read(self) -> Grants:
        grants = parse_grants(self.path.read_text(), str(self.path))
        if grants.certificates and not self._verified:
            raise ValueError("cert: lines need --tls-client-ca (client certificates are only verified, and "
                             "only asked for, with mutual TLS)")
        return grants

    def _version(self) -> tuple[int, ...]:
        try:
            stat = self.path.stat()
        except OSError:
            return ()
        return (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)

    def grants(self) -> Grants:
        stamp = self._version()
        if stamp != self._stamp:
            self._stamp = stamp
            if not stamp:  # deleted or unreadable: nobody is let in (fail closed)
                log.error("the auth tokens file %s is gone; every call is refused until it is back", self.path)
                self._grants = Grants({}, {})
                return self._grants
            try:
                self._grants = self._read()
                log.info("credentials reloaded", extra={"tokens": len(self._grants.tokens),
                                                        "certificates": len(self._grants.certificates)})
            except (OSError, ValueError) as exc:
                log.error("the auth tokens file changed but cannot be used; the previous credentials stay valid: "
                          "%s", exc)
        return self._grants

    def authorize(self, method: str, context: Any) -> str:
        """The caller's name when it may call `method`; else Unauthenticated or PermissionDenied."""
        grants = self.grants()
        presented = next((str(v) for k, v in context.invocation_metadata() or () if k == AUTHORIZATION_HEADER), "")
        if presented:
            grant = self._bearer(presented, grants)
        else:
            names = certificate_names(context) if grants.certificates else []
            known = next((grants.certificates[n] for n in names if n in grants.certificates), None)
            if known is None:
                listed = " or a client certificate listed in its auth tokens file" if grants.certificates else ""
                raise Unauthenticated("this orchestrator needs a token: send the metadata 'authorization: Bearer "
                                      f"<token>' (anyanomaly commands: --token-file FILE or ANYANOMALY_TOKEN){listed}")
            grant = known
        scope = method_scope(method)
        if not grant.allows(scope):
            has = ",".join(sorted(grant.scopes))
            called = method.rsplit(".", 1)[-1].replace("/", ".")  # "Monitors.DeleteMonitor"
            raise PermissionDenied(f"{grant.name!r} may not call {called}: that needs the scope {scope!r} "
                                   f"(it has {has})")
        return grant.name

    @staticmethod
    def _bearer(presented: str, grants: Grants) -> Grant:
        scheme, _, token = presented.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the authorization metadata must be 'Bearer <token>'")
        digest = token_hash(token.strip())
        grant = next((g for known, g in grants.tokens.items() if hmac.compare_digest(known, digest)), None)
        if grant is None:
            raise Unauthenticated("the token is not known here (mistyped, or revoked)")
        return grant
