"""The clients people point at the service — the `ollama` and `openai` Python packages and raw HTTP — through
the real gateway (TLS, API key as `Authorization: Bearer`) to real Ollama nodes generating real tokens."""

from __future__ import annotations

import json
import time

import httpx
import ollama
import pytest
from openai import OpenAI

from fleet.model_names import short_name

pytestmark = pytest.mark.e2e

OPTIONS = {"temperature": 0, "seed": 7, "num_predict": 12}
TIMEOUT = httpx.Timeout(120.0, connect=10.0)


@pytest.fixture(scope="module")
def beta(dataplane) -> httpx.Client:
    with httpx.Client(base_url=dataplane.gateway_url, headers=dataplane.auth("beta"), verify=dataplane.verify(),
                      timeout=TIMEOUT) as client:
        yield client


def _ollama_client(plane, key: str | None = None) -> ollama.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else plane.auth("beta")
    return ollama.Client(host=plane.gateway_url, headers=headers, verify=plane.verify(), timeout=TIMEOUT)


def _openai_client(plane, key: str | None = None) -> OpenAI:
    return OpenAI(base_url=f"{plane.gateway_url}/v1", api_key=key or plane.client_keys["beta"], max_retries=0,
                  http_client=httpx.Client(verify=plane.verify(), timeout=TIMEOUT))


def test_gateway_serves_https_with_the_generated_certificate(dataplane):
    assert dataplane.gateway_url.startswith("https://127.0.0.1:")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{dataplane.gateway_url}/health", timeout=10)  # the system CAs do not know it
    assert httpx.get(f"{dataplane.gateway_url}/health", verify=dataplane.verify(), timeout=10).json() == {"status": "ok"}
    # Plain HTTP serves /health for load balancers and nothing else: with no domain there is no name to
    # redirect to (never the client's Host header), and a key sent in clear is refused, not redirected.
    assert httpx.get(f"{dataplane.http_url}/health", timeout=10).json() == {"status": "ok"}
    plain = httpx.post(f"{dataplane.http_url}/api/generate", headers={"Host": "evil.example"}, timeout=10)
    assert plain.status_code == 400 and "location" not in plain.headers
    assert f"https:// on port {dataplane.https_port}" in plain.json()["error"]
    keyed = httpx.post(f"{dataplane.http_url}/api/generate", headers=dataplane.auth("beta"), timeout=10)
    assert keyed.status_code == 403 and "location" not in keyed.headers
    assert "rotate the key" in keyed.json()["error"]


def test_ollama_client_generate(dataplane, served_model):
    reply = _ollama_client(dataplane).generate(model=served_model, prompt="Why is the sky blue?", options=OPTIONS)
    assert reply.response.strip()
    assert reply.done is True
    assert 0 < reply.eval_count <= OPTIONS["num_predict"]
    assert reply.prompt_eval_count > 0


def test_ollama_client_chat(dataplane, served_model):
    reply = _ollama_client(dataplane).chat(
        model=served_model, messages=[{"role": "user", "content": "Name a primary colour."}], options=OPTIONS)
    assert reply.message.role == "assistant"
    assert reply.message.content.strip()
    assert 0 < reply.eval_count <= OPTIONS["num_predict"]


def test_ollama_client_reads_the_model_list(dataplane, served_model):
    client = _ollama_client(dataplane)
    # The nodes serve exactly the stack's models, under the stack's names and the aliases it gives them.
    model = dataplane.settings.node_groups[0].models[0]
    assert {m.model for m in client.list().models} == {served_model, *(short_name(a) for a in model.aliases)}
    assert client.show(served_model).details.quantization_level == "Q4_1"


def test_openai_client_chat_completions(dataplane, served_model):
    completion = _openai_client(dataplane).chat.completions.create(
        model=served_model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0)
    assert completion.choices[0].message.content.strip()
    assert completion.model == served_model
    assert 0 < completion.usage.completion_tokens <= 8
    assert completion.usage.prompt_tokens > 0
    assert served_model in {m.id for m in _openai_client(dataplane).models.list().data}


def test_raw_http_generate_chat_and_v1(beta, served_model):
    generate = beta.post("/api/generate", json={"model": served_model, "prompt": "Hi", "stream": False, "options": OPTIONS})
    assert generate.status_code == 200, generate.text
    assert generate.json()["response"].strip() and generate.json()["eval_count"] > 0
    chat = beta.post("/api/chat", json={"model": served_model, "stream": False, "options": OPTIONS,
                                        "messages": [{"role": "user", "content": "Hi"}]})
    assert chat.status_code == 200 and chat.json()["message"]["content"].strip()
    v1 = beta.post("/v1/chat/completions", json={"model": served_model, "max_tokens": 8, "temperature": 0,
                                                 "messages": [{"role": "user", "content": "Hi"}]})
    assert v1.status_code == 200 and v1.json()["usage"]["completion_tokens"] > 0
    # The gateway adds its request id; the key never reaches the response.
    assert generate.headers["x-request-id"]


def _timed_lines(response: httpx.Response) -> list[tuple[float, dict]]:
    return [(time.monotonic(), json.loads(line)) for line in response.iter_lines() if line.strip()]


def test_streaming_arrives_while_tokens_are_generated(beta, served_model):
    """Chunks reach the client as Ollama produces them: their arrival spreads over the generation time that
    Ollama itself reports, instead of arriving together at the end (a buffering proxy)."""
    body = {"model": served_model, "prompt": "Count from one to fifty, one number per line.",
            "options": {"temperature": 0, "num_predict": 48}}
    started = time.monotonic()
    with beta.stream("POST", "/api/generate", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        chunks = _timed_lines(response)
    *tokens, (final_at, final) = chunks
    assert final["done"] is True and len(tokens) >= 10
    first_at = tokens[0][0]
    spread = final_at - first_at
    generation = final["eval_duration"] / 1e9
    print(f"\n{len(tokens)} token chunks: first after {first_at - started:.3f}s, spread over {spread:.3f}s; "
          f"Ollama's eval_duration {generation:.3f}s")
    # Buffered, every chunk would arrive within a few milliseconds of the last one.
    assert spread >= 0.5 * generation
    distinct_arrivals = len({round(at, 3) for at, _ in tokens})
    assert distinct_arrivals >= len(tokens) // 2


def test_streaming_with_the_real_clients(dataplane, served_model):
    parts = list(_ollama_client(dataplane).chat(
        model=served_model, messages=[{"role": "user", "content": "Tell me about the sea."}], stream=True,
        options={"temperature": 0, "num_predict": 16}))
    assert len(parts) >= 5
    assert parts[-1].done is True and parts[-1].eval_count > 0
    assert "".join(p.message.content for p in parts).strip()

    stream = _openai_client(dataplane).chat.completions.create(
        model=served_model, messages=[{"role": "user", "content": "Tell me about the sea."}], max_tokens=16,
        temperature=0, stream=True, stream_options={"include_usage": True})
    events = list(stream)
    content = [e.choices[0].delta.content for e in events if e.choices and e.choices[0].delta.content]
    assert len(content) >= 5
    usage = [e.usage for e in events if e.usage]
    assert usage and 0 < usage[-1].completion_tokens <= 16


def test_access_log_names_the_client_and_node_never_the_key(dataplane, beta, served_model):
    beta.post("/api/generate", json={"model": served_model, "prompt": "Hi", "stream": False, "options": OPTIONS})
    entries = [e for e in dataplane.access_log() if e["uri"] == "/api/generate" and e["client"] == "beta"]
    assert entries
    meters = {node.upstream for node in dataplane.nodes}
    assert entries[-1]["upstream_addr"] in meters  # the gateway talks to the meters, never to Ollama
    text = dataplane.access_log_path.read_text()
    assert all(key not in text for key in [*dataplane.client_keys.values(), dataplane.admin_key])
