"""Checks shared by every RPC that starts a detection (Detect, DetectStream, jobs, monitors)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from anyanomaly.v1 import orchestrator_pb2
from services.common.errors import InvalidInput
from services.common.fusion import split_texts
from services.common.validation import validate_texts
from services.orchestrator import options as detect_options
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.confinement import SourcePolicy
from services.orchestrator.pipeline import DetectParams
from services.orchestrator.sources import FrameEncoding


def checked_texts(requested: Sequence[str], options: orchestrator_pb2.DetectOptions, max_texts: int) -> list[str]:
    """The texts to detect ('a-b' split unless kept), checked."""
    validate_texts(list(requested))
    texts = split_texts(requested, split_hyphens=not options.keep_hyphenated_texts)
    validate_texts(texts)
    if len(texts) > max_texts:
        raise InvalidInput(f"{len(texts)} texts after splitting; the limit is {max_texts}")
    return texts


def detect_params(options: orchestrator_pb2.DetectOptions, settings: OrchestratorSettings) -> DetectParams:
    return replace(detect_options.resolve(options, settings.max_segments_in_flight, settings.profile),
                   max_frames=settings.max_frames)


def frame_encoding(settings: OrchestratorSettings) -> FrameEncoding:
    return FrameEncoding(settings.frame_format, settings.jpeg_quality, settings.max_image_pixels)


def source_policy(settings: OrchestratorSettings) -> SourcePolicy:
    return SourcePolicy.from_settings(settings.media_roots, settings.allow_hosts, settings.host, settings.data_dir)
