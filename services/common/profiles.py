"""The Profile enum of the contract as the names the services use."""

from __future__ import annotations

from anyanomaly.v1 import common_pb2

from services.common.errors import InvalidInput

DEFAULT = "default"
PARITY = "parity"
_NAMES: dict[int, str] = {
    common_pb2.PROFILE_UNSPECIFIED: DEFAULT,
    common_pb2.PROFILE_DEFAULT: DEFAULT,
    common_pb2.PROFILE_PARITY: PARITY,
}
VALUES = {DEFAULT: common_pb2.PROFILE_DEFAULT, PARITY: common_pb2.PROFILE_PARITY}


def profile_name(value: int, unspecified: str = DEFAULT) -> str:
    """'default' or 'parity' (`unspecified` for PROFILE_UNSPECIFIED, e.g. the service's own
    --profile); InvalidInput for a value this version does not know."""
    if value == common_pb2.PROFILE_UNSPECIFIED:
        return unspecified
    if value not in _NAMES:
        raise InvalidInput(f"unknown profile value {value}; use PROFILE_DEFAULT or PROFILE_PARITY")
    return _NAMES[value]
