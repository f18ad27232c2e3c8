"""A paced generation as vLLM (>= 0.27, current shapes of 0.33) streams it when a request asks for
``stream_interval``: for the scripted backend (``support.backend``), as a rule's reply function.

vLLM batches in ``vllm/v1/engine/output_processor.py`` (``RequestState.make_request_output``): the
first token is sent at once, then a chunk whenever ``stream_interval`` tokens are unsent, and what
is left goes with the finish. Each chunk's delta holds the text of all its tokens. Chunks are
``model_dump_json(exclude_unset=True)`` of ``chat_completion/protocol.py``'s stream classes; the
non-stream answer is ``model_dump()`` with every null key (the ``vllm`` profile's shape).

    backend.on(paced_vllm(tokens, first_token_delay=0.3, token_delay=0.01), model="paced")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .backend import Json, RecordedRequest, Reply, Sse

CREATED = 1764500000


def batches(tokens: int, interval: int) -> list[int]:
    """Tokens per chunk: 1, then ``interval`` at a time, the rest with the finish."""
    if tokens <= 1:
        return [tokens]
    sizes = [1]
    left = tokens - 1
    while left > 0:
        sizes.append(min(interval, left))
        left -= sizes[-1]
    return sizes


def vllm_chat(
    tokens: list[str], interval: int, *, model: str, prompt_tokens: int = 9, finish_reason: str = "length"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The chunks (role chunk first, usage chunk last) and the native answer of one generation."""
    cid = "chatcmpl-5d8e1f0a2b3c4d5e"
    head = {"id": cid, "object": "chat.completion.chunk", "created": CREATED, "model": model}
    chunks: list[dict[str, Any]] = [
        {
            **head,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            ],
            "prompt_token_ids": None,
            "prompt_text": None,
        }
    ]
    sent = 0
    sizes = batches(len(tokens), max(1, interval))
    for number, size in enumerate(sizes):
        text = "".join(tokens[sent : sent + size])
        sent += size
        choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "logprobs": None}
        if number == len(sizes) - 1:
            choice.update(finish_reason=finish_reason, stop_reason=None, token_ids=None, weight_versions=None)
        else:
            choice.update(finish_reason=None, token_ids=None)
        chunks.append({**head, "choices": [choice], "kv_transfer_params": None})
    usage = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + len(tokens),
        "completion_tokens": len(tokens),
    }
    chunks.append({**head, "choices": [], "usage": usage})
    message = {
        "role": "assistant",
        "content": "".join(tokens),
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "reasoning": None,
    }
    native = {
        "id": cid,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
                "token_ids": None,
                "routed_experts": None,
                "weight_versions": None,
            }
        ],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": {**usage, "prompt_tokens_details": None, "completion_tokens_details": None},
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "prompt_text": None,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }
    return chunks, native


def paced_vllm(
    tokens: list[str], *, first_token_delay: float = 0.0, token_delay: float = 0.0, server_interval: int = 1
) -> Callable[[RecordedRequest], Reply]:
    """A reply function: the request's ``stream_interval`` (clamped up to ``server_interval``, as
    vLLM does with ``--stream-interval``) decides the chunks; the role chunk and the first token come
    after ``first_token_delay``, each later chunk after ``token_delay`` per token it holds.
    ``stream: false`` gets the native answer after the same time in silence."""

    def reply(request: RecordedRequest) -> Reply:
        body = request.json if isinstance(request.json, dict) else {}
        asked = body.get("stream_interval")
        interval = max(asked if isinstance(asked, int) and asked >= 1 else 1, server_interval)
        chunks, native = vllm_chat(tokens, interval, model=body.get("model") or "test-model")
        if not request.stream:
            return Json(native, delay=first_token_delay + token_delay * (len(tokens) - 1))
        sizes = batches(len(tokens), interval)
        delays = [first_token_delay, 0.0] + [token_delay * size for size in sizes[1:]] + [0.0]
        return Sse([*chunks, "[DONE]"], delay=delays)

    return reply
