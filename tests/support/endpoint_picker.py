"""The tests' endpoint picker: a minimal second ext_proc server, shaped like the Gateway API
Inference Extension's (it reads the request headers and the whole request body and names the
endpoint in a request header: ``x-gateway-destination-endpoint``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from .net import free_port

DESTINATION_HEADER = "x-gateway-destination-endpoint"


class EndpointPicker(pb_grpc.ExternalProcessorServicer):
    """Picks ``destination`` for every request and records the request bodies it saw."""

    def __init__(self, destination: str) -> None:
        self.destination = destination
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        self.target = f"127.0.0.1:{free_port()}"
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_ExternalProcessorServicer_to_server(self, self._server)
        self._server.add_insecure_port(self.target)

    def start(self) -> EndpointPicker:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def Process(
        self, request_iterator: Iterator[pb.ProcessingRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ProcessingResponse]:
        for request in request_iterator:
            kind = request.WhichOneof("request")
            if kind == "request_headers":
                yield pb.ProcessingResponse(request_headers=pb.HeadersResponse())
            elif kind == "request_body":
                body = request.request_body.body
                with self._lock:
                    self.bodies.append(body)
                model = orjson.loads(body).get("model", "") if body else ""
                reply = pb.ProcessingResponse()
                mutation = reply.request_body.response.header_mutation
                for key, value in ((DESTINATION_HEADER, self.destination), ("x-picked-for-model", str(model))):
                    mutation.set_headers.append(
                        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, raw_value=value.encode()))
                    )
                yield reply
            elif kind == "response_headers":
                yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())
            elif kind == "response_body":
                yield pb.ProcessingResponse(response_body=pb.BodyResponse())
            else:
                field = "request_trailers" if kind == "request_trailers" else "response_trailers"
                yield pb.ProcessingResponse(**{field: pb.TrailersResponse()})
