"""The metering exporter in front of the real Ollama (built from source) with the real test model.

The exporter runs as its command (`python -m fleet.exporters.meter`), the same way its container runs it; the
official `ollama` and `openai` clients talk to it, and /metrics must carry the counts Ollama reported.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import ollama
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from fleet.exporters.meter_stream import normalize_model
from fleet.local.processes import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NODE = "real-0"


class Meter:
    def __init__(self, url: str, metrics_url: str) -> None:
        self.url, self.metrics_url = url, metrics_url

    def value(self, name: str, **labels: str) -> float:
        text = httpx.get(self.metrics_url, timeout=10).text
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


@pytest.fixture(scope="module")
def meter(ollama_cluster, model_name, tmp_path_factory):
    server = ollama_cluster[0]
    listen, metrics = free_port(), free_port()
    log = tmp_path_factory.mktemp("exporter") / "exporter.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleet.exporters.meter", "--upstream", server.base_url, "--listen", f"127.0.0.1:{listen}",
             "--metrics-listen", f"127.0.0.1:{metrics}", "--node", NODE, "--ps-interval", "0.5", "--model", model_name],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{metrics}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the exporter did not start:\n{log.read_text()}", pytrace=False)
            time.sleep(0.1)
        yield Meter(f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{metrics}/metrics")
    finally:
        proc.terminate()
        proc.wait(10)


def test_streamed_generation_through_the_exporter_is_metered_with_ollamas_counts(meter, model_name, fast_options):
    label = normalize_model(model_name)
    before = {t: meter.value("ollama_inference_tokens_total", model=label, type=t) for t in ("prompt", "completion")}
    ttft_before = meter.value("ollama_time_to_first_token_seconds_count", model=label)
    arrivals, chunks = [], []
    for chunk in ollama.Client(host=meter.url).generate(
        model=model_name, prompt="Count from one to twenty.", options=fast_options, stream=True
    ):
        arrivals.append(time.perf_counter())
        chunks.append(chunk)
    final = chunks[-1]
    assert final.done and len(chunks) >= 4  # the stream came through in pieces
    assert arrivals[-1] > arrivals[0]
    assert meter.value("ollama_inference_tokens_total", model=label, node=NODE, type="prompt") - before["prompt"] == final.prompt_eval_count
    assert (
        meter.value("ollama_inference_tokens_total", model=label, node=NODE, type="completion") - before["completion"]
        == final.eval_count
    )
    assert meter.value("ollama_time_to_first_token_seconds_count", model=label) == ttft_before + 1


def test_openai_client_usage_is_counted(meter, model_name):
    label = normalize_model(model_name)
    before = meter.value("ollama_inference_tokens_total", model=label, type="completion")
    client = OpenAI(base_url=f"{meter.url}/v1", api_key="unused-by-ollama")
    stream = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )
    usage = None
    pieces = 0
    for event in stream:
        if event.usage:
            usage = event.usage
        if event.choices and event.choices[0].delta.content:
            pieces += 1
    assert usage is not None and pieces >= 1
    assert meter.value("ollama_inference_tokens_total", model=label, type="completion") - before == usage.completion_tokens


def test_loaded_model_and_its_memory_come_from_api_ps(meter, ollama_cluster, model_name):
    server = ollama_cluster[0]
    entry = server.loaded(model_name)
    deadline = time.monotonic() + 10
    while meter.value("ollama_loaded_model_size_bytes", model=entry["name"], node=NODE) != entry["size"]:
        assert time.monotonic() < deadline, "the exporter never reported the loaded model"
        time.sleep(0.2)
    assert meter.value("ollama_loaded_model_vram_bytes", model=entry["name"], node=NODE) == entry["size_vram"]
    assert meter.value("ollama_up", node=NODE) == 1


def test_unknown_model_404_passes_through(meter):
    resp = httpx.post(f"{meter.url}/api/generate", json={"model": "no-such-model", "prompt": "x"}, timeout=30)
    assert resp.status_code == 404
    assert "not found" in resp.json()["error"]
    assert meter.value("ollama_inference_requests_total", model="other", status="404") >= 1
