"""The Responses API's reshaping: the stream's terminal object into a profile's non-stream shape
(``ResponsesProfile`` says where the two builders differ)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .profiles import ResponsesProfile


def reshape(answer: dict[str, Any], profile: ResponsesProfile, hints: Mapping[str, Any]) -> None:
    """Turn the terminal object into the profile's non-stream shape (keys and derived ids only)."""
    output = answer.get("output")
    items = [item for item in output if isinstance(item, dict)] if type(output) is list else []
    if profile.drop_messages_beside_function_calls and any(item.get("type") == "function_call" for item in items):
        answer["output"] = items = [item for item in items if item.get("type") != "message"]
    if profile.item_ids_from_response_id and isinstance(answer.get("id"), str):
        calls = 0
        for item in items:
            if item.get("type") == "reasoning":
                item["id"] = f"rs_{answer['id']}"
            elif item.get("type") == "function_call":
                item["id"] = f"fc_{answer['id']}_{calls}"
                calls += 1
    if profile.reasoning_item_status is not None:
        for item in items:
            if item.get("type") == "reasoning" and "status" not in item:
                item["status"] = profile.reasoning_item_status
    if profile.completed_at_from_created_at and "completed_at" not in answer and "created_at" in answer:
        answer["completed_at"] = answer["created_at"]
    reasoning = answer.get("reasoning")
    if profile.drop_null_reasoning_keys and isinstance(reasoning, dict):
        answer["reasoning"] = {key: value for key, value in reasoning.items() if value is not None}
    tools = hints.get("tools")
    if profile.tools_from_request and type(tools) is list:
        answer["tools"] = [go_tool(tool) for tool in tools]
    usage = answer.get("usage")
    if profile.chat_usage_keys and isinstance(usage, dict) and "input_tokens" in usage:
        details = usage.get("output_tokens_details")
        answer["usage"] = {
            "prompt_tokens": usage.get("input_tokens"),
            "total_tokens": usage.get("total_tokens"),
            "completion_tokens": usage.get("output_tokens"),
            "prompt_tokens_details": None,
            "reasoning_tokens": details.get("reasoning_tokens", 0) if isinstance(details, dict) else 0,
        }


def go_tool(tool: Any) -> Any:
    """A request tool as Ollama's ``ResponsesTool`` struct serialises it (nested ``tools`` kept)."""
    if not isinstance(tool, dict):
        return tool
    shaped = {
        "type": tool.get("type", ""),
        "name": tool.get("name", ""),
        "description": tool.get("description"),
        "strict": tool.get("strict"),
        "parameters": tool.get("parameters"),
    }
    nested = tool.get("tools")
    if type(nested) is list and nested:
        shaped["tools"] = [go_tool(inner) for inner in nested]
    return shaped
