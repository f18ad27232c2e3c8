"""buffered-stream: answer ``stream=false`` LLM requests from an upstream stream, inside Envoy.

The package has a sans-I/O core (request rewrite, SSE decoding, answer assembly) that imports
neither grpc nor asyncio, and one ext_proc adapter that speaks to Envoy.
"""

__version__ = "0.1.0"
