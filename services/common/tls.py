"""TLS on the gRPC links, from PEM files.

A server presents its certificate and key, and with a client CA requires every caller to present
a certificate signed by it (mutual TLS between the services). A caller trusts the CA it is given
and, for mutual TLS, presents its own certificate. Certificates are re-read when their files
change (cert-manager renews them in a mounted Secret): a server checks before each new TLS
handshake, a caller re-opens its connections (services/common/balancing.py). Connections
already open keep the certificate they were made with.
"""

from __future__ import annotations

import functools
import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common.errors import StartupError

log = logging.getLogger(__name__)

Version = tuple[tuple[int, int], ...]


def _version(paths: tuple[str, ...]) -> Version:
    """(modification time, size) of each file; a file that cannot be read counts as (0, 0)."""
    stamps = []
    for path in paths:
        try:
            stat = Path(path).stat()
            stamps.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            stamps.append((0, 0))
    return tuple(stamps)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StartupError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def _check_pair(cert: str, key: str) -> None:
    """The certificate and key load and belong together (a half-written renewal does not)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"the certificate {cert} and key {key} do not load as a pair: {exc}") from None


@dataclass(frozen=True)
class ServerTls:
    cert: str
    key: str
    client_ca: str = ""  # require client certificates signed by this CA

    @classmethod
    def from_settings(cls, cert: str, key: str, client_ca: str) -> ServerTls | None:
        if not (cert or key or client_ca):
            return None
        if not (cert and key):
            raise StartupError("TLS needs both --tls-cert and --tls-key (a client CA alone serves nothing)")
        return cls(cert, key, client_ca)

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        _check_pair(self.cert, self.key)
        return grpc.ssl_server_certificate_configuration(
            [(_read(self.key, "TLS key"), _read(self.cert, "TLS certificate"))],
            root_certificates=_read(self.client_ca, "client CA") if self.client_ca else None)

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials that pick up new files at the next handshake (old ones stay if new ones fail)."""
        files = (self.cert, self.key, self.client_ca)
        lock = threading.Lock()  # gRPC calls the fetcher from its own threads
        loaded = [_version(files)]
        initial = self._configuration()

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            with lock:
                version = _version(files)
                if version == loaded[0]:
                    return None
                loaded[0] = version
                try:
                    configuration = self._configuration()
                except StartupError as exc:
                    log.warning("TLS files changed but cannot be used; keeping the previous ones: %s", exc)
                    return None
                log.info("TLS certificate reloaded", extra={"cert": self.cert})
                return configuration

        return grpc.dynamic_ssl_server_credentials(  # the stubs say the fetcher cannot return None; gRPC says it may
            initial, fetch, require_client_authentication=bool(self.client_ca))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ClientTls:
    ca: str  # trust servers whose certificates this CA signed
    cert: str = ""  # present this certificate (mutual TLS)
    key: str = ""

    @classmethod
    def from_settings(cls, ca: str, cert: str, key: str, flags: tuple[str, str, str] = (
            "--tls-ca", "--tls-client-cert", "--tls-client-key")) -> ClientTls | None:
        """None without any file; `flags` name the three in errors."""
        if not (ca or cert or key):
            return None
        if not ca:
            raise StartupError(f"a client certificate needs {flags[0]} too (the CA that signed the servers' "
                               "certificates)")
        if bool(cert) != bool(key):
            raise StartupError(f"a client certificate needs both {flags[1]} and {flags[2]}")
        return cls(ca, cert, key)

    def version(self) -> Version:
        return _version((self.ca, self.cert, self.key))

    def credentials(self) -> grpc.ChannelCredentials:
        """From the files as they are now (read once per change of the files)."""
        return _channel_credentials(self, self.version())


@functools.lru_cache(maxsize=8)
def _channel_credentials(tls: ClientTls, version: Version) -> grpc.ChannelCredentials:
    if tls.cert:
        _check_pair(tls.cert, tls.key)
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca, "TLS CA"),
        private_key=_read(tls.key, "TLS client key") if tls.key else None,
        certificate_chain=_read(tls.cert, "TLS client certificate") if tls.cert else None)
