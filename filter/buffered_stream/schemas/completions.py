"""Legacy ``/v1/completions``: fold ``text_completion`` stream events into one answer.

Per choice ``index``: ``text`` concatenated; ``logprobs`` null unless a chunk had non-null, then
its four parallel lists (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``)
concatenated, offsets kept as sent (vLLM streams absolute offsets: rebasing would corrupt them);
``finish_reason`` the last non-empty one (TGI sends ``""`` for "not finished"); other choice keys
(vLLM ``stop_reason``, ``prompt_logprobs``) last non-null, null if only null. The top level follows
the shared OpenAI rules (``openai_base.Envelope``). A single event holding a whole answer, as
vLLM's beam search sends, therefore comes out unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ..core.pieces import Pieces
from ..core.request import Rewrite, Skip
from .openai_base import (
    GENERIC,
    ChoiceAssembler,
    OpenAIProfile,
    copy_logprobs,
    keys,
    malformed,
    merge_last,
    merge_logprobs,
)
from .openai_conventions import (
    STREAM_INTERVAL_PROFILES,
    answer_complete,
    error_body,
    error_event,
    is_end_payload,
    plan_openai_request,
    upstream_error,
    usage_tokens,
)
from .vllm_releases import BEFORE_PROMPT_TOKEN_IDS, CURRENT
from .vllm_releases import LINES as VLLM_LINES

__all__ = [
    "CompletionsAssembler",
    "PROFILES",
    "NAME",
    "PATHS",
    "make_assembler",
    "plan_request",
    "answer_complete",
    "upstream_error",
    "error_event",
    "error_body",
    "usage_tokens",
    "is_end_payload",
    "STREAM_INTERVAL_PROFILES",
]

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


class _Choice:
    __slots__ = ("text", "logprobs", "finish_reason", "extras")

    def __init__(self) -> None:
        self.text = Pieces()
        self.logprobs: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.extras: dict[str, Any] = {}


class CompletionsAssembler(ChoiceAssembler):
    """Legacy completions assembler; ``profile`` None means auto-detect at the end."""

    __slots__ = ()

    def __init__(self, profile: CompletionsProfile | None = None, request: Mapping[str, Any] | None = None) -> None:
        super().__init__(profile, _Choice)

    def add_raw(self, payload: bytes) -> bool:
        return False  # no unparsed fast path (yet): every payload is parsed

    @property
    def output_started(self) -> bool:
        """Some choice carried text (the first-token mark)."""
        return any(state.text.text() for state in self._choices.values())

    def add(self, chunk: dict[str, Any]) -> None:
        state_of = self._choices.state_of
        for choice in self._envelope.read(chunk):
            state = state_of(choice)
            for key, value in choice.items():
                if key == "text":
                    if value is not None:
                        if type(value) is not str:
                            raise malformed("'text' is not a string")
                        state.text.add(value)
                elif key == "finish_reason":
                    if value:
                        if type(value) is not str:
                            raise malformed("'finish_reason' is not a string")
                        self._choices.finish(state, value)
                elif key == "logprobs":
                    if value is not None:
                        state.logprobs = merge_logprobs(state.logprobs, value)
                elif key != "index":
                    merge_last(state.extras, key, value)

    def result(self) -> dict[str, Any]:
        profile = self._profile
        if profile is None:
            profile = PROFILES[self._detected_completions_backend()]
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            choice = {
                "index": index,
                "text": state.text.text() or "",
                "logprobs": copy_logprobs(state.logprobs),
                "finish_reason": state.finish_reason,
                **state.extras,
            }
            for key, empty in profile.choice_keys.items():
                choice.setdefault(key, empty)
            choices.append(choice)
        return self._envelope.answer(profile, "text_completion", choices)

    def _detected_completions_backend(self) -> str:
        """``auto``: the backend; for vLLM, its stream tells only whether it is older than 0.10.2
        (no ``prompt_token_ids`` on the choices): the rest of its lines stream alike."""
        backend = self._detected_backend()
        if backend != "vllm":
            return backend
        if any("prompt_token_ids" in state.extras for state in self._choices.values()):
            return CURRENT
        return BEFORE_PROMPT_TOKEN_IDS


# -- the API's hooks (see ``core.spec.SchemaSpec``) -------------------------------------------------

NAME = "completions"
PATHS = ("/v1/completions", "/completions")
make_assembler = CompletionsAssembler


def plan_request(body: bytes, models: tuple[str, ...], stream_interval: int = 0) -> Rewrite | Skip:
    return plan_openai_request(NAME, body, models, stream_interval)
