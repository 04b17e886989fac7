"""Vision-language models we know how to serve, with their settings and the `vllm serve`
command line for each (the README prints them; a test keeps the two in step).

    python -m services.lvlm_service.presets      # prints the commands
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelPreset:
    model: str
    max_model_len: int  # prompt (text + image tokens) plus answer; AnyAnomaly needs < 2k
    images_per_prompt: int  # AnyAnomaly sends one image per request
    trust_remote_code: bool
    notes: str  # chat-template quirks and the like
    mm_processor_kwargs: dict[str, Any] = field(default_factory=dict)

    def serve_args(self, port: int = 8000) -> list[str]:
        args = [
            "vllm", "serve", self.model, "--port", str(port),
            "--max-model-len", str(self.max_model_len),
            "--limit-mm-per-prompt", json.dumps({"image": self.images_per_prompt, "video": 0}),
            "--max-logprobs", "20",  # fast mode reads the top 20 candidates per token
            "--enable-prefix-caching",  # the prompts of one segment share their prefix
        ]
        if self.mm_processor_kwargs:
            args += ["--mm-processor-kwargs", json.dumps(self.mm_processor_kwargs)]
        if self.trust_remote_code:
            args.append("--trust-remote-code")
        return args

    def serve_command(self, port: int = 8000) -> str:
        return shlex.join(self.serve_args(port))


# Qwen2.5-VL turns every 28x28 pixels into one token; capping the pixels bounds the prompt
# (a 640x360 frame is ~300 tokens, a 4K frame would be ~10k).
_QWEN_PIXELS = {"min_pixels": 3136, "max_pixels": 1003520}
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
                  "it slices large images into tiles; the paper used MiniCPM with beam search, vLLM decodes greedily",
        ),
    )
}
DEFAULT_PRESET = "Qwen/Qwen2.5-VL-7B-Instruct"


def preset_for(model: str) -> ModelPreset | None:
    return PRESETS.get(model)


if __name__ == "__main__":
    for preset in PRESETS.values():
        print(f"# {preset.model}: {preset.notes}\n{preset.serve_command()}\n")
