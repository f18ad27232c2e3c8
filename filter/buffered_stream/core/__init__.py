"""The sans-I/O pipeline every API shares: SSE decoding, the converter loop, errors, text pieces,
the template fast path, the assembler protocol, request planning and the registry of API specs.

Nothing here imports grpc or asyncio, so it can be tested, benchmarked and reused without I/O.
"""
