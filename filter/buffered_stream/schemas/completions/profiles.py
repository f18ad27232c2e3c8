"""Legacy completions, the profiles: the native ``text_completion`` shape of each backend (the
fields every OpenAI-style answer shares are all it needs), and ``AUTO``, which detects it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ..openai_base import GENERIC, OpenAIProfile, keys
from ..vllm_releases import LINES as VLLM_LINES

# The native ``text_completion`` shape of each backend: the shared fields are all it needs.
CompletionsProfile = OpenAIProfile

PROFILES: Mapping[str, CompletionsProfile] = MappingProxyType(
    {
        GENERIC: CompletionsProfile(GENERIC),
        "openai": CompletionsProfile("openai"),
        # pydantic ``model_dump()``: every declared key, null or empty (see ``vllm_releases``).
        **{
            line.profile: CompletionsProfile(
                line.profile,
                top_keys=keys(**dict.fromkeys(line.shape.completion_top)),
                choice_keys=keys(**dict.fromkeys(line.shape.completion_choice)),
                usage_keys=keys(**dict.fromkeys(line.shape.usage)),
            )
            for line in VLLM_LINES
        },
        # Both SGLang lines answer completions alike (null token ids popped).
        **{
            name: CompletionsProfile(
                name, created_from_last_chunk=True, choice_keys=keys(logprobs=None, matched_stop=None)
            )
            for name in ("sglang", "sglang-0.5.21")
        },
        "tgi": CompletionsProfile("tgi", created_from_last_chunk=True),
        **{name: CompletionsProfile(name, created_from_last_chunk=True) for name in ("llamacpp", "llamacpp-4227c9b")},
        "llama-cpp-python": CompletionsProfile("llama-cpp-python"),
        # Go structs with omitempty: no logprobs key.
        "ollama": CompletionsProfile("ollama", choice_keys=keys()),
    }
)

# ``auto``: generic while the stream is folded, then the backend the finished stream reveals.
AUTO = CompletionsProfile("auto", detect=True)
