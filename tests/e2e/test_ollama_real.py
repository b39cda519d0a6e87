"""The real Ollama server (built from source at the pinned tag) with a real GGUF model, driven directly.

These pin down the upstream behaviour the gateway, the exporter and the capacity model rely on.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
from pathlib import Path
from collections import Counter

import httpx
import ollama
import pytest
from gguf import GGUFReader
from openai import OpenAI

from fleet.local.memory_probe import measure
from fleet.local.ollama import OllamaSettings
from fleet.local import ollama_build
from fleet.local.ollama_build import OLLAMA_TAG
from fleet.local.processes import port_is_open
from fleet.node_runtime import manifest_path, model_digests

pytestmark = pytest.mark.e2e

QUEUE_FULL_BODY = {"error": "server busy, please try again.  maximum pending requests exceeded"}


def _generate(base_url: str, model: str, options: dict, prompt: str = "Why is the sky blue?", **extra) -> httpx.Response:
    body = {"model": model, "prompt": prompt, "stream": False, "options": options, **extra}
    return httpx.post(f"{base_url}/api/generate", json=body, timeout=300)


REPO_ROOT = Path(__file__).resolve().parents[2]


def test_build_script_reuses_the_cached_binary(ollama_binary):
    before = ollama_binary.stat().st_mtime_ns
    out = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "build-ollama.sh")], capture_output=True, text=True,
                         timeout=120, check=True)
    assert Path(out.stdout.strip()) == ollama_binary
    assert ollama_binary.stat().st_mtime_ns == before  # not rebuilt


def test_cached_build_records_the_cpu_extensions_it_was_compiled_for(ollama_binary):
    profile = ollama_build.build_profile()
    recorded = json.loads((ollama_binary.parent.parent / ollama_build.PROFILE_FILE).read_text())
    assert recorded == {"machine": profile.machine, "cflags": profile.cflags, "key": profile.key}
    assert ollama_binary.parent.parent.name.endswith(profile.key)


def test_build_names_the_missing_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("OLLAMA_FLEET_CACHE", str(tmp_path))
    key = ollama_build.build_profile().key
    assert ollama_build.binary_path() == tmp_path / f"ollama-{OLLAMA_TAG}-{key}" / "bin" / "ollama"
    monkeypatch.setattr(ollama_build, "REQUIRED_HEADERS", {str(tmp_path / "absent" / "stb_image.h"): "libstb-dev"})
    with pytest.raises(ollama_build.OllamaBuildError, match="apt-get install libstb-dev"):
        ollama_build.ensure_ollama()
    assert not os.path.exists(ollama_build.binary_path())


def test_servers_run_the_pinned_build_on_distinct_loopback_ports(ollama_cluster):
    ports = {server.port for server in ollama_cluster}
    assert len(ports) == len(ollama_cluster) == 2
    for server in ollama_cluster:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert server.version() == OLLAMA_TAG.removeprefix("v")


def test_model_imported_once_is_listed_by_every_node(ollama_cluster, model_name):
    for server in ollama_cluster:
        (entry,) = [m for m in server.tags() if m["name"] == f"{model_name}:latest"]
        assert entry["details"]["format"] == "gguf"
        assert entry["details"]["quantization_level"] == "Q4_1"
        assert entry["details"]["family"] == "llama"


def test_the_digest_a_node_reports_is_the_one_ollama_lists(ollama_cluster, model_name, ollama_models_dir):
    """The pull step hashes the model's manifest file (fleet.node_runtime.manifest_path); the real server lists
    the same digest in /api/tags, so the deployment record carries what Ollama itself would report."""
    reference = f"{model_name}:latest"
    (entry,) = [m for m in ollama_cluster[0].tags() if m["name"] == reference]
    manifest = Path(manifest_path(reference, str(ollama_models_dir)))
    assert manifest.is_file(), f"no manifest at {manifest}"
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert digest == entry["digest"].removeprefix("sha256:")
    line = f"model-digest {reference} sha256:{digest}"
    assert model_digests(f"pulled\n{line}\n") == {reference: f"sha256:{digest}"}


def test_generate_returns_real_tokens_and_timings(ollama_cluster, model_name, fast_options):
    resp = _generate(ollama_cluster[0].base_url, model_name, fast_options)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["done"] is True
    assert body["response"].strip()
    assert 0 < body["eval_count"] <= fast_options["num_predict"]
    assert body["prompt_eval_count"] > 0
    # Durations are nanoseconds; the total covers prompt evaluation and generation.
    assert body["total_duration"] >= body["eval_duration"] > 0
    assert body["total_duration"] >= body["prompt_eval_duration"] > 0


def test_generation_is_deterministic_at_temperature_zero(ollama_cluster, model_name, fast_options):
    first = _generate(ollama_cluster[0].base_url, model_name, fast_options).json()
    second = _generate(ollama_cluster[1].base_url, model_name, fast_options).json()
    assert first["response"] == second["response"]
    assert first["eval_count"] == second["eval_count"]


def test_chat_answers_as_assistant(ollama_cluster, model_name, fast_options):
    resp = httpx.post(
        f"{ollama_cluster[1].base_url}/api/chat",
        json={"model": model_name, "stream": False, "options": fast_options,
              "messages": [{"role": "user", "content": "Name a primary colour."}]},
        timeout=300,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["message"]["role"] == "assistant"
    assert body["message"]["content"].strip()
    assert 0 < body["eval_count"] <= fast_options["num_predict"]
    assert body["prompt_eval_count"] > 0


def test_streaming_yields_one_ndjson_chunk_per_token_then_a_summary(ollama_cluster, model_name, fast_options):
    chunks = []
    with httpx.stream("POST", f"{ollama_cluster[0].base_url}/api/generate", timeout=300,
                      json={"model": model_name, "prompt": "Count from one to twenty.", "options": fast_options}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        for line in resp.iter_lines():
            if line:
                chunks.append(json.loads(line))
    *tokens, final = chunks
    assert len(tokens) >= 3
    assert all(c["done"] is False and "eval_count" not in c for c in tokens)
    assert final["done"] is True
    # The summary counts the generated tokens, each of which arrived as its own chunk.
    assert final["eval_count"] == len(tokens) + (1 if final["response"] else 0)


def test_ps_reports_the_loaded_model_size(ollama_cluster, model_name, model_gguf, fast_options):
    server = ollama_cluster[0]
    _generate(server.base_url, model_name, fast_options).raise_for_status()
    entry = server.loaded(model_name)
    weights = sum(int(t.n_bytes) for t in GGUFReader(str(model_gguf)).tensors)
    assert entry["size"] > weights  # weights plus the KV cache
    assert entry["size_vram"] == 0  # this build runs on CPU only
    assert entry["context_length"] == fast_options["num_ctx"]


def test_official_clients_talk_to_the_real_server(ollama_cluster, model_name, fast_options):
    base = ollama_cluster[1].base_url
    reply = ollama.Client(host=base).chat(
        model=model_name, messages=[{"role": "user", "content": "Say hello."}], options=fast_options)
    assert reply.message.content.strip()
    assert reply.eval_count > 0

    completion = OpenAI(base_url=f"{base}/v1", api_key="unused-by-ollama").chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0)
    assert completion.choices[0].message.content.strip()
    assert 0 < completion.usage.completion_tokens <= 8


def _concurrent_generate(base_url: str, model: str, count: int) -> tuple[Counter, set[str]]:
    statuses: Counter = Counter()
    refusals: set[str] = set()
    start = threading.Barrier(count)
    lock = threading.Lock()

    def one() -> None:
        start.wait()
        resp = httpx.post(f"{base_url}/api/generate", timeout=120,
                          json={"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": 4}})
        with lock:
            statuses[resp.status_code] += 1
            if resp.status_code != 200:
                refusals.add(resp.text)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    return statuses, refusals


def test_queue_full_answers_503_while_the_model_loads(make_ollama_server, model_name):
    # OLLAMA_MAX_QUEUE bounds the requests waiting for a model to be scheduled: on a cold server, 8 requests
    # at once with a queue of 1 leave one loading, one queued, and the rest refused.
    server = make_ollama_server(OllamaSettings(max_queue=1, num_parallel=1), name="queue1")
    statuses, refusals = _concurrent_generate(server.base_url, model_name, 8)
    assert statuses[503] >= 1, statuses
    assert statuses[200] >= 1, statuses
    assert set(statuses) <= {200, 503}
    assert {json.dumps(json.loads(r), sort_keys=True) for r in refusals} == {json.dumps(QUEUE_FULL_BODY)}


def test_requests_for_a_loaded_model_wait_for_a_slot_instead_of_the_queue(make_ollama_server, model_name):
    # Once the model is loaded, requests bypass OLLAMA_MAX_QUEUE and wait on the NUM_PARALLEL slots:
    # Ollama itself never sheds them, which is why the gateway must.
    server = make_ollama_server(OllamaSettings(max_queue=1, num_parallel=1, keep_alive="10m"), name="queue1-warm")
    server.load(model_name)
    statuses, _ = _concurrent_generate(server.base_url, model_name, 8)
    assert statuses == Counter({200: 8})


def test_killed_node_refuses_fast_and_comes_back_after_restart(ollama_cluster, model_name, fast_options):
    node = ollama_cluster[1]
    _generate(node.base_url, model_name, fast_options).raise_for_status()

    node.kill()
    assert not node.is_running()
    assert not port_is_open("127.0.0.1", node.port)
    # Refused by the kernel at once (a timeout would raise ReadTimeout/ConnectTimeout instead).
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{node.base_url}/api/generate", json={"model": model_name, "prompt": "hi"}, timeout=30)
    # The other node keeps serving.
    assert _generate(ollama_cluster[0].base_url, model_name, fast_options).status_code == 200

    node.restart()
    assert node.ps() == []  # a restarted node starts with nothing loaded
    resp = _generate(node.base_url, model_name, fast_options)
    assert resp.status_code == 200 and resp.json()["eval_count"] > 0


def test_kill_mid_stream_ends_the_response_instead_of_hanging(ollama_cluster, model_name):
    node = ollama_cluster[1]
    if not node.is_running():
        node.restart()
    received = 0
    with pytest.raises(httpx.TransportError):
        with httpx.stream("POST", f"{node.base_url}/api/generate", timeout=httpx.Timeout(60.0),
                          json={"model": model_name, "prompt": "Write a long story about the sea.",
                                "options": {"num_predict": 2000, "temperature": 0}}) as resp:
            for line in resp.iter_lines():
                if line:
                    received += 1
                    if received == 3:
                        node.kill()
    assert received >= 3
    node.restart()
    assert node.version() == OLLAMA_TAG.removeprefix("v")


def test_memory_probe_parses_real_server_output(make_ollama_server, model_name, model_gguf):
    """Ollama's logged KV cache equals the textbook formula on the model's own GGUF header, at two sizes."""
    reader = GGUFReader(str(model_gguf))
    arch = reader.fields["general.architecture"].contents()
    n_layer = reader.fields[f"{arch}.block_count"].contents()
    n_head = reader.fields[f"{arch}.attention.head_count"].contents()
    n_head_kv = reader.fields[f"{arch}.attention.head_count_kv"].contents()
    head_dim = reader.fields[f"{arch}.embedding_length"].contents() // n_head
    weights = sum(int(t.n_bytes) for t in reader.tensors)

    parallel = 2
    server = make_ollama_server(OllamaSettings(num_parallel=parallel, keep_alive="10m"), name="memprobe")
    for num_ctx in (1024, 2048):
        figures = measure(server, model_name, num_ctx)
        kv = 2 * n_layer * (num_ctx * parallel) * n_head_kv * head_dim * 2  # K and V, f16
        assert figures["llamacpp_kv_buffer"] == pytest.approx(kv, abs=0.01 * 2**20)
        assert figures["ollama_kv_cache"] == pytest.approx(kv, abs=0.1 * 2**20)
        assert figures["ollama_weights"] == pytest.approx(weights, abs=0.1 * 2**20)
        assert figures["llamacpp_compute_buffer"] > 0
        # /api/ps accounts exactly the weights and the KV cache on a CPU-only host.
        assert figures["ps_size"] == weights + kv
        assert figures["ps_size_vram"] == 0
