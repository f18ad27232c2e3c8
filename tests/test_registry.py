"""The API registry: exact request paths, one ``Api`` per API, and a new API plugged in as the
development guide shows it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from buffered_stream import apis
from buffered_stream.apis import APIS, PROFILE_NAMES, SCHEMAS, PathIndex, api_for_path
from buffered_stream.core.api import Api
from buffered_stream.core.convert import StreamConverter
from buffered_stream.core.errors import UPSTREAM_ERROR, ConversionError
from buffered_stream.core.request import Rewrite
from buffered_stream.schemas import chat, completions, messages, responses


def _api_from_the_guide() -> Any:
    """The toy API of docs/development.md's "Adding an API", run as written there."""
    guide = (Path(__file__).resolve().parent.parent / "docs" / "development.md").read_text()
    section = guide.split("## Adding an API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the guide shows one whole API"
    namespace: dict[str, Any] = {}
    exec(compile(blocks[0], "docs/development.md", "exec"), namespace)
    return namespace["API"]


ECHO = _api_from_the_guide()


PATHS = PathIndex((*APIS, ECHO))


@pytest.mark.parametrize(
    ("path", "schema"),
    [
        ("/v1/chat/completions", "chat"),
        ("/chat/completions", "chat"),
        ("/v1/completions", "completions"),
        ("/completions", "completions"),
        ("/v1/chat/completions/", "chat"),
        ("/v1/chat/completions?api-version=2024-10-21", "chat"),
        ("/v1/chat/completions/?x=1/", "chat"),
        ("/vllm-a/v1/chat/completions", "chat"),
        ("/vllm-a/v1/completions", "completions"),
        ("/streamed/v1/chat/completions", "chat"),
        ("/v1/messages", "messages"),
        ("/anthropic/v1/messages/", "messages"),
        ("/v1/messages?beta=true", "messages"),
        ("/v1/echo", "echo"),
        ("/tenant-a/v1/echo/?x=1", "echo"),
        ("/v1/messages/count_tokens", None),
        ("/v1/messages/batches", None),
        ("/v1/chat/completions/extra", None),
        ("/v1/chat/completionsx", None),
        ("/v1/chat", None),
        ("/v1/models", None),
        ("/", None),
        ("", None),
        ("completions", None),
    ],
)
def test_a_path_matches_an_api_path_exactly_or_under_a_mount_prefix(path: str, schema: str | None) -> None:
    spec = PATHS.find(path)
    assert (spec.name if spec else None) == schema


def test_the_registry_resolves_paths_like_its_index() -> None:
    for spec in APIS:
        for path in spec.paths:
            assert api_for_path(path) is spec
            assert api_for_path("/mounted" + path + "/?q=1") is spec
    assert api_for_path("/v1/messages/count_tokens") is None


def test_two_apis_cannot_claim_one_path() -> None:
    with pytest.raises(ValueError, match="same path"):
        PathIndex((*APIS, chat.ChatApi()))


def test_each_api_is_one_package_listed_once() -> None:
    assert list(SCHEMAS) == ["chat", "completions", "responses", "messages"]
    assert APIS == (chat.API, completions.API, responses.API, messages.API)
    for api in APIS:
        assert isinstance(api, Api)
        assert api.auto.detect and api.auto.name == "auto"
        assert all(not profile.detect and profile.name == name for name, profile in api.profiles.items())
    listed = re.findall(r"^\s+(\w+)\.API,$", Path(apis.__file__).read_text(), re.M)
    assert listed == ["chat", "completions", "responses", "messages"], "one line per API in apis.APIS"


def test_profile_names_are_every_api_profile_and_unknown_ones_auto_detect() -> None:
    assert PROFILE_NAMES[0] == "auto"
    for api in APIS:
        assert set(api.profiles) <= set(PROFILE_NAMES)
        assert api.profile("auto") is api.auto
    assert ECHO.profile("plain").name == "plain"
    assert ECHO.profile("vllm") is ECHO.auto  # a backend this API has no profile of: auto-detect
    assert SCHEMAS["chat"].profile("vllm").name == "vllm"


OPENAI_FAMILY = [SCHEMAS["chat"], SCHEMAS["completions"]]


def test_openai_family_plans_ask_for_usage_and_report_their_schema() -> None:
    for spec in OPENAI_FAMILY:
        plan = spec.plan_request(b'{"model": "m"}', ())
        assert isinstance(plan, Rewrite) and plan.schema == spec.name
        assert orjson.loads(plan.body)["stream_options"] == {"include_usage": True}


def test_openai_family_usage_tokens_are_normalised() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "prompt_tokens_details": None}
    for spec in OPENAI_FAMILY:
        assert spec.usage_tokens(usage) == {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}


def test_openai_family_error_body_is_the_upstream_error_object() -> None:
    error = SCHEMAS["chat"].upstream_error({"error": {"message": "boom", "code": 429}})
    assert error is not None and error.status == 429
    assert orjson.loads(SCHEMAS["chat"].error_body(error)) == {"error": {"message": "boom", "code": 429}}
    assert SCHEMAS["chat"].upstream_error({"choices": []}) is None


def test_the_guide_s_api_plans_and_converts_like_a_real_one() -> None:
    plan = ECHO.plan(b'{"model": "m",  "stream" : false, "input": "hi"}', profile="plain")
    assert isinstance(plan, Rewrite) and plan.body == b'{"model": "m",  "stream" : true, "input": "hi"}'
    assert (plan.schema, plan.model) == ("echo", "m")
    converter = StreamConverter(ECHO, "plain")
    converter.feed(b'data: {"type": "delta", "text": "he"}\n\ndata: {"type": "delta", "text": "llo"}\n\n')
    converter.feed(b'data: {"type": "stop"}\n\n')
    assert not converter.done
    assert orjson.loads(converter.finish()) == {"type": "echo", "text": "hello", "shape": "plain"}


def test_a_typed_event_api_without_its_end_event_is_truncated() -> None:
    converter = StreamConverter(ECHO)
    converter.feed(b'data: {"type": "delta", "text": "he"}\n\n')
    with pytest.raises(ConversionError) as caught:
        converter.finish()
    assert caught.value.kind == "truncated"


def test_a_done_payload_is_not_an_end_for_an_api_without_one() -> None:
    converter = StreamConverter(ECHO)
    with pytest.raises(ConversionError) as caught:
        converter.feed(b"data: [DONE]\n\n")
    assert caught.value.kind == "malformed"


def test_in_stream_errors_and_error_events_use_the_api_s_own_reading() -> None:
    converter = StreamConverter(ECHO)
    with pytest.raises(ConversionError) as caught:
        converter.feed(b'data: {"type": "error", "error": {"type": "overloaded_error"}}\n\n')
    assert (caught.value.status, caught.value.upstream_error) == (503, {"type": "overloaded_error"})
    assert orjson.loads(ECHO.error_body(caught.value)) == {"type": "error", "message": "upstream error"}

    converter = StreamConverter(ECHO)
    with pytest.raises(ConversionError) as caught:
        converter.feed(b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error"}}\n\n')
    assert caught.value.status == 503

    converter = StreamConverter(ECHO)
    with pytest.raises(ConversionError) as caught:
        converter.feed(b"event: error\ndata: not json at all\n\n")
    assert (caught.value.kind, caught.value.status, caught.value.upstream_error) == (UPSTREAM_ERROR, 502, None)
    assert "not json" not in caught.value.message


def test_responses_and_messages_plans_ask_only_for_a_stream() -> None:
    for name in ("responses", "messages"):
        plan = SCHEMAS[name].plan_request(b'{"model": "m", "input": "hi"}', ())
        assert isinstance(plan, Rewrite) and plan.schema == name
        assert orjson.loads(plan.body) == {"model": "m", "input": "hi", "stream": True}


def test_chat_and_completions_know_every_vllm_release_line() -> None:
    from buffered_stream.schemas.vllm_releases import LINES

    for line in LINES:
        for schema in ("chat", "completions"):
            assert SCHEMAS[schema].profile(line.profile).name == line.profile
