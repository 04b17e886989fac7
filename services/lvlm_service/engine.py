"""lvlm_service logic without gRPC: prompts for the pairs of a request, one concurrent /
batched backend call for all of them, reading the answers, one more try for answers
without a score, and usage accounting."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from services.common.errors import InvalidInput, echo
from services.common.presets import get_preset
from services.common.validation import MAX_ANSWER_TOKENS, validate_texts
from services.lvlm_service import metrics
from services.lvlm_service.backends.base import Backend, Completion, Prompt
from services.lvlm_service.config import LvlmSettings
from services.lvlm_service.logprob_score import expected_score
from services.lvlm_service.parse import Parsed, parse_first_number, parse_robust
from services.lvlm_service.pictures import Picture, prepare_all
from services.lvlm_service.presets import InputLimits, limits_for
from services.lvlm_service.prompts import (
    RETRY_SUFFIX,
    Kind,
    Mode,
    PromptStyle,
    build_prompt,
    multi_text_schema,
    score_schema,
)

FAST_MAX_TOKENS = 4  # "0.7" and an end token
# One call answers for one text, or for every text of a multi-text call: its answer is bounded too.
MAX_CALL_TOKENS = 2 * MAX_ANSWER_TOKENS
REFUSAL = re.compile(
    r"^\s*(i'?m sorry|sorry,|i can(?:'|no)t (?:help|assist|provide|comply|evaluate)|i(?: am|'m) unable to|as an ai)",
    re.IGNORECASE,
)


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
    structured_output: bool | None = None  # None: the profile's (default yes, parity no)
    mode: Mode = Mode.STANDARD
    multi_text: bool = False

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

    @property
    def structured(self) -> bool:
        return (not self.parity) if self.structured_output is None else self.structured_output

    def style(self) -> PromptStyle:
        label = self.output_label or (get_preset(self.preset).output_label if self.parity else "Output")
        typo = self.parity if self.reference_prompt_typo is None else self.reference_prompt_typo
        return PromptStyle(output_label=label, reproduce_tc_typo=typo, mode=self.mode,
                           json=self.structured and self.mode is not Mode.FAST)


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
    retries: int = 0
    failures: int = 0

    def add(self, completion: Completion) -> None:
        self.calls += 1 + completion.retries
        self.retries += completion.retries
        self.images += 1
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        self.queue_seconds += completion.queue_seconds
        self.engine_seconds += completion.engine_seconds


@dataclass
class ScoreResult:
    items: list[list[PairScore]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


@dataclass
class _Call:
    """One model call: a prompt for one image and one or more of its texts."""

    item: int
    texts: tuple[str, ...]
    prompt: Prompt
    completion: Completion = field(default_factory=Completion)
    outcome: dict[str, Parsed] = field(default_factory=dict)
    attempts: int = 0

    def failed(self) -> bool:
        return any(not p.parsed for p in self.outcome.values())


def _failure_reason(completion: Completion, parsed_error: str) -> str:
    if completion.refusal:
        return f"the model refused: {completion.refusal[:200]}"
    if REFUSAL.match(completion.text):
        return f"the model refused: {completion.text[:200]}"
    if completion.finish_reason == "length":
        return f"the answer was cut at max_tokens ({parsed_error})"
    return parsed_error


class LvlmEngine:
    def __init__(self, settings: LvlmSettings, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend
        preset = limits_for(backend.info().model)
        # What every request is bound by: the operator's settings, else the model preset's.
        self.limits = InputLimits(max_pixels=settings.downscale_to_pixels or preset.max_pixels,
                                  max_tokens=settings.max_tokens or preset.max_tokens)

    def _validate(self, items: Sequence[Item], params: ScoreParams) -> None:
        if not items:
            raise InvalidInput("no items given: send images with the texts to score them against")
        if params.mode is Mode.FAST and params.multi_text and any(len(i.texts) > 1 for i in items):
            raise InvalidInput("fast mode reads one score per call from token probabilities; turn multi_text off "
                               "or use the standard mode")
        pairs = 0
        for position, item in enumerate(items):
            validate_texts(item.texts, f"items[{position}].texts")
            if len(set(item.texts)) != len(item.texts):
                raise InvalidInput(f"items[{position}].texts repeats a text")
            pairs += len(item.texts)
        if pairs > self.settings.max_pairs_per_request:
            raise InvalidInput(f"{pairs} (image, text) pairs in one request; the limit is "
                               f"{self.settings.max_pairs_per_request}")

    def _calls(self, items: Sequence[Item], pictures: Sequence[Picture], params: ScoreParams) -> list[_Call]:
        style = params.style()
        max_tokens = params.max_tokens or self.limits.max_tokens
        calls = []
        for index, (item, picture) in enumerate(zip(items, pictures, strict=True)):
            groups = [item.texts] if params.multi_text and len(item.texts) > 1 else [(t,) for t in item.texts]
            for texts in groups:
                schema = None
                if style.json and len(texts) > 1:
                    schema = multi_text_schema(texts)
                elif style.json:
                    schema = score_schema(reason_first=params.mode is Mode.REASON_FIRST)
                tokens = FAST_MAX_TOKENS if params.mode is Mode.FAST else min(max_tokens * len(texts),
                                                                              MAX_CALL_TOKENS)
                prompt = Prompt(picture.data, build_prompt(texts, item.kind, style), tokens, schema,
                                top_logprobs=self.settings.top_logprobs if params.mode is Mode.FAST else 0,
                                pixels=picture.pixels)
                calls.append(_Call(index, texts, prompt))
        return calls

    def _read(self, call: _Call, params: ScoreParams) -> None:
        completion = call.completion
        if completion.error:
            call.outcome = {t: Parsed(0.0, "", False, completion.error) for t in call.texts}
            return
        if len(call.texts) > 1:
            call.outcome = _read_multi(completion, call.texts)
            return
        parse: Callable[[str], Parsed] = (
            parse_first_number if params.effective_parser is Parser.FIRST_NUMBER else parse_robust)
        parsed = parse(completion.text)
        if params.mode is Mode.FAST:
            expected = expected_score(completion.tokens, completion.top_logprobs)
            if expected is not None:
                parsed = Parsed(expected, "", True)
        if not parsed.parsed:
            parsed = Parsed(parsed.score, parsed.reason, False, _failure_reason(completion, parsed.error))
        call.outcome = {call.texts[0]: parsed}

    async def _run(self, calls: list[_Call], params: ScoreParams, result: ScoreResult) -> None:
        completions = await self.backend.complete([c.prompt for c in calls])
        for call, completion in zip(calls, completions, strict=True):
            call.completion, call.attempts = completion, call.attempts + 1
            result.usage.add(completion)
            self._read(call, params)

    async def score(self, items: Sequence[Item], params: ScoreParams) -> ScoreResult:
        self._validate(items, params)
        pictures = await asyncio.to_thread(
            prepare_all, [item.image for item in items], self.settings.max_image_pixels,
            self.settings.max_request_pixels, self.limits.max_pixels)
        calls = self._calls(items, pictures, params)
        result = ScoreResult()
        await self._run(calls, params, result)
        # Answers without a score get one more try with a stricter instruction (a cut answer
        # gets twice the tokens). Not in parity: the reference never retries.
        cut = params.mode is not Mode.FAST  # fast answers are cut on purpose after the number
        again = [c for c in calls if (c.failed() or (cut and c.completion.finish_reason == "length"))
                 and not c.completion.error and params.retries]
        if again:
            first = {id(c): dict(c.outcome) for c in again}
            for call in again:
                longer = call.prompt.max_tokens * (2 if call.completion.finish_reason == "length" else 1)
                call.prompt = replace(call.prompt, text=call.prompt.text + RETRY_SUFFIX,
                                      max_tokens=min(longer, MAX_CALL_TOKENS))
            await self._run(again, params, result)
            result.usage.retries += len(again)
            for call in again:  # a score the first answer did give stands when the retry gives none
                for text, outcome in first[id(call)].items():
                    if outcome.parsed and not call.outcome[text].parsed:
                        call.outcome[text] = outcome
        per_item: list[dict[str, PairScore]] = [{} for _ in items]
        for call in calls:
            for text in call.texts:
                outcome = call.outcome[text]
                per_item[call.item][text] = PairScore(text, outcome.score, outcome.reason, call.completion.text,
                                                      outcome.parsed, outcome.error, call.attempts)
        result.items = [[scores[t] for t in item.texts] for item, scores in zip(items, per_item, strict=True)]
        result.usage.failures = sum(not s.parsed for scores in result.items for s in scores)
        metrics.record(self.backend.info().backend, params.mode.value, result.usage, calls)
        return result


def _read_multi(completion: Completion, texts: Sequence[str]) -> dict[str, Parsed]:
    """A JSON object keyed by text, each value {"score", "reason"} (or a bare number)."""
    match = re.search(r"\{.*\}", completion.text, re.DOTALL)
    try:
        data = json.loads(match.group(0)) if match else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        error = _failure_reason(completion, "the answer is not a JSON object keyed by text")
        return {t: Parsed(0.0, "", False, error) for t in texts}
    outcome = {}
    for text in texts:
        entry = data.get(text)
        if isinstance(entry, dict):
            outcome[text] = parse_robust(json.dumps(entry))
        elif isinstance(entry, int | float) and not isinstance(entry, bool):
            outcome[text] = Parsed(min(1.0, max(0.0, float(entry))), "", True)
        else:
            outcome[text] = Parsed(0.0, "", False, f"the answer has no score for {echo(text)}")
    return outcome
