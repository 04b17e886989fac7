"""Vision-language models we know how to serve, with their settings and the `vllm serve`
command line for each (the README prints them; a test keeps the two in step), and the input
limits of every model lvlm_service may run: how many pixels an image sent to it may have
(larger ones are downscaled first) and how long its answers may be by default.

    python -m services.lvlm_service.presets      # prints the commands
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class InputLimits:
    max_pixels: int  # every image (key frame, position and temporal context) is downscaled to at most this
    max_tokens: int  # an answer's default length


# The reference asks for a score and one sentence within 128 tokens (METHOD.md section 8).
REFERENCE_LIMITS = InputLimits(max_pixels=1280 * 28 * 28, max_tokens=128)


MM_PROCESSOR_CACHE_GB = 4  # a segment's key frame, sent with every text, is preprocessed once
MAX_NUM_SEQS = 128  # calls decoded together: all cameras' segments in flight, KV of ~11 GB for a 7B model
MAX_NUM_BATCHED_TOKENS = 8192  # prefill per step (about 6 image prompts) beside the running decodes


@dataclass(frozen=True)
class ModelPreset:
    model: str
    max_model_len: int  # prompt (text + image tokens) plus answer; AnyAnomaly needs < 2k
    images_per_prompt: int  # AnyAnomaly sends one image per request
    trust_remote_code: bool
    notes: str  # chat-template quirks and the like
    mm_processor_kwargs: dict[str, Any] = field(default_factory=dict)
    limits: InputLimits = REFERENCE_LIMITS

    def serve_args(self, port: int = 8000) -> list[str]:
        args = [
            "vllm", "serve", self.model, "--port", str(port),
            "--max-model-len", str(self.max_model_len),
            "--limit-mm-per-prompt", json.dumps({"image": self.images_per_prompt, "video": 0}),
            "--max-logprobs", "20",  # fast mode reads the top 20 candidates per token
            # The README's "Model presets" says why each of these is set.
            "--enable-prefix-caching",
            "--mm-processor-cache-gb", str(MM_PROCESSOR_CACHE_GB),
            "--max-num-seqs", str(MAX_NUM_SEQS),
            "--enable-chunked-prefill",
            "--max-num-batched-tokens", str(MAX_NUM_BATCHED_TOKENS),
        ]
        if self.mm_processor_kwargs:
            args += ["--mm-processor-kwargs", json.dumps(self.mm_processor_kwargs)]
        if self.trust_remote_code:
            args.append("--trust-remote-code")
        return args

    def serve_command(self, port: int = 8000) -> str:
        return shlex.join(self.serve_args(port))


# Qwen2.5-VL turns every 28x28 pixels into one token; capping the pixels bounds the prompt
# (a 640x360 frame is ~300 tokens, a 4K frame would be ~10k). 1280 tokens of 28x28 is the cap
# the model card suggests; lvlm_service downscales to it before sending.
_QWEN_PIXELS = {"min_pixels": 3136, "max_pixels": REFERENCE_LIMITS.max_pixels}
PRESETS: dict[str, ModelPreset] = {
    preset.model: preset
    for preset in (
        ModelPreset(
            "Qwen/Qwen2.5-VL-7B-Instruct", max_model_len=8192, images_per_prompt=1, trust_remote_code=False,
            notes="the default; its chat template adds the system line 'You are a helpful assistant.' and puts "
                  "the image where it appears in the message (we send it first)",
            mm_processor_kwargs=_QWEN_PIXELS,
        ),
        ModelPreset(
            "Qwen/Qwen2.5-VL-3B-Instruct", max_model_len=8192, images_per_prompt=1, trust_remote_code=False,
            notes="the reference's vLLM model; half the memory of 7B, weaker at following the score format",
            mm_processor_kwargs=_QWEN_PIXELS,
        ),
        ModelPreset(
            "openbmb/MiniCPM-V-2_6", max_model_len=4096, images_per_prompt=1, trust_remote_code=True,
            notes="needs --trust-remote-code; its template inserts its own '(<image>./</image>)' placeholder and "
                  "it slices large images into tiles (up to 1344x1344); the paper used MiniCPM with beam search, "
                  "vLLM decodes greedily",
            limits=InputLimits(max_pixels=1344 * 1344, max_tokens=128),
        ),
    )
}
DEFAULT_PRESET = "Qwen/Qwen2.5-VL-7B-Instruct"

# Models the transformers backend runs on a CPU box: smaller images keep an answer in seconds.
LOCAL_LIMITS = {
    "Qwen/Qwen2-VL-2B-Instruct": InputLimits(max_pixels=448 * 448, max_tokens=128),
    # The tiny random VLM answers noise: a few tokens are enough to exercise every path.
    "anyanomaly-tiny-qwen2-vl": InputLimits(max_pixels=224 * 224, max_tokens=8),
}


def preset_for(model: str) -> ModelPreset | None:
    return PRESETS.get(model)


def limits_for(model: str) -> InputLimits:
    """The input limits of `model`; the reference's for a model without a preset."""
    preset = PRESETS.get(model)
    return preset.limits if preset is not None else LOCAL_LIMITS.get(model, REFERENCE_LIMITS)


if __name__ == "__main__":
    for preset in PRESETS.values():
        print(f"# {preset.model}: {preset.notes}\n{preset.serve_command()}\n")
