"""Addresses and URLs as both the services and their clients treat them."""

from __future__ import annotations

import ipaddress
import re

_SECRET_QUERY = re.compile(r"(?i)([?&;](?:pass|passwd|password|pwd|token|key|secret|auth)[^=&;]*=)[^&;#]*")


def redact(url: str) -> str:
    """`url` without its password (user names stay: they help find the camera), also one that
    holds a "/", and without the values of query parameters that look like secrets."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    before, after = rest[:cut], rest[cut:]  # an "@" in the query is not the user part's end
    credentials, at, location = before.rpartition("@")
    if at and (":" in credentials or "/" not in credentials):  # "user:pa/ss@host", not "host/a@b"
        user, colon, _ = credentials.partition(":")  # without ":", the whole user part may be a token
        before = (f"{user}:***@" if colon and user else "***@") + location
    return _SECRET_QUERY.sub(r"\1***", f"{scheme}://{before}{after}")


def is_loopback_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"
