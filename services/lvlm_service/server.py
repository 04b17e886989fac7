"""LvlmService servicer: protobuf <-> LvlmEngine, nothing else."""

from __future__ import annotations

import dataclasses

from anyanomaly.v1 import common_pb2, lvlm_pb2, lvlm_pb2_grpc
from services.common.enums import CONTEXT_KIND, PROFILE, SCORE_MODE, SCORE_PARSER
from services.common.errors import InvalidInput
from services.common.presets import get_preset
from services.common.server import RpcContext, ServiceSpec
from services.common.validation import validate_max_tokens
from services.lvlm_service import metrics
from services.lvlm_service.backends.base import Backend
from services.lvlm_service.config import LvlmSettings
from services.lvlm_service.engine import Item, LvlmEngine, Parser, ScoreParams
from services.lvlm_service.prompts import Kind, Mode

SERVICE_NAME = lvlm_pb2.DESCRIPTOR.services_by_name["LvlmService"].full_name

def params_from_proto(options: lvlm_pb2.ScoreOptions, default_profile: str = "default") -> ScoreParams:
    validate_max_tokens(options.max_tokens)
    get_preset(options.preset)  # an unknown preset is refused here
    if len(options.output_label) > 40 or "\n" in options.output_label:
        raise InvalidInput("output_label must be a short single-line word such as 'Output'")
    return ScoreParams(
        profile=PROFILE.name(options.profile, default_profile), preset=options.preset,
        parser=SCORE_PARSER.member(options.parser, Parser, Parser.ROBUST) if options.parser else None,
        max_tokens=options.max_tokens,
        output_label=options.output_label,
        retry_unparsed=options.retry_unparsed if options.HasField("retry_unparsed") else None,
        reference_prompt_typo=options.reference_prompt_typo if options.HasField("reference_prompt_typo") else None,
        structured_output=options.structured_output if options.HasField("structured_output") else None,
        mode=SCORE_MODE.member(options.mode, Mode, Mode.STANDARD), multi_text=options.multi_text,
    )


def items_from_proto(items: list[lvlm_pb2.ScoreItem]) -> list[Item]:
    converted = []
    for position, item in enumerate(items):
        if item.kind not in CONTEXT_KIND.names:  # UNSPECIFIED too: the prompt depends on it
            raise InvalidInput(f"items[{position}].kind must be FRAME, POSITION or TEMPORAL")
        converted.append(Item(item.image.data, Kind(CONTEXT_KIND.names[item.kind]), tuple(item.texts)))
    return converted


class LvlmServicer(lvlm_pb2_grpc.LvlmServiceServicer):
    def __init__(self, engine: LvlmEngine) -> None:
        self._engine = engine

    async def Score(self, request: lvlm_pb2.ScoreRequest, context: RpcContext) -> lvlm_pb2.ScoreResponse:
        params = params_from_proto(request.options, self._engine.settings.profile)
        items = items_from_proto(list(request.items))
        result = await self._engine.score(items, params)
        response = lvlm_pb2.ScoreResponse()
        for item, scores in zip(items, result.items, strict=True):
            response.items.add(kind=CONTEXT_KIND.value(item.kind.value), scores=[
                lvlm_pb2.TextScore(text=s.text, score=s.score, reason=s.reason, raw_answer=s.raw_answer,
                                   parsed=s.parsed, error=s.error, attempts=s.attempts)
                for s in scores
            ])
        response.usage.CopyFrom(lvlm_pb2.Usage(**dataclasses.asdict(result.usage)))  # the same fields
        return response

    async def GetModelInfo(self, request: common_pb2.GetModelInfoRequest, context: RpcContext) -> common_pb2.ModelInfo:
        info = self._engine.backend.info()
        return common_pb2.ModelInfo(name=info.model, weights=info.model, device=info.device, dtype=info.dtype,
                                    random_weights=info.random_weights, backend=info.backend,
                                    max_image_pixels=self._engine.limits.max_pixels,
                                    max_tokens=self._engine.limits.max_tokens)


def make_backend(settings: LvlmSettings) -> Backend:
    if settings.backend == "openai":
        from services.lvlm_service.backends.openai_http import OpenAIBackend

        return OpenAIBackend(
            settings.openai_url, settings.openai_model, settings.openai_api_key,
            settings.request_timeout_seconds, settings.max_concurrency, settings.system_prompt,
            max_queued=settings.max_queued, retries=settings.http_retries,
            backoff_seconds=settings.retry_backoff_seconds, structured_field=settings.structured_output_field,
            ca_file=settings.openai_ca_file,
        )
    if settings.backend == "vllm":
        from services.lvlm_service.backends.vllm_engine import VllmEngineBackend

        return VllmEngineBackend(settings.vllm_model, settings.gpu_memory_utilization, settings.system_prompt)
    from services.lvlm_service.backends.transformers_local import TransformersBackend

    return TransformersBackend(
        settings.model, tiny=settings.models == "tiny", device=settings.device, batch_size=settings.batch_size,
        cache_dir=settings.cache_dir, offline=settings.offline, system_prompt=settings.system_prompt,
    )


def build_service(settings: LvlmSettings, backend: Backend | None = None) -> tuple[ServiceSpec, LvlmEngine]:
    engine = LvlmEngine(settings, backend or make_backend(settings))
    queued = engine.backend
    if hasattr(queued, "pending") and hasattr(queued, "waiting"):  # a backend that queues in front of a server
        metrics.watch_queue(settings.backend, lambda: queued.pending, lambda: queued.waiting)
    spec = ServiceSpec(
        name="lvlm_service",
        service_names=[SERVICE_NAME],
        register=lambda server: lvlm_pb2_grpc.add_LvlmServiceServicer_to_server(LvlmServicer(engine), server),
        start=engine.backend.start,
        stop=engine.backend.close,
    )
    return spec, engine
