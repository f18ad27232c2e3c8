"""Where a backend's non-stream answer differs from what its stream literally says.

The generic assembly rules already give a correct OpenAI answer. A ``Profile`` only records the
*shape* differences a client could notice when comparing with the backend's own ``stream=false``
answer: keys the native answer always carries (vLLM and SGLang dump every null field), when
``content`` is null rather than ``""``, whether tool calls keep the stream's ``index``, and which
chunk's ``created`` the native answer would have. Values never come from a profile, only keys
and the null-vs-empty choice, so a wrong profile cannot invent data.

``auto`` starts generic and is resolved once, at the end, from markers that the servers really put
in their streams (see ``detect``), so it costs nothing per chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# What can stand beside an empty content, deciding whether a server renders it as null.
TOOL_CALLS = "tool_calls"
FUNCTION_CALL = "function_call"
REFUSAL = "refusal"
REASONING = "reasoning"
AUDIO = "audio"

REASONING_KEYS = ("reasoning_content", "reasoning")


def _keys(**defaults: Any) -> Mapping[str, Any]:
    return MappingProxyType(defaults)


@dataclass(frozen=True, slots=True)
class Profile:
    """The native non-stream shape of one backend; defaults describe OpenAI's own answer."""

    name: str
    # SGLang, TGI and llama.cpp stamp every chunk and take the time at the end of generation.
    created_from_last_chunk: bool = False
    # An empty content is null when one of these was produced, else ``""``.
    null_content_beside: frozenset[str] = frozenset({TOOL_CALLS, FUNCTION_CALL, REFUSAL, AUDIO})
    # TGI answers tool calls with a message that has no ``content`` key at all.
    omit_content_beside_tool_calls: bool = False
    # Keys (with their empty value) the native answer carries even when the stream never sent
    # them. List defaults are copied per answer.
    top_keys: Mapping[str, Any] = field(default_factory=_keys)
    choice_keys: Mapping[str, Any] = field(default_factory=lambda: _keys(logprobs=None))
    message_keys: Mapping[str, Any] = field(default_factory=_keys)
    usage_keys: Mapping[str, Any] = field(default_factory=_keys)
    completion_top_keys: Mapping[str, Any] = field(default_factory=_keys)
    completion_choice_keys: Mapping[str, Any] = field(default_factory=lambda: _keys(logprobs=None))
    # SGLang and Ollama keep ``index`` on the non-stream tool calls; everyone else drops it.
    keep_tool_call_index: bool = False
    # TGI: non-stream tool calls have id "0", ``description: null`` and compact JSON arguments.
    fixed_tool_call_id: str | None = None
    function_keys: Mapping[str, Any] = field(default_factory=_keys)
    compact_tool_arguments: bool = False
    # A named or ``required`` tool_choice makes vLLM answer ``content: ""`` beside the calls.
    forced_tool_choice_content: str | None = None


GENERIC = Profile("generic")

PROFILES: Mapping[str, Profile] = MappingProxyType(
    {
        "generic": GENERIC,
        # A text stream never sends the ``annotations: []`` (nor always ``refusal``) of its answer.
        "openai": Profile("openai", message_keys=_keys(refusal=None, annotations=[])),
        # pydantic ``model_dump()`` of its response classes: every optional key, null or empty.
        "vllm": Profile(
            "vllm",
            null_content_beside=frozenset({TOOL_CALLS, FUNCTION_CALL, REASONING}),
            top_keys=_keys(service_tier=None, system_fingerprint=None, prompt_logprobs=None, kv_transfer_params=None),
            choice_keys=_keys(logprobs=None, stop_reason=None),
            message_keys=_keys(
                refusal=None,
                annotations=None,
                audio=None,
                function_call=None,
                tool_calls=[],
                reasoning_content=None,
            ),
            usage_keys=_keys(prompt_tokens_details=None),
            completion_top_keys=_keys(service_tier=None, system_fingerprint=None, kv_transfer_params=None),
            completion_choice_keys=_keys(logprobs=None, stop_reason=None, prompt_logprobs=None),
            forced_tool_choice_content="",
        ),
        # Dumps nulls too, but content is never null and tool calls keep their index.
        "sglang": Profile(
            "sglang",
            created_from_last_chunk=True,
            null_content_beside=frozenset(),
            choice_keys=_keys(logprobs=None, matched_stop=None),
            message_keys=_keys(reasoning_content=None, tool_calls=None),
            completion_choice_keys=_keys(logprobs=None, matched_stop=None),
            keep_tool_call_index=True,
        ),
        # Text answers are just {role, content}; tool answers are built anew from the parsed call.
        "tgi": Profile(
            "tgi",
            created_from_last_chunk=True,
            omit_content_beside_tool_calls=True,
            fixed_tool_call_id="0",
            function_keys=_keys(description=None),
            compact_tool_arguments=True,
        ),
        # Optional keys (logprobs, reasoning_content, tool_calls) appear only when non-empty.
        "llamacpp": Profile(
            "llamacpp",
            created_from_last_chunk=True,
            null_content_beside=frozenset({TOOL_CALLS}),
            choice_keys=_keys(),
        ),
        # Recorded: its answers have the generic shape (content a string, logprobs always present).
        "llama-cpp-python": Profile("llama-cpp-python"),
        # Go structs with omitempty: no logprobs key, content always a string.
        "ollama": Profile(
            "ollama",
            null_content_beside=frozenset(),
            choice_keys=_keys(),
            completion_choice_keys=_keys(),
            keep_tool_call_index=True,
        ),
    }
)

AUTO = "auto"
PROFILE_NAMES: tuple[str, ...] = (AUTO, *PROFILES)


def get_profile(name: str) -> Profile | None:
    """The named profile; None for ``auto`` (resolved from the stream); ValueError if unknown."""
    if name == AUTO:
        return None
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILE_NAMES)}") from None


def detect(
    *,
    first_id: str | None,
    top_extras: Mapping[str, Any],
    choice_extra_keys: set[str],
) -> Profile:
    """The profile a finished stream reveals, from markers its server really emits.

    Ollama: ``system_fingerprint: "fp_ollama"``. llama.cpp: a ``timings`` object. SGLang:
    ``matched_stop`` on choices. vLLM: ``stop_reason`` on choices or ``prompt_token_ids``. TGI: only
    empty ids (``""``). Anything else stays generic.
    """
    if top_extras.get("system_fingerprint") == "fp_ollama":
        return PROFILES["ollama"]
    if "timings" in top_extras:
        return PROFILES["llamacpp"]
    if "matched_stop" in choice_extra_keys:
        return PROFILES["sglang"]
    if "stop_reason" in choice_extra_keys or "prompt_token_ids" in top_extras:
        return PROFILES["vllm"]
    if first_id == "":
        return PROFILES["tgi"]
    return GENERIC


def fill_defaults(target: dict[str, Any], defaults: Mapping[str, Any]) -> None:
    """Add the keys a native answer always carries, without touching what the stream set."""
    for key, empty in defaults.items():
        if key not in target:
            target[key] = [] if type(empty) is list else empty
