"""Which requests are converted, and the exact body sent upstream instead."""

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from buffered_stream.apis import CHAT, COMPLETIONS, plan_request, schema_for_path
from buffered_stream.core.request import Rewrite, Skip


@pytest.mark.parametrize(
    ("path", "schema"),
    [
        ("/v1/chat/completions", CHAT),
        ("/v1/chat/completions?x=1", CHAT),
        ("/openai/v1/chat/completions/", CHAT),
        ("/v1/completions", COMPLETIONS),
        ("/chat/completions", CHAT),
        ("/v1/models", None),
        ("/v1/embeddings", None),
        ("/v1/completionsx", None),
    ],
)
def test_schema_for_path(path, schema):
    assert schema_for_path(path) == schema


def rewrite(body: dict, models=()) -> Rewrite:
    plan = plan_request(CHAT, orjson.dumps(body), models)
    assert isinstance(plan, Rewrite), plan
    return plan


def test_rewrite_sets_stream_and_usage_and_keeps_every_other_key_in_order():
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "héllo"}],
        "temperature": 0.1,
        "n": 2,
        "x_vendor": {"a": [1, 2.5e-7]},
    }
    plan = rewrite(body)
    sent = orjson.loads(plan.body)
    assert sent == {**body, "stream": True, "stream_options": {"include_usage": True}}
    assert list(sent)[:5] == list(body)
    assert plan.model == "m" and plan.schema == CHAT


@pytest.mark.parametrize("stream", [False, None])
def test_explicit_false_or_null_stream_is_converted(stream):
    assert orjson.loads(rewrite({"model": "m", "stream": stream}).body)["stream"] is True


def test_client_stream_options_are_kept():
    plan = rewrite({"model": "m", "stream_options": {"continuous_usage_stats": True, "include_usage": True}})
    assert orjson.loads(plan.body)["stream_options"] == {"continuous_usage_stats": True, "include_usage": True}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not_json"),
        (b"[1, 2]", "not_object"),
        (b'{"model": "m", "stream": true}', "stream_requested"),
        (b'{"model": "m", "stream": "yes"}', "stream_requested"),
        (b'{"model": "m", "prompt_logprobs": 0}', "unstreamable"),
        (b'{"model": "m", "return_meta_info": true}', "unstreamable"),
        (b'{"model": "m", "use_beam_search": true}', "unstreamable"),
        (b'{"model": "m", "best_of": 3}', "unstreamable"),
    ],
)
def test_requests_left_alone(body, reason):
    assert plan_request(CHAT, body) == Skip(reason)


def test_best_of_equal_to_n_streams():
    assert isinstance(plan_request(COMPLETIONS, b'{"model": "m", "best_of": 2, "n": 2}'), Rewrite)


@pytest.mark.parametrize(
    ("model", "models", "converted"),
    [
        ("llama-3-70b", ("llama-*",), True),
        ("qwen", ("llama-*", "qwen"), True),
        ("gpt-4o", ("llama-*",), False),
        (None, ("llama-*",), False),
        ("anything", (), True),
    ],
)
def test_model_allow_list(model, models, converted):
    plan = plan_request(CHAT, orjson.dumps({"model": model}), models)
    assert isinstance(plan, Rewrite) is converted
    if not converted:
        assert plan == Skip("model_not_enabled")


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(data):
    assert isinstance(plan_request(CHAT, data), (Rewrite, Skip))


def test_rewrite_keeps_only_the_hints_the_assembly_needs():
    plan = rewrite({"model": "m", "messages": [{"role": "user", "content": "x" * 1000}], "tool_choice": "required"})
    assert plan.hints == {"tool_choice": "required"}
    assert rewrite({"model": "m"}).hints == {}
