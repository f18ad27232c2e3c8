"""Chat completions, the render: per-choice states into the ``chat.completion`` the backend's own
non-stream call returns, shaped by its ``ChatProfile``.

``content`` is always present (except TGI tool answers); when empty it is null or ``""`` per the
profile, and ``""`` beside calls forced by ``tool_choice`` where vLLM answers so. A call the stream
never gave an id gets a fresh ``call_`` id, as the server's own answer would have one.
"""

from __future__ import annotations

import binascii
import uuid
from contextlib import suppress
from typing import Any

import orjson

from ..openai_base import Choices, Envelope, copy_logprobs, fill_defaults
from .fold import UNSEEN, ChoiceState, ToolCallState
from .profiles import AUDIO, FUNCTION_CALL, REASONING, REASONING_KEYS, REFUSAL, TOOL_CALLS, ChatProfile


def render_chat(profile: ChatProfile, envelope: Envelope, choices: Choices, forced_tool_choice: bool) -> dict[str, Any]:
    """The ``chat.completion``; ``forced_tool_choice``: the request named a tool or required one."""
    answers = [_choice_answer(profile, index, choices[index], forced_tool_choice) for index in sorted(choices)]
    return envelope.answer(profile, "chat.completion", answers)


def _choice_answer(profile: ChatProfile, index: int, state: ChoiceState, forced_tool_choice: bool) -> dict[str, Any]:
    answer: dict[str, Any] = {"index": index, "message": _message(profile, state, forced_tool_choice)}
    if state.logprobs is not UNSEEN:
        answer["logprobs"] = copy_logprobs(state.logprobs)
    answer["finish_reason"] = state.finish_reason
    answer.update(state.extras)
    fill_defaults(answer, profile.choice_keys)
    return answer


def _message(profile: ChatProfile, state: ChoiceState, forced_tool_choice: bool) -> dict[str, Any]:
    texts = {key: pieces.text() for key, pieces in state.texts.items()}
    content = texts.pop("content", None)
    produced: set[str] = set()
    if texts.get(REFUSAL):
        produced.add(REFUSAL)
    if any(texts.get(key) for key in REASONING_KEYS):
        produced.add(REASONING)
    if state.calls:
        produced.add(TOOL_CALLS)
    if state.function_call is not None:
        produced.add(FUNCTION_CALL)
    if state.audio is not None:
        produced.add(AUDIO)

    message: dict[str, Any] = {"role": state.role or "assistant"}
    if content:
        message["content"] = content
    elif TOOL_CALLS in produced and profile.omit_content_beside_tool_calls:
        pass
    elif TOOL_CALLS in produced and forced_tool_choice and profile.forced_tool_choice_content is not None:
        message["content"] = profile.forced_tool_choice_content
    else:
        message["content"] = None if produced & profile.null_content_beside else ""
    message.update(texts)
    message.update(state.others)
    if state.calls:
        calls = state.calls
        message["tool_calls"] = [
            _tool_call(profile, calls[key], position) for position, key in enumerate(sorted(calls))
        ]
    if state.function_call is not None:
        call = state.function_call
        message["function_call"] = {**call.function_extras, "name": call.name, "arguments": call.arguments.text() or ""}
    if state.annotations is not None:
        message["annotations"] = list(state.annotations)
    if state.audio is not None:
        message["audio"] = _audio_answer(state)
    defaults = profile.message_keys
    if any(key in message for key in REASONING_KEYS):  # keep only the reasoning key the server used
        defaults = {key: value for key, value in defaults.items() if key not in REASONING_KEYS}
    fill_defaults(message, defaults)
    return message


def _tool_call(profile: ChatProfile, call: ToolCallState, position: int) -> dict[str, Any]:
    arguments = call.arguments.text() or ""
    if profile.compact_tool_arguments:
        # Not JSON, or nested deeper than JSON can be written (orjson reads 1024 levels, writes 254): kept as streamed.
        with suppress(orjson.JSONDecodeError, orjson.JSONEncodeError):
            arguments = orjson.dumps(orjson.loads(arguments)).decode()
    function = {**call.function_extras, "name": call.name, "arguments": arguments}
    fill_defaults(function, profile.function_keys)
    if call.id is None:  # like the server's own answer would: a fresh id, kept for repeated results
        call.id = f"call_{uuid.uuid4().hex[:24]}"
    call_id = profile.fixed_tool_call_id or call.id
    answer: dict[str, Any] = {**call.extras, "id": call_id, "type": call.type or "function", "function": function}
    if profile.keep_tool_call_index:
        answer["index"] = position
    return answer


def _audio_answer(state: ChoiceState) -> dict[str, Any]:
    audio = dict(state.audio or {})
    if state.audio_data:
        audio["data"] = binascii.b2a_base64(b"".join(state.audio_data), newline=False).decode("ascii")
    transcript = state.audio_transcript.text()
    if transcript is not None:
        audio["transcript"] = transcript
    return audio
