"""Model names as Ollama reads them, so the gateway's routing table and the names clients write agree.

Ollama (v0.24.0 types/model/name.go, internal/modelref/modelref.go) parses `[host/][namespace/]model[:tag]`,
fills the missing parts with `registry.ollama.ai`, `library` and `latest`, and strips a `:local` source
suffix; host and namespace compare case-insensitively, model and tag are file names (case-sensitive on
Linux). `short_name` gives the shortest spelling of that full name (Ollama's `DisplayShortest`): the key of
the gateway's routing table. The gateway's router (fleet/render/njs/fleet_router.js) applies the same
rule to each request's `model`; tests hold the two to the same cases.

This module imports nothing, so the exporter image can carry it alone.
"""

from __future__ import annotations

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
LOCAL_SUFFIX = ":local"


def short_name(name: str) -> str:
    """`llama3.1` → `llama3.1:latest`; `registry.ollama.ai/library/qwen2.5:7b` → `qwen2.5:7b`;
    `hf.co/org/model:Q4_K_M` unchanged. An empty name stays empty."""
    name = name.strip()
    if name.lower().endswith(LOCAL_SUFFIX):
        name = name[: -len(LOCAL_SUFFIX)]
    if not name:
        return ""
    tag = ""
    if name.rfind(":") > name.rfind("/"):
        name, tag = name.rsplit(":", 1)
    parts = name.rsplit("/", 2)
    model = parts[-1]
    namespace = parts[-2] if len(parts) > 1 else DEFAULT_NAMESPACE
    host = parts[-3] if len(parts) > 2 else DEFAULT_HOST
    host = host.split("://", 1)[-1]
    tag = tag or DEFAULT_TAG
    if host.lower() != DEFAULT_HOST:
        return f"{host}/{namespace}/{model}:{tag}"
    if namespace.lower() != DEFAULT_NAMESPACE:
        return f"{namespace}/{model}:{tag}"
    return f"{model}:{tag}"
