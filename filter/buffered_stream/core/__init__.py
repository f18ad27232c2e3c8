"""The sans-I/O pipeline every API shares: SSE decoding, the converter loop, errors, text pieces,
the template fast path, the assembler protocol, request planning and the shape of an API
(``api.Api``). Which APIs exist is wired above, in ``buffered_stream.apis``.

Nothing here imports grpc or asyncio, so it can be tested, benchmarked and reused without I/O.
"""
