"""Loopback test bed: real processes (Ollama, nginx, Prometheus) started on 127.0.0.1 for tests and `fleet local`.

Nothing here is used by the Pulumi program; deployments run the pinned Ollama container image instead.
"""
