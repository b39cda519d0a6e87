"""Grafana provisioning and the dashboard built with grafana-foundation-sdk."""

from __future__ import annotations

import json
import re

import yaml
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from fleet.exporters.meter_metrics import LoadedModel, MeterMetrics
from fleet.exporters.gateway_log import GatewayLogMetrics
from fleet.render import grafana, rules

# Series of nginx-prometheus-exporter (stub_status) and dcgm-exporter that the queries may use.
NGINX_EXPORTER_SERIES = {
    "nginx_connections_accepted",
    "nginx_connections_active",
    "nginx_connections_handled",
    "nginx_connections_reading",
    "nginx_connections_waiting",
    "nginx_connections_writing",
    "nginx_http_requests_total",
    "nginx_up",
}
DCGM_SERIES = {"DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_UTIL"}


def _names(registry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter" or isinstance(family, CounterMetricFamily):
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram" or isinstance(family, HistogramMetricFamily):
            names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
        else:
            names.add(family.name)
    return names


def exporter_series() -> set[str]:
    """Every series name the metering exporter can expose (from its real registry)."""
    metrics = MeterMetrics("chat-0", models=["m:1b"])
    metrics.set_upstream(True, "0.0.0", [LoadedModel("m:1b", 1, 1)])
    return _names(metrics.registry)


def gateway_log_series() -> set[str]:
    """Every series name the gateway log exporter can expose (from its real registry, after a proxied request)."""
    metrics = GatewayLogMetrics("gateway-0", ["alpha"])
    metrics.observe_line(
        b'{"client":"alpha","status":200,"uri":"/api/chat","upstream_addr":"10.0.0.1:11435",'
        b'"upstream_status":"200","request_time":1.0,"upstream_header_time":"0.2","upstream_response_time":"1.0"}'
    )
    return _names(metrics.registry)


def _series_names(expr: str) -> set[str]:
    without_labels = re.sub(r"\{[^}]*\}", "", expr)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", without_labels))
    return {w for w in words if w.startswith(("ollama_", "nginx_", "DCGM_", "fleet_")) or w == "up"}


def test_dashboard_is_built_from_the_panel_list(settings):
    document = json.loads(grafana.render_dashboard(settings))
    assert document["uid"] == grafana.DASHBOARD_UID
    assert document["editable"] is False
    panels = [p for p in document["panels"] if p["type"] != "row"]
    assert [p["title"] for p in panels] == [spec.title for spec in grafana.panels()]
    ids = [p["id"] for p in document["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": grafana.DATASOURCE_UID}
        assert panel["targets"] and all(t["datasource"]["uid"] == grafana.DATASOURCE_UID for t in panel["targets"])
    exprs = grafana.dashboard_json_queries(grafana.render_dashboard(settings))
    assert exprs == [q.expr for spec in grafana.panels() for q in spec.queries]


def test_dashboard_covers_what_operators_need():
    titles = " | ".join(spec.title.lower() for spec in grafana.panels())
    for topic in ("tokens per second", "time to first token", "duration", "refusals", "failed", "in-flight", "loaded models", "vram"):
        assert topic in titles, topic
    exprs = " ".join(e for _, e in grafana.panel_queries())
    # the names a dashboard written for the usual blog setup expects
    assert "ollama_inference_duration_seconds" in exprs and "ollama_inference_tokens_total" in exprs


def test_queries_use_only_series_that_exist():
    available = exporter_series() | gateway_log_series() | NGINX_EXPORTER_SERIES | DCGM_SERIES | {"up"}
    from fleet.stack_file import load_stack

    settings = load_stack("prod").settings
    for where, expr in grafana.dashboard_queries(settings):
        missing = _series_names(expr) - available
        assert not missing, f"{where}: {missing}"


def test_panel_queries_replace_the_grafana_rate_interval():
    for _, expr in grafana.panel_queries("2m"):
        assert "$__" not in expr
    assert any("[2m]" in expr for _, expr in grafana.panel_queries("2m"))


def test_dashboard_queries_include_every_rule(settings):
    queries = dict(grafana.dashboard_queries(settings))
    for name, expr in rules.rule_queries(settings):
        assert queries[f"alert: {name}"] == expr


def test_provisioning_files():
    datasource = yaml.safe_load(grafana.render_datasource("http://127.0.0.1:19090", scrape_interval="15s"))
    (source,) = datasource["datasources"]
    assert source["uid"] == grafana.DATASOURCE_UID and source["type"] == "prometheus"
    assert source["url"] == "http://127.0.0.1:19090" and source["jsonData"]["timeInterval"] == "15s"
    provider = yaml.safe_load(grafana.render_dashboard_provider("/dash"))
    (entry,) = provider["providers"]
    assert entry["type"] == "file" and entry["options"]["path"] == "/dash" and entry["allowUiUpdates"] is False
