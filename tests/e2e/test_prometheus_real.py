"""Prometheus (Debian's) with the rendered scrape config and alert rules, scraping the real data plane:
every target is up, the metering series carry the token counts the clients received, and every dashboard
query and alert rule evaluates — the panels with data once traffic has flowed."""

from __future__ import annotations

import math

import httpx
import ollama
import pytest
from openai import OpenAI

from fleet.render import prometheus as prom
from fleet.render.grafana import dashboard_queries, panel_queries
from fleet.render.rules import RULE_GROUP, alerts
from metric_samples import parse_samples, total
from waiting import wait_until

pytestmark = pytest.mark.e2e

WAIT_S = 30
TIMEOUT = httpx.Timeout(120.0, connect=10.0)
RATE_WINDOW = "1m"  # Grafana's $__rate_interval stand-in: a few scrapes at the tests' 1s interval
# Panel queries that may stay empty here: no GPU (DCGM); the nodes never refuse (the gateway sheds first).
MAY_BE_EMPTY = (
    "DCGM_FI_DEV_FB_USED",
    'ollama_http_requests_total{status=~"429|503"}',
)


def _wait(condition, what: str):
    return wait_until(condition, what, WAIT_S)


def _vector(plane, expr: str) -> dict[tuple, float]:
    data = plane.prometheus_query(expr)
    assert data["resultType"] == "vector", (expr, data["resultType"])
    return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in data["result"]}


def _tokens(plane) -> dict[str, float]:
    return {dict(k)["type"]: v for k, v in _vector(plane, "sum by (type) (ollama_inference_tokens_total)").items()}


def _clients(plane):
    verify = plane.verify()
    native = ollama.Client(host=plane.gateway_url, headers=plane.auth("beta"), verify=verify, timeout=TIMEOUT)
    compatible = OpenAI(base_url=f"{plane.gateway_url}/v1", api_key=plane.client_keys["beta"], max_retries=0,
                        http_client=httpx.Client(verify=verify, timeout=TIMEOUT))
    return native, compatible


def test_every_target_is_scraped(dataplane):
    targets = dataplane.wait_for_targets(timeout=WAIT_S)
    jobs = sorted(t["labels"]["job"] for t in targets)
    assert jobs == sorted(
        [prom.JOB_PROMETHEUS, prom.JOB_NGINX, prom.JOB_GATEWAY_LOG, prom.JOB_NODE] + [prom.JOB_METER] * len(dataplane.nodes)
    )
    up = _wait(lambda: (lambda v: (len(v) == len(targets) and set(v.values()) == {1.0}, v))(_vector(dataplane, "up")),
               "up == 1 for every target")
    assert len(up) == len(targets)
    # Each meter labels its series with its node; Ollama answers behind every one of them.
    nodes = _wait(lambda: (lambda v: (len(v) == len(dataplane.nodes) and set(v.values()) == {1.0}, v))(
        _vector(dataplane, "ollama_up")), "ollama_up == 1 on every node")
    assert {dict(k)["node"] for k in nodes} == {n.name for n in dataplane.nodes}
    # The configuration Prometheus runs is the rendered one (only addresses and the interval differ).
    config = httpx.get(f"{dataplane.prometheus_url}/api/v1/status/config", auth=dataplane.prometheus_auth, timeout=10).json()["data"]["yaml"]
    assert "scrape_interval: 1s" in config and "stack: dev" in config


def _meter_tokens(plane) -> dict[str, float]:
    """The meters' own token totals by type, read from their /metrics (what Prometheus will scrape next)."""
    pages = [parse_samples(httpx.get(node.metrics_url, timeout=10).text) for node in plane.nodes]
    return {t: sum(total(page, "ollama_inference_tokens_total", type=t) for page in pages) for t in ("prompt", "completion")}


def test_metering_carries_the_token_counts_the_clients_received(dataplane, served_model):
    # Start from a settled state: nothing in flight, Prometheus has the meters' current totals (an earlier
    # test's last answer may be counted by a meter but not scraped yet: waiting for the scrape, not a time).
    _wait(lambda: (lambda v: (sum(v.values()) == 0, v))(_vector(dataplane, "ollama_inflight_requests")), "no request in flight")
    before = _wait(lambda: (lambda meters, scraped: ({t: scraped.get(t, 0) for t in meters} == meters, scraped))(
        _meter_tokens(dataplane), _tokens(dataplane)), "Prometheus to hold the meters' token totals")

    native, compatible = _clients(dataplane)
    options = {"temperature": 0, "num_predict": 10}
    prompt = completion = 0
    reply = native.generate(model=served_model, prompt="What is a meter?", options=options)
    prompt += reply.prompt_eval_count
    completion += reply.eval_count
    *_, last = native.chat(model=served_model, messages=[{"role": "user", "content": "Name a river."}],
                           options=options, stream=True)
    prompt += last.prompt_eval_count
    completion += last.eval_count
    chat = compatible.chat.completions.create(model=served_model, max_tokens=10, temperature=0,
                                              messages=[{"role": "user", "content": "Name a mountain."}])
    prompt += chat.usage.prompt_tokens
    completion += chat.usage.completion_tokens
    events = list(compatible.chat.completions.create(
        model=served_model, max_tokens=10, temperature=0, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Name a forest."}]))
    usage = [e.usage for e in events if e.usage][-1]
    prompt += usage.prompt_tokens
    completion += usage.completion_tokens
    assert prompt > 0 and completion > 0

    expected = {"prompt": before.get("prompt", 0) + prompt, "completion": before.get("completion", 0) + completion}
    after = _wait(lambda: (lambda v: (v == expected, v))(_tokens(dataplane)), f"token totals {expected}")
    print(f"\nclients received {prompt} prompt and {completion} completion tokens; "
          f"Prometheus' ollama_inference_tokens_total grew by {after['prompt'] - before.get('prompt', 0):.0f} "
          f"and {after['completion'] - before.get('completion', 0):.0f}")


def test_dashboard_queries_and_alert_rules_evaluate_with_data_after_traffic(dataplane, served_model):
    native, _ = _clients(dataplane)
    for i in range(3):  # streamed native requests feed every histogram (TTFT, duration, tokens/s)
        parts = list(native.generate(model=served_model, prompt=f"Tell me fact {i} about rivers.", stream=True,
                                     options={"temperature": 0, "num_predict": 12}))
        assert parts[-1].done

    queries = dashboard_queries(dataplane.settings, rate_interval=RATE_WINDOW)
    assert len(queries) == len(panel_queries()) + len(alerts(dataplane.settings))

    def evaluated():
        empty_panels, not_finite = [], []
        for where, expr in queries:
            values = _vector(dataplane, expr)  # raises with Prometheus' error for a query it cannot evaluate
            if not where.startswith("panel:"):
                continue
            if not values:
                empty_panels.append((where, expr))
            elif ("histogram_quantile" in expr or "rate(" in expr) and not all(math.isfinite(v) for v in values.values()):
                not_finite.append((where, expr, values))  # NaN: no increase in the window's samples (yet)
        unexpected = [(w, e) for w, e in empty_panels if not any(marker in e for marker in MAY_BE_EMPTY)]
        return not unexpected and not not_finite, (empty_panels, unexpected, not_finite)

    # Prometheus scrapes every second: the traffic shows in its samples after a scrape or two, however long
    # those take on a busy machine. Then every panel has data and every rate and quantile is a number.
    empty_panels, _, _ = _wait(evaluated, "every panel to have data, every rate and quantile a number, after traffic")
    print(f"\n{len(queries)} queries evaluated; empty (no GPU, no node refusal, no failure): {[w for w, _ in empty_panels]}")

    tokens = _vector(dataplane, f"sum by (model, type) (rate(ollama_inference_tokens_total[{RATE_WINDOW}]))")
    assert {dict(k)["model"] for k in tokens} == {served_model}
    assert all(v > 0 for v in tokens.values())


def test_alert_rules_are_loaded_and_healthy(dataplane):
    def loaded():
        groups = httpx.get(f"{dataplane.prometheus_url}/api/v1/rules", auth=dataplane.prometheus_auth, timeout=10).json()["data"]["groups"]
        rules = [r for g in groups if g["name"] == RULE_GROUP for r in g["rules"]]
        evaluated = all(r.get("lastEvaluation", "").startswith("20") for r in rules)
        return bool(rules) and evaluated, rules

    rules = _wait(loaded, "every rule evaluated once")
    assert [r["name"] for r in rules] == [a.name for a in alerts(dataplane.settings)]
    unhealthy = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not unhealthy
    # Every node is up (the restarted one included): the node-down alert has nothing to fire on.
    _wait(lambda: (lambda v: (not v, v))(_vector(dataplane, dict((a.name, a.expr) for a in alerts(dataplane.settings))["OllamaNodeDown"])),
          "OllamaNodeDown to select no series")


def test_prometheus_asks_for_the_password(dataplane):
    """The loopback Prometheus runs the web config the hosts run: the API refuses a request without the password
    or with a wrong one, answers with it, and its own self-scrape (password file) is up beside every target."""
    base = dataplane.prometheus_url
    user, password = dataplane.prometheus_auth
    for path, params in (("/api/v1/query", {"query": "up"}), ("/api/v1/targets", {}), ("/api/v1/status/config", {})):
        assert httpx.get(f"{base}{path}", params=params, timeout=10).status_code == 401, path
        assert httpx.get(f"{base}{path}", params=params, auth=(user, password + "x"), timeout=10).status_code == 401, path
        assert httpx.get(f"{base}{path}", params=params, auth=(user, password), timeout=10).status_code == 200, path
    targets = dataplane.wait_for_targets(timeout=WAIT_S)
    assert all(t["health"] == "up" for t in targets)
    assert prom.JOB_PROMETHEUS in {t["labels"]["job"] for t in targets}
    up = _wait(lambda: (lambda v: (bool(v) and set(v.values()) == {1.0}, v))(
        _vector(dataplane, f'up{{job="{prom.JOB_PROMETHEUS}"}}')), "the self-scrape is up with its password file")
    assert len(up) == 1
    # The password lives in files only the owner reads; the web config holds its bcrypt hash, not the password.
    prom_dir = dataplane.prometheus_password_file.parent
    for secret in (dataplane.prometheus_password_file, prom_dir / "web.yml"):
        assert secret.stat().st_mode & 0o077 == 0, secret
    assert password not in (prom_dir / "web.yml").read_text()
