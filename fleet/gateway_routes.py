"""Names the gateway's nginx.conf and its access-log reader share: the route allow-list, the admin client
name and the upstream group names.

`fleet.render.nginx` renders the config from these; `fleet.exporters.gateway_log` classifies logged requests with
them. This module imports nothing, so the exporter image (exporter/Dockerfile) can carry it alone.
"""

from __future__ import annotations

# The admin key maps to this client name; client names are DNS labels, so it cannot clash with one.
ADMIN_CLIENT = "_admin"
# Requests from no configured client (no gateway in front, or a name not configured) are labelled so.
UNKNOWN_CLIENT = "unknown"
# The gateway names the client (never its key) to the metering exporter in this request header; nginx sets
# it from its key map on every proxied request, so a value a client sends itself never gets through.
CLIENT_HEADER = "X-Fleet-Client"

# Routes (Ollama v0.24.0 server/routes.go). Inference and read-only routes are open to every key; admin routes only to the
# admin key from an admin CIDR. Anything else is 404.
INFERENCE_ROUTES = (
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
)
READ_ONLY_ROUTES = ("/api/tags", "/api/show", "/api/ps", "/api/version", "/v1/models")
READ_ONLY_PREFIXES = ("/v1/models/",)  # GET /v1/models/{model}
ADMIN_ROUTES = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete")
ADMIN_PREFIXES = ("/api/blobs/",)

# One URL for every model: the gateway sends each request to the node group that serves its model.
# Routes whose JSON body names the model (`model`; /api/show also the older `name`):
MODEL_BODY_ROUTES = INFERENCE_ROUTES + ("/api/show",)
# GET /v1/models/{model}: the model is in the path.
MODEL_PATH_PREFIX = "/v1/models/"
# Answered with the union of every group's answer.
MODEL_LIST_ROUTES = ("/api/tags", "/api/ps", "/v1/models")

# Answered by nginx itself, without a key.
HEALTH_ROUTE = "/health"
# Grafana, served by the gateway's TLS server under this path to admin networks (gateway.adminCidrs) without an
# API key: browsers send none, Grafana's own login guards it.
GRAFANA_PATH = "/grafana/"
# Every node group's routes also live under `/groups/<name>/` for operators (a group's own list, one
# group's admin routes); the bare admin routes and /api/version reach the first group.
GROUP_ROUTE_PREFIX = "/groups/"

# nginx upstream blocks are named `fleet_<group>`; nginx writes that name in $upstream_addr instead of a
# node's address when it found no node to try ("no live upstreams").
UPSTREAM_PREFIX = "fleet_"


def upstream_name(group: str) -> str:
    """The nginx upstream block of a node group."""
    return f"{UPSTREAM_PREFIX}{group.replace('-', '_')}"
