"""lvlm_service logic without gRPC: prompts for every (image, text) pair of a request,
one concurrent/batched backend call for all of them, parsing, one retry for answers
without a score, and usage accounting."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from services.common.errors import InvalidInput
from services.common.images import header_size, image_format
from services.common.presets import get_preset
from services.common.validation import validate_texts
from services.lvlm_service.backends.base import Backend, Completion, Prompt
from services.lvlm_service.config import LvlmSettings
from services.lvlm_service.parse import Parsed, parse_first_number, parse_robust
from services.lvlm_service.prompts import RETRY_SUFFIX, Kind, PromptStyle, build_prompt


class Parser(Enum):
    ROBUST = "robust"
    FIRST_NUMBER = "first_number"


@dataclass(frozen=True)
class Item:
    image: bytes
    kind: Kind
    texts: tuple[str, ...]


@dataclass(frozen=True)
class ScoreParams:
    profile: str = "default"  # "default" | "parity"
    preset: str = ""
    parser: Parser | None = None  # None: the profile's parser
    max_tokens: int = 0  # 0: the service default
    output_label: str = ""  # "": the profile's ("Output"; parity: the preset's)
    retry_unparsed: bool | None = None  # None: the profile's (default yes, parity no)
    reference_prompt_typo: bool | None = None  # None: the profile's (parity only)

    @property
    def parity(self) -> bool:
        return self.profile == "parity"

    @property
    def effective_parser(self) -> Parser:
        if self.parser is not None:
            return self.parser
        return Parser.FIRST_NUMBER if self.parity else Parser.ROBUST

    @property
    def retries(self) -> bool:
        return (not self.parity) if self.retry_unparsed is None else self.retry_unparsed

    def style(self) -> PromptStyle:
        label = self.output_label or (get_preset(self.preset).output_label if self.parity else "Output")
        typo = self.parity if self.reference_prompt_typo is None else self.reference_prompt_typo
        return PromptStyle(output_label=label, reproduce_tc_typo=typo)


@dataclass(frozen=True)
class PairScore:
    text: str
    score: float
    reason: str
    raw_answer: str
    parsed: bool
    error: str
    attempts: int


@dataclass
class Usage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    queue_seconds: float = 0.0
    engine_seconds: float = 0.0

    def add(self, completion: Completion) -> None:
        self.calls += 1
        self.images += 1
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        self.queue_seconds += completion.queue_seconds
        self.engine_seconds += completion.engine_seconds


@dataclass
class ScoreResult:
    items: list[list[PairScore]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


class LvlmEngine:
    def __init__(self, settings: LvlmSettings, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend

    def _validate(self, items: Sequence[Item]) -> None:
        if not items:
            raise InvalidInput("no items given: send images with the texts to score them against")
        pairs = 0
        for position, item in enumerate(items):
            what = f"items[{position}].image"
            if image_format(item.image) == "unknown":
                raise InvalidInput(f"{what} is not a JPEG or PNG image")
            size = header_size(item.image)
            if size is None:
                raise InvalidInput(f"{what} has a corrupt or truncated header")
            if self.settings.max_image_pixels and size[0] * size[1] > self.settings.max_image_pixels:
                raise InvalidInput(f"{what} is {size[0]}x{size[1]}, above the limit of "
                                   f"{self.settings.max_image_pixels} pixels")
            validate_texts(item.texts, f"items[{position}].texts")
            pairs += len(item.texts)
        if pairs > self.settings.max_pairs_per_request:
            raise InvalidInput(f"{pairs} (image, text) pairs in one request; the limit is "
                               f"{self.settings.max_pairs_per_request}")

    async def score(self, items: Sequence[Item], params: ScoreParams) -> ScoreResult:
        self._validate(items)
        style = params.style()
        max_tokens = params.max_tokens or self.settings.max_tokens
        parse = parse_first_number if params.effective_parser is Parser.FIRST_NUMBER else parse_robust
        prompts = [
            Prompt(item.image, build_prompt(text, item.kind, style), max_tokens)
            for item in items for text in item.texts
        ]
        result = ScoreResult()
        completions = await self.backend.complete(prompts)
        for completion in completions:
            result.usage.add(completion)
        parsed = [_outcome(c, parse) for c in completions]
        attempts = [1] * len(prompts)
        # Answers without a score get one more try with a stricter instruction (not in parity:
        # the reference never retries, and a retry would change its numbers).
        retry = [i for i, (c, p) in enumerate(zip(completions, parsed, strict=True))
                 if not p.parsed and not c.error and params.retries]
        if retry:
            again = await self.backend.complete(
                [Prompt(prompts[i].image, prompts[i].text + RETRY_SUFFIX, max_tokens) for i in retry]
            )
            for index, completion in zip(retry, again, strict=True):
                result.usage.add(completion)
                attempts[index] += 1
                completions[index], parsed[index] = completion, _outcome(completion, parse)
        position = 0
        for item in items:
            scores = []
            for text in item.texts:
                outcome, completion = parsed[position], completions[position]
                scores.append(PairScore(text, outcome.score, outcome.reason, completion.text, outcome.parsed,
                                        outcome.error, attempts[position]))
                position += 1
            result.items.append(scores)
        return result


def _outcome(completion: Completion, parse: Callable[[str], Parsed]) -> Parsed:
    if completion.error:
        return Parsed(0.0, "", False, completion.error)
    return parse(completion.text)
