"""Compacted text pieces: the joined text never changes, however many pieces and compactions."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from buffered_stream.core.pieces import BLOCK_CHARS, COMPACT_EVERY, Pieces
from buffered_stream.schemas.chat import ChatAssembler
from buffered_stream.schemas.completions import CompletionsAssembler


def filled(pieces: list[str]) -> Pieces:
    held = Pieces()
    for piece in pieces:
        held.append(piece)
        if len(held) >= COMPACT_EVERY:
            held.compact()
    return held


@given(st.lists(st.text(max_size=300), max_size=3 * COMPACT_EVERY))
def test_text_is_the_join_of_every_piece(pieces: list[str]) -> None:
    assert filled(pieces).text() == ("".join(pieces) if pieces else None)


def test_nothing_appended_is_none_and_empty_pieces_are_empty_text() -> None:
    assert Pieces().text() is None
    assert filled([""] * (2 * COMPACT_EVERY)).text() == ""


def test_loose_pieces_stay_few_and_blocks_stay_bounded() -> None:
    held = filled(["token "] * 20_000)
    assert len(held) < COMPACT_EVERY
    blocks = held._blocks
    assert all(len(block) < BLOCK_CHARS + COMPACT_EVERY * len("token ") for block in blocks)
    assert len(blocks) <= len("token ") * 20_000 // BLOCK_CHARS + 1
    assert held.text() == "token " * 20_000


def chunk(choice: dict[str, Any]) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}


def test_long_chat_fields_are_whole_after_many_compactions() -> None:
    count = 5 * COMPACT_EVERY + 3
    words = [f"w{i} " for i in range(count)]
    assembler = ChatAssembler()
    assembler.add(chunk({"index": 0, "delta": {"role": "assistant", "content": ""}}))
    assembler.add(chunk({"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f"}}]}}))
    assembler.add(chunk({"index": 0, "delta": {"function_call": {"name": "g"}}}))
    for word in words:
        assembler.add(chunk({"index": 0, "delta": {"content": word}}))
        assembler.add(chunk({"index": 0, "delta": {"reasoning_content": word}}))
        assembler.add(chunk({"index": 0, "delta": {"refusal": word}}))
        assembler.add(chunk({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": word}}]}}))
        assembler.add(chunk({"index": 0, "delta": {"function_call": {"arguments": word}}}))
        assembler.add(chunk({"index": 0, "delta": {"audio": {"transcript": word}}}))
    assembler.add(chunk({"index": 0, "delta": {}, "finish_reason": "stop"}))
    message = assembler.result()["choices"][0]["message"]
    text = "".join(words)
    assert message["content"] == message["reasoning_content"] == message["refusal"] == text
    assert message["tool_calls"][0]["function"]["arguments"] == text
    assert message["function_call"]["arguments"] == text
    assert message["audio"]["transcript"] == text


def test_long_legacy_completion_text_is_whole() -> None:
    words = [f"w{i} " for i in range(3 * COMPACT_EVERY + 1)]
    assembler = CompletionsAssembler()
    for word in words:
        assembler.add({"id": "c", "object": "text_completion", "choices": [{"index": 0, "text": word}]})
    assembler.add({"id": "c", "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
    assert assembler.result()["choices"][0]["text"] == "".join(words)
