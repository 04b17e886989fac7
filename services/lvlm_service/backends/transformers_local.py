"""A local Hugging Face vision-language model (CPU or GPU), for single-machine runs
without vLLM. Prompts are answered in batches of `batch_size` by greedy `generate` on
one worker thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList

from services.common.errors import ModelLoadError
from services.lvlm_service.backends.base import BackendInfo, Completion, Prompt
from services.lvlm_service.backends.tiny_vlm import TINY_VLM_NAME, build_tiny_vlm

log = logging.getLogger("anyanomaly.lvlm.transformers")
_NUMERIC = re.compile(r"^(?:\d|\.\d)[\d.]*$")


class _StopWhen(StoppingCriteria):  # type: ignore[misc]  # transformers is untyped here
    """Ends generation (every row of the batch) once `event` is set."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        stop: torch.BoolTensor = torch.full((input_ids.shape[0],), self._event.is_set(), dtype=torch.bool,
                                            device=input_ids.device)  # type: ignore[assignment]
        return stop


class TransformersBackend:
    def __init__(
        self,
        model: str,
        tiny: bool = False,
        device: str = "auto",
        batch_size: int = 8,
        cache_dir: str = "",
        offline: bool = False,
        system_prompt: str = "",
    ) -> None:
        self._model_id = TINY_VLM_NAME if tiny else model
        self._tiny = tiny
        self._device = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
        self._dtype = torch.float16 if self._device == "cuda" else torch.float32
        self._batch_size = max(1, batch_size)
        self._cache_dir = cache_dir or None
        self._offline = offline
        self._system_prompt = system_prompt
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lvlm-model")
        self._model: Any = None
        self._processor: Any = None
        self._numeric_ids: list[int] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._model, self._processor = await loop.run_in_executor(self._executor, self._load)

    def _load(self) -> tuple[Any, Any]:
        if self._tiny:
            model, processor = build_tiny_vlm()
        else:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            try:
                processor = AutoProcessor.from_pretrained(
                    self._model_id, cache_dir=self._cache_dir, local_files_only=self._offline
                )
                model = AutoModelForImageTextToText.from_pretrained(
                    self._model_id, cache_dir=self._cache_dir, local_files_only=self._offline, dtype=self._dtype
                )
            except (OSError, ValueError) as exc:
                raise ModelLoadError(
                    f"lvlm_service: cannot load the vision-language model {self._model_id!r} ({type(exc).__name__}): "
                    "it is not in the Hugging Face cache and could not be downloaded. Fix: set "
                    "ANYANOMALY_LVLM_MODEL (--model) to a local model folder or a cached model, or use "
                    "--backend openai with a vLLM server; for a smoke run use --models tiny."
                ) from exc
        processor.tokenizer.padding_side = "left"  # batched generation appends after the prompt
        log.info("model loaded", extra={"model": self._model_id, "device": self._device})
        return model.to(self._device).eval(), processor

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def info(self) -> BackendInfo:
        dtype = "float16" if self._dtype == torch.float16 else "float32"
        return BackendInfo("transformers", self._model_id, self._device, dtype, self._tiny)

    async def complete(self, prompts: Sequence[Prompt]) -> list[Completion]:
        loop = asyncio.get_running_loop()
        batches = [prompts[i : i + self._batch_size] for i in range(0, len(prompts), self._batch_size)]
        queued = time.perf_counter()
        abandoned = threading.Event()
        futures = [loop.run_in_executor(self._executor, self._generate, list(b), queued, abandoned) for b in batches]
        try:
            batch_results = await asyncio.gather(*futures)
        except asyncio.CancelledError:
            # The caller went away: batches not started are dropped with their futures, and the
            # one generating stops at its next token instead of holding the model thread.
            abandoned.set()
            raise
        return [completion for batch in batch_results for completion in batch]

    def _conversation(self, prompt: Prompt, image: Image.Image | None = None) -> list[dict[str, Any]]:
        image = image or prompt.rgb()
        messages: list[dict[str, Any]] = []
        if self._system_prompt:
            messages.append({"role": "system", "content": [{"type": "text", "text": self._system_prompt}]})
        messages.append({"role": "user", "content": [{"type": "image", "image": image},
                                                     {"type": "text", "text": prompt.text}]})
        return messages

    def _numeric_token_ids(self) -> list[int]:
        """Ids of the tokens that read as (the start of) a score: "0", "1", ".5", "0.7", ..."""
        if self._numeric_ids is None:
            tokenizer = self._processor.tokenizer
            self._numeric_ids = [i for i in range(len(tokenizer))
                                 if _NUMERIC.match(tokenizer.decode([i]).strip() or "x")]
        return self._numeric_ids

    def _candidates(self, logits: torch.Tensor, count: int) -> list[tuple[str, float]]:
        """The top `count` tokens plus every numeric token, with log-probabilities."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        ids = set(torch.topk(logprobs, min(count, logprobs.numel())).indices.tolist())
        ids.update(self._numeric_token_ids())
        decode = self._processor.tokenizer.decode
        return sorted(((decode([i]), float(logprobs[i])) for i in ids), key=lambda c: -c[1])

    def _generate(self, prompts: list[Prompt], queued: float, abandoned: threading.Event) -> list[Completion]:
        started = time.perf_counter()
        images: dict[bytes, Image.Image] = {}  # a segment's texts share images: convert each once
        for prompt in prompts:
            if prompt.image not in images:
                images[prompt.image] = prompt.rgb()
        inputs = self._processor.apply_chat_template(
            [self._conversation(p, images[p.image]) for p in prompts], add_generation_prompt=True, tokenize=True,
            return_dict=True, return_tensors="pt", processor_kwargs={"padding": True},
        ).to(self._device)
        max_tokens = max(p.max_tokens for p in prompts)
        want_logprobs = max(p.top_logprobs for p in prompts)
        with torch.inference_mode():
            output = self._model.generate(
                **inputs, max_new_tokens=max_tokens, do_sample=False,
                output_scores=bool(want_logprobs), return_dict_in_generate=True,
                stopping_criteria=StoppingCriteriaList([_StopWhen(abandoned)]),
            )
        new_tokens = output.sequences[:, inputs["input_ids"].shape[1] :]
        texts = self._processor.batch_decode(new_tokens, skip_special_tokens=True)
        eos = self._model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        pad = self._processor.tokenizer.pad_token_id
        elapsed = time.perf_counter() - started
        completions = []
        for row, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
            ids = new_tokens[row].tolist()
            generated = [t for t in ids if t not in eos_ids and t != pad]
            completion = Completion(
                text=text.strip(),
                prompt_tokens=int(inputs["attention_mask"][row].sum()),
                completion_tokens=len(generated),
                queue_seconds=started - queued,
                engine_seconds=elapsed / len(prompts),
                finish_reason="stop" if len(generated) < len(ids) or len(ids) < max_tokens else "length",
            )
            if prompt.top_logprobs:
                for step, token in enumerate(generated):
                    completion.tokens.append(self._processor.tokenizer.decode([token]))
                    completion.top_logprobs.append(self._candidates(output.scores[step][row], prompt.top_logprobs))
            completions.append(completion)
        return completions
