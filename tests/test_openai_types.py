"""Answers are what the official client parses: ``openai.types`` models in strict mode.

Strict validation rejects coercions (a number where a string belongs, a string id as an int), so
a wrongly typed field in an assembled answer fails here even when JSON equality would not notice.
"""

from __future__ import annotations

import orjson
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ValidationError

from buffered_stream.core.convert import StreamConverter
from support.apis import api_of
from support.corpus import Case, answering, convert, each_case, load

TYPES: dict[str, type[BaseModel]] = {"chat": ChatCompletion, "completions": Completion}
# Server values kept verbatim on purpose, which openai-python's types do not allow.
VERBATIM_NON_OPENAI = {
    "tgi-no-usage": "TGI's finish_reason 'stop_sequence'",
    "vllm-completions-echo-logprobs": "the echoed first prompt token has a null logprob, as vLLM sends it",
}


@each_case("chat", "completions", where=lambda case: answering(case) and case.name not in VERBATIM_NON_OPENAI)
def test_every_assembled_answer_is_a_valid_openai_object(case: Case) -> None:
    answer = convert(case, [case.body])
    parsed = TYPES[case.api].model_validate(answer, strict=True)
    assert len(parsed.choices) == len(answer["choices"])


@pytest.mark.parametrize("profile", ["generic", "auto", "openai"])
def test_generic_chat_answer_round_trips_through_the_client_type(profile: str) -> None:
    body = load("chat", "openai-tool-call").body
    converter = StreamConverter(api_of("chat"), profile)
    converter.feed(body)
    answer = orjson.loads(converter.finish())
    parsed = ChatCompletion.model_validate(answer, strict=True)
    call = parsed.choices[0].message.tool_calls[0]
    assert call.id == "call_DdmO9pD3xa9XTPNJ32zg2hcA" and call.function.name == "get_weather"
    assert parsed.choices[0].finish_reason == "tool_calls"
    assert parsed.usage is not None and parsed.usage.completion_tokens_details.reasoning_tokens == 0


def test_strict_validation_catches_a_wrong_type() -> None:
    case = load("chat", "openai-text")
    answer = convert(case, [case.body])
    answer["choices"][0]["message"]["content"] = 42
    with pytest.raises(ValidationError):
        ChatCompletion.model_validate(answer, strict=True)
    case = load("completions", "llama-cpp-python-completions-logprobs")
    completion = convert(case, [case.body])
    completion["created"] = "1795644709"
    with pytest.raises(ValidationError):
        Completion.model_validate(completion, strict=True)
