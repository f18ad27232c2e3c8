"""Conformance corpus: real and source-derived server streams against their native answers.

The chat and legacy completions cases, ``tests/corpus/chat`` and ``tests/corpus/completions`` (see
``support.corpus`` for a case's files): ``NAME.meta.json`` holds the profile, optional request, the
conformance case numbers it covers, and either an expected error or the fields a comparison must
skip. Every case is replayed in one piece, split in two at every byte, and fed byte by byte: chunk
boundaries must never change the answer.
"""

from __future__ import annotations

import orjson
import pytest

from support.corpus import Case, Chunking, cases, check, convert, each_case, each_chunking, load

APIS = ("chat", "completions")
CASES = cases(*APIS)


@each_chunking
@each_case(*APIS)
def test_every_chunking_gives_the_native_answer(case: Case, chunking: Chunking) -> None:
    check(case, chunking)


def test_corpus_covers_every_applicable_conformance_case() -> None:
    covered = {number for case in CASES for number in case.meta.get("cases", ())}
    # 28/29 are Anthropic Messages / Responses (other schemas); 30 is a non-stream answer passed through.
    assert covered == set(range(1, 28))


def test_every_server_profile_has_a_case() -> None:
    profiles = {case.profile for case in CASES}
    assert {"openai", "vllm", "sglang", "tgi", "ollama", "auto"} <= profiles
    assert {"vllm-0.16", "vllm-0.10", "sglang-0.5.21", "llamacpp-4227c9b"} <= profiles  # older release lines
    assert any(case.meta.get("recorded") for case in CASES)


def test_null_and_missing_are_told_apart() -> None:
    """Parsed-JSON equality separates a null from an absent key; both occur in the corpus."""
    vllm = load("chat", "vllm-tool-auto")
    assert convert(vllm, [vllm.body])["choices"][0]["message"]["content"] is None
    tgi = load("chat", "tgi-tool-call")
    assert "content" not in convert(tgi, [tgi.body])["choices"][0]["message"]


# Batched streams: the server sends N tokens per chunk (vLLM's per-request ``stream_interval``, which
# routes ask for with ``upstream_stream_interval``; SGLang's ``--stream-interval``).
BATCHED = {case.name: case for case in CASES if "stream_interval" in case.meta}


def test_batched_stream_cases_cover_every_shape() -> None:
    assert set(BATCHED) == {
        f"vllm-interval-{shape}"
        for shape in ("chat-text", "chat-logprobs", "tool-calls", "reasoning", "n2", "completions")
    }


@pytest.mark.parametrize("name", sorted(BATCHED))
def test_batched_stream_cases_really_batch(name: str) -> None:
    """Each batched case carries several tokens per chunk: per choice, at most the first token alone,
    then one chunk per ``stream_interval`` tokens and the finish; logprob lists never longer than N,
    and at least one of exactly N where the case has logprobs."""
    case = BATCHED[name]
    body = case.body
    interval = case.meta["stream_interval"]
    assert interval > 1
    events = [orjson.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: {")]
    completion_tokens = next(e["usage"]["completion_tokens"] for e in events if e.get("usage"))
    choices = [c for e in events for c in e["choices"]]
    output = [c for c in choices if c.get("text") or {k: v for k, v in c.get("delta", {}).items() if k != "role" and v}]
    per_choice = completion_tokens / len({c["index"] for c in choices})
    assert len(output) <= len({c["index"] for c in choices}) * (-(-(per_choice - 1) // interval) + 2)
    lengths = [len(lp.get("content") or lp.get("tokens") or []) for c in choices if (lp := c.get("logprobs"))]
    assert all(n <= interval for n in lengths)
    if lengths:
        assert interval in lengths
