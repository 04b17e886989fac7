"""Check, with the real vLLM installed (no GPU needed), that every chat-completions request the
lvlm_service `openai` backend builds validates as vLLM's ChatCompletionRequest and maps to the
intended SamplingParams (temperature 0, max tokens, structured outputs, logprobs), and that
the `vllm serve` command line of every model preset parses with vLLM's own CLI parser.

    pip install 'vllm==0.33.*' && python scripts/check_vllm_requests.py
"""

from __future__ import annotations

from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

from services.common.images import encode_png
from services.lvlm_service.backends.base import Prompt
from services.lvlm_service.backends.openai_http import chat_request
from services.lvlm_service.prompts import Kind, Mode, PromptStyle, build_prompt, multi_text_schema, score_schema


def main() -> None:
    import numpy as np

    image = encode_png(np.zeros((8, 8, 3), np.uint8))
    cases = {
        "standard, JSON": Prompt(image, build_prompt("car", Kind.FRAME, PromptStyle(json=True)), 128, score_schema()),
        "reason first": Prompt(image, build_prompt("car", Kind.FRAME, PromptStyle(mode=Mode.REASON_FIRST, json=True)),
                               128, score_schema(reason_first=True)),
        "multi-text": Prompt(image, build_prompt(["car", "dog"], Kind.TEMPORAL, PromptStyle(json=True)), 256,
                             multi_text_schema(["car", "dog"])),
        "fast": Prompt(image, build_prompt("car", Kind.FRAME, PromptStyle(mode=Mode.FAST)), 4, None, 20),
        "parity text": Prompt(image, build_prompt("car", Kind.FRAME, PromptStyle("Response", True)), 128),
    }
    for name, prompt in cases.items():
        for field in ("vllm", "openai"):
            body = chat_request("Qwen/Qwen2.5-VL-7B-Instruct", prompt, "", field)
            unknown = set(body) - set(ChatCompletionRequest.model_fields)
            assert not unknown, f"{name}: fields vLLM does not know: {unknown}"
            params = ChatCompletionRequest.model_validate(body).to_sampling_params(
                max_tokens=prompt.max_tokens, default_sampling_params={})
            assert params.temperature == 0.0 and params.max_tokens == prompt.max_tokens
            constrained = params.structured_outputs is not None and params.structured_outputs.json is not None
            assert constrained == (prompt.json_schema is not None), name
            assert (params.logprobs or 0) == prompt.top_logprobs, name
            print(f"ok  {name:15} {field:7} structured={constrained} logprobs={params.logprobs}")


def check_serve_commands() -> None:
    import vllm.config.device as device
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from services.lvlm_service.presets import PRESETS

    device.DeviceConfig.__post_init__ = lambda self: None  # no GPU here: skip device detection
    for preset in PRESETS.values():
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(preset.serve_args()[2:])
        assert args.model_tag == preset.model and args.max_model_len == preset.max_model_len
        assert args.limit_mm_per_prompt == {"image": 1, "video": 0} and args.max_logprobs == 20
        assert args.trust_remote_code == preset.trust_remote_code
        print(f"ok  vllm serve flags of {preset.model}")


if __name__ == "__main__":
    main()
    check_serve_commands()
