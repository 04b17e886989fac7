"""Write the parts of vLLM's chat-completions request schema that lvlm_service relies on to
tests/helpers/vllm_chat_protocol.json, for the tests' fake server to check requests against.

Run it with vLLM installed (any machine, no GPU needed):
    python scripts/export_vllm_protocol.py
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.sampling_params import StructuredOutputsParams

OUT = Path(__file__).resolve().parent.parent / "tests" / "helpers" / "vllm_chat_protocol.json"


def main() -> None:
    schema: dict[str, Any] = ChatCompletionRequest.model_json_schema()
    content_parts = sorted(
        str(definition["properties"]["type"].get("const") or definition["properties"]["type"]["enum"][0])
        for name, definition in schema.get("$defs", {}).items()
        if name.startswith("ChatCompletionContentPart") and "type" in definition.get("properties", {})
    )
    document = {
        "vllm_version": version("vllm"),
        "request_fields": sorted(ChatCompletionRequest.model_fields),
        "removed_fields": ["guided_json", "guided_regex", "guided_choice", "guided_grammar",
                           "guided_whitespace_pattern", "guided_decoding_backend"],
        "structured_outputs_fields": sorted(f for f in StructuredOutputsParams.__dataclass_fields__
                                            if not f.startswith("_")),
        "content_part_types": content_parts,
        "max_top_logprobs_default": 20,
    }
    OUT.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {OUT} (vLLM {document['vllm_version']})")


if __name__ == "__main__":
    main()
