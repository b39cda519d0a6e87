"""Prometheus config, alert rules and every dashboard/rule query, checked by the real promtool."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from render_tools import PROMTOOL, require_tool

from fleet import catalog
from fleet.render import grafana, prometheus, rules
from fleet.render.prometheus import is_gpu_group
from fleet.stack_file import load_stack

pytestmark = pytest.mark.tools


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    binary = require_tool(PROMTOOL, "promtool")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def _plan(settings, rule_file: str, stack: str = "test"):
    return prometheus.build_prometheus_plan(
        settings,
        nodes=prometheus.placeholder_node_targets(settings),
        nginx_exporters=["127.0.0.1:9113"],
        gateway_log_exporters=["127.0.0.1:9115"],
        gateway_node_exporters={"gateway-0": "192.0.2.5:9100"},
        rule_files=[rule_file],
        stack=stack,
    )


# --- scrape config ---------------------------------------------------------------------------------------


def test_promtool_accepts_config_and_rules(settings, stack, tmp_path):
    rule_file = tmp_path / "fleet.rules.yml"
    rule_file.write_text(rules.render_rules(settings))
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus.render_prometheus(_plan(settings, str(rule_file), stack)))
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout
    result = promtool("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules.alerts(settings))} rules found" in result.stdout


def test_promtool_refuses_a_broken_config(tmp_path):
    """The check is real: an unknown key fails it."""
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus.render_prometheus(_plan(load_stack("dev").settings, "r.yml")) + "bogus_key: 1\n")
    assert promtool("check", "config", str(config)).returncode != 0


def test_scrape_jobs_and_targets(settings, stack):
    plan = _plan(settings, "/etc/prometheus/rules/fleet.rules.yml", stack)
    document = yaml.safe_load(prometheus.render_prometheus(plan))
    jobs = {job["job_name"]: job for job in document["scrape_configs"]}
    gpu_nodes = sum(g.count for g in settings.node_groups if is_gpu_group(g))
    expected = {
        prometheus.JOB_PROMETHEUS,
        prometheus.JOB_METER,
        prometheus.JOB_NGINX,
        prometheus.JOB_GATEWAY_LOG,
        prometheus.JOB_NODE,
    }
    if gpu_nodes:
        expected.add(prometheus.JOB_DCGM)
    assert set(jobs) == expected
    meter_targets = [t for g in jobs[prometheus.JOB_METER]["static_configs"] for t in g["targets"]]
    assert len(meter_targets) == settings.node_count
    assert all(t.endswith(":9778") for t in meter_targets)
    # the gateway log exporter labels its own series with `gateway`: its targets carry no labels
    assert jobs[prometheus.JOB_GATEWAY_LOG]["static_configs"] == [{"targets": ["127.0.0.1:9115"]}]
    for group in jobs[prometheus.JOB_METER]["static_configs"]:
        # the meter labels its own series with `node`: a target label of that name would be renamed
        assert "node" not in group["labels"] and group["labels"]["group"]
    node_labels = [g["labels"]["node"] for g in jobs[prometheus.JOB_NODE]["static_configs"]]
    assert "gateway-0" in node_labels and len(node_labels) == settings.node_count + 1
    if gpu_nodes:
        dcgm = [t for g in jobs[prometheus.JOB_DCGM]["static_configs"] for t in g["targets"]]
        assert len(dcgm) == gpu_nodes and all(t.endswith(":9400") for t in dcgm)
    assert document["global"]["scrape_interval"] == settings.monitoring.scrape_interval
    assert document["global"]["external_labels"]["environment"] == settings.environment
    assert prometheus.prometheus_args(plan)[2] == f"--storage.tsdb.retention.time={settings.monitoring.retention}"


def test_runtime_targets_and_bad_targets():
    settings = load_stack("prod").settings
    nodes = prometheus.node_targets(settings, {"chat": ["10.70.1.5", "10.70.2.6"]}, meter_ports={"chat-1": 19778})
    plan = prometheus.build_prometheus_plan(settings, nodes=nodes, scrape_interval="1s")
    assert (plan.scrape_interval, plan.evaluation_interval) == ("1s", "1s")
    assert plan.job(prometheus.JOB_METER).targets == ["10.70.1.5:9778", "10.70.2.6:19778"]
    assert plan.job(prometheus.JOB_NGINX) is None  # no exporter given: no empty job
    assert plan.job(prometheus.JOB_GATEWAY_LOG) is None
    with pytest.raises(prometheus.PrometheusPlanError, match="unknown node group"):
        prometheus.node_targets(settings, {"nope": ["10.0.0.1"]})
    with pytest.raises(prometheus.PrometheusPlanError, match="without a port"):
        prometheus.node_targets(settings, {"chat": ["10.0.0.1:9778"]})
    with pytest.raises(prometheus.PrometheusPlanError, match="host:port"):
        prometheus.build_prometheus_plan(settings, nodes=nodes, nginx_exporters=["nginx-exporter"])
    with pytest.raises(prometheus.PrometheusPlanError, match="gateway log exporter"):
        prometheus.build_prometheus_plan(settings, nodes=nodes, gateway_log_exporters=["10.0.0.1"])


# --- alert rules: one promtool test case that fires and one that does not, for every alert ---------------


def _expand(text: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), text)


def _alert(settings, name: str, labels: dict[str, str]) -> dict:
    rule = next(a for a in rules.alerts(settings) if a.name == name)
    return {
        "exp_labels": {**labels, "severity": rule.severity},
        "exp_annotations": {"summary": _expand(rule.summary, labels), "description": _expand(rule.description, labels)},
    }


def _case(series: dict[str, str], name: str, eval_time: str, expected: list[dict]) -> dict:
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [{"eval_time": eval_time, "alertname": name, "exp_alerts": expected}],
    }


def alert_cases(settings) -> dict[str, list[dict]]:
    """Test cases per alert name, thresholds taken from the stack's settings."""
    t = settings.monitoring.alerts
    meter = 'job="ollama-meter",instance="chat-0:9778",group="chat"'
    # error ratio: 100 ok requests a minute, and failures just above / half of the threshold
    fail_high = int(100 * t.error_ratio / (1 - t.error_ratio) * 2) + 1
    fail_low = max(0, int(100 * t.error_ratio / 2) - 1)
    refuse_high = int(100 * t.refusal_ratio / (1 - t.refusal_ratio) * 2) + 1
    ttft = t.ttft_p95_seconds
    grow = t.queue_growth_per_minute
    vram_used = int(round(t.vram_full_ratio * 100)) + 1 if t.vram_full_ratio < 0.99 else 100
    cases = {
        "OllamaNodeDown": [
            _case({f"up{{{meter}}}": "0x10"}, "OllamaNodeDown", "5m",
                  [_alert(settings, "OllamaNodeDown", {"job": "ollama-meter", "instance": "chat-0:9778", "group": "chat"})]),
            _case({f"up{{{meter}}}": "1x10", f'ollama_up{{{meter},node="chat-0"}}': "0x10"}, "OllamaNodeDown", "5m",
                  [_alert(settings, "OllamaNodeDown",
                          {"job": "ollama-meter", "instance": "chat-0:9778", "group": "chat", "node": "chat-0"})]),
            _case({f"up{{{meter}}}": "1x10", f'ollama_up{{{meter},node="chat-0"}}': "1x10"}, "OllamaNodeDown", "5m", []),
            # down for one minute only: still pending
            _case({f"up{{{meter}}}": "1 1 1 1 0"}, "OllamaNodeDown", "4m", []),
        ],
        "OllamaErrorRatioHigh": [
            _case({
                f'ollama_inference_requests_total{{{meter},node="chat-0",model="m",status="200"}}': "0+100x30",
                f'ollama_inference_requests_total{{{meter},node="chat-0",model="m",status="500"}}': f"0+{fail_high}x30",
            }, "OllamaErrorRatioHigh", "20m", [_alert(settings, "OllamaErrorRatioHigh", {"group": "chat"})]),
            _case({
                f'ollama_inference_requests_total{{{meter},node="chat-0",model="m",status="200"}}': "0+100x30",
                f'ollama_inference_requests_total{{{meter},node="chat-0",model="m",status="error"}}': f"0+{fail_low}x30",
                # 503 is a refusal, not an error
                f'ollama_inference_requests_total{{{meter},node="chat-0",model="m",status="503"}}': "0+500x30",
            }, "OllamaErrorRatioHigh", "20m", []),
        ],
        "RequestRefusalRatioHigh": [
            # the nodes refuse (Ollama's queue is full)
            _case({
                f'ollama_http_requests_total{{{meter},node="chat-0",route="/api/chat",status="200"}}': "0+100x30",
                f'ollama_http_requests_total{{{meter},node="chat-0",route="/api/chat",status="503"}}': f"0+{refuse_high}x30",
                _gateway_requests("alpha", "200"): "0+100x30",
                _gateway_refusals("alpha", "shed"): "0x30",
            }, "RequestRefusalRatioHigh", "20m", [_alert(settings, "RequestRefusalRatioHigh", {})]),
            # the gateway sheds a share of a client's requests (every node at max_conns)
            _case({
                f'ollama_http_requests_total{{{meter},node="chat-0",route="/api/chat",status="200"}}': "0+100x30",
                _gateway_requests("alpha", "200"): "0+100x30",
                _gateway_requests("alpha", "503"): f"0+{refuse_high}x30",
                _gateway_refusals("alpha", "shed"): f"0+{refuse_high}x30",
            }, "RequestRefusalRatioHigh", "20m", [_alert(settings, "RequestRefusalRatioHigh", {})]),
            # the gateway rate-limits a share of a client's requests
            _case({
                f'ollama_http_requests_total{{{meter},node="chat-0",route="/api/chat",status="200"}}': "0+100x30",
                _gateway_requests("alpha", "200"): "0+100x30",
                _gateway_requests("alpha", "429"): f"0+{refuse_high}x30",
                _gateway_refusals("alpha", "rate_limited"): f"0+{refuse_high}x30",
            }, "RequestRefusalRatioHigh", "20m", [_alert(settings, "RequestRefusalRatioHigh", {})]),
            # everything reaches a node and is served
            _case({
                f'ollama_http_requests_total{{{meter},node="chat-0",route="/api/chat",status="200"}}': "0+100x30",
                _gateway_requests("alpha", "200"): "0+100x30",
                _gateway_refusals("alpha", "shed"): "0x30",
                _gateway_refusals("alpha", "rate_limited"): "0x30",
            }, "RequestRefusalRatioHigh", "20m", []),
            # many requests without a valid key (401), forbidden admin calls (403) and oversized bodies (413): the
            # gateway answers them itself, but they are the clients' doing, not a lack of capacity
            _case({
                f'ollama_http_requests_total{{{meter},node="chat-0",route="/api/chat",status="200"}}': "0+100x30",
                _gateway_requests("alpha", "200"): "0+100x30",
                _gateway_requests("unknown", "401"): "0+500x30",
                _gateway_refusals("unknown", "unauthorized"): "0+500x30",
                _gateway_requests("alpha", "403", "admin"): "0+50x30",
                _gateway_refusals("alpha", "forbidden"): "0+50x30",
                _gateway_requests("alpha", "413"): "0+50x30",
                _gateway_refusals("alpha", "too_large"): "0+50x30",
                _gateway_refusals("alpha", "shed"): "0x30",
            }, "RequestRefusalRatioHigh", "20m", []),
        ],
        "OllamaTimeToFirstTokenHigh": [
            _case(_ttft_buckets(meter, ttft, slow=True), "OllamaTimeToFirstTokenHigh", "25m",
                  [_alert(settings, "OllamaTimeToFirstTokenHigh", {"model": "m", "group": "chat"})]),
            _case(_ttft_buckets(meter, ttft, slow=False), "OllamaTimeToFirstTokenHigh", "25m", []),
        ],
        "GpuVramNearFull": [
            _case({
                'DCGM_FI_DEV_FB_USED{job="dcgm",node="chat-0",group="chat",gpu="0"}': f"{vram_used}x20",
                'DCGM_FI_DEV_FB_FREE{job="dcgm",node="chat-0",group="chat",gpu="0"}': f"{100 - vram_used}x20",
            }, "GpuVramNearFull", "15m", [_alert(settings, "GpuVramNearFull", {"node": "chat-0", "gpu": "0"})]),
            _case({
                'DCGM_FI_DEV_FB_USED{job="dcgm",node="chat-0",group="chat",gpu="0"}': "50x20",
                'DCGM_FI_DEV_FB_FREE{job="dcgm",node="chat-0",group="chat",gpu="0"}': "50x20",
            }, "GpuVramNearFull", "15m", []),
        ],
        "OllamaQueueGrowing": [
            _case({f'ollama_inflight_requests{{{meter},node="chat-0",model="m"}}': f"0+{grow * 2:g}x30"},
                  "OllamaQueueGrowing", "20m", [_alert(settings, "OllamaQueueGrowing", {"node": "chat-0", "group": "chat"})]),
            _case({f'ollama_inflight_requests{{{meter},node="chat-0",model="m"}}': f"{grow * 10:g}x30"},
                  "OllamaQueueGrowing", "20m", []),
        ],
        "MonitoringTargetDown": [
            _case({'up{job="nginx",instance="gw:9113"}': "0x10"}, "MonitoringTargetDown", "8m",
                  [_alert(settings, "MonitoringTargetDown", {"job": "nginx", "instance": "gw:9113"})]),
            # a node's meter is OllamaNodeDown's business
            _case({'up{job="nginx",instance="gw:9113"}': "1x10", f"up{{{meter}}}": "0x10"}, "MonitoringTargetDown", "8m", []),
        ],
    }
    gpu_groups = [g for g in settings.node_groups if is_gpu_group(g)]
    if gpu_groups:
        group = gpu_groups[0]
        total = catalog.find_instance(group.instance_type).total_vram
        labels = f'job="ollama-meter",instance="x:9778",group="{group.name}",node="{group.name}-0",model="m"'
        cases["GpuVramNearFull"] += [
            _case({f"ollama_loaded_model_vram_bytes{{{labels}}}": f"{int(total * min(1.0, t.vram_full_ratio + 0.01))}x20"},
                  "GpuVramNearFull", "15m", [_alert(settings, "GpuVramNearFull", {"node": f"{group.name}-0"})]),
            _case({f"ollama_loaded_model_vram_bytes{{{labels}}}": f"{int(total * t.vram_full_ratio * 0.5)}x20"},
                  "GpuVramNearFull", "15m", []),
        ]
    return cases


GATEWAY_LOG = 'job="gateway-log",instance="gw:9115",gateway="gateway-0"'


def _gateway_requests(client: str, status: str, route: str = "inference") -> str:
    return f'fleet_gateway_requests_total{{{GATEWAY_LOG},client="{client}",status="{status}",route="{route}"}}'


def _gateway_refusals(client: str, reason: str) -> str:
    return f'fleet_gateway_refusals_total{{{GATEWAY_LOG},client="{client}",reason="{reason}"}}'


def _ttft_buckets(meter: str, threshold: float, slow: bool) -> dict[str, str]:
    series = f'ollama_time_to_first_token_seconds_bucket{{{meter},node="chat-0",model="m",le="%s"}}'
    bounds = [threshold / 2, threshold * 2, threshold * 4]
    counts = [0, 0, 10] if slow else [10, 10, 10]
    out = {series % format(b, "g"): f"0+{c}x40" for b, c in zip(bounds, counts)}
    out[series % "+Inf"] = "0+10x40"
    return out


def test_every_alert_has_cases_that_fire_and_that_do_not(settings):
    cases = alert_cases(settings)
    assert set(cases) == {a.name for a in rules.alerts(settings)}
    for name, tests in cases.items():
        expectations = [t["alert_rule_test"][0]["exp_alerts"] for t in tests]
        assert any(expectations) and not all(expectations), name


def test_promtool_test_rules(settings, tmp_path):
    (tmp_path / "fleet.rules.yml").write_text(rules.render_rules(settings))
    tests = [case for cases in alert_cases(settings).values() for case in cases]
    (tmp_path / "tests.yml").write_text(
        yaml.safe_dump({"rule_files": ["fleet.rules.yml"], "evaluation_interval": "1m", "tests": tests}, sort_keys=False)
    )
    result = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules_catches_a_wrong_expectation(tmp_path):
    """The rule tests are real: expecting an alert from healthy series fails."""
    settings = load_stack("dev").settings
    (tmp_path / "fleet.rules.yml").write_text(rules.render_rules(settings))
    wrong = _case({'up{job="nginx",instance="gw:9113"}': "1x10"}, "MonitoringTargetDown", "8m",
                  [_alert(settings, "MonitoringTargetDown", {"job": "nginx", "instance": "gw:9113"})])
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({"rule_files": ["fleet.rules.yml"], "tests": [wrong]}))
    assert promtool("test", "rules", "tests.yml", cwd=tmp_path).returncode != 0


def test_thresholds_come_from_settings():
    settings = load_stack("prod").settings
    alerts = settings.monitoring.alerts.model_copy(update={"ttft_p95_seconds": 2.5, "error_ratio": 0.02})
    changed = settings.model_copy(update={"monitoring": settings.monitoring.model_copy(update={"alerts": alerts})})
    exprs = dict(rules.rule_queries(changed))
    assert exprs["OllamaTimeToFirstTokenHigh"].endswith("> 2.5")
    assert exprs["OllamaErrorRatioHigh"].endswith("> 0.02")


# --- every PromQL expression of the dashboard and the rules parses -----------------------------------------


def _queries_as_rules(queries: list[tuple[str, str]]) -> str:
    return yaml.safe_dump(
        {"groups": [{"name": "queries", "rules": [{"record": f"fleet:query_{i}", "expr": e} for i, (_, e) in enumerate(queries)]}]}
    )


def test_every_dashboard_and_rule_query_parses(settings, tmp_path):
    queries = grafana.dashboard_queries(settings)
    assert len(queries) == len(grafana.panel_queries()) + len(rules.alerts(settings))
    (tmp_path / "queries.yml").write_text(_queries_as_rules(queries))
    result = promtool("check", "rules", str(tmp_path / "queries.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(queries)} rules found" in result.stdout


def test_a_broken_query_is_caught(tmp_path):
    (tmp_path / "queries.yml").write_text(_queries_as_rules([("x", "sum by (model (rate(x[5m]))")]))
    assert promtool("check", "rules", str(tmp_path / "queries.yml")).returncode != 0
