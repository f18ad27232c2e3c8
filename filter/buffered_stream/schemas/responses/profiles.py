"""The Responses API's profiles: where each backend's non-stream ``response`` differs from its
stream's terminal object, and ``detect``, which tells the backend from a finished stream (``AUTO``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True, slots=True)
class ResponsesProfile:
    """Where a backend's non-stream ``response`` differs from its stream's terminal object.

    The defaults describe OpenAI, whose terminal object *is* the non-stream answer. A profile only
    reshapes (keys, ids derived from other values, usage key names); values come from the stream.
    """

    name: str
    # llama.cpp: the non-stream object has ``completed_at`` (the same clock reading as its
    # ``created_at``); the stream's terminal object has no ``completed_at``.
    completed_at_from_created_at: bool = False
    # llama.cpp: non-stream reasoning items carry ``status``; the stream's do not.
    reasoning_item_status: str | None = None
    # Ollama: the non-stream builder answers function calls only, dropping the text streamed
    # before them (its stream keeps that text as a message item after the calls).
    drop_messages_beside_function_calls: bool = False
    # Ollama: non-stream reasoning and function call item ids derive from the response id
    # (``rs_<id>``, ``fc_<id>_<n>``); the stream's are random numbers.
    item_ids_from_response_id: bool = False
    # Ollama: the non-stream ``reasoning`` omits an unset ``effort``/``summary``; the stream's has null.
    drop_null_reasoning_keys: bool = False
    # Ollama: the non-stream ``tools`` re-serialise the request's (namespace tools keep their
    # nested ``tools``); the stream's list drops nested tools.
    tools_from_request: bool = False
    # SGLang: the non-stream ``usage`` keeps chat-completions key names; its stream renames them.
    chat_usage_keys: bool = False
    # ``auto``: the answer takes the shape of the backend the finished stream reveals (``detect``).
    detect: bool = False


GENERIC = ResponsesProfile("generic")

# OpenAI: ``response.completed`` carries the very object a non-stream call returns
# (openai-python ``lib/streaming/responses/_responses.py`` takes it as the final response).
OPENAI = ResponsesProfile("openai")

# vLLM (0.11-0.24, ``vllm/entrypoints/openai/responses/serving.py``, earlier
# ``serving_responses.py``): ``responses_stream_generator`` ends with the object
# ``responses_full_generator`` builds, the very function the non-stream path returns, so nothing
# differs but random item ids (``msg_``/``rs_``/``fc_`` + uuid, drawn anew by each builder). Its
# terminal event is typed ``response.completed`` even when ``status`` is ``incomplete``; a
# generation error ends the stream without a terminal event (its error object fails vLLM's own
# event validation, so the body is cut), which reads as truncated.
VLLM = ResponsesProfile("vllm")

# llama.cpp ``llama-server`` (``tools/server/server-task.cpp``: ``to_json_oaicompat_resp_final``
# vs ``to_json_oaicompat_resp_stream``/``_partial``): the final object has ``completed_at`` and
# ``created_at`` from one ``std::time`` reading and reasoning items with ``status: completed``; the
# stream's terminal object has neither. Its events carry no ``sequence_number``,
# ``output_index`` or ``content_index``, and ``response.created`` only ``{id, object, status}``.
LLAMACPP = ResponsesProfile("llamacpp", completed_at_from_created_at=True, reasoning_item_status="completed")

# Ollama (v0.13.3 to v0.33, ``openai/responses.go``: ``ToResponse`` vs
# ``ResponsesStreamConverter``; ``middleware/openai.go`` sets ``completed_at``): separate builders.
# ``created_at`` is the stream's completion time vs the last chat chunk's time (both the end of
# generation, wall-clock); item ids, tool serialisation, ``reasoning`` nulls and text before tool
# calls differ as the fields above say. Function call ``call_id`` values are random per call.
OLLAMA = ResponsesProfile(
    "ollama",
    drop_messages_beside_function_calls=True,
    item_ids_from_response_id=True,
    drop_null_reasoning_keys=True,
    tools_from_request=True,
)

# SGLang (``python/sglang/srt/entrypoints/openai/serving_responses.py`` with ``protocol.py``'s
# ``ResponsesResponse.usage: UsageInfo``; streaming works for gpt-oss/Harmony models only): the
# terminal object is ``responses_full_generator``'s, like vLLM, but its usage is renamed to
# ``input_tokens``... for the event while the non-stream answer keeps ``UsageInfo``
# (``prompt_tokens``, ``total_tokens``, ``completion_tokens``, ``prompt_tokens_details``,
# ``reasoning_tokens``). The stream reads cached tokens from a key ``UsageInfo`` lacks, so a cache
# count (``--enable-cache-report``) cannot be known: ``prompt_tokens_details`` comes out null.
# Later SGLang serialises ``usage`` in the Responses shape on both paths; its stream then reports
# input and output tokens as 0, which no assembler can recover (use ``generic`` there).
SGLANG = ResponsesProfile("sglang", chat_usage_keys=True)

# Backend name -> its profile (``auto`` is ``AUTO``, below).
PROFILES: Mapping[str, ResponsesProfile] = MappingProxyType(
    {"generic": GENERIC, "openai": OPENAI, "vllm": VLLM, "llamacpp": LLAMACPP, "ollama": OLLAMA, "sglang": SGLANG}
)
# The profile that detects the backend at the end of the stream (``detect`` below).
AUTO = ResponsesProfile("auto", detect=True)

_OLLAMA_RESPONSE_ID = re.compile(r"resp_[0-9]+")


def detect(response: Mapping[str, Any], sequence_numbers: bool) -> ResponsesProfile:
    """The profile a finished stream reveals, from markers its server really sends.

    llama.cpp: events without ``sequence_number``. Ollama: a response id of decimal digits
    (``resp_123456``; OpenAI's are hex). SGLang: an ``error`` key but no ``background`` key (its
    ``ResponsesResponse`` has no ``background``; vLLM's has no ``error``). Anything else needs no
    reshaping (OpenAI, vLLM): generic.
    """
    if not sequence_numbers:
        return LLAMACPP
    response_id = response.get("id")
    if isinstance(response_id, str) and _OLLAMA_RESPONSE_ID.fullmatch(response_id):
        return OLLAMA
    if "error" in response and "background" not in response:
        return SGLANG
    return GENERIC
