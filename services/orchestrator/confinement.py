"""Which sources a caller may make the orchestrator read.

Files and frame folders only under the media roots. Without --media-roots, an orchestrator bound
to the loopback interface (one machine, its own user) reads any path, and one reachable from the
network only its data dir (and without one, no files). Never a path with "..", never through a
symlink that leads out of the roots, never /proc, /sys or /dev. The check comes before the file
is opened; the files of a frame folder are checked again as each is read (a link out of the roots
is refused).

Stream URLs: rtsp, rtsps, http, https and rtmp only. With --allow-hosts only the listed hosts
(names, "*.domain", IP addresses or CIDR ranges); without, any host but the loopback, link-local
(cloud metadata at 169.254.169.254 among them), unspecified and multicast addresses, which an
orchestrator reachable from the network refuses unless listed; one bound to loopback allows
them. Cloud metadata addresses are refused always, unless listed as addresses. Names are resolved
and every address checked; IPv4 carried in IPv6 (mapped, NAT64, compatible) is unwrapped first.
Streams are opened without following redirects or playlists (sources.py), which would lead
elsewhere. Credentials in a URL never appear in an error or a log line (`redact`).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import InvalidInput, PermissionDenied, echo
from services.common.urls import is_loopback_host, redact

STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp")
SYSTEM_FOLDERS = tuple(Path(p) for p in ("/proc", "/sys", "/dev"))
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network




@dataclass(frozen=True)
class SourcePolicy:
    roots: tuple[Path, ...] | None  # None: any path
    allow_hosts: tuple[str, ...] = ()  # allowed hosts; empty: any but local ones
    local_streams: bool = True  # loopback, link-local ... without being listed

    @classmethod
    def from_settings(cls, media_roots: str, allow_hosts: str, bind_host: str, data_dir: str) -> SourcePolicy:
        local = is_loopback_host(bind_host)
        roots = [r.strip() for r in media_roots.split(",") if r.strip()]
        if roots:
            chosen: tuple[Path, ...] | None = tuple(Path(r).expanduser().resolve() for r in roots)
        elif local:
            chosen = None
        else:
            chosen = (Path(data_dir).expanduser().resolve(),) if data_dir else ()
        return cls(chosen, tuple(h.strip().lower() for h in allow_hosts.split(",") if h.strip()), local)

    def check_path(self, location: str) -> Path:
        """The path to open (resolved: what was checked is what is read), or PermissionDenied /
        InvalidInput saying why not. "~" is not expanded: the path is the server's."""
        given = Path(location)
        if ".." in given.parts:
            raise InvalidInput(f"{echo(location, 200)}: a source path may not contain '..'")
        try:
            resolved = given.resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # a NUL, a symlink loop
            raise InvalidInput(f"{echo(location, 200)} is not a usable path ({exc})") from None
        self.check_resolved(resolved, location)
        return resolved

    def check_resolved(self, resolved: Path, location: str) -> None:
        if any(resolved.is_relative_to(folder) for folder in SYSTEM_FOLDERS):
            raise PermissionDenied(f"{echo(location, 200)} is in a system folder (/proc, /sys, /dev); give a video "
                                   "file or a folder of frames")
        if self.roots is None:
            return
        if not self.roots:
            raise PermissionDenied("this orchestrator reads no files (it is reachable from the network and has no "
                                   "--media-roots or --data-dir); ask its operator to set --media-roots")
        if not any(resolved.is_relative_to(root) for root in self.roots):
            raise PermissionDenied(f"{echo(location, 200)} is outside the media folders this orchestrator may read")

    def check_member(self, path: Path) -> Path:
        """A file of a frame folder, as it is about to be read: a link out of the roots is refused."""
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise InvalidInput(f"{path}: cannot be read ({exc})") from None
        self.check_resolved(resolved, str(path))
        return resolved

    def check_stream(self, uri: str) -> None:
        """InvalidInput for a URL that is not a stream, PermissionDenied for a host not allowed.
        Resolves the host's name (blocking: call it where the stream is opened)."""
        shown = echo(redact(uri), 200)
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in uri):
            raise InvalidInput(f"the stream URI {shown} holds spaces or control characters")
        try:
            parsed = urllib.parse.urlsplit(uri)
            host = (parsed.hostname or "").lower()
        except ValueError as exc:
            raise InvalidInput(f"the stream URI {shown} is malformed ({exc})") from None
        if parsed.scheme.lower() not in STREAM_SCHEMES:
            raise InvalidInput(f"unsupported stream URI {shown}; use one of "
                               f"{', '.join(s + '://' for s in STREAM_SCHEMES)}")
        if not host:
            raise InvalidInput(f"the stream URI {shown} names no host")
        listed = bool(self.allow_hosts) and any(_matches(host, entry) for entry in self.allow_hosts)
        if self.allow_hosts and not listed:
            raise PermissionDenied(f"the stream host {host} is not among those this orchestrator may read "
                                   f"({', '.join(self.allow_hosts)})")
        literal = _literal(host)
        if listed and literal is not None:
            return  # an address listed as such is what the operator allowed
        for address in [literal] if literal is not None else _addresses(host, shown):
            if _metadata(address):
                raise PermissionDenied(f"the stream host {host} is a cloud metadata address ({address})")
            if not listed and not self.local_streams and _local(address):
                raise PermissionDenied(f"the stream host {host} is a loopback, link-local or otherwise local "
                                       f"address ({address}); list it in --allow-hosts to allow it")


def _matches(host: str, entry: str) -> bool:
    try:
        network = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return fnmatch.fnmatchcase(host, entry)
    try:
        return ipaddress.ip_address(host) in network
    except ValueError:
        return False  # a name is not matched by a range (it could resolve anywhere)


def _literal(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _addresses(host: str, shown: str) -> list[IpAddress]:
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise InvalidInput(f"the stream host of {shown} does not resolve ({exc})") from None
    return [ipaddress.ip_address(str(entry[4][0]).split("%", 1)[0]) for entry in found]


NAT64 = ipaddress.ip_network("64:ff9b::/96")
METADATA = {ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200",
                                                  "169.254.170.2")}


def _unwrapped(address: IpAddress) -> IpAddress:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, IPv4-compatible), else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in NAT64 or (int(address) >> 32 == 0 and int(address) > 1):
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _metadata(address: IpAddress) -> bool:
    return address in METADATA or _unwrapped(address) in METADATA


def _local(address: IpAddress) -> bool:
    address = _unwrapped(address)
    return address.is_loopback or address.is_link_local or address.is_unspecified or address.is_multicast


ANY_SOURCE = SourcePolicy(None)  # what a loopback-bound orchestrator without --media-roots allows
