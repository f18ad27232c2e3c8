"""Each server's native Messages answer: the profiles, and how ``AUTO`` tells them apart.

A ``MessagesProfile`` shapes the answer like one server's own ``stream: false`` answer: key order,
which null or empty keys it leaves out, what an answer without blocks looks like. Profiles shape
keys only; every value comes from the stream. ``AUTO`` picks one from the shape of
``message_start`` (see ``detect``) and falls back to ``GENERIC``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# Key orders of the native answers: Anthropic's and Go's structs, and the pydantic models and
# ordered JSON of vLLM, SGLang and llama.cpp.
MODEL_FIRST_ORDER = ("id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage")
CONTENT_FIRST_ORDER = ("id", "type", "role", "content", "model", "stop_reason", "stop_sequence", "usage")


def _keys(**defaults: Any) -> Mapping[str, Any]:
    return MappingProxyType(defaults)


@dataclass(frozen=True, slots=True)
class MessagesProfile:
    """The native ``stream: false`` shape of one server; ``doc`` names the server version and source."""

    name: str
    doc: str
    # The answer's keys in this order; other keys follow in the order the stream gave them.
    key_order: tuple[str, ...] = MODEL_FIRST_ORDER
    # Keys the answer always has, with their value when the stream never set them.
    defaults: Mapping[str, Any] = field(
        default_factory=lambda: _keys(
            type="message", role="assistant", content=[], stop_reason=None, stop_sequence=None
        )
    )
    # pydantic ``model_dump(exclude_none=True)``: null keys of the message, its usage and blocks go.
    drop_none: bool = False
    # Go ``omitempty``: these message keys go when null or "".
    omit_empty: frozenset[str] = frozenset()
    # ``content`` of an answer without any block: [] (Anthropic), null (Go nil slice) or one empty
    # text block (SGLang: "Anthropic requires at least one content block").
    empty_content: tuple[Mapping[str, Any], ...] | None = ()
    # Resolve the profile from ``message_start`` (``auto`` only).
    detect: bool = False


AUTO = MessagesProfile(
    "auto", "Detected from the message_start shape (see detect()); generic when unknown.", detect=True
)

GENERIC = MessagesProfile(
    "generic",
    "Anthropic's documented Message shape, exactly as the stream built it (nothing dropped).",
)

# Backend name -> its profile (``AUTO`` is not one: a route's ``auto`` and unknown names get it).
PROFILES: Mapping[str, MessagesProfile] = MappingProxyType(
    {
        "generic": GENERIC,
        "anthropic": MessagesProfile(
            "anthropic",
            "Anthropic's own API (messages-streaming docs; anthropic-sdk-python "
            "src/anthropic/lib/streaming/_messages.py accumulate_event): the non-stream answer is the "
            "message_start snapshot with blocks, stop fields and the cumulative usage folded in "
            "(the generic rules, named for routes to Anthropic).",
        ),
        "vllm": MessagesProfile(
            "vllm",
            "vLLM main (commit 82df3f4): vllm/entrypoints/anthropic/serving.py builds both answers from "
            "protocol.py's AnthropicMessagesResponse; api_router.py sends model_dump(exclude_none=True), "
            "so no stop_sequence or cache keys when null. Its stream dumps exclude_unset (message_start "
            "has no type/role) and ends with data: [DONE]; thinking signatures are random uuid hex, "
            "different in each answer.",
            key_order=CONTENT_FIRST_ORDER,
            defaults=_keys(type="message", role="assistant", content=[]),
            drop_none=True,
        ),
        "sglang": MessagesProfile(
            "sglang",
            "SGLang main (2026): python/sglang/srt/entrypoints/anthropic/serving.py and "
            "response_conversion.py, model_dump(exclude_none=True) of protocol.py's "
            "AnthropicMessagesResponse; its usage split puts input_tokens on message_start only "
            "(message_delta carries output_tokens), and an answer without blocks gets one empty text block.",
            key_order=CONTENT_FIRST_ORDER,
            defaults=_keys(type="message", role="assistant", content=[]),
            drop_none=True,
            empty_content=(_keys(type="text", text=""),),
        ),
        "llamacpp": MessagesProfile(
            "llamacpp",
            "llama.cpp llama-server master (2026; /v1/messages since PR #17570): tools/server/server-task.cpp "
            "to_json_anthropic / to_json_anthropic_stream / cmpl_partial::to_json_anthropic. "
            "nlohmann ordered_json: content before model; usage {cache_read_input_tokens, "
            "input_tokens, output_tokens}, message_delta usage {output_tokens} only; thinking "
            'signature ""; tool_use starts without input.',
            key_order=CONTENT_FIRST_ORDER,
        ),
        "ollama": MessagesProfile(
            "ollama",
            "Ollama v0.33.0-rc2 (Anthropic API since 0.14.0): anthropic/anthropic.go ToMessagesResponse and "
            "StreamConverter. Go structs with omitempty: stop_reason/stop_sequence omitted when "
            "empty, thinking without signature, no ping; message_start input_tokens may be an "
            "estimate that message_delta corrects; an answer without blocks has content null.",
            defaults=_keys(type="message", role="assistant"),
            omit_empty=frozenset({"stop_reason", "stop_sequence"}),
            empty_content=None,
        ),
    }
)


def detect(message: Mapping[str, Any]) -> MessagesProfile:
    """The profile a ``message_start.message`` reveals by its keys (their order is the server's).

    vLLM dumps it ``exclude_unset``: no ``type``. pydantic servers put ``content`` before ``model``:
    with null stop keys that is llama.cpp, without (``exclude_none``) SGLang. Go's omitempty drops
    the null stop keys from Ollama's, which keeps Anthropic's order. Anything else is generic.
    """
    if "type" not in message:
        return PROFILES["vllm"]
    keys = list(message)
    if "content" in message and "model" in message and keys.index("content") < keys.index("model"):
        return PROFILES["llamacpp"] if "stop_reason" in message else PROFILES["sglang"]
    if "stop_reason" not in message and "stop_sequence" not in message:
        return PROFILES["ollama"]
    return GENERIC
