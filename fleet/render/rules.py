"""Prometheus alert rules of a fleet, with thresholds from `settings.monitoring.alerts`.

The series come from the metering exporter (fleet/exporters/meter_metrics.py: `ollama_*`), the gateway log exporter
(fleet/exporters/gateway_log.py: `fleet_gateway_*`), DCGM (`DCGM_FI_*`) and Prometheus' own `up`. Every expression here is checked by
`promtool check rules` and each alert has a `promtool test rules` case that fires and one that does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from fleet import catalog
from fleet.config import FleetSettings
from fleet.render.prometheus import JOB_METER, is_gpu_group

RULE_GROUP = "ollama-fleet"

# Request statuses the meter records that mean the node failed the request (503 is a refusal, not an error).
ERROR_STATUSES = "5..|error|upstream_closed"
REFUSAL_STATUSES = "429|503"
# The gateway's own refusals that mean "not enough capacity": rate limits and shedding (fleet_gateway_refusals_total).
# 401, 403 and 413 are the client's doing and stay out of the alert.
CAPACITY_REFUSALS = "rate_limited|shed"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str


def _num(value: float) -> str:
    """A threshold exactly as configured: the shortest decimal that reads back as the same number (`0.9609375`,
    not `0.960938`; a ratio of 0.9999999 rounded to `1` would be an alert that never fires), `5` for 5.0."""
    text = repr(float(value))
    return text.removesuffix(".0")


def node_refusal_ratio(window: str = "5m") -> str:
    """Share of the requests reaching the nodes that they refuse (429/503: Ollama's queue is full)."""
    return (
        f'sum(rate(ollama_http_requests_total{{status=~"{REFUSAL_STATUSES}"}}[{window}]))'
        f" / sum(rate(ollama_http_requests_total[{window}]))"
    )


def gateway_refusal_ratio(window: str = "5m") -> str:
    """Share of known clients' requests the gateway refuses for capacity (rate limits, shedding), counted
    from its access log by fleet.exporters.gateway_log. Unauthenticated requests neither raise nor dilute it."""
    return (
        f'sum(rate(fleet_gateway_refusals_total{{reason=~"{CAPACITY_REFUSALS}"}}[{window}]))'
        f' / sum(rate(fleet_gateway_requests_total{{client!="unknown"}}[{window}]))'
    )


def alerts(settings: FleetSettings) -> list[Alert]:
    """The alert rules of a stack (the order is the order in the rendered file)."""
    t = settings.monitoring.alerts
    vram_parts = [
        f"(max by (node, gpu) (DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)) > {_num(t.vram_full_ratio)})"
    ]
    for group in settings.node_groups:
        if is_gpu_group(group):
            total = catalog.find_instance(group.instance_type).total_vram
            vram_parts.append(
                f'(sum by (node) (ollama_loaded_model_vram_bytes{{group="{group.name}"}}) / {total} > {_num(t.vram_full_ratio)})'
            )
    return [
        Alert(
            name="OllamaNodeDown",
            expr=f'up{{job="{JOB_METER}"}} == 0 or ollama_up == 0',
            for_=t.node_down_for,
            severity="critical",
            summary="Ollama node {{ $labels.instance }} is down",
            description="The node's metering exporter cannot be scraped, or it cannot reach Ollama on the node.",
        ),
        Alert(
            name="OllamaErrorRatioHigh",
            expr=(
                f'sum by (group) (rate(ollama_inference_requests_total{{status=~"{ERROR_STATUSES}",status!="503"}}[5m]))'
                f" / sum by (group) (rate(ollama_inference_requests_total[5m])) > {_num(t.error_ratio)}"
            ),
            for_="5m",
            severity="warning",
            summary=f"More than {t.error_ratio:.0%} of inference requests fail in group {{{{ $labels.group }}}}",
            description="Share of inference requests answered with a 5xx (other than 503), an error inside a 200 stream, or a broken stream.",
        ),
        Alert(
            name="RequestRefusalRatioHigh",
            expr=(
                f"({node_refusal_ratio()} > {_num(t.refusal_ratio)})"
                f" or ({gateway_refusal_ratio()} > {_num(t.refusal_ratio)})"
            ),
            for_="5m",
            severity="warning",
            summary=f"More than {t.refusal_ratio:.0%} of requests are refused",
            description=(
                "Either the nodes answer 429/503 (Ollama's queue is full), or the gateway refuses its clients' "
                "requests itself: rate limits (429) and shedding when every node is at max_conns or down (503), "
                "counted exactly from the gateway's access log (401, 403 and 413 do not count)."
            ),
        ),
        Alert(
            name="OllamaTimeToFirstTokenHigh",
            expr=(
                "histogram_quantile(0.95, sum by (le, group, model) (rate(ollama_time_to_first_token_seconds_bucket[5m])))"
                f" > {_num(t.ttft_p95_seconds)}"
            ),
            for_="10m",
            severity="warning",
            summary=f"p95 time to first token of {{{{ $labels.model }}}} in group {{{{ $labels.group }}}} is above {_num(t.ttft_p95_seconds)}s",
            description="Requests wait for a slot or a model load; add nodes, raise numParallel or shed earlier.",
        ),
        Alert(
            name="GpuVramNearFull",
            expr=" or ".join(vram_parts),
            for_="10m",
            severity="warning",
            summary=f"VRAM of {{{{ $labels.node }}}} is above {t.vram_full_ratio:.0%}",
            description="Used GPU memory (DCGM) or the VRAM of the loaded models (/api/ps) is close to the GPUs' total.",
        ),
        Alert(
            name="OllamaQueueGrowing",
            expr=f"sum by (group, node) (deriv(ollama_inflight_requests[10m])) * 60 > {_num(t.queue_growth_per_minute)}",
            for_="5m",
            severity="warning",
            summary="In-flight requests on {{ $labels.node }} keep growing",
            description=f"Requests inside Ollama grow by more than {_num(t.queue_growth_per_minute)} per minute: the node does not keep up.",
        ),
        Alert(
            name="MonitoringTargetDown",
            expr=f'up{{job!="{JOB_METER}"}} == 0',
            for_="5m",
            severity="warning",
            summary="{{ $labels.job }} target {{ $labels.instance }} is down",
            description="An exporter (nginx, node, dcgm) or Prometheus itself cannot be scraped.",
        ),
    ]


def rule_queries(settings: FleetSettings) -> list[tuple[str, str]]:
    """(alert name, PromQL expression) of every rule."""
    return [(a.name, a.expr) for a in alerts(settings)]


def render_rules(settings: FleetSettings) -> str:
    """The rule file (`rule_files` of prometheus.yml)."""
    document = {
        "groups": [
            {
                "name": RULE_GROUP,
                "rules": [
                    {
                        "alert": a.name,
                        "expr": a.expr,
                        "for": a.for_,
                        "labels": {"severity": a.severity},
                        "annotations": {"summary": a.summary, "description": a.description},
                    }
                    for a in alerts(settings)
                ],
            }
        ]
    }
    header = "# Alert rules of ollama-fleet, rendered by fleet.render.rules.render_rules. Do not edit by hand.\n"
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=1000)
