"""Every keep-alive an upstream writes into its stream is consumed without touching the answer.

The servers and proxies that can open a stream before the first token do it with pings (see the
README's "What keeps the wait for the first token busy"): SSE comments (LiteLLM ``: ping``, vLLM
``: keep-alive``, llama.cpp and TGI ``:``), Anthropic's ``event: ping`` event (Anthropic's API,
LiteLLM's ``anthropic_sse_ping_interval_seconds``), and the blank events and empty data lines some
servers write. Each form, before the first event and between every two events, on all four APIs,
fed as one whole body (buffered mode, the run matchers included) and one event per feed (streamed
and keep-alive modes), gives the very bytes the stream without it gives.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from buffered_stream.core.convert import StreamConverter
from support import corpus
from support.apis import api_of

PINGS = {
    "litellm-comment": b": ping\n\n",  # LiteLLM sse_keepalive_ping_interval_seconds
    "vllm-comment": b": keep-alive\n\n",  # vLLM --sse-keep-alive-interval
    "bare-comment": b":\n\n",  # llama.cpp --sse-ping-interval, TGI (axum KeepAlive::default)
    "anthropic-ping": b'event: ping\ndata: {"type": "ping"}\n\n',  # Anthropic API, LiteLLM on /v1/messages
    "anthropic-ping-no-space": b'event:ping\ndata:{"type":"ping"}\n\n',
    "ping-event-other-data": b"event: ping\ndata: {}\n\n",
    "blank-line": b"\n",
    "crlf-comment": b": ping\r\n\r\n",
    "empty-data": b"data:\n\n",
    "empty-data-space": b"data: \n\n",
    "blank-event": b"event: ping\n\n",
}


def chat_run(tokens: int) -> tuple[bytes, dict[str, Any]]:
    """A long text stream whose middle the whole-body run matchers take without parsing."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    body = event({"role": "assistant", "content": ""})
    body += b"".join(event({"content": f" t{i}"}) for i in range(tokens))
    body += event({}, "stop") + b"data: [DONE]\n\n"
    return body, {}


def recorded(api: str, name: str) -> tuple[str, str, bytes, dict[str, Any]]:
    """A corpus case's API, profile, stream and request (the client's, as the case records it)."""
    case = corpus.load(api, name)
    return api, case.profile, case.body, case.meta.get("request") or {}


CASES = {
    "chat": recorded("chat", "vllm-0.16-text"),
    "chat-tool-calls": recorded("chat", "openai-parallel-calls"),
    "chat-long-run": ("chat", "auto", *chat_run(300)),
    "completions": recorded("completions", "llamacpp-live-completions-text"),
    "responses": recorded("responses", "openai-text"),
    "responses-vllm": recorded("responses", "vllm-reasoning-text"),
    "messages": recorded("messages", "anthropic-text"),
    "messages-tools": recorded("messages", "anthropic-tool-use-parallel"),
}


def convert(schema: str, profile: str, request: dict[str, Any], pieces: list[bytes]) -> bytes:
    converter = StreamConverter(api_of(schema), profile, hints=request)
    for piece in pieces:
        converter.feed(piece)
    return converter.finish()


@pytest.mark.parametrize("where", ["before-first-event", "between-events"])
@pytest.mark.parametrize("ping", sorted(PINGS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_ping_never_changes_the_answer(case: str, ping: str, where: str) -> None:
    schema, profile, body, request = CASES[case]
    expected = convert(schema, profile, request, [body])
    assert expected == convert(schema, profile, request, corpus.events(body)), "the case itself converts alike"
    events, beat = corpus.events(body), PINGS[ping]
    if where == "before-first-event":
        pieces = [beat] * 10 + events  # ten pings: an upstream silent before its first token
    else:
        pieces = [piece for event in events for piece in (event, beat)]

    assert convert(schema, profile, request, [b"".join(pieces)]) == expected, "whole body"
    assert convert(schema, profile, request, pieces) == expected, "one event (or ping) per feed"


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_stream_of_only_pings_so_far_is_not_an_answer_yet(case: str) -> None:
    """Pings alone are no answer: a stream cut after them is truncated, never an empty answer."""
    schema, profile, _, request = CASES[case]
    converter = StreamConverter(api_of(schema), profile, hints=request)
    for beat in PINGS.values():
        converter.feed(beat)
    assert not converter.done and converter.usage is None
    with pytest.raises(Exception) as failed:
        converter.finish()
    assert getattr(failed.value, "kind", None) == "truncated"
