"""The exchange's state machine: every state and every transition of ``TRANSITIONS`` is reached by a
real ext_proc message sequence, and any other transition is refused.

Sequences are built from the protobuf types, as Envoy sends them (``test_service`` has the builders).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from buffered_stream.adapter.service import (
    CONTINUE_RESPONSE_BODY,
    DROP_RESPONSE_CHUNK,
    TRANSITIONS,
    Exchange,
    IllegalTransition,
    RouteSettingsCache,
    State,
)
from buffered_stream.settings import RouteSettings
from test_service import (
    CHAT_BODY,
    ENABLED,
    KEEPALIVE,
    SSE,
    STREAMED,
    body,
    first_body,
    full_duplex_request,
    headers,
    request_headers,
    response_headers,
)

BAD_SETTINGS = ENABLED.replace('"enabled"', '"enable"')
SMALL_REQUESTS = ENABLED.replace("} } } }", '} } fields { key: "max_request_bytes" value { number_value: 15 } } } }')
GZIPPED = pb.ProcessingRequest(
    response_headers=headers((":status", "200"), ("content-type", "text/event-stream"), ("content-encoding", "gzip"))
)


def host_fixed(response_body: int) -> pb.ProcessingRequest:
    """The first message of a host that fixes the response body mode (and ignores overrides)."""
    first = request_headers()
    first.protocol_config.response_body_mode = response_body
    return first


def chunked_request(metadata: str = ENABLED) -> pb.ProcessingRequest:
    """The first message of a host that streams the request body to the service in chunks."""
    first = request_headers(metadata)
    first.protocol_config.request_body_mode = ProcessingMode.STREAMED
    return first


def no_body_request() -> pb.ProcessingRequest:
    """Request headers that end the request: the next message is the upstream's response headers."""
    first = request_headers()
    first.request_headers.end_of_stream = True
    return first


REWRITTEN = [request_headers(), body(CHAT_BODY)]
FULL_DUPLEX = [full_duplex_request(), body(CHAT_BODY), response_headers()]

# name: (messages in Envoy's order, the state they leave the exchange in)
SEQUENCES: dict[str, tuple[list[pb.ProcessingRequest], State]] = {
    "nothing yet": ([], State.REQUEST_HEADERS),
    "enabled route, request headers": ([request_headers()], State.REQUEST_BODY),
    "request rewritten": (REWRITTEN, State.RESPONSE_HEADERS),
    "request body first, rewritten": ([first_body(CHAT_BODY)], State.RESPONSE_HEADERS),
    "buffered answer": ([*REWRITTEN, response_headers()], State.CONVERTING_BUFFERED),
    "streamed answer": ([request_headers(STREAMED), body(CHAT_BODY), response_headers()], State.CONVERTING_STREAMED),
    "host-fixed buffered body": (
        [host_fixed(ProcessingMode.BUFFERED), body(CHAT_BODY), response_headers()],
        State.CONVERTING_BUFFERED,
    ),
    "host-fixed streamed body": (
        [host_fixed(ProcessingMode.STREAMED), body(CHAT_BODY), response_headers()],
        State.CONVERTING_STREAMED,
    ),
    "full-duplex answer": (FULL_DUPLEX, State.CONVERTING_FULL_DUPLEX),
    "disabled route": ([request_headers(metadata="")], State.PASSING_THROUGH),
    "not an LLM path": ([request_headers(path="/v1/embeddings")], State.PASSING_THROUGH),
    "request body held in chunks": ([chunked_request(), body(CHAT_BODY[:10], end_of_stream=False)], State.REQUEST_BODY),
    "request over max_request_bytes in chunks": (
        [
            chunked_request(SMALL_REQUESTS),
            body(CHAT_BODY[:10], end_of_stream=False),
            body(CHAT_BODY[10:20], end_of_stream=False),
        ],
        State.PASSING_THROUGH,
    ),
    "request without a body": ([no_body_request()], State.PASSING_THROUGH),
    "response headers first": ([response_headers()], State.PASSING_THROUGH),
    "upstream error status": ([*REWRITTEN, response_headers("429", "application/json")], State.PASSING_THROUGH),
    "request not rewritten": (
        [first_body(b'{"model": "m", "stream": true}'), response_headers()],
        State.PASSING_THROUGH,
    ),
    "invalid route settings": ([request_headers(BAD_SETTINGS)], State.DONE),
    "content-encoded answer": ([*REWRITTEN, GZIPPED], State.DONE),
    "buffered answer sent": ([*REWRITTEN, response_headers(), body(SSE, response=True)], State.DONE),
    "streamed answer sent": (
        [request_headers(STREAMED), body(CHAT_BODY), response_headers(), body(SSE, end_of_stream=False, response=True)],
        State.DONE,
    ),
    "full-duplex answer sent": ([*FULL_DUPLEX, body(SSE, response=True)], State.DONE),
    "full-duplex answer ended by trailers": (
        [
            *FULL_DUPLEX,
            body(SSE[:-20], end_of_stream=False, response=True),
            pb.ProcessingRequest(response_trailers=pb.HttpTrailers()),
        ],
        State.DONE,
    ),
    "buffered failure": ([*REWRITTEN, response_headers(), body(SSE[:100], response=True)], State.DONE),
}


def run(messages: list[pb.ProcessingRequest], routes: RouteSettings | None = None) -> Exchange:
    exchange = Exchange(RouteSettingsCache(routes or RouteSettings()))
    for message in messages:
        exchange.handle(message)
    return exchange


@pytest.fixture
def transitions_taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[tuple[State, State]]]:
    """The (from, to) pairs every exchange of the test goes through."""
    taken: set[tuple[State, State]] = set()
    to = Exchange._to

    def recording(exchange: Exchange, state: State) -> None:
        taken.add((exchange.state, state))
        to(exchange, state)

    monkeypatch.setattr(Exchange, "_to", recording)
    yield taken


@pytest.mark.parametrize(("messages", "state"), SEQUENCES.values(), ids=SEQUENCES.keys())
def test_each_sequence_leaves_the_exchange_in_its_state(messages: list[pb.ProcessingRequest], state: State) -> None:
    assert run(messages).state is state


def test_every_state_and_every_transition_is_reached_by_real_messages(
    transitions_taken: set[tuple[State, State]],
) -> None:
    reached = {run(messages).state for messages, _ in SEQUENCES.values()}
    assert reached == set(State)
    assert transitions_taken == {(source, target) for source, targets in TRANSITIONS.items() for target in targets}


@pytest.mark.parametrize(
    ("source", "target"),
    [(source, target) for source in State for target in State if target not in TRANSITIONS[source]],
    ids=lambda state: state.name,
)
def test_a_transition_outside_the_table_is_refused(source: State, target: State) -> None:
    exchange = Exchange(RouteSettingsCache(RouteSettings()))
    exchange.state = source
    with pytest.raises(IllegalTransition, match=f"from {source.name} to {target.name}"):
        exchange._to(target)
    assert exchange.state is source


def test_the_states_that_end_an_exchange_lead_nowhere() -> None:
    assert TRANSITIONS[State.DONE] == TRANSITIONS[State.PASSING_THROUGH] == frozenset()


@pytest.mark.parametrize(
    ("messages", "chunk_reply"),
    [
        # The upstream keeps sending after the answer (data after [DONE]): dropped, or in full
        # duplex, where Envoy waits for no reply, no reply at all.
        ([*REWRITTEN, response_headers(), body(SSE, response=True)], DROP_RESPONSE_CHUNK),
        (
            [
                request_headers(STREAMED),
                body(CHAT_BODY),
                response_headers(),
                body(SSE, end_of_stream=False, response=True),
            ],
            DROP_RESPONSE_CHUNK,
        ),
        ([*FULL_DUPLEX, body(SSE, end_of_stream=False, response=True)], None),
        # Failed before any conversion started: the body is not ours to drop.
        ([request_headers(BAD_SETTINGS)], CONTINUE_RESPONSE_BODY),
        # Failed once the converter existed: as after an answer.
        ([*REWRITTEN, GZIPPED], DROP_RESPONSE_CHUNK),
    ],
    ids=["buffered", "streamed", "full duplex", "settings error", "content-encoded"],
)
def test_a_response_body_after_the_final_reply_keeps_the_exchange_done(
    messages: list[pb.ProcessingRequest], chunk_reply: pb.ProcessingResponse | None
) -> None:
    exchange = run(messages)
    outcome = exchange.outcome
    assert exchange.state is State.DONE
    assert exchange.handle(body(b"data: [DONE]\n\n", response=True)) == chunk_reply
    assert (exchange.state, exchange.outcome, exchange.committed) == (State.DONE, outcome, False)


def test_a_response_body_of_a_passed_through_answer_goes_on_unchanged() -> None:
    exchange = run([*REWRITTEN, response_headers("429", "application/json")])
    assert exchange.handle(body(b"{}", response=True)) == CONTINUE_RESPONSE_BODY
    exchange = run([full_duplex_request(KEEPALIVE), body(CHAT_BODY), response_headers("429", "application/json")])
    echoed = exchange.handle(body(b"{}", response=True)).response_body.response.body_mutation.streamed_response
    assert (echoed.body, echoed.end_of_stream, exchange.state) == (b"{}", True, State.PASSING_THROUGH)


def test_a_request_body_after_the_answer_is_refused_not_converted_again() -> None:
    """Envoy never sends it; were it to, the exchange fails loudly (the servicer answers with an
    internal error) instead of planning a second request over the first one's state."""
    exchange = run([*REWRITTEN, response_headers(), body(SSE, response=True)])
    with pytest.raises(IllegalTransition, match="from DONE to RESPONSE_HEADERS"):
        exchange.handle(body(CHAT_BODY))
    assert (exchange.state, exchange.outcome) == (State.DONE, "converted")


@pytest.mark.parametrize(
    ("messages", "committed"),
    [
        ([*REWRITTEN, response_headers()], False),  # buffered: Envoy holds the upstream's headers
        ([request_headers(STREAMED), body(CHAT_BODY), response_headers()], True),
        (FULL_DUPLEX, True),
        ([*REWRITTEN, response_headers(), body(SSE, response=True)], False),
    ],
    ids=["buffered", "streamed", "full duplex", "answered"],
)
def test_committed_is_the_200_gone_without_the_answer(messages: list[pb.ProcessingRequest], committed: bool) -> None:
    assert run(messages).committed is committed
