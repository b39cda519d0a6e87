"""The metering exporter's Prometheus metrics and the bounded set of model labels they use."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from fleet.exporters.meter_stream import Usage, normalize_model
from fleet.gateway_routes import ADMIN_CLIENT, UNKNOWN_CLIENT

OTHER = "other"  # models beyond the label budget, or never answered successfully
UNKNOWN = "unknown"  # requests naming no model (unparseable body)

# Inference latencies span a cached one-token answer to a long generation behind a model load.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60)
# Generation speed: a CPU node does a few tokens/s, a large GPU on a small model several hundred.
TPS_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500)


class ModelLabels:
    """Turns request model names into label values, at most `limit` distinct ones.

    A name gets its own label once Ollama has answered it with a 2xx (or lists it in /api/ps, or it is
    configured); until then it holds a provisional slot while its requests are in flight. A name that
    never succeeds (a typo answered 404) gives its slot back and is counted as `other`, so clients
    cannot grow the series count by inventing model names.
    """

    def __init__(self, limit: int, configured: Iterable[str] = ()) -> None:
        if limit < 1:
            raise ValueError("the model label limit must be at least 1")
        self.limit = limit
        self._confirmed: set[str] = set()
        self._pending: dict[str, int] = {}
        for name in configured:
            self.confirm(name)

    @property
    def confirmed(self) -> frozenset[str]:
        return frozenset(self._confirmed)

    def confirm(self, model: str) -> bool:
        """Give `model` a permanent label if the budget allows; True when it has one."""
        model = normalize_model(model)
        if not model:
            return False
        if model in self._confirmed:
            return True
        if self._used() - (model in self._pending) >= self.limit:
            return False
        self._confirmed.add(model)
        return True

    def _used(self) -> int:
        return len(self._confirmed) + sum(1 for name in self._pending if name not in self._confirmed)

    def acquire(self, model: str) -> str:
        """The label for a request starting now (its in-flight gauge)."""
        if not model:
            return UNKNOWN
        if model in self._confirmed:
            return model
        if model in self._pending:
            self._pending[model] += 1
            return model
        if self._used() < self.limit:
            self._pending[model] = 1
            return model
        return OTHER

    def release(self, model: str, label: str, succeeded: bool) -> tuple[str, bool]:
        """The label to record a finished request under, and whether its provisional slot was dropped."""
        if label != model:  # `other` / `unknown`: nothing was held
            return label, False
        held = self._pending.get(model)
        if held is not None:
            if held <= 1:
                del self._pending[model]
            else:
                self._pending[model] = held - 1
        if model in self._confirmed:
            return model, False
        if succeeded:
            self._confirmed.add(model)
            return model, False
        dropped = model not in self._pending
        return OTHER, dropped


class ClientLabels:
    """The `client` label of a request from the name the gateway passes: a configured client, the admin
    client, or `unknown` for anything else, so the series count stays bounded by the configuration."""

    def __init__(self, clients: Iterable[str] = ()) -> None:
        self.known = frozenset(clients) | {ADMIN_CLIENT}

    def label(self, name: str | None) -> str:
        return name if name in self.known else UNKNOWN_CLIENT


@dataclass
class LoadedModel:
    name: str
    size: int
    size_vram: int


@dataclass(eq=False)  # registered as a collector, so it must stay hashable
class UpstreamState:
    """The latest answer of Ollama's /api/version and /api/ps, read at scrape time."""

    node: str
    up: bool = False
    version: str | None = None
    loaded: list[LoadedModel] = field(default_factory=list)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("ollama_up", "1 when the Ollama server answers /api/version.", labels=["node"])
        up.add_metric([self.node], 1.0 if self.up else 0.0)
        yield up
        info = GaugeMetricFamily(
            "ollama_version_info", "Ollama server version (value 1) as reported by /api/version.", labels=["node", "version"]
        )
        if self.up and self.version:
            info.add_metric([self.node, self.version], 1.0)
        yield info
        size = GaugeMetricFamily(
            "ollama_loaded_model_size_bytes", "Memory of a loaded model (size in /api/ps).", labels=["model", "node"]
        )
        vram = GaugeMetricFamily(
            "ollama_loaded_model_vram_bytes", "GPU memory of a loaded model (size_vram in /api/ps).", labels=["model", "node"]
        )
        for model in self.loaded:
            size.add_metric([model.name, self.node], float(model.size))
            vram.add_metric([model.name, self.node], float(model.size_vram))
        yield size
        yield vram


class MeterMetrics:
    """All series one exporter exposes, in a registry of its own (several exporters may share a process)."""

    def __init__(
        self,
        node: str,
        max_models: int = 32,
        models: Iterable[str] = (),
        clients: Iterable[str] = (),
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.node = node
        # alias -> the served model it names: an alias's requests and runners are labelled with the model
        self.aliases = {normalize_model(alias): normalize_model(model) for alias, model in (aliases or {}).items()}
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels = ModelLabels(max_models, models)
        self.clients = ClientLabels(clients)
        self.state = UpstreamState(node)
        r = self.registry
        self.requests = Counter(
            "ollama_inference_requests",
            "Inference requests by model and outcome: the HTTP status, `error` (Ollama reported an error in a "
            "200 stream), `client_closed` (the client left mid-request), `upstream_closed` (Ollama's stream broke); "
            "`client` is the gateway's client name (`unknown` when no configured client is named).",
            ["model", "node", "status", "client"],
            registry=r,
        )
        self.duration = Histogram(
            "ollama_inference_duration_seconds",
            "Time from request to the last byte of a successful inference response.",
            ["model", "node"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "ollama_time_to_first_token_seconds",
            "Time from request to the first streamed chunk carrying generated content.",
            ["model", "node"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "ollama_inference_tokens",
            "Tokens processed, as reported by Ollama (prompt_eval_count / eval_count, or OpenAI `usage`), by the "
            "client the gateway names.",
            ["model", "node", "type", "client"],
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "ollama_tokens_per_second",
            "Generation speed per request: eval_count / eval_duration (native API), or completion tokens over "
            "the time since the first token (OpenAI-compatible streams).",
            ["model", "node"],
            buckets=TPS_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "ollama_inflight_requests",
            "Inference requests inside Ollama now (running or queued).",
            ["model", "node"],
            registry=r,
        )
        self.usage_missing = Counter(
            "ollama_inference_usage_missing",
            "Successful inference responses that reported no token counts (an OpenAI stream without "
            "stream_options.include_usage, or the legacy /api/embeddings).",
            ["model", "node"],
            registry=r,
        )
        self.http_requests = Counter(
            "ollama_http_requests",
            "Every request passed through to Ollama, by route and HTTP status (inference and other routes).",
            ["route", "node", "status"],
            registry=r,
        )
        r.register(self.state)
        for model in self.labels.confirmed:
            self._touch(model)

    def _touch(self, model: str) -> None:
        """Create a configured model's series at zero for every configured client, so rate() and increase()
        count from the first request (a series born at its first value hides that value)."""
        self.inflight.labels(model, self.node)
        for client in sorted(self.clients.known):
            self.requests.labels(model, self.node, "200", client)
            for kind in ("prompt", "completion"):
                self.tokens.labels(model, self.node, kind, client)

    # Request life cycle -------------------------------------------------------------------------------

    def served_name(self, model: str) -> str:
        """The served model a request's (normalised) model names: itself, or the model an alias stands for."""
        return self.aliases.get(model, model)

    def start(self, model: str) -> str:
        label = self.labels.acquire(model)
        self.inflight.labels(label, self.node).inc()
        return label

    def finish(
        self,
        model: str,
        label: str,
        status: str,
        *,
        duration_s: float,
        ttft_s: float | None,
        decode_s: float | None,
        usage: Usage,
        client: str = UNKNOWN_CLIENT,
    ) -> str:
        """Record one finished inference request; returns the label it was recorded under. `client` is a label
        from `self.clients.label`."""
        succeeded = status.startswith("2")
        self.inflight.labels(label, self.node).dec()
        final, dropped = self.labels.release(model, label, succeeded)
        if dropped:
            self.inflight.remove(label, self.node)
        node = self.node
        self.requests.labels(final, node, status, client).inc()
        if ttft_s is not None:
            self.ttft.labels(final, node).observe(ttft_s)
        if not succeeded:
            return final
        self.duration.labels(final, node).observe(duration_s)
        if usage.reported:
            self.tokens.labels(final, node, "prompt", client).inc(usage.prompt_tokens or 0)
            self.tokens.labels(final, node, "completion", client).inc(usage.completion_tokens or 0)
        else:
            self.usage_missing.labels(final, node).inc()
        speed = _tokens_per_second(usage, decode_s)
        if speed is not None:
            self.tokens_per_second.labels(final, node).observe(speed)
        return final

    def http(self, route: str, status: str) -> None:
        self.http_requests.labels(route, self.node, status).inc()

    def set_upstream(self, up: bool, version: str | None, loaded: list[LoadedModel]) -> None:
        # Ollama names a runner by the name that loaded it, an alias included: label it with the served model.
        loaded = [replace(m, name=self.aliases.get(normalize_model(m.name), m.name)) for m in loaded]
        self.state.up, self.state.version, self.state.loaded = up, version, loaded
        for model in loaded:
            self.labels.confirm(model.name)


def _tokens_per_second(usage: Usage, decode_s: float | None) -> float | None:
    completion = usage.completion_tokens
    if not completion:
        return None
    if usage.eval_duration_ns:
        return completion / (usage.eval_duration_ns / 1e9)
    # Without Ollama's own timing the first token's arrival starts the clock, so it is not counted.
    if decode_s and decode_s > 0 and completion > 1:
        return (completion - 1) / decode_s
    return None
