"""The API registry: exact request paths, one spec per API, and an API plugged in from one module."""

from __future__ import annotations

import types
from typing import Any

import orjson
import pytest

from buffered_stream.apis import PROFILE_NAMES, SCHEMAS, SPECS, PathIndex, spec_for_path
from buffered_stream.core.convert import StreamConverter
from buffered_stream.core.errors import UPSTREAM_ERROR, ConversionError
from buffered_stream.core.request import Rewrite, Skip, load_non_stream_request, model_of
from buffered_stream.core.spec import SchemaSpec
from buffered_stream.schemas import anthropic_messages, chat, completions, openai_responses


class _TypedEventAssembler:
    """A stream of typed events whose last is ``{"type": "stop"}``: no end payload."""

    def __init__(self, profile: Any, hints: Any) -> None:
        self.profile = profile
        self.text: list[str] = []
        self.finished = False
        self.usage = None

    def add_raw(self, payload: bytes) -> bool:
        return False

    def add(self, chunk: dict[str, Any]) -> None:
        if chunk.get("type") == "delta":
            self.text.append(chunk["text"])
        elif chunk.get("type") == "stop":
            self.finished = True

    def result(self) -> dict[str, Any]:
        return {"type": "message", "text": "".join(self.text), "profile": self.profile}


def _typed_event_module() -> types.ModuleType:
    """An API module exposing exactly the hooks ``SchemaSpec.from_module`` reads."""
    module = types.ModuleType("typed_events")

    def plan_request(body: bytes, models: tuple[str, ...]) -> Rewrite | Skip:
        request = load_non_stream_request(body, models)
        if isinstance(request, Skip):
            return request
        return Rewrite(orjson.dumps({**request, "stream": True}), "typed", model_of(request), {})

    def upstream_error(chunk: dict[str, Any]) -> ConversionError | None:
        if chunk.get("type") == "error":
            return ConversionError(UPSTREAM_ERROR, 529, "overloaded", upstream_error=chunk["error"])
        return None

    module.PATHS = ("/v1/messages",)
    module.PROFILES = {"claude": "claude-shape"}
    module.plan_request = plan_request
    module.upstream_error = upstream_error
    module.error_body = lambda error: orjson.dumps({"type": "error", "error": {"message": error.message}})
    module.usage_tokens = lambda usage: {
        "input_tokens": usage.get("input_tokens"),
        "output_tokens": None,
        "total_tokens": None,
    }
    return module


TYPED = SchemaSpec.from_module("typed", _typed_event_module(), _TypedEventAssembler)
# The real Messages spec claims /v1/messages; this stand-in takes its place to test the mechanism alone.
PATHS = PathIndex((*(spec for spec in SPECS if spec.name != "messages"), TYPED))


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
        ("/v1/messages", "typed"),
        ("/anthropic/v1/messages/", "typed"),
        ("/v1/messages?beta=true", "typed"),
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
    for spec in SPECS:
        for path in spec.paths:
            assert spec_for_path(path) is spec
            assert spec_for_path("/mounted" + path + "/?q=1") is spec
    assert spec_for_path("/v1/messages/count_tokens") is None


def test_two_apis_cannot_claim_one_path() -> None:
    with pytest.raises(ValueError, match="same path"):
        PathIndex((*SPECS, SchemaSpec.from_module("again", chat)))


def test_each_api_is_one_spec_made_from_its_module() -> None:
    assert list(SCHEMAS) == ["chat", "completions", "responses", "messages"]
    for name, module in (
        ("chat", chat),
        ("completions", completions),
        ("responses", openai_responses),
        ("messages", anthropic_messages),
    ):
        spec = SCHEMAS[name]
        assert spec.paths == module.PATHS
        assert spec.profiles is module.PROFILES
        assert spec.plan_request is module.plan_request


def test_profile_names_are_every_api_profile_and_unknown_ones_auto_detect() -> None:
    assert PROFILE_NAMES[0] == "auto"
    for spec in SPECS:
        assert set(spec.profiles) <= set(PROFILE_NAMES)
        assert spec.profile("auto") is None
    assert TYPED.profile("claude") == "claude-shape"
    assert TYPED.profile("vllm") is None  # a backend this API has no profile of: auto-detect
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


def test_a_typed_event_api_ends_with_its_assembler_not_with_done() -> None:
    converter = StreamConverter(TYPED, "claude")
    converter.feed(b'data: {"type": "delta", "text": "he"}\n\ndata: {"type": "delta", "text": "llo"}\n\n')
    converter.feed(b'data: {"type": "stop"}\n\n')
    assert not converter.done
    assert orjson.loads(converter.finish()) == {"type": "message", "text": "hello", "profile": "claude-shape"}


def test_a_typed_event_api_without_its_end_event_is_truncated() -> None:
    converter = StreamConverter(TYPED)
    converter.feed(b'data: {"type": "delta", "text": "he"}\n\n')
    with pytest.raises(ConversionError) as caught:
        converter.finish()
    assert caught.value.kind == "truncated"


def test_a_done_payload_is_not_an_end_for_an_api_without_one() -> None:
    converter = StreamConverter(TYPED)
    with pytest.raises(ConversionError) as caught:
        converter.feed(b"data: [DONE]\n\n")
    assert caught.value.kind == "malformed"


def test_in_stream_errors_and_error_events_use_the_api_s_own_reading() -> None:
    converter = StreamConverter(TYPED)
    with pytest.raises(ConversionError) as caught:
        converter.feed(b'data: {"type": "error", "error": {"type": "overloaded_error"}}\n\n')
    assert (caught.value.status, caught.value.upstream_error) == (529, {"type": "overloaded_error"})
    assert orjson.loads(TYPED.error_body(caught.value)) == {"type": "error", "error": {"message": "overloaded"}}

    converter = StreamConverter(TYPED)
    with pytest.raises(ConversionError) as caught:
        converter.feed(b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error"}}\n\n')
    assert caught.value.status == 529

    converter = StreamConverter(TYPED)
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
