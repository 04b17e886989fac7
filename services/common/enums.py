"""The contract's enums as the lower-case names the services, the command line and the result
JSON use ("TAIL_POLICY_DROP" <-> "drop"), both ways, read from the generated descriptors: one
table per enum, written once. A service's own Python enums use the same names as their values
(e.g. ksm.Strategy.CLIP_TOP4 == "clip_top4"), so `member()` maps a request's value to them."""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, Generic, TypeVar, cast

from anyanomaly.v1 import clip_pb2, common_pb2, context_pb2, lvlm_pb2, orchestrator_pb2
from services.common.errors import InvalidInput

E = TypeVar("E", bound=Enum)
V = TypeVar("V", bound=int)  # the generated enum's ValueType


class ContractEnum(Generic[V]):
    def __init__(self, wrapper: Any) -> None:
        self.what = wrapper.DESCRIPTOR.name
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", self.what).upper() + "_"  # TailPolicy -> TAIL_POLICY_
        self.values: dict[str, int] = {
            name.removeprefix(prefix).lower(): int(number) for name, number in wrapper.items() if number != 0}
        self.names = {number: name for name, number in self.values.items()}

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self.values)

    def name(self, value: int, unspecified: str) -> str:
        """The name of `value`; `unspecified` for 0 (the field left unset); InvalidInput for a value
        this version does not know (a newer client, or a number sent by hand)."""
        if value == 0:
            return unspecified
        if value not in self.names:
            raise InvalidInput(f"unknown {self.what} value {value}; use one of {', '.join(self.choices)}")
        return self.names[value]

    def value(self, name: str) -> V:
        return cast(V, self.values[name])

    def member(self, value: int, cls: type[E], unspecified: E) -> E:
        """The service's own enum member for a request's value."""
        return cls(self.name(value, str(unspecified.value)))


PROFILE = ContractEnum[common_pb2.Profile.ValueType](common_pb2.Profile)
KEY_FRAME_STRATEGY = ContractEnum[common_pb2.KeyFrameStrategy.ValueType](common_pb2.KeyFrameStrategy)
TEXT_ENCODING = ContractEnum[clip_pb2.TextEncoding.ValueType](clip_pb2.TextEncoding)
PREPROCESS = ContractEnum[clip_pb2.Preprocess.ValueType](clip_pb2.Preprocess)
TEMPORAL_SELECTION = ContractEnum[context_pb2.TemporalSelection.ValueType](context_pb2.TemporalSelection)
WINDOW_FEATURES = ContractEnum[context_pb2.WindowFeatures.ValueType](context_pb2.WindowFeatures)
CONTEXT_KIND = ContractEnum[lvlm_pb2.ContextKind.ValueType](lvlm_pb2.ContextKind)
SCORE_MODE = ContractEnum[lvlm_pb2.ScoreMode.ValueType](lvlm_pb2.ScoreMode)
SCORE_PARSER = ContractEnum[lvlm_pb2.ScoreParser.ValueType](lvlm_pb2.ScoreParser)
TAIL_POLICY = ContractEnum[orchestrator_pb2.TailPolicy.ValueType](orchestrator_pb2.TailPolicy)
MULTI_TEXT_FUSION = ContractEnum[orchestrator_pb2.MultiTextFusion.ValueType](orchestrator_pb2.MultiTextFusion)
