"""The ext_proc adapter: the gRPC service, its server lifetime and its metrics (the only I/O)."""
