"""Test harness: real processes on loopback (Envoy, the service, a scriptable backend)."""
