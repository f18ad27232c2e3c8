"""Conformance corpus: real and source-derived server streams against their native answers.

Each case in ``tests/corpus`` is ``NAME.sse`` (the body the server streams), ``NAME.meta.json``
(schema, profile, optional request, the conformance case numbers it covers, and either an expected
error or the fields a comparison must skip) and ``NAME.json`` (the answer the same server gives
for ``stream=false``). Every case is replayed in one piece, split in two at every byte, and fed
byte by byte: chunk boundaries must never change the answer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from buffered_stream.core.convert import StreamConverter
from buffered_stream.core.errors import ConversionError
from support.corpus import byte_by_byte, every_split, whole
from support.specs import spec_of

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(path.name[: -len(".meta.json")] for path in CORPUS.glob("*.meta.json"))
# Tool call ids drawn per request: OpenAI-style servers (call_ + 24 hex), llama.cpp (32 alphanumerics).
GENERATED_TOOL_CALL_ID = re.compile(r"call_[0-9a-f]{24}|[A-Za-z0-9]{32}")


def load(name: str) -> tuple[dict[str, Any], bytes, dict[str, Any] | None]:
    meta = orjson.loads((CORPUS / f"{name}.meta.json").read_bytes())
    expected_path = CORPUS / f"{name}.json"
    expected = orjson.loads(expected_path.read_bytes()) if expected_path.exists() else None
    return meta, (CORPUS / f"{name}.sse").read_bytes(), expected


def convert(meta: dict[str, Any], pieces: list[bytes]) -> dict[str, Any]:
    converter = StreamConverter(spec_of(meta["schema"]), meta["profile"], request=meta.get("request"))
    for piece in pieces:
        converter.feed(piece)
    return orjson.loads(converter.finish())


def comparable(meta: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """The answer without what the case declares random (checked for shape) or not comparable."""
    answer = orjson.loads(orjson.dumps(answer))
    for key in meta.get("ignore", ()):
        answer.pop(key, None)
    for path in meta.get("generated", ()):
        *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
        holder = answer
        for part in parents:
            holder = holder[part]
        if holder.get(last) != "GENERATED":
            assert GENERATED_TOOL_CALL_ID.fullmatch(holder[last]), path
            holder[last] = "GENERATED"
    return answer


def check(name: str, pieces_of: Any) -> None:
    meta, body, expected = load(name)
    for pieces in pieces_of(body):
        if "error" in meta:
            with pytest.raises(ConversionError) as caught:
                convert(meta, pieces)
            assert (caught.value.status, caught.value.kind) == (meta["error"]["status"], meta["error"]["kind"])
        else:
            assert expected is not None
            assert comparable(meta, convert(meta, pieces)) == comparable(meta, expected)


@pytest.mark.parametrize("name", CASES)
def test_whole_body_gives_the_native_answer(name: str) -> None:
    check(name, whole)


@pytest.mark.parametrize("name", CASES)
def test_any_split_in_two_gives_the_same_answer(name: str) -> None:
    check(name, every_split)


@pytest.mark.parametrize("name", CASES)
def test_byte_by_byte_gives_the_same_answer(name: str) -> None:
    check(name, byte_by_byte)


def test_corpus_covers_every_applicable_conformance_case() -> None:
    covered = {number for name in CASES for number in load(name)[0].get("cases", ())}
    # 28/29 are Anthropic Messages / Responses (other schemas); 30 is a non-stream answer passed through.
    assert covered == set(range(1, 28))


def test_every_server_profile_has_a_case() -> None:
    profiles = {load(name)[0]["profile"] for name in CASES}
    assert {"openai", "vllm", "sglang", "tgi", "ollama", "auto"} <= profiles
    assert {"vllm-0.16", "vllm-0.10", "sglang-0.5.21", "llamacpp-4227c9b"} <= profiles  # older release lines
    assert any(load(name)[0].get("recorded") for name in CASES)


def test_null_and_missing_are_told_apart() -> None:
    """Parsed-JSON equality separates a null from an absent key; both occur in the corpus."""
    vllm_meta, vllm_body, _ = load("vllm-tool-auto")
    assert convert(vllm_meta, [vllm_body])["choices"][0]["message"]["content"] is None
    tgi_meta, tgi_body, _ = load("tgi-tool-call")
    assert "content" not in convert(tgi_meta, [tgi_body])["choices"][0]["message"]


# Batched streams: the server sends N tokens per chunk (vLLM's per-request ``stream_interval``, which
# routes ask for with ``upstream_stream_interval``; SGLang's ``--stream-interval``).
BATCHED = {name: load(name)[0]["stream_interval"] for name in CASES if "stream_interval" in load(name)[0]}


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
    meta, body, _ = load(name)
    interval = BATCHED[name]
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
