"""Which sources a caller may make the orchestrator read.

Files and frame folders only under the media roots. Without --media-roots, an orchestrator bound
to the loopback interface (one machine, its own user) reads any path, and one reachable from the
network only its data dir (and without one, no files). Never a path with "..", never through a
symlink that leads out of the roots, never /proc, /sys or /dev. The check comes before the file
is looked at, so a refused path tells nothing about whether it exists.

Stream URLs: rtsp, rtsps, http, https and rtmp only. With --stream-hosts only the listed hosts
(names, "*.domain", IP addresses or CIDR ranges); without, any host but the loopback, link-local
(cloud metadata at 169.254.169.254 among them), unspecified and multicast addresses, which an
orchestrator reachable from the network refuses unless listed; one bound to loopback allows
them. Names are resolved and every address checked. Credentials in a URL never appear in an error
or a log line (`redact`).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import InvalidInput, PermissionDenied, echo

STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp")
SYSTEM_FOLDERS = tuple(Path(p) for p in ("/proc", "/sys", "/dev"))
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def redact(url: str) -> str:
    """`url` without its password (user names stay: they help find the camera)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    authority, slash, path = rest.partition("/")
    credentials, _, host = authority.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{f'{user}:' if user else ''}***@{host}{slash}{path}"


def is_loopback_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass(frozen=True)
class SourcePolicy:
    roots: tuple[Path, ...] | None  # None: any path
    stream_hosts: tuple[str, ...] = ()  # allowed hosts; empty: any but local ones
    local_streams: bool = True  # loopback, link-local ... without being listed

    @classmethod
    def from_settings(cls, media_roots: str, stream_hosts: str, bind_host: str, data_dir: str) -> SourcePolicy:
        local = is_loopback_host(bind_host)
        roots = [r.strip() for r in media_roots.split(",") if r.strip()]
        if roots:
            chosen: tuple[Path, ...] | None = tuple(Path(r).expanduser().resolve() for r in roots)
        elif local:
            chosen = None
        else:
            chosen = (Path(data_dir).expanduser().resolve(),) if data_dir else ()
        return cls(chosen, tuple(h.strip().lower() for h in stream_hosts.split(",") if h.strip()), local)

    def check_path(self, location: str) -> Path:
        """The path to open, or PermissionDenied / InvalidInput saying why not."""
        given = Path(location).expanduser()
        if ".." in given.parts:
            raise InvalidInput(f"{echo(location, 200)}: a source path may not contain '..'")
        resolved = given.resolve()
        if any(resolved.is_relative_to(folder) for folder in SYSTEM_FOLDERS):
            raise PermissionDenied(f"{echo(location, 200)} is in a system folder (/proc, /sys, /dev); give a video "
                                   "file or a folder of frames")
        if self.roots is None:
            return given
        if not self.roots:
            raise PermissionDenied("this orchestrator reads no files (it is reachable from the network and has no "
                                   "--media-roots or --data-dir); ask its operator to set --media-roots")
        if not any(resolved.is_relative_to(root) for root in self.roots):
            raise PermissionDenied(f"{echo(location, 200)} is outside the media folders this orchestrator may read "
                                   f"({', '.join(str(r) for r in self.roots)})")
        return given

    def check_stream(self, uri: str) -> None:
        """InvalidInput for a URL that is not a stream, PermissionDenied for a host not allowed.
        Resolves the host's name (blocking: call it where the stream is opened)."""
        shown = echo(redact(uri), 200)
        parsed = urllib.parse.urlsplit(uri)
        if parsed.scheme.lower() not in STREAM_SCHEMES:
            raise InvalidInput(f"unsupported stream URI {shown}; use one of "
                               f"{', '.join(s + '://' for s in STREAM_SCHEMES)}")
        host = (parsed.hostname or "").lower()
        if not host:
            raise InvalidInput(f"the stream URI {shown} names no host")
        if self.stream_hosts:
            if not any(_matches(host, entry) for entry in self.stream_hosts):
                raise PermissionDenied(f"the stream host {host} is not among those this orchestrator may read "
                                       f"({', '.join(self.stream_hosts)})")
            return
        if self.local_streams:
            return
        for address in _addresses(host, shown):
            if _local(address):
                raise PermissionDenied(f"the stream host {host} is a loopback, link-local or otherwise local "
                                       f"address ({address}); list it in --stream-hosts to allow it")


def _matches(host: str, entry: str) -> bool:
    try:
        network = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return fnmatch.fnmatchcase(host, entry)
    try:
        return ipaddress.ip_address(host) in network
    except ValueError:
        return False  # a name is not matched by a range (it could resolve anywhere)


def _addresses(host: str, shown: str) -> list[IpAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise InvalidInput(f"the stream host of {shown} does not resolve ({exc})") from None
    return [ipaddress.ip_address(str(entry[4][0]).split("%", 1)[0]) for entry in found]


def _local(address: IpAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_link_local or address.is_unspecified or address.is_multicast


ANY_SOURCE = SourcePolicy(None)  # what a loopback-bound orchestrator without --media-roots allows
