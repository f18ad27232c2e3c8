"""Where a backend's non-stream chat answer differs from what its stream literally says.

The generic assembly rules already give a correct OpenAI answer. A ``ChatProfile`` only records the
*shape* differences a client could notice when comparing with the backend's own ``stream=false``
answer: keys the native answer always carries (vLLM and SGLang dump every null field), when
``content`` is null rather than ``""``, whether tool calls keep the stream's ``index``, and which
chunk's ``created`` the native answer would have. Values never come from a profile, only keys
and the null-vs-empty choice, so a wrong profile cannot invent data.

``AUTO`` (the route's ``auto``) starts generic and is resolved once, at the end, from markers that the servers really put
in their streams (``openai_base.detect_backend``), so it costs nothing per chunk. For vLLM it then
picks the release line the stream shows (``vllm_line``; the lines are ``vllm_releases``). Whatever
the profile, a reasoning key the stream used is the one the answer has.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..openai_base import GENERIC, OpenAIProfile, keys
from ..vllm_releases import (
    BEFORE_PROMPT_TOKEN_IDS,
    BOTH_REASONING_KEYS,
    CURRENT,
    OLDEST_WITH_PROMPT_TOKEN_IDS,
    VllmLine,
)
from ..vllm_releases import LINES as VLLM_LINES

# What can stand beside an empty content, deciding whether a server renders it as null.
TOOL_CALLS = "tool_calls"
FUNCTION_CALL = "function_call"
REFUSAL = "refusal"
REASONING = "reasoning"
AUDIO = "audio"

REASONING_KEYS = ("reasoning_content", "reasoning")


@dataclass(frozen=True, slots=True)
class ChatProfile(OpenAIProfile):
    """The native shape of one backend's ``chat.completion``; defaults describe OpenAI's own."""

    # An empty content is null when one of these was produced, else ``""``.
    null_content_beside: frozenset[str] = frozenset({TOOL_CALLS, FUNCTION_CALL, REFUSAL, AUDIO})
    # TGI answers tool calls with a message that has no ``content`` key at all.
    omit_content_beside_tool_calls: bool = False
    message_keys: Mapping[str, Any] = field(default_factory=keys)
    # SGLang and Ollama keep ``index`` on the non-stream tool calls; everyone else drops it.
    keep_tool_call_index: bool = False
    # TGI: non-stream tool calls have id "0", ``description: null`` and compact JSON arguments.
    fixed_tool_call_id: str | None = None
    function_keys: Mapping[str, Any] = field(default_factory=keys)
    compact_tool_arguments: bool = False
    # A named or ``required`` tool_choice makes vLLM answer ``content: ""`` beside the calls.
    forced_tool_choice_content: str | None = None


def _vllm_profile(line: VllmLine) -> ChatProfile:
    """vLLM: pydantic ``model_dump()`` of its response classes, every declared key null or empty
    (see ``vllm_releases``)."""
    shape = line.shape
    return ChatProfile(
        line.profile,
        null_content_beside=frozenset({TOOL_CALLS, FUNCTION_CALL, REASONING}),
        top_keys=keys(**dict.fromkeys(shape.chat_top)),
        choice_keys=keys(**dict.fromkeys(shape.chat_choice)),
        message_keys=shape.message,
        usage_keys=keys(**dict.fromkeys(shape.usage)),
        forced_tool_choice_content="",
    )


def _sglang_profile(name: str, message_keys: Mapping[str, Any]) -> ChatProfile:
    return ChatProfile(
        name,
        created_from_last_chunk=True,
        null_content_beside=frozenset(),
        choice_keys=keys(logprobs=None, matched_stop=None),
        message_keys=message_keys,
        keep_tool_call_index=True,
    )


def vllm_line(with_prompt_token_ids: bool, reasoning_keys: Mapping[str, bool]) -> str:
    """The vLLM release line a stream shows; ``reasoning_keys``: each reasoning key the deltas
    used, and whether it ever carried text.

    Before 0.10.2 no ``prompt_token_ids``. 0.11.1-0.15 send ``reasoning_content`` on every delta
    (null, or a copy of ``reasoning``); 0.10.2-0.11.0 send it only with text and never
    ``reasoning``. Anything else is the current line: from 0.16 on every line streams alike, so
    a 0.16-0.32 server needs its line named on the route.
    """
    if not with_prompt_token_ids:
        return BEFORE_PROMPT_TOKEN_IDS
    if "reasoning_content" in reasoning_keys:
        if "reasoning" in reasoning_keys or not reasoning_keys["reasoning_content"]:
            return BOTH_REASONING_KEYS
        return OLDEST_WITH_PROMPT_TOKEN_IDS
    return CURRENT


PROFILES: Mapping[str, ChatProfile] = MappingProxyType(
    {
        GENERIC: ChatProfile(GENERIC),
        # OpenAI (openai-python types/chat/chat_completion_message.py): a text stream never sends the
        # ``annotations: []`` (nor always ``refusal``) of its answer.
        "openai": ChatProfile("openai", message_keys=keys(refusal=None, annotations=[])),
        **{line.profile: _vllm_profile(line) for line in VLLM_LINES},
        # SGLang >= 0.5.22 (python/sglang/srt/entrypoints/openai/protocol.py, model_dump_json()):
        # nulls dumped, but a null ``tool_calls`` popped; content never null; calls keep their index.
        # Its ``metadata: {"weight_version": ...}`` (0.5.3 on) is never streamed: not reproducible.
        "sglang": _sglang_profile("sglang", keys(reasoning_content=None)),
        # SGLang up to 0.5.21: ``tool_calls: null`` too (its deltas carry it, so ``auto`` follows).
        "sglang-0.5.21": _sglang_profile("sglang-0.5.21", keys(reasoning_content=None, tool_calls=None)),
        # TGI 3.x, in maintenance (router/src/lib.rs ``OutputMessage``, untagged): text answers are just
        # {role, content}; tool answers {role, tool_calls} are built anew from the parsed call.
        "tgi": ChatProfile(
            "tgi",
            created_from_last_chunk=True,
            omit_content_beside_tool_calls=True,
            fixed_tool_call_id="0",
            function_keys=keys(description=None),
            compact_tool_arguments=True,
        ),
        # llama.cpp server (common/chat.cpp ``common_chat_msg::to_json_oaicompat``, as vendored in
        # llama-cpp-python 0.3.36): optional keys (logprobs, reasoning_content, tool_calls) appear
        # only when non-empty, and an empty content is ``""``, even beside tool calls.
        "llamacpp": ChatProfile(
            "llamacpp", created_from_last_chunk=True, null_content_beside=frozenset(), choice_keys=keys()
        ),
        # llama.cpp builds up to commit 4227c9be4 (vendored in llama-cpp-python 0.3.16; 49bfddeca,
        # in 0.3.17, answers ``""``): content null beside tool calls.
        "llamacpp-4227c9b": ChatProfile(
            "llamacpp-4227c9b",
            created_from_last_chunk=True,
            null_content_beside=frozenset({TOOL_CALLS}),
            choice_keys=keys(),
        ),
        # llama-cpp-python 0.3.36 (llama_cpp/llama_chat_format.py ``_convert_text_completion_to_chat``),
        # recorded: the generic shape (content a string, logprobs always present).
        "llama-cpp-python": ChatProfile("llama-cpp-python"),
        # Ollama (openai/openai.go ``ChatCompletion``): Go structs with omitempty, no logprobs key,
        # content always a string, reasoning only when thinking.
        "ollama": ChatProfile(
            "ollama",
            null_content_beside=frozenset(),
            choice_keys=keys(),
            keep_tool_call_index=True,
        ),
    }
)

# ``auto``: generic while the stream is folded, then the backend the finished stream reveals.
AUTO = ChatProfile("auto", detect=True)
