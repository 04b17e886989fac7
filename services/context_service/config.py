"""context_service settings (flags and ANYANOMALY_CONTEXT_* environment variables)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.common.clients import ADDRESS_FORMS
from services.common.config import CallerSettings, load_settings, setting

ENV_PREFIX = "ANYANOMALY_CONTEXT"
DEFAULT_PORT = 50052


@dataclass
class ContextSettings(CallerSettings):
    port: int = setting(DEFAULT_PORT, "port to bind; 0 picks a free port (the bound port is logged)")
    clip_address: str = setting("127.0.0.1:50051", f"clip_service address, where window crops are embedded: "
                                f"{ADDRESS_FORMS}")
    clip_timeout_seconds: float = setting(60.0, "deadline of each call to clip_service")
    max_image_pixels: int = setting(3840 * 2160, "largest frame accepted, in pixels")
    max_request_pixels: int = setting(24 * 3840 * 2160, "most pixels the frames one request uses may decode to "
                                      "(checked from their headers before decoding)")
    max_frames_per_request: int = setting(96, "most distinct frames in one BuildContexts request")
    max_queries_per_request: int = setting(256, "most texts in one BuildContexts request")


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ContextSettings:
    return load_settings(
        ContextSettings, argv, ENV_PREFIX,
        "context_service: position (WinCLIP attention) and temporal (2x2 grid) context images over gRPC.",
        env, prog="python -m services.context_service",
    )
