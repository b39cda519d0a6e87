"""Grafana: a provisioned Prometheus datasource, the dashboard provider and the fleet dashboard.

The dashboard is built with Grafana's own typed builders (`grafana-foundation-sdk`) from the panel list
below; `dashboard_queries()` lists every PromQL expression of the panels and of the alert rules, so tests
can parse them (promtool) and evaluate them against a real Prometheus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import yaml
from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import prometheus as gprom
from grafana_foundation_sdk.builders import stat as gstat
from grafana_foundation_sdk.builders import table as gtable
from grafana_foundation_sdk.builders import timeseries as gtimeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dashboard_models
from grafana_foundation_sdk.models import prometheus as prometheus_models

from fleet import ports, usage
from fleet.config import FleetSettings
from fleet.render.rules import rule_queries

DATASOURCE_UID = "ollama-fleet-prometheus"
DATASOURCE_NAME = "Prometheus (ollama-fleet)"
DASHBOARD_UID = "ollama-fleet-overview"
DASHBOARD_FILE = "ollama-fleet.json"
DASHBOARDS_PATH = "/var/lib/grafana/dashboards/ollama-fleet"
FOLDER = "Ollama fleet"

RATE = "$__rate_interval"  # Grafana's rate window; replaced by a fixed window outside Grafana


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class PanelSpec:
    row: str
    title: str
    kind: str  # timeseries | stat | table
    unit: str
    queries: tuple[Query, ...]
    description: str = ""
    width: int = 12
    height: int = 8


def panels() -> list[PanelSpec]:
    """Every panel of the fleet dashboard, in order."""
    r = RATE
    return [
        # --- traffic -----------------------------------------------------------------------------------
        PanelSpec(
            "Traffic",
            "Tokens per second",
            "timeseries",
            "short",
            (Query(f"sum by (model, type) (rate(ollama_inference_tokens_total[{r}]))", "{{model}} {{type}}"),),
            "Prompt and completion tokens processed per second, from Ollama's own counts.",
        ),
        PanelSpec(
            "Traffic",
            "Generation speed per request (median)",
            "timeseries",
            "short",
            (
                Query(
                    f"histogram_quantile(0.5, sum by (le, model) (rate(ollama_tokens_per_second_bucket[{r}])))",
                    "{{model}}",
                ),
            ),
            "Completion tokens per second of one request (eval_count / eval_duration).",
        ),
        PanelSpec(
            "Traffic",
            "Inference requests by status",
            "timeseries",
            "reqps",
            (Query(f"sum by (status) (rate(ollama_inference_requests_total[{r}]))", "{{status}}"),),
        ),
        PanelSpec(
            "Traffic",
            "Gateway requests and requests reaching nodes",
            "timeseries",
            "reqps",
            (
                Query(f"sum(rate(nginx_http_requests_total[{r}]))", "gateway"),
                Query(f"sum(rate(ollama_http_requests_total[{r}]))", "nodes"),
            ),
            "The difference is what the gateway answered itself (rate limits, shedding, auth, health).",
        ),
        # --- clients (the gateway names the client to the meters; labels bounded by gateway.clients) -----
        PanelSpec(
            "Clients",
            "Tokens per second by client",
            "timeseries",
            "short",
            (Query(f"sum by (client) (rate(ollama_inference_tokens_total[{r}]))", "{{client}}"),),
            "Prompt and completion tokens of each API key holder; `unknown` is traffic that bypassed the gateway.",
        ),
        PanelSpec(
            "Clients",
            "Inference requests by client",
            "timeseries",
            "reqps",
            (Query(f"sum by (client, status) (rate(ollama_inference_requests_total[{r}]))", "{{client}} {{status}}"),),
        ),
        PanelSpec(
            "Clients",
            "Tokens per client and model, last 24 hours",
            "table",
            "short",
            (Query(usage.tokens_query("24h", by="client, model"), "{{client}} {{model}}", instant=True),),
            "What `fleet usage --since 24h` prints; budgets (gateway.clients[].tokensPerDay) count per UTC day.",
            width=24,
        ),
        # --- latency -----------------------------------------------------------------------------------
        PanelSpec(
            "Latency",
            "Time to first token",
            "timeseries",
            "s",
            (
                Query(
                    f"histogram_quantile(0.5, sum by (le, model) (rate(ollama_time_to_first_token_seconds_bucket[{r}])))",
                    "p50 {{model}}",
                ),
                Query(
                    f"histogram_quantile(0.95, sum by (le, model) (rate(ollama_time_to_first_token_seconds_bucket[{r}])))",
                    "p95 {{model}}",
                ),
            ),
        ),
        PanelSpec(
            "Latency",
            "Request duration",
            "timeseries",
            "s",
            (
                Query(
                    f"histogram_quantile(0.5, sum by (le, model) (rate(ollama_inference_duration_seconds_bucket[{r}])))",
                    "p50 {{model}}",
                ),
                Query(
                    f"histogram_quantile(0.95, sum by (le, model) (rate(ollama_inference_duration_seconds_bucket[{r}])))",
                    "p95 {{model}}",
                ),
            ),
        ),
        PanelSpec(
            "Latency",
            "Inference at the gateway",
            "timeseries",
            "s",
            (
                Query(
                    f"histogram_quantile(0.95, sum by (le) (rate(fleet_gateway_upstream_header_seconds_bucket[{r}])))",
                    "p95 to first byte",
                ),
                Query(
                    f"histogram_quantile(0.95, sum by (le) (rate(fleet_gateway_request_duration_seconds_bucket[{r}])))",
                    "p95 to last byte",
                ),
            ),
            "What clients wait for, seen at the gateway (its access log): until the answering node's headers (the "
            "first token of a stream) and until the last byte, of inference requests answered 2xx.",
            width=24,
        ),
        # --- errors and refusals -----------------------------------------------------------------------
        PanelSpec(
            "Errors and refusals",
            "Failed inference requests (share)",
            "timeseries",
            "percentunit",
            (
                # `or … * 0`: a group with traffic and no failure shows 0 rather than "No data".
                Query(
                    f'(sum by (group) (rate(ollama_inference_requests_total{{status=~"5..|error|upstream_closed",status!="503"}}[{r}]))'
                    f" or sum by (group) (rate(ollama_inference_requests_total[{r}])) * 0)"
                    f" / sum by (group) (rate(ollama_inference_requests_total[{r}]))",
                    "{{group}}",
                ),
            ),
        ),
        PanelSpec(
            "Errors and refusals",
            "Refusals",
            "timeseries",
            "reqps",
            (
                Query(f'sum by (status) (rate(ollama_http_requests_total{{status=~"429|503"}}[{r}]))', "node {{status}}"),
                Query(f"sum by (reason) (rate(fleet_gateway_refusals_total[{r}]))", "gateway {{reason}}"),
            ),
            "Node refusals (Ollama queue full), and the gateway's own refusals by reason, counted from its access "
            "log: unauthorized (401), forbidden (403), too_large (413), rate_limited (429), shed (503, every node "
            "at max_conns or down).",
        ),
        # --- queue -------------------------------------------------------------------------------------
        PanelSpec(
            "Queue",
            "In-flight requests per node",
            "timeseries",
            "short",
            (Query("sum by (node) (ollama_inflight_requests)", "{{node}}"),),
            "Requests inside Ollama (running in a slot or queued).",
        ),
        PanelSpec(
            "Queue",
            "Gateway connections",
            "timeseries",
            "short",
            (
                Query("sum(nginx_connections_active)", "active"),
                Query("sum(nginx_connections_writing)", "writing (requests in progress)"),
            ),
        ),
        # --- models and VRAM ---------------------------------------------------------------------------
        PanelSpec(
            "Models and VRAM",
            "Nodes up",
            "stat",
            "short",
            (Query("sum(ollama_up)", "up", instant=True),),
            width=6,
        ),
        PanelSpec(
            "Models and VRAM",
            "Loaded models",
            "table",
            "bytes",
            (Query("sum by (node, model) (ollama_loaded_model_vram_bytes)", "{{node}} {{model}}", instant=True),),
            "Models loaded on each node (Ollama /api/ps) and the VRAM each holds.",
            width=18,
        ),
        PanelSpec(
            "Models and VRAM",
            "VRAM per node",
            "timeseries",
            "bytes",
            (
                Query("sum by (node) (ollama_loaded_model_vram_bytes)", "models {{node}}"),
                Query("sum by (node) (DCGM_FI_DEV_FB_USED) * 1048576", "GPU used {{node}}"),
            ),
            "VRAM of the loaded models (/api/ps) and GPU memory in use (DCGM, MiB converted to bytes).",
            width=24,
        ),
    ]


def _panel(spec: PanelSpec, datasource: dashboard_models.DataSourceRef):
    builder = {"timeseries": gtimeseries.Panel, "stat": gstat.Panel, "table": gtable.Panel}[spec.kind]()
    builder = builder.title(spec.title).unit(spec.unit).datasource(datasource).span(spec.width).height(spec.height)
    if spec.description:
        builder = builder.description(spec.description)
    for index, query in enumerate(spec.queries):
        target = gprom.Dataquery().expr(query.expr).ref_id(chr(ord("A") + index)).datasource(datasource)
        if query.legend:
            target = target.legend_format(query.legend)
        if query.instant:
            target = target.instant()
            if spec.kind == "table":
                target = target.format(prometheus_models.PromQueryFormat.TABLE)
        builder = builder.with_target(target)
    return builder


def build_dashboard(settings: FleetSettings) -> gdash.Dashboard:
    """The fleet dashboard builder (tokens/s, TTFT, latency, errors and refusals, queue, models and VRAM)."""
    datasource = dashboard_models.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
    builder = (
        gdash.Dashboard(f"Ollama fleet ({settings.environment})")
        .uid(DASHBOARD_UID)
        .tags(["ollama-fleet", settings.environment])
        .refresh("30s")
        .time("now-3h", "now")
        .readonly()
    )
    row = None
    panel_id = 0
    for spec in panels():
        if spec.row != row:
            row = spec.row
            panel_id += 1
            builder = builder.with_row(gdash.Row(row).id(panel_id))
        panel_id += 1
        builder = builder.with_panel(_panel(spec, datasource).id(panel_id))
    return builder


def render_dashboard(settings: FleetSettings) -> str:
    """The dashboard JSON file that Grafana's file provider loads."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build_dashboard(settings).build()) + "\n"


# Environment variable of the Grafana container holding Prometheus' password; the provisioning file names it
# (Grafana expands `$__env{...}`), so the file itself carries no secret.
PROMETHEUS_PASSWORD_ENV = usage.PASSWORD_ENV


def render_datasource(
    prometheus_url: str = f"http://prometheus:{ports.PROMETHEUS}",
    scrape_interval: str = "15s",
    basic_auth_user: str | None = None,
) -> str:
    """provisioning/datasources/*.yaml: the Prometheus datasource the dashboard refers to by uid; with
    `basic_auth_user`, it logs in with the password from PROMETHEUS_PASSWORD_ENV."""
    auth = (
        {
            "basicAuth": True,
            "basicAuthUser": basic_auth_user,
            "secureJsonData": {"basicAuthPassword": f"$__env{{{PROMETHEUS_PASSWORD_ENV}}}"},
        }
        if basic_auth_user
        else {}
    )
    document = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": DATASOURCE_NAME,
                "uid": DATASOURCE_UID,
                "type": "prometheus",
                "access": "proxy",
                "url": prometheus_url,
                "isDefault": True,
                "editable": False,
                "jsonData": {"timeInterval": scrape_interval, "httpMethod": "POST"},
                **auth,
            }
        ],
    }
    return yaml.safe_dump(document, sort_keys=False)


def render_dashboard_provider(path: str = DASHBOARDS_PATH) -> str:
    """provisioning/dashboards/*.yaml: loads the dashboard files from `path`, read-only."""
    document = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "ollama-fleet",
                "folder": FOLDER,
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "options": {"path": path},
            }
        ],
    }
    return yaml.safe_dump(document, sort_keys=False)


def panel_queries(rate_interval: str = "5m") -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel query, Grafana's $__rate_interval replaced by `rate_interval`."""
    return [(spec.title, q.expr.replace(RATE, rate_interval)) for spec in panels() for q in spec.queries]


def dashboard_queries(settings: FleetSettings, rate_interval: str = "5m") -> list[tuple[str, str]]:
    """Every PromQL expression used by the dashboard panels and the alert rules: (where, expression)."""
    return [(f"panel: {title}", expr) for title, expr in panel_queries(rate_interval)] + [
        (f"alert: {name}", expr) for name, expr in rule_queries(settings)
    ]


def dashboard_json_queries(document: str) -> list[str]:
    """The `expr` of every target in a rendered dashboard JSON (what Grafana will actually run)."""
    data = json.loads(document)
    return [t["expr"] for p in data.get("panels", []) for t in p.get("targets", []) or [] if "expr" in t]
