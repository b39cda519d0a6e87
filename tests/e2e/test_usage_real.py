"""Usage per client and token budgets on the loopback data plane: real clients through the real gateway,
meters and Prometheus; the budget controller (fleet.exporters.budget) reloading the real nginx."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

import httpx
import ollama
import pytest
from openai import OpenAI
from typer.testing import CliRunner

from fleet.cli import app
from fleet.local.dataplane import DataPlane
from waiting import wait_until

pytestmark = pytest.mark.e2e

TIMEOUT = httpx.Timeout(120.0, connect=10.0)
BUDGET = 40  # tokens per UTC day: one short generation passes it
OPTIONS = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def plane(ollama_binary, tmp_path_factory):
    overrides = {
        "nodeGroups.0.count": 2,
        "gateway.clients": [{"name": "team-a"}, {"name": "team-b"}, {"name": "capped", "tokensPerDay": BUDGET}],
        "gateway.rateLimits.perKeyPerMinute": 6000,
        "gateway.rateLimits.perKeyBurst": 100,
    }
    data_plane = DataPlane(
        "dev",
        overrides,
        run_dir=tmp_path_factory.mktemp("usage-plane"),
        models_dir=tmp_path_factory.mktemp("usage-models"),
        ollama_binary=ollama_binary,
        scrape_interval="1s",
        node_exporter=False,
        nginx_exporter=False,
        alertmanager=False,
    )
    data_plane.start()
    yield data_plane
    data_plane.stop()
    assert not data_plane.leftovers()


def _tokens_by_client(plane) -> dict[tuple[str, str], float]:
    data = plane.prometheus_query("sum by (client, type) (ollama_inference_tokens_total)")
    return {(r["metric"]["client"], r["metric"]["type"]): float(r["value"][1]) for r in data["result"]}


def _model(plane) -> str:
    return plane.settings.node_groups[0].models[0].ref


def test_tokens_per_client_equal_what_the_clients_received(plane):
    plane.wait_for_targets(timeout=30)
    before = _tokens_by_client(plane)
    model, verify = _model(plane), plane.verify()
    received = {"team-a": [0, 0], "team-b": [0, 0]}
    # team-a with the ollama client, streamed and not; it also claims to be team-b, which the gateway overrides.
    native = ollama.Client(host=plane.gateway_url, headers={**plane.auth("team-a"), "X-Fleet-Client": "team-b"},
                           verify=verify, timeout=TIMEOUT)
    answer = native.generate(model=model, prompt="Name a colour.", options=OPTIONS)
    received["team-a"][0] += answer.prompt_eval_count
    received["team-a"][1] += answer.eval_count
    final = list(native.chat(model=model, messages=[{"role": "user", "content": "Name a fruit."}], stream=True,
                             options=OPTIONS))[-1]
    received["team-a"][0] += final.prompt_eval_count
    received["team-a"][1] += final.eval_count
    # team-b with the openai client, streamed (with usage) and not.
    compatible = OpenAI(base_url=f"{plane.gateway_url}/v1", api_key=plane.client_keys["team-b"], max_retries=0,
                        http_client=httpx.Client(verify=verify, timeout=TIMEOUT))
    completion = compatible.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hi."}],
                                                    max_tokens=12, temperature=0)
    received["team-b"][0] += completion.usage.prompt_tokens
    received["team-b"][1] += completion.usage.completion_tokens
    chunks = list(compatible.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say bye."}],
                                                     max_tokens=12, temperature=0, stream=True,
                                                     stream_options={"include_usage": True}))
    usage = next(c.usage for c in reversed(chunks) if c.usage)
    received["team-b"][0] += usage.prompt_tokens
    received["team-b"][1] += usage.completion_tokens

    def grown():
        now = _tokens_by_client(plane)
        delta = {client: [now.get((client, t), 0) - before.get((client, t), 0) for t in ("prompt", "completion")]
                 for client in received}
        return delta == received, delta

    wait_until(grown, f"Prometheus' per-client tokens to equal what the clients received {received}", 30)
    assert all(p > 0 and c > 0 for p, c in received.values())
    assert _tokens_by_client(plane).get(("capped", "prompt"), 0) == before.get(("capped", "prompt"), 0)


def test_fleet_usage_shows_tokens_and_requests_per_client_and_model(plane):
    exact = _tokens_by_client(plane)
    result = CliRunner().invoke(app, ["usage", "--stack", "dev", "--since", "1h", "--json",
                                      "--prometheus-url", plane.prometheus_url],
                                env={"FLEET_PROMETHEUS_PASSWORD": plane.prometheus_password})
    assert result.exit_code == 0, result.output
    rows = {(r["client"], r["model"]): r for r in json.loads(result.output)["rows"]}
    model = _model(plane)
    for client in ("team-a", "team-b"):
        row = rows[(client, model)]
        total = exact[(client, "prompt")] + exact[(client, "completion")]
        # Every series here was born inside the window and never reset: the count is exact, not extrapolated.
        assert row["totalTokens"] == total, (row, total)
        assert row["requests"] >= 2
    table = CliRunner().invoke(app, ["usage", "--stack", "dev", "--prometheus-url", plane.prometheus_url],
                               env={"FLEET_PROMETHEUS_PASSWORD": plane.prometheus_password})
    assert table.exit_code == 0 and "team-a" in table.output and "Usage per client" in table.output
    down = CliRunner().invoke(app, ["usage", "--stack", "dev", "--prometheus-url", "http://127.0.0.1:9"])
    assert down.exit_code == 1 and "cannot be reached" in down.output


def _generate(plane, client: str) -> httpx.Response:
    return httpx.post(f"{plane.gateway_url}/api/generate", headers=plane.auth(client), verify=plane.verify(),
                      json={"model": _model(plane), "prompt": "Count to five.", "stream": False, "options": OPTIONS},
                      timeout=TIMEOUT)


def test_a_client_over_its_budget_gets_429_within_a_minute_while_others_are_served(plane):
    spent = 0
    while spent < BUDGET:  # served until the client has used its budget
        answer = _generate(plane, "capped")
        assert answer.status_code == 200, answer.text
        spent += answer.json()["prompt_eval_count"] + answer.json()["eval_count"]
    started = time.monotonic()

    def refused():
        resp = _generate(plane, "capped")
        return resp.status_code == 429, resp

    refusal = wait_until(refused, "the over-budget client to be refused", 60)
    print(f"\nrefused {time.monotonic() - started:.1f}s after the budget was passed")
    body = refusal.json()
    assert body["budget"] == {"client": "capped", "tokensPerDay": BUDGET, "window": "UTC day",
                              "resetsAt": refusal.headers["Retry-After"]}
    assert "token budget exceeded" in body["error"]
    reset = parsedate_to_datetime(refusal.headers["Retry-After"])
    midnight = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    assert reset == midnight
    # Everyone else is served, and the capped client still reads model lists (only inference is refused).
    assert _generate(plane, "team-a").status_code == 200
    assert httpx.get(f"{plane.gateway_url}/api/tags", headers=plane.auth("capped"), verify=plane.verify(),
                     timeout=30).status_code == 200


def test_the_budget_holds_across_restarts_of_the_controller_and_the_gateway(plane):
    assert _generate(plane, "capped").status_code == 429
    plane.budget_controller.stop()
    plane.nginx.stop()
    plane.nginx.start()
    plane.nginx.wait_for_http(f"{plane.http_url}/health", timeout=30)
    # The gateway alone, freshly started, enforces the last decision.
    assert _generate(plane, "capped").status_code == 429
    assert _generate(plane, "team-b").status_code == 200
    plane.budget_controller.start()
    time.sleep(3)  # a few rounds: the recomputed decision is the same, the client stays refused
    assert _generate(plane, "capped").status_code == 429
