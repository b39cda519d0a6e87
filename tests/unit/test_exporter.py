"""The metering exporter, run for real on loopback between an aiohttp client and a fake Ollama.

The fake (tests/fake_ollama.py) speaks Ollama's wire formats; every assertion on metrics reads the
exporter's /metrics endpoint through prometheus_client's text parser.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from fake_ollama import QUEUE_FULL, Behavior, FakeOllama
from prometheus_client.parser import text_string_to_metric_families

from fleet.exporters.meter import build_parser, parse_address
from fleet.exporters.meter_metrics import ModelLabels
from fleet.exporters.meter_proxy import ExporterConfig, ExporterServer
from fleet.exporters.meter_stream import JsonMeter, NdjsonMeter, SseMeter, model_from_body, normalize_model, route_label
from fleet.local.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
NODE = "test-node"
MODEL = "smollm2:135m"


def async_test(fn):
    """Run an async test in its own event loop, bounded so a hang fails instead of stalling the suite."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), timeout=60))

    return wrapper


@dataclass
class Bed:
    fake: FakeOllama
    exporter: ExporterServer
    client: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.exporter.url

    async def metrics(self) -> Scrape:
        async with self.client.get(self.exporter.metrics_url) as resp:
            assert resp.status == 200
            return Scrape(await resp.text())


class Scrape:
    """One /metrics page, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name: str, **labels: str) -> float | None:
        """Sum of the samples called `name` whose labels include `labels`; None when there is none."""
        matched = [s.value for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        return sum(matched) if matched else None

    def label_values(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}


@contextlib.asynccontextmanager
async def bed(fake: FakeOllama | None = None, upstream: str | None = None, **config):
    fake = fake or FakeOllama(loaded=[(MODEL, 180_000_000, 0)])
    url = await fake.start()
    exporter = ExporterServer(
        ExporterConfig(upstream=upstream or url, node=NODE, ps_interval_s=0, **config), ("127.0.0.1", 0), ("127.0.0.1", 0)
    )
    await exporter.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
            yield Bed(fake, exporter, client)
    finally:
        await exporter.close()
        await fake.stop()


async def eventually(check, timeout: float = 10.0):
    """Poll an async condition (bounded): the exporter records a disconnect a moment after it happens."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)


def ndjson(raw: bytes) -> list[dict]:
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def sse(raw: bytes) -> list[dict]:
    out = []
    for line in raw.splitlines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


# Streaming -----------------------------------------------------------------------------------------------


@async_test
async def test_ndjson_chunks_reach_the_client_one_by_one_as_ollama_writes_them():
    # Lock-step: Ollama writes token i+1 only after the client has received token i. A proxy that
    # buffered the stream would deadlock here (and the bounded wait would fail the test).
    fake = FakeOllama(Behavior(tokens=("a", "b", "c", "d", "e")), gated=True)
    async with bed(fake) as b:
        seen, arrivals = [], []
        async with b.client.post(f"{b.url}/api/generate", json={"model": MODEL, "prompt": "hi"}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/x-ndjson"
            while True:
                line = await asyncio.wait_for(resp.content.readline(), timeout=5)
                if not line:
                    break
                obj = json.loads(line)
                arrivals.append(time.perf_counter())
                seen.append(obj)
                if not obj["done"]:
                    fake.open_gate()
        assert [o["response"] for o in seen[:-1]] == ["a", "b", "c", "d", "e"]
        assert seen[-1]["done"] is True
        assert arrivals == sorted(arrivals)


@async_test
async def test_sse_chunks_arrive_spread_over_the_generation_not_at_the_end():
    fake = FakeOllama(Behavior(token_delay_s=0.1, tokens=tuple("abcdef")))
    async with bed(fake) as b:
        body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        arrivals = []
        async with b.client.post(f"{b.url}/v1/chat/completions", json=body) as resp:
            assert resp.headers["Content-Type"] == "text/event-stream"
            async for line in resp.content:
                if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    arrivals.append(time.perf_counter())
        assert len(arrivals) == 6
        # Five 0.1 s pauses separate the six tokens at the source; a buffering proxy would deliver them together.
        assert arrivals[-1] - arrivals[0] >= 0.25


# Token counts --------------------------------------------------------------------------------------------


def _native_counts(raw: bytes) -> tuple[int, int]:
    final = ndjson(raw)[-1]
    return final["prompt_eval_count"], final["eval_count"]


STREAMS = [
    ("/api/generate", {"model": MODEL, "prompt": "why is the sky blue"}, "ndjson"),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "tell me a story"}]}, "ndjson"),
    ("/api/generate", {"model": MODEL, "prompt": "no streaming please", "stream": False}, "json"),
    ("/api/chat", {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "a b"}]}, "json"),
    (
        "/v1/chat/completions",
        {"model": MODEL, "stream": True, "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": "x y z"}]},
        "sse",
    ),
    ("/v1/completions", {"model": MODEL, "stream": True, "stream_options": {"include_usage": True}, "prompt": "once upon"}, "sse"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "whole answer"}]}, "openai-json"),
    ("/api/embed", {"model": MODEL, "input": ["first text", "second longer text"]}, "embed"),
    ("/v1/embeddings", {"model": MODEL, "input": "embed me please"}, "openai-json"),
]


@pytest.mark.parametrize("path,body,kind", STREAMS, ids=[f"{p}-{k}" for p, _, k in STREAMS])
@async_test
async def test_token_counters_equal_what_the_response_reported(path, body, kind):
    async with bed() as b:
        async with b.client.post(f"{b.url}{path}", json=body) as resp:
            assert resp.status == 200
            raw = await resp.read()
        if kind == "ndjson":
            prompt, completion = _native_counts(raw)
        elif kind == "json":
            doc = json.loads(raw)
            prompt, completion = doc["prompt_eval_count"], doc["eval_count"]
        elif kind == "embed":
            prompt, completion = json.loads(raw)["prompt_eval_count"], 0
        elif kind == "sse":
            usage = [c["usage"] for c in sse(raw) if c.get("usage") and c["usage"]["total_tokens"]][-1]
            prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
        else:
            usage = json.loads(raw)["usage"]
            prompt, completion = usage["prompt_tokens"], usage.get("completion_tokens", 0)
        assert prompt > 0
        m = await b.metrics()
        assert m.value("ollama_inference_tokens_total", model=MODEL, node=NODE, type="prompt") == prompt
        assert m.value("ollama_inference_tokens_total", model=MODEL, node=NODE, type="completion") == completion
        assert m.value("ollama_inference_requests_total", model=MODEL, node=NODE, status="200") == 1
        assert m.value("ollama_inference_duration_seconds_count", model=MODEL, node=NODE) == 1
        assert m.value("ollama_inference_usage_missing_total", model=MODEL) is None


@async_test
async def test_tokens_add_up_over_several_requests_and_models():
    fake = FakeOllama(loaded=[(MODEL, 1, 0), ("qwen2.5:0.5b", 1, 0)])
    async with bed(fake) as b:
        expected: dict[tuple[str, str], int] = {}
        for i, model in enumerate([MODEL, "qwen2.5:0.5b", MODEL]):
            prompt = " ".join(["word"] * (i + 3))
            async with b.client.post(f"{b.url}/api/generate", json={"model": model, "prompt": prompt}) as resp:
                p, c = _native_counts(await resp.read())
            expected[(model, "prompt")] = expected.get((model, "prompt"), 0) + p
            expected[(model, "completion")] = expected.get((model, "completion"), 0) + c
        m = await b.metrics()
        for (model, kind), count in expected.items():
            assert m.value("ollama_inference_tokens_total", model=model, node=NODE, type=kind) == count


@async_test
async def test_openai_stream_without_include_usage_is_counted_but_reports_no_tokens():
    async with bed() as b:
        body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        async with b.client.post(f"{b.url}/v1/chat/completions", json=body) as resp:
            raw = await resp.read()
        assert not any("usage" in c for c in sse(raw))
        m = await b.metrics()
        assert m.value("ollama_inference_requests_total", model=MODEL, status="200") == 1
        assert m.value("ollama_inference_usage_missing_total", model=MODEL, node=NODE) == 1
        assert not m.value("ollama_inference_tokens_total", model=MODEL)
        assert m.value("ollama_time_to_first_token_seconds_count", model=MODEL) == 1


# Latency ------------------------------------------------------------------------------------------------


@async_test
async def test_time_to_first_token_and_duration_follow_the_stream():
    fake = FakeOllama(Behavior(first_token_delay_s=0.3, token_delay_s=0.05, tokens=tuple("abcd")))
    async with bed(fake) as b:
        async with b.client.post(f"{b.url}/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "q"}]}) as resp:
            raw = await resp.read()
        final = ndjson(raw)[-1]
        m = await b.metrics()
        ttft = m.value("ollama_time_to_first_token_seconds_sum", model=MODEL, node=NODE)
        duration = m.value("ollama_inference_duration_seconds_sum", model=MODEL, node=NODE)
        assert m.value("ollama_time_to_first_token_seconds_count", model=MODEL) == 1
        assert 0.3 <= ttft < duration  # the first token waited for the "model load"; three more followed
        assert duration >= 0.3 + 3 * 0.05
        # The first token lands in a bucket above 0.25 s and is within the 1 s bucket.
        assert m.value("ollama_time_to_first_token_seconds_bucket", model=MODEL, le="0.25") == 0
        assert m.value("ollama_time_to_first_token_seconds_bucket", model=MODEL, le="+Inf") == 1
        # tokens/s comes from Ollama's own eval_count / eval_duration.
        speed = m.value("ollama_tokens_per_second_sum", model=MODEL, node=NODE)
        assert speed == pytest.approx(final["eval_count"] / (final["eval_duration"] / 1e9))


@async_test
async def test_non_streaming_answers_have_a_duration_but_no_first_token_time():
    fake = FakeOllama(Behavior(first_token_delay_s=0.1))
    async with bed(fake) as b:
        async with b.client.post(f"{b.url}/api/generate", json={"model": MODEL, "prompt": "q", "stream": False}) as resp:
            await resp.read()
        m = await b.metrics()
        assert m.value("ollama_inference_duration_seconds_sum", model=MODEL) >= 0.1
        assert m.value("ollama_time_to_first_token_seconds_count", model=MODEL) is None


@async_test
async def test_openai_stream_tokens_per_second_from_arrival_times():
    fake = FakeOllama(Behavior(token_delay_s=0.05, tokens=tuple("abcdefgh")))
    async with bed(fake) as b:
        body = {"model": MODEL, "stream": True, "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": "q"}]}
        async with b.client.post(f"{b.url}/v1/chat/completions", json=body) as resp:
            await resp.read()
        m = await b.metrics()
        speed = m.value("ollama_tokens_per_second_sum", model=MODEL)
        # Seven 0.05 s gaps after the first token bound the rate from above by 7 / 0.35 = 20 tokens/s.
        assert 0 < speed <= 20.5


@async_test
async def test_inflight_gauge_counts_requests_inside_ollama():
    fake = FakeOllama(Behavior(tokens=("a", "b")), gated=True)
    async with bed(fake) as b:
        async with b.client.post(f"{b.url}/api/generate", json={"model": MODEL, "prompt": "q"}) as resp:
            await resp.content.readline()  # first token seen; Ollama now waits on the gate
            m = await b.metrics()
            assert m.value("ollama_inflight_requests", model=MODEL, node=NODE) == 1
            fake.open_gate()
            await resp.read()
        m = await b.metrics()
        assert m.value("ollama_inflight_requests", model=MODEL, node=NODE) == 0


# Outcomes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model,status,message",
    [
        ("missing-model", 404, 'model "missing-model" not found, try pulling it first'),
        ("broken", 500, "llama runner process has terminated: exit status 2"),
        ("busy", 503, QUEUE_FULL),
    ],
)
@async_test
async def test_ollama_errors_pass_through_and_are_counted_by_status(model, status, message):
    async with bed() as b:
        async with b.client.post(f"{b.url}/api/generate", json={"model": model, "prompt": "q"}) as resp:
            assert resp.status == status
            assert await resp.json() == {"error": message}
        m = await b.metrics()
        # Never answered successfully: counted under `other`, so invented names cannot add series.
        assert m.value("ollama_inference_requests_total", model="other", node=NODE, status=str(status)) == 1
        assert m.label_values("ollama_inference_requests_total", "model") == {"other"}
        assert m.value("ollama_http_requests_total", route="/api/generate", status=str(status)) == 1
        assert m.value("ollama_inference_duration_seconds_count") is None
        assert f'model="{normalize_model(model)}"' not in m.text  # no in-flight series left behind


@async_test
async def test_queue_full_from_a_real_queue_is_a_503_for_a_known_model():
    fake = FakeOllama(Behavior(tokens=("a", "b")), gated=True, slots=1, max_queue=0)
    async with bed(fake, models=(MODEL,)) as b:
        async with b.client.post(f"{b.url}/api/generate", json={"model": MODEL, "prompt": "q"}) as first:
            await first.content.readline()
            async with b.client.post(f"{b.url}/api/generate", json={"model": MODEL, "prompt": "q"}) as second:
                assert second.status == 503
                assert (await second.json())["error"] == QUEUE_FULL
            fake.open_gate()
            await first.read()
        m = await b.metrics()
        assert m.value("ollama_inference_requests_total", model=MODEL, status="503") == 1
        assert m.value("ollama_inference_requests_total", model=MODEL, status="200") == 1


@async_test
async def test_error_reported_inside_a_200_stream_is_counted_as_error():
    async with bed(models=("failing:latest",)) as b:
        async with b.client.post(f"{b.url}/api/generate", json={"model": "failing", "prompt": "q"}) as resp:
            assert resp.status == 200
            lines = ndjson(await resp.read())
        assert "error" in lines[-1]
        m = await b.metrics()
        assert m.value("ollama_inference_requests_total", model="failing:latest", status="error") == 1
        assert not m.value("ollama_inference_requests_total", status="200")  # the zero series of a configured model


@async_test
async def test_stream_broken_by_ollama_reaches_the_client_as_incomplete():
    async with bed(models=("crashing:latest",)) as b:
        async with b.client.post(f"{b.url}/api/generate", json={"model": "crashing", "prompt": "q"}) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        m = await b.metrics()
        assert m.value("ollama_inference_requests_total", model="crashing:latest", status="upstream_closed") == 1
        assert m.value("ollama_inflight_requests", model="crashing:latest") == 0


@async_test
async def test_upstream_down_answers_502_json_and_marks_ollama_down():
    dead = f"http://127.0.0.1:{free_port()}"  # a port nobody listens on
    async with bed(upstream=dead, models=(MODEL,)) as b:
        async with b.client.post(f"{b.url}/api/chat", json={"model": MODEL, "messages": []}) as resp:
            assert resp.status == 502
            assert "ollama upstream unavailable" in (await resp.json())["error"]
        async with b.client.get(f"{b.url}/api/tags") as resp:
            assert resp.status == 502
        m = await b.metrics()
        assert m.value("ollama_inference_requests_total", model=MODEL, status="502") == 1
        assert m.value("ollama_http_requests_total", route="/api/tags", status="502") == 1
        assert m.value("ollama_up", node=NODE) == 0
        assert m.value("ollama_inflight_requests", model=MODEL) == 0


@async_test
async def test_client_disconnect_mid_stream_stops_ollama_and_counts_client_closed():
    fake = FakeOllama(Behavior(token_delay_s=0.2, tokens=tuple("abcdefghijklmnopqrst")))
    async with bed(fake, models=(MODEL,)) as b:
        resp = await b.client.post(f"{b.url}/api/generate", json={"model": MODEL, "prompt": "q"})
        await resp.content.readline()
        await resp.content.readline()
        resp.close()  # drop the connection with 18 tokens still to come

        async def recorded():
            m = await b.metrics()
            return fake.aborted and m.value("ollama_inference_requests_total", model=MODEL, status="client_closed") == 1

        assert await eventually(recorded)
        assert fake.aborted == ["/api/generate"]  # the upstream connection was closed, so Ollama stopped
        assert fake.completed == []
        m = await b.metrics()
        assert m.value("ollama_inflight_requests", model=MODEL, node=NODE) == 0
        assert m.value("ollama_http_requests_total", route="/api/generate", status="client_closed") == 1


@async_test
async def test_client_leaving_after_the_final_event_is_a_served_request():
    # SDKs stop reading at `[DONE]` and may close before the end of the chunked body: the tokens were delivered.
    fake = FakeOllama(Behavior(tail_delay_s=1.0))
    async with bed(fake, models=(MODEL,)) as b:
        body = {"model": MODEL, "stream": True, "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": "q"}]}
        resp = await b.client.post(f"{b.url}/v1/chat/completions", json=body)
        while (line := await resp.content.readline()) and not line.startswith(b"data: [DONE]"):
            pass
        resp.close()  # gone before the response ends

        async def recorded():
            m = await b.metrics()
            return m.value("ollama_inference_requests_total", model=MODEL, status="200") == 1

        assert await eventually(recorded)
        m = await b.metrics()
        assert m.value("ollama_inference_tokens_total", model=MODEL, type="completion") == len(fake.behaviors[0].texts)
        assert m.value("ollama_inference_requests_total", model=MODEL, status="client_closed") in (None, 0)


@async_test
async def test_client_leaving_while_the_request_waits_in_ollama_releases_it():
    fake = FakeOllama(Behavior(first_token_delay_s=30))  # far longer than the bounded wait below
    async with bed(fake, models=(MODEL,)) as b:
        task = asyncio.create_task(b.client.post(f"{b.url}/api/generate", json={"model": MODEL, "prompt": "q"}))

        async def waiting():
            return (await b.metrics()).value("ollama_inflight_requests", model=MODEL) == 1

        assert await eventually(waiting)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

        async def released():
            m = await b.metrics()
            return m.value("ollama_inflight_requests", model=MODEL) == 0 and fake.aborted

        assert await eventually(released)
        m = await b.metrics()
        assert m.value("ollama_inference_requests_total", model=MODEL, status="client_closed") == 1


# Pass-through fidelity ----------------------------------------------------------------------------------


@async_test
async def test_request_bodies_and_queries_reach_ollama_byte_for_byte():
    async with bed() as b:
        body = b'{ "prompt" : "caf\\u00e9 \xe2\x98\x95",\n  "model":"smollm2:135m", "options": {"num_ctx": 2048}, "stream": false }'
        async with b.client.post(f"{b.url}/api/generate", data=body, headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 200
        assert b.fake.received[-1].body == body
        assert b.fake.received[-1].headers["Content-Type"] == "application/json"
        # Non-inference routes stream their bodies through too (here a 3 MiB upload), query string intact.
        blob = os.urandom(3 << 20)
        async with b.client.post(f"{b.url}/api/blobs/sha256:abc?x=1&y=%20", data=blob) as resp:
            assert (await resp.json())["bytes"] == len(blob)
        assert b.fake.received[-1].path == "/api/blobs/sha256:abc?x=1&y=%20"
        assert b.fake.received[-1].body == blob
        m = await b.metrics()
        assert m.value("ollama_http_requests_total", route="/api/blobs", status="200") == 1


@async_test
async def test_large_inference_body_still_names_its_model():
    async with bed() as b:
        image = "A" * (3 << 20)  # a base64 image, as a vision chat sends
        body = {"messages": [{"role": "user", "content": "what is this", "images": [image]}], "model": MODEL, "stream": False}
        async with b.client.post(f"{b.url}/api/chat", json=body) as resp:
            assert resp.status == 200
        m = await b.metrics()
        assert m.value("ollama_inference_requests_total", model=MODEL, status="200") == 1


@async_test
async def test_body_over_the_exporter_limit_is_refused_413():
    async with bed(max_body_bytes=4096) as b:
        async with b.client.post(f"{b.url}/api/generate", json={"model": MODEL, "prompt": "x" * 8192}) as resp:
            assert resp.status == 413
        assert {r.path for r in b.fake.received} <= {"/api/ps", "/api/version"}  # the exporter's own polls only
        m = await b.metrics()
        assert m.value("ollama_http_requests_total", route="/api/generate", status="413") == 1


@async_test
async def test_other_routes_pass_through_with_a_request_counter_only():
    async with bed() as b:
        async with b.client.get(f"{b.url}/api/tags") as resp:
            assert (await resp.json())["models"][0]["name"] == MODEL
        async with b.client.post(f"{b.url}/api/pull", json={"model": "llama3.1:8b"}) as resp:
            assert resp.status == 200  # the gateway, not the exporter, decides who may pull
        async with b.client.get(f"{b.url}/") as resp:
            assert await resp.text() == "Ollama is running"
        async with b.client.get(f"{b.url}/no/such/route/{os.getpid()}") as resp:
            await resp.read()
        m = await b.metrics()
        assert m.value("ollama_http_requests_total", route="/api/tags", status="200") == 1
        assert m.value("ollama_http_requests_total", route="/api/pull", status="200") == 1
        assert m.value("ollama_http_requests_total", route="/", status="200") == 1
        assert m.value("ollama_http_requests_total", route="other") == 1
        assert m.value("ollama_inference_requests_total") is None
        assert "llama3.1" not in m.text


# Labels -------------------------------------------------------------------------------------------------


@async_test
async def test_model_labels_are_capped_and_the_rest_is_other():
    async with bed(FakeOllama(), max_models=2) as b:  # nothing loaded, so no slot is taken by /api/ps
        for model in ["m1", "m2", "m3", "m4", "m1:latest", "missing-a", "missing-b"]:
            async with b.client.post(f"{b.url}/api/generate", json={"model": model, "prompt": "q", "stream": False}) as resp:
                await resp.read()
        m = await b.metrics()
        assert m.label_values("ollama_inference_requests_total", "model") == {"m1:latest", "m2:latest", "other"}
        assert m.value("ollama_inference_requests_total", model="m1:latest", status="200") == 2
        assert m.value("ollama_inference_requests_total", model="other", status="200") == 2
        assert m.value("ollama_inference_requests_total", model="other", status="404") == 2
        assert m.label_values("ollama_inflight_requests", "model") <= {"m1:latest", "m2:latest", "other"}


@async_test
async def test_unknown_names_answered_404_do_not_take_label_slots():
    async with bed(FakeOllama(), max_models=1) as b:
        for model in ["missing-1", "missing-2", "good"]:
            async with b.client.post(f"{b.url}/api/generate", json={"model": model, "prompt": "q", "stream": False}) as resp:
                await resp.read()
        m = await b.metrics()
        assert m.value("ollama_inference_requests_total", model="good:latest", status="200") == 1


def test_model_label_budget_logic():
    labels = ModelLabels(2, configured=["a"])
    assert labels.acquire("a:latest") == "a:latest"
    assert labels.acquire("b:latest") == "b:latest"  # provisional slot
    assert labels.acquire("c:latest") == "other"  # budget: a + pending b
    assert labels.release("b:latest", "b:latest", succeeded=False) == ("other", True)
    assert labels.acquire("c:latest") == "c:latest"
    assert labels.release("c:latest", "c:latest", succeeded=True) == ("c:latest", False)
    assert labels.confirmed == {"a:latest", "c:latest"}
    assert labels.acquire("") == "unknown"


@async_test
async def test_an_alias_is_labelled_with_the_served_model_it_names():
    # The alias loaded the runner (Ollama's /api/ps names a runner by the name that loaded it).
    fake = FakeOllama(loaded=[("chat:latest", 181_000_000, 0)])
    async with bed(fake, models=(MODEL,), aliases=(("chat", MODEL),)) as b:
        for name in ("chat", "chat:latest", MODEL):
            async with b.client.post(f"{b.url}/api/generate", json={"model": name, "prompt": "q", "stream": False}) as resp:
                assert resp.status == 200 and (await resp.json())["model"] == name  # Ollama's answer, unchanged
        m = await b.metrics()
        assert m.value("ollama_inference_requests_total", model=MODEL, node=NODE, status="200") == 3
        assert m.value("ollama_inference_tokens_total", model=MODEL, type="completion") > 0
        assert m.label_values("ollama_inference_requests_total", "model") == {MODEL}
        assert m.label_values("ollama_loaded_model_size_bytes", "model") == {MODEL}
        assert m.value("ollama_loaded_model_size_bytes", model=MODEL, node=NODE) == 181_000_000


# /api/ps and /api/version ---------------------------------------------------------------------------------


@async_test
async def test_loaded_models_and_vram_from_api_ps_follow_ollama():
    fake = FakeOllama(version="0.24.3", loaded=[(MODEL, 181_000_000, 0), ("llama3.1:8b", 6_200_000_000, 5_900_000_000)])
    async with bed(fake) as b:
        m = await b.metrics()
        assert m.value("ollama_up", node=NODE) == 1
        assert m.value("ollama_version_info", node=NODE, version="0.24.3") == 1
        assert m.value("ollama_loaded_model_size_bytes", model="llama3.1:8b", node=NODE) == 6_200_000_000
        assert m.value("ollama_loaded_model_vram_bytes", model="llama3.1:8b", node=NODE) == 5_900_000_000
        assert m.value("ollama_loaded_model_size_bytes", model=MODEL, node=NODE) == 181_000_000
        assert m.value("ollama_loaded_model_vram_bytes", model=MODEL, node=NODE) == 0

        fake.loaded = [(MODEL, 181_000_000, 0)]  # llama3.1 unloaded (keep-alive expired)
        await b.exporter.proxy.poll_once()
        m = await b.metrics()
        assert m.label_values("ollama_loaded_model_size_bytes", "model") == {MODEL}


@async_test
async def test_periodic_poll_notices_ollama_going_down():
    fake = FakeOllama(loaded=[(MODEL, 1, 1)])
    url = await fake.start()
    exporter = ExporterServer(ExporterConfig(upstream=url, node=NODE, ps_interval_s=0.1), ("127.0.0.1", 0), ("127.0.0.1", 0))
    await exporter.start()
    try:
        async with aiohttp.ClientSession() as client:
            b = Bed(fake, exporter, client)
            assert (await b.metrics()).value("ollama_up") == 1
            await fake.stop()

            async def down():
                m = await b.metrics()
                return m.value("ollama_up") == 0 and m.value("ollama_loaded_model_size_bytes") is None

            assert await eventually(down)
    finally:
        await exporter.close()


@async_test
async def test_metrics_endpoint_speaks_openmetrics_when_asked_and_has_a_health_route():
    async with bed(models=(MODEL,)) as b:
        async with b.client.get(b.exporter.metrics_url, headers={"Accept": "application/openmetrics-text"}) as resp:
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
            assert (await resp.text()).rstrip().endswith("# EOF")
        async with b.client.get(b.exporter.metrics_url.replace("/metrics", "/healthz")) as resp:
            assert resp.status == 200
        # Configured models have their token series from the start, so rate() has a baseline.
        m = await b.metrics()
        assert m.value("ollama_inference_tokens_total", model=MODEL, type="completion") == 0


# Response readers, fed in awkward pieces ----------------------------------------------------------------


def _feed_bytewise(meter, raw: bytes) -> int:
    firsts = sum(meter.feed(raw[i : i + 1]) for i in range(len(raw)))
    meter.finish()
    return firsts


def _tokens_fed_bytewise(meter, raw: bytes) -> tuple[int | None, int | None]:
    """Prompt and completion tokens the meter read from `raw` fed byte by byte (with one first-content moment)."""
    assert _feed_bytewise(meter, raw) == 1
    return meter.usage.prompt_tokens, meter.usage.completion_tokens


def test_ndjson_meter_reads_lines_split_across_chunks():
    raw = (
        b'{"response":"","done":false}\n{"response":"Hi","done":false}\n'
        b'{"response":"","done":true,"prompt_eval_count":12,"eval_count":34,"eval_duration":2000000000}\n'
    )
    meter = NdjsonMeter()
    assert _feed_bytewise(meter, raw) == 1  # one first-content moment, at "Hi", not at the empty chunk
    assert (meter.usage.prompt_tokens, meter.usage.completion_tokens, meter.usage.eval_duration_ns) == (12, 34, 2_000_000_000)
    assert meter.done and meter.error is None


def test_sse_meter_handles_crlf_events_zero_usage_and_done():
    raw = (
        b'data: {"choices":[{"text":"a"}],"usage":{"prompt_tokens":0,"completion_tokens":0}}\r\n\r\n'
        b": keep-alive comment\r\n\r\n"
        b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}\r\n\r\n'
        b"data: [DONE]\r\n\r\n"
    )
    meter = SseMeter()
    assert _tokens_fed_bytewise(meter, raw) == (9, 3)
    assert meter.done


def test_sse_meter_reads_responses_and_messages_api_usage():
    responses = (
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hi"}\n\n'
        b'event: response.completed\ndata: {"type":"response.completed","response":{"usage":{"input_tokens":5,"output_tokens":2}}}\n\n'
    )
    assert _tokens_fed_bytewise(SseMeter(), responses) == (5, 2)
    messages = (
        b'data: {"type":"message_start","message":{"usage":{"input_tokens":7,"output_tokens":1}}}\n\n'
        b'data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"Hi"}}\n\n'
        b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":4}}\n\n'
    )
    assert _tokens_fed_bytewise(SseMeter(), messages) == (7, 4)


def test_json_meter_reads_counts_from_the_tail_of_an_oversized_body():
    vectors = json.dumps([[0.123456789] * 1024] * 1200)  # ~13 MB of embeddings, beyond the parse bound
    raw = ('{"model":"m","embeddings":' + vectors + ',"total_duration":5,"prompt_eval_count":321}').encode()
    assert len(raw) > JsonMeter.MAX_BODY
    meter = JsonMeter()
    for i in range(0, len(raw), 65536):
        assert meter.feed(raw[i : i + 65536]) is False
    meter.finish()
    assert meter.usage.prompt_tokens == 321


def test_model_from_body_and_route_labels():
    assert model_from_body(b'{"model": "llama3.1", "prompt": "x"}') == "llama3.1:latest"
    assert model_from_body(b'{"model": "hf.co/org/repo:Q4_K_M"}') == "hf.co/org/repo:Q4_K_M"
    assert model_from_body(b"not json") == ""
    assert model_from_body(b'["model"]') == ""
    big = b'{"messages":[{"content":"say \\"model\\":\\"fake\\"","images":["' + b"A" * (2 << 20) + b'"]}],"model":"qwen2.5:7b"}'
    assert model_from_body(big) == "qwen2.5:7b"
    assert route_label("/api/blobs/sha256:0123") == "/api/blobs"
    assert route_label("/wp-login.php") == "other"
    assert route_label("/v1/chat/completions") == "/v1/chat/completions"


# Command line ---------------------------------------------------------------------------------------------


def test_cli_arguments_and_their_errors():
    args = build_parser().parse_args(["--node", "gpu-a-0", "--listen", "127.0.0.1:18080", "--ps-interval", "2.5"])
    assert args.listen == ("127.0.0.1", 18080)
    assert args.metrics_listen == ("0.0.0.0", 9778)
    assert args.upstream == "http://127.0.0.1:11434"
    assert parse_address("[::1]:11435") == ("::1", 11435)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--node", "n", "--listen", "nonsense"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--listen", "0.0.0.0:1"])  # --node is required
    aliased = build_parser().parse_args(["--node", "n", "--alias", "chat=llama3.1:8b", "--alias", "gpt-4o-mini=llama3.1:8b"])
    assert aliased.alias == [("chat", "llama3.1:8b"), ("gpt-4o-mini", "llama3.1:8b")]
    for bad in ("chat", "=llama3.1:8b", "chat="):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--node", "n", "--alias", bad])


@async_test
async def test_the_command_runs_the_exporter_and_stops_on_sigterm():
    fake = FakeOllama(loaded=[(MODEL, 5, 5)])
    upstream = await fake.start()
    listen, metrics = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleet.exporters.meter", "--upstream", upstream, "--listen", f"127.0.0.1:{listen}",
        "--metrics-listen", f"127.0.0.1:{metrics}", "--node", "cli-node", "--ps-interval", "1",
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as client:
            async def ready():
                try:
                    async with client.get(f"http://127.0.0.1:{metrics}/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return proc.returncode is not None

            assert await eventually(ready, timeout=20) and proc.returncode is None
            async with client.post(f"http://127.0.0.1:{listen}/api/generate", json={"model": MODEL, "prompt": "a b"}) as resp:
                _, completion = _native_counts(await resp.read())
            async with client.get(f"http://127.0.0.1:{metrics}/metrics") as resp:
                m = Scrape(await resp.text())
        assert m.value("ollama_inference_tokens_total", model=MODEL, node="cli-node", type="completion") == completion
        assert m.value("ollama_loaded_model_vram_bytes", model=MODEL, node="cli-node") == 5
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await fake.stop()


@async_test
async def test_tokens_and_requests_are_labelled_by_the_client_the_gateway_names():
    """The gateway's client header labels tokens and requests; names that are not configured (or no header,
    as from a request that bypassed the gateway) are `unknown`; the header never reaches Ollama."""
    async with bed(clients=("team-a", "team-b")) as b:
        sent: dict[str, list[int]] = {}
        for client in ("team-a", "team-b", "team-a", "intruder", None, "_admin"):
            headers = {"X-Fleet-Client": client} if client else {}
            async with b.client.post(
                f"{b.url}/api/generate", json={"model": MODEL, "prompt": "hello there"}, headers=headers
            ) as resp:
                p, c = _native_counts(await resp.read())
            label = client if client in ("team-a", "team-b", "_admin") else "unknown"
            totals = sent.setdefault(label, [0, 0, 0])
            totals[0] += p
            totals[1] += c
            totals[2] += 1
        m = await b.metrics()
        assert m.label_values("ollama_inference_tokens_total", "client") == {"team-a", "team-b", "_admin", "unknown"}
        for label, (prompt, completion, requests) in sent.items():
            assert m.value("ollama_inference_tokens_total", client=label, type="prompt") == prompt
            assert m.value("ollama_inference_tokens_total", client=label, type="completion") == completion
            assert m.value("ollama_inference_requests_total", client=label, status="200") == requests
        assert all("x-fleet-client" not in {k.lower() for k in r.headers} for r in b.fake.received)


@async_test
async def test_configured_clients_start_at_zero():
    """Series of configured clients and models exist before any request, so increase() counts the first one."""
    async with bed(clients=("team-a",), models=(MODEL,)) as b:
        m = await b.metrics()
        for client in ("team-a", "_admin"):
            for kind in ("prompt", "completion"):
                assert m.value("ollama_inference_tokens_total", model=MODEL, client=client, type=kind) == 0
            assert m.value("ollama_inference_requests_total", model=MODEL, client=client, status="200") == 0
