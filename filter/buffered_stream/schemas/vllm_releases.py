"""vLLM's native non-stream shape, release line by release line, for chat and legacy completions.

vLLM answers ``stream=false`` with ``model_dump()`` of its pydantic response classes
(``ChatCompletionResponse``, ``ChatMessage``, ``CompletionResponse``, ``UsageInfo``; in
``vllm/entrypoints/openai/protocol.py`` up to 0.15, then ``.../openai/chat_completion/protocol.py``
and ``.../openai/completion/protocol.py``): every field a class declares is there, null or empty,
even where its stream (``model_dump_json(exclude_unset=True)``) never sends it. Each release line
below is the first release whose answer has one more such key (or one fewer), read from the
published wheels, so that a profile matches every release of its line key for key.

Stream markers (what ``auto`` can see): from 0.10.2 on every first chunk carries
``prompt_token_ids`` (null unless asked for); 0.11.1-0.15 copy ``reasoning`` into
``reasoning_content`` on every delta, so both keys are streamed (``reasoning_content: null`` on
each chunk); 0.16 streams ``reasoning`` only (PR #33402); 0.24 drops an empty ``tool_calls``
from answers and deltas (PR #44105), which its stream cannot show.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .openai_base import keys


@dataclass(frozen=True, slots=True)
class VllmShape:
    """The keys one release line's answers always carry (their values are null, or ``[]``)."""

    chat_top: tuple[str, ...]
    chat_choice: tuple[str, ...]
    message: Mapping[str, Any]
    completion_top: tuple[str, ...]
    completion_choice: tuple[str, ...]
    usage: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VllmLine:
    """A route profile name, the releases it matches and their shape."""

    profile: str
    versions: str
    shape: VllmShape
    changed: str = ""  # what its answers gained or lost against the line before


def _plus(shape: VllmShape, *, message: Mapping[str, Any] | None = None, **added: tuple[str, ...]) -> VllmShape:
    extended: dict[str, Any] = {name: getattr(shape, name) + more for name, more in added.items()}
    if message is not None:
        extended["message"] = message
    return replace(shape, **extended)


def _message(*, tool_calls: bool = True, reasoning: tuple[str, ...]) -> Mapping[str, Any]:
    fields: dict[str, Any] = dict(refusal=None, annotations=None, audio=None, function_call=None)
    if tool_calls:
        fields["tool_calls"] = []
    fields.update(dict.fromkeys(reasoning))
    return keys(**fields)


_V0_10 = VllmShape(
    chat_top=("service_tier", "system_fingerprint", "prompt_logprobs", "kv_transfer_params"),
    chat_choice=("logprobs", "stop_reason"),
    message=_message(reasoning=("reasoning_content",)),
    completion_top=("service_tier", "system_fingerprint", "kv_transfer_params"),
    completion_choice=("logprobs", "stop_reason", "prompt_logprobs"),
    usage=("prompt_tokens_details",),
)
_V0_10_2 = _plus(
    _V0_10,
    chat_top=("prompt_token_ids",),
    chat_choice=("token_ids",),
    completion_choice=("token_ids", "prompt_token_ids"),
)
_V0_11_1 = _plus(_V0_10_2, message=_message(reasoning=("reasoning", "reasoning_content")))
_V0_16 = _plus(_V0_11_1, message=_message(reasoning=("reasoning",)))
_V0_21 = _plus(
    _V0_16, chat_top=("prompt_text",), chat_choice=("routed_experts",), completion_choice=("routed_experts",)
)
_V0_24 = _plus(_V0_21, message=_message(tool_calls=False, reasoning=("reasoning",)))
_V0_25 = _plus(_V0_24, chat_top=("metrics",), completion_top=("metrics",))
_V0_26 = _plus(_V0_25, chat_top=("ec_transfer_params",), completion_top=("ec_transfer_params",))
_V0_28 = _plus(_V0_26, usage=("completion_tokens_details",))
_V0_33 = _plus(_V0_28, chat_choice=("weight_versions",), completion_choice=("weight_versions",))

# Newest first; ``vllm`` is the current release line.
LINES: tuple[VllmLine, ...] = (
    VllmLine("vllm", ">= 0.33", _V0_33, "choices gain weight_versions"),
    VllmLine("vllm-0.28", "0.28 - 0.32", _V0_28, "usage gains completion_tokens_details"),
    VllmLine("vllm-0.26", "0.26 - 0.27", _V0_26, "ec_transfer_params"),
    VllmLine("vllm-0.25", "0.25", _V0_25, "metrics"),
    VllmLine("vllm-0.24", "0.24", _V0_24, "an empty tool_calls is dropped (PR #44105)"),
    VllmLine("vllm-0.21", "0.21 - 0.23", _V0_21, "prompt_text; choices gain routed_experts"),
    VllmLine("vllm-0.16", "0.16 - 0.20", _V0_16, "reasoning only, reasoning_content removed (PR #33402)"),
    VllmLine("vllm-0.11.1", "0.11.1 - 0.15", _V0_11_1, "reasoning beside the deprecated reasoning_content, same value"),
    VllmLine("vllm-0.11.0", "0.10.2 - 0.11.0", _V0_10_2, "prompt_token_ids; choices gain token_ids"),
    VllmLine("vllm-0.10", "0.10.0 - 0.10.1", _V0_10, "refusal, annotations, audio, function_call, service_tier"),
)

CURRENT = LINES[0].profile
OLDEST_WITH_PROMPT_TOKEN_IDS = "vllm-0.11.0"
BEFORE_PROMPT_TOKEN_IDS = "vllm-0.10"
BOTH_REASONING_KEYS = "vllm-0.11.1"
