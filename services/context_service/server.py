"""ContextService servicer: protobuf <-> ContextEngine, nothing else."""

from __future__ import annotations

from anyanomaly.v1 import common_pb2, context_pb2, context_pb2_grpc
from services.common.enums import PROFILE, TEMPORAL_SELECTION, WINDOW_FEATURES
from services.common.server import RpcContext, ServiceSpec
from services.common.tensors import to_tensor
from services.common.tls import ClientTls
from services.context_service.clip_client import ClipClient
from services.context_service.config import ContextSettings
from services.context_service.engine import ContextEngine, Query
from services.context_service.params import ContextParams, TemporalSelection, WindowFeatures, resolve_params

SERVICE_NAME = context_pb2.DESCRIPTOR.services_by_name["ContextService"].full_name


def params_from_proto(options: context_pb2.ContextOptions, default_profile: str = "default") -> ContextParams:
    return resolve_params(
        profile=PROFILE.name(options.profile, default_profile),
        preset=options.preset,
        window_sizes=tuple(options.window_sizes),
        half_stride=options.half_stride,
        normalize_windows=options.normalize_windows if options.HasField("normalize_windows") else None,
        logit_scale=options.attention_logit_scale if options.HasField("attention_logit_scale") else None,
        minmax_epsilon=options.minmax_epsilon if options.HasField("minmax_epsilon") else None,
        class_adaptive=options.class_adaptive if options.HasField("class_adaptive") else None,
        include_attention_map=options.include_attention_map,
        temporal_selection=TEMPORAL_SELECTION.member(options.temporal_selection, TemporalSelection,
                                                        TemporalSelection.MAX_WINDOW),
        window_features=WINDOW_FEATURES.member(options.window_features, WindowFeatures, WindowFeatures.CROPS),
    )


class ContextServicer(context_pb2_grpc.ContextServiceServicer):
    def __init__(self, engine: ContextEngine) -> None:
        self._engine = engine

    async def BuildContexts(
        self, request: context_pb2.BuildContextsRequest, context: RpcContext
    ) -> context_pb2.BuildContextsResponse:
        params = params_from_proto(request.options, self._engine.settings.profile)
        queries = [Query(q.text, tuple(q.key_frames), q.representative, tuple(q.more_texts))
                   for q in request.queries]
        results, classes = await self._engine.build(
            [frame.data for frame in request.frames], queries, list(request.class_names), params
        )
        response = context_pb2.BuildContextsResponse(class_names=classes)
        for result in results:
            choice = result.grid_choice
            item = response.contexts.add(
                text=result.text,
                position_context=common_pb2.Image(data=result.position_png),
                temporal_context=common_pb2.Image(data=result.temporal_png),
                grid_position=context_pb2.GridPosition(
                    candidate=choice.candidate, window_size=choice.window_size,
                    row=choice.row, col=choice.col, score=choice.score,
                ),
            )
            if result.attention_map is not None:
                item.attention_map.CopyFrom(to_tensor(result.attention_map))
        return response


def build_service(settings: ContextSettings) -> tuple[ServiceSpec, ContextEngine]:
    engine = ContextEngine(settings)

    async def connect() -> None:  # channels belong to the running event loop
        tls = ClientTls.from_settings(settings.tls_ca, settings.tls_client_cert,
                                      settings.tls_client_key)
        engine.attach(await ClipClient.open(settings.clip_address, settings.clip_timeout_seconds,
                                            settings.max_message_mb, settings.keepalive_seconds, tls))

    spec = ServiceSpec(
        name="context_service",
        service_names=[SERVICE_NAME],
        register=lambda server: context_pb2_grpc.add_ContextServiceServicer_to_server(
            ContextServicer(engine), server
        ),
        start=connect,
        stop=engine.close,
    )
    return spec, engine
