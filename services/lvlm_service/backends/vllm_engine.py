"""vLLM's async engine inside lvlm_service, for a single GPU box (`pip install .[vllm]`).

Same prompts, same JSON schemas and the same answer reading as the other backends; vLLM
batches the concurrent requests itself (continuous batching, prefix caching). It needs a
GPU, so on a CPU machine only the request mapping and the output conversion below run
(they are plain functions, tested without vLLM installed).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from services.common.errors import ModelLoadError
from services.lvlm_service.backends.base import BackendInfo, Completion, Prompt
from services.lvlm_service.presets import (
    MAX_NUM_BATCHED_TOKENS,
    MAX_NUM_SEQS,
    MM_PROCESSOR_CACHE_GB,
    ModelPreset,
    preset_for,
)

log = logging.getLogger("anyanomaly.lvlm.vllm")


def sampling_settings(prompt: Prompt) -> dict[str, Any]:
    """What a prompt asks of vLLM's SamplingParams: greedy, bounded, constrained, log-probs."""
    return {
        "temperature": 0.0,
        "max_tokens": prompt.max_tokens,
        "logprobs": prompt.top_logprobs or None,
        "json_schema": prompt.json_schema,  # -> StructuredOutputsParams(json=...)
    }


def completion_from_output(output: Any) -> Completion:
    """A vLLM RequestOutput as a Completion (duck-typed, so it is testable without vLLM)."""
    answer = output.outputs[0]
    completion = Completion(
        text=str(answer.text),
        prompt_tokens=len(output.prompt_token_ids or []),
        completion_tokens=len(answer.token_ids),
        finish_reason=str(answer.finish_reason or ""),
    )
    for token_id, step in zip(answer.token_ids, answer.logprobs or [], strict=False):
        chosen = step.get(token_id)
        completion.tokens.append(str(chosen.decoded_token if chosen is not None else ""))
        completion.top_logprobs.append(sorted(
            ((str(entry.decoded_token or ""), float(entry.logprob)) for entry in step.values()),
            key=lambda candidate: -candidate[1],
        ))
    return completion


class VllmEngineBackend:
    def __init__(self, model: str, gpu_memory_utilization: float = 0.9, system_prompt: str = "") -> None:
        self._model_id = model
        self._preset: ModelPreset | None = preset_for(model)
        self._memory = gpu_memory_utilization
        self._system_prompt = system_prompt
        self._engine: Any = None
        self._processor: Any = None

    async def start(self) -> None:
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise ModelLoadError("lvlm_service: the vllm backend needs vLLM: install the service with "
                                 "`pip install .[vllm]` on a GPU machine, or use --backend openai") from exc
        from transformers import AutoProcessor

        preset = self._preset
        args = AsyncEngineArgs(
            model=self._model_id,
            max_model_len=preset.max_model_len if preset else 8192,
            limit_mm_per_prompt={"image": 1, "video": 0},
            trust_remote_code=bool(preset and preset.trust_remote_code),
            mm_processor_kwargs=(preset.mm_processor_kwargs or None) if preset else None,
            enable_prefix_caching=True,
            max_logprobs=20,
            mm_processor_cache_gb=MM_PROCESSOR_CACHE_GB,  # the tuning of `vllm serve`'s presets
            max_num_seqs=MAX_NUM_SEQS,
            enable_chunked_prefill=True,
            max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS,
            gpu_memory_utilization=self._memory,
        )
        try:
            self._engine = AsyncLLM.from_engine_args(args)
            self._processor = AutoProcessor.from_pretrained(self._model_id, trust_remote_code=args.trust_remote_code)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"lvlm_service: vLLM could not load {self._model_id!r} ({exc}); check "
                                 "ANYANOMALY_LVLM_MODEL and the GPU") from exc
        log.info("vLLM engine ready", extra={"model": self._model_id})

    async def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()

    def info(self) -> BackendInfo:
        return BackendInfo("vllm", self._model_id, "cuda", "auto", False)

    def _chat_text(self, text: str) -> str:
        messages: list[dict[str, Any]]
        if self._preset is not None and self._preset.trust_remote_code:  # MiniCPM-V: its own image placeholder
            messages = [{"role": "user", "content": "(<image>./</image>)\n" + text}]
            return str(self._processor.tokenizer.apply_chat_template(messages, tokenize=False,
                                                                    add_generation_prompt=True))
        content = [{"type": "image"}, {"type": "text", "text": text}]
        messages = [{"role": "user", "content": content}]
        if self._system_prompt:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self._system_prompt}]})
        return str(self._processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    async def _one(self, prompt: Prompt) -> Completion:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        settings = sampling_settings(prompt)
        schema = settings.pop("json_schema")
        params = SamplingParams(**settings, structured_outputs=StructuredOutputsParams(json=schema) if schema else None)
        request = {"prompt": self._chat_text(prompt.text), "multi_modal_data": {"image": prompt.rgb()}}
        started = time.perf_counter()
        final = None
        async for output in self._engine.generate(request, params, request_id=uuid.uuid4().hex):
            final = output
        completion = completion_from_output(final)
        completion.engine_seconds = time.perf_counter() - started
        return completion

    async def complete(self, prompts: Sequence[Prompt]) -> list[Completion]:
        return list(await asyncio.gather(*(self._one(p) for p in prompts)))
