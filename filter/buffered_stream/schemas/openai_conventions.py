"""The OpenAI family's conventions around the answer, shared by chat and legacy completions
(``OpenAIFamilyApi``, the base of both ``Api`` classes): the request rewrite (``stream: true`` plus ``stream_options.include_usage``, so the stream carries the
usage the non-stream answer has), ``[DONE]`` as the end of the stream, the many shapes of
in-stream errors its servers send, its error body and its usage token names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ..core.api import Api, ProfileT
from ..core.assembler import shown, writable
from ..core.errors import BAD_UPSTREAM, ConversionError, http_status_in, upstream_reported
from ..core.request import (
    UNSTREAMABLE,
    Rewrite,
    Skip,
    load_non_stream_request,
    model_of,
    stream_body,
    with_include_usage,
)

# Request keys the assembly needs to reproduce the native answer exactly (kept, small, per request).
_ANSWER_HINT_KEYS = ("tool_choice",)
# Request keys whose answer a stream cannot carry (vLLM / SGLang extensions, OpenAI best_of).
_UNSTREAMABLE_KEYS = ("prompt_logprobs", "return_prompt_token_ids", "return_meta_info", "use_beam_search")
_END_PAYLOAD = b"[DONE]"
# The per-request chunk size ("Number of tokens to batch into each streamed chunk. Raises the
# server's `--stream-interval` for this request. ... The first and last chunks are always sent
# immediately."), read from the published vLLM wheels: ``ChatCompletionRequest`` and
# ``CompletionRequest`` (``vllm/entrypoints/openai/{chat_completion,completion}/protocol.py``) have it
# from 0.27.0 on, passed to ``SamplingParams.stream_interval`` and applied per request by
# ``vllm/v1/engine/output_processor.py`` (``RequestState.make_request_output``); 0.26 and older
# ignore it (``OpenAIBaseModel``: ``extra="allow"``, logged at debug). Responses and Anthropic
# Messages never read it. SGLang's OpenAI requests drop unknown keys (pydantic's default) and take
# a per-request ``stream_interval`` only in the native ``/generate`` sampling params; TGI (serde
# without ``deny_unknown_fields``), Ollama (gin ``ShouldBindJSON``), llama.cpp and llama-cpp-python
# ignore it; OpenAI's own API rejects unknown parameters. So: the vLLM lines that include a release
# honouring it (``vllm-0.26`` covers 0.26 - 0.27: 0.27 honours it, 0.26 ignores it), and no other
# profile, ``auto`` included (it learns the server from the stream, after the request has left).
STREAM_INTERVAL = "stream_interval"
STREAM_INTERVAL_PROFILES = frozenset({"vllm", "vllm-0.28", "vllm-0.26"})
_DEFAULT_ERROR_STATUS = BAD_UPSTREAM
_MESSAGE_EXCERPT_CHARS = 100


def plan_openai_request(schema: str, body: bytes, models: tuple[str, ...], stream_interval: int = 0) -> Rewrite | Skip:
    """Decide whether to convert a request body of ``schema`` and build the rewritten body;
    ``stream_interval`` (tokens per upstream chunk, 0: none) is written as a top-level member, in
    place of the client's own (see ``STREAM_INTERVAL_PROFILES`` for where it may be sent)."""
    request = load_non_stream_request(body, models)
    if isinstance(request, Skip):
        return request
    if _asks_for_unstreamable(request):
        return UNSTREAMABLE
    # The client's bytes with only ``stream``, ``stream_options`` (and ``stream_interval``) edited
    # (see ``stream_body``).
    members = {STREAM_INTERVAL: b"%d" % stream_interval} if stream_interval else None
    rewritten = stream_body(body, with_include_usage, members, parsed=request)
    if isinstance(rewritten, Skip):
        return rewritten
    return Rewrite(
        body=rewritten,
        schema=schema,
        model=model_of(request),
        hints={key: request[key] for key in _ANSWER_HINT_KEYS if key in request},
    )


def _asks_for_unstreamable(request: dict[str, Any]) -> bool:
    for key in _UNSTREAMABLE_KEYS:
        value = request.get(key)
        if value is not None and value is not False:
            return True
    best_of = request.get("best_of")
    return isinstance(best_of, int) and best_of > 1 and best_of != request.get("n", 1)


def is_end_payload(payload: bytes) -> bool:
    """``data: [DONE]``: the stream is over (asked only of payloads that are not JSON)."""
    return payload.strip() == _END_PAYLOAD


def upstream_error(chunk: dict[str, Any]) -> ConversionError | None:
    """The error a chunk reports instead of a completion (``error`` set or ``object: "error"``)."""
    if chunk.get("error") or chunk.get("object") == "error":
        return _error_of(chunk)
    return None


def answer_complete(answer: Mapping[str, Any]) -> bool:
    """After ``[DONE]``, an answer with choices is complete even if a choice never said why it
    finished (servers that omit the finish reason); one without any choice is truncated."""
    return bool(answer.get("choices"))


def error_event(payload: bytes) -> ConversionError:
    """``event: error`` or llama.cpp's ``error:`` line: fatal whatever its payload."""
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        text = payload.decode("utf-8", "replace").strip()
        return _error_of({"error": text or "upstream sent an error event"})
    if isinstance(parsed, dict):
        if parsed.get("error") or parsed.get("object") == "error":
            return _error_of(parsed)
        # llama.cpp sends the error object itself: {"code": .., "message": .., "type": ..}
        return _error_of({"error": parsed})
    return _error_of({"error": shown(parsed)})


def _error_of(chunk: dict[str, Any]) -> ConversionError:
    """One error answer for every in-stream shape, with the upstream's own error object."""
    error = chunk.get("error")
    if isinstance(error, dict):
        upstream = error
    elif error:  # TGI {"error": "...", "error_type": ...}, Ollama {"error": "..."}
        error_type = chunk.get("error_type")
        upstream = {
            "message": shown(error),
            "type": error_type if isinstance(error_type, str) else "upstream_error",
            "param": None,
            "code": None,
        }
    else:  # vLLM's flat {"object": "error", "message": ..., "type": ..., "param": ..., "code": ...}
        upstream = {key: chunk.get(key) for key in ("message", "type", "param", "code")}
    status = http_status_in(upstream) or http_status_in(chunk) or _DEFAULT_ERROR_STATUS
    message = shown(upstream.get("message") or "no message")[:_MESSAGE_EXCERPT_CHARS]
    if not writable(upstream, 1):  # nested too deep for the error body ``{"error": ...}``: the gist only
        text = upstream.get("message")
        upstream = {
            "message": text if type(text) is str else message,
            "type": "upstream_error",
            "param": None,
            "code": None,
        }
    return upstream_reported(status, message, upstream)


def error_body(error: ConversionError) -> bytes:
    """``{"error": {...}}``: the upstream's own error object when there is one (the default body)."""
    return error.body()


def usage_tokens(usage: Mapping[str, Any]) -> dict[str, Any]:
    """The token counts under the normalised names (values as sent: the caller keeps integers)."""
    return {
        "input_tokens": usage.get("prompt_tokens"),
        "output_tokens": usage.get("completion_tokens"),
        "total_tokens": usage.get("total_tokens"),
    }


class OpenAIFamilyApi(Api[ProfileT]):
    """What chat and legacy completions share: everything but the name, the paths, the profiles
    and the assembler."""

    stream_interval_profiles = STREAM_INTERVAL_PROFILES

    def plan_request(self, body: bytes, models: tuple[str, ...], stream_interval: int = 0) -> Rewrite | Skip:
        return plan_openai_request(self.name, body, models, stream_interval)

    upstream_error = staticmethod(upstream_error)
    error_body = staticmethod(error_body)
    usage_tokens = staticmethod(usage_tokens)
    error_event = staticmethod(error_event)
    is_end_payload = staticmethod(is_end_payload)
    answer_complete = staticmethod(answer_complete)
