"""Smoke test of a deployed gateway: the few checks that say "this endpoint serves, and safely".

Run after every `pulumi up` (CI does) and by hand after any change. Each check is one request (or a short,
bounded poll for metrics) and yields a `CheckResult`; `run_smoke` never raises for an HTTP problem, so a
broken endpoint gives a full table of what works and what does not. Keys are sent as
`Authorization: Bearer` (what OpenAI SDKs and the `ollama` client send) and never appear in a result.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from fleet.gateway_routes import ADMIN_PREFIXES, ADMIN_ROUTES

# The administrative Ollama routes (fleet.gateway_routes) with a probe request each, by the method Ollama serves
# them with (server/routes.go: DELETE /api/delete, POST the others, HEAD /api/blobs/:digest). Bodies are empty
# objects: even on a gateway that wrongly let a client key through, Ollama would answer 400 (missing name) or
# 404 and change nothing, so the smoke test can run against production without risk.
BLOB_PROBE = ADMIN_PREFIXES[0] + "sha256:" + "0" * 64
ADMIN_PROBES: tuple[tuple[str, str, dict | None], ...] = (
    *(("DELETE" if path == "/api/delete" else "POST", path, {}) for path in ADMIN_ROUTES),
    ("HEAD", BLOB_PROBE, None),
)

TOKENS_METRIC = "ollama_inference_tokens_total"
GENERATE_PROMPT = "Reply with one word: ready"


@dataclass(frozen=True)
class CheckResult:
    name: str
    expected: str
    got: str
    ok: bool | None  # None: skipped
    detail: str = ""

    @property
    def status(self) -> str:
        return "SKIP" if self.ok is None else ("PASS" if self.ok else "FAIL")


@dataclass
class SmokeOptions:
    url: str
    api_key: str
    admin_key: str | None = None
    model: str | None = None
    metrics_url: str | None = None
    # Prometheus' basic auth (fleet.render.prometheus_web); None: the metrics URL asks for none.
    metrics_auth: tuple[str, str] | None = None
    insecure: bool = False
    ca_cert: str | None = None  # CA bundle that signed the gateway's certificate (self-signed stacks)
    timeout_s: float = 10.0
    generate_timeout_s: float = 180.0  # a cold node loads the model on the first request
    metrics_wait_s: float = 45.0  # Prometheus sees new samples only after its next scrape
    num_predict: int = 8
    extra_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class SmokeReport:
    url: str
    results: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(r.ok is not False for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.ok is False]


def _bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_error(error: Exception) -> str:
    return f"{type(error).__name__}: {_short(str(error), 100)}" if str(error) else type(error).__name__


class _Smoke:
    def __init__(self, options: SmokeOptions, client: httpx.Client):
        self.o = options
        self.client = client
        self.base = options.url.rstrip("/")

    def request(self, method: str, path: str, *, key: str | None, json: dict | None = None, timeout: float | None = None):
        headers = {**self.o.extra_headers, **_bearer(key)}
        return self.client.request(
            method, self.base + path, headers=headers, json=json, timeout=timeout or self.o.timeout_s
        )

    # --- checks -------------------------------------------------------------------------------------

    def health(self) -> CheckResult:
        try:
            response = self.request("GET", "/health", key=None)
        except httpx.HTTPError as error:
            return CheckResult("health", "200", _describe_error(error), False)
        return CheckResult("health", "200", str(response.status_code), response.status_code == 200)

    def unauthenticated(self) -> list[CheckResult]:
        results = []
        body = {"model": self.o.model or "any", "prompt": "x", "stream": False}
        for name, key in (("no key", None), ("wrong key", "fleet-smoke-wrong-key")):
            try:
                response = self.request("POST", "/api/generate", key=key, json=body)
                got, ok = str(response.status_code), response.status_code == 401
            except httpx.HTTPError as error:
                got, ok = _describe_error(error), False
            results.append(CheckResult(f"generate with {name}", "401", got, ok))
        return results

    def pick_model(self) -> tuple[str | None, CheckResult | None]:
        if self.o.model:
            return self.o.model, None
        try:
            response = self.request("GET", "/api/tags", key=self.o.api_key)
            models = response.json().get("models", []) if response.status_code == 200 else []
            # Oldest first: an alias (`ollama cp`) is newer than the model it names, so the served name wins.
            models = sorted(models, key=lambda m: str(m.get("modified_at") or ""))
            names = [m.get("name") or m.get("model") for m in models]
        except (httpx.HTTPError, ValueError, AttributeError, TypeError) as error:
            return None, CheckResult("list models", "200 with a model", _describe_error(error), False)
        names = [n for n in names if n]
        if response.status_code != 200 or not names:
            got = str(response.status_code) if response.status_code != 200 else "no models"
            return None, CheckResult("list models", "200 with a model", got, False)
        return names[0], CheckResult("list models", "200 with a model", f"{len(names)} ({names[0]})", True)

    def generate(self, model: str | None) -> CheckResult:
        name = f"generate {model}" if model else "generate"
        expected = "200, text, eval_count > 0"
        if model is None:
            return CheckResult(name, expected, "no model to ask", False)
        body = {
            "model": model,
            "prompt": GENERATE_PROMPT,
            "stream": False,
            "options": {"num_predict": self.o.num_predict},
        }
        started = time.monotonic()
        try:
            response = self.request("POST", "/api/generate", key=self.o.api_key, json=body, timeout=self.o.generate_timeout_s)
        except httpx.HTTPError as error:
            return CheckResult(name, expected, _describe_error(error), False)
        elapsed = time.monotonic() - started
        if response.status_code != 200:
            return CheckResult(name, expected, f"{response.status_code} {_short(response.text, 80)}", False)
        try:
            payload = response.json()
        except ValueError:
            return CheckResult(name, expected, "200, body is not JSON", False)
        text = payload.get("response") or ""
        eval_count = payload.get("eval_count") or 0
        ok = bool(text.strip()) and isinstance(eval_count, int) and eval_count > 0
        got = f"200, {len(text)} chars, eval_count {eval_count}, {elapsed:.1f}s"
        return CheckResult(name, expected, got, ok, detail=_short(text, 60))

    def admin_closed(self) -> list[CheckResult]:
        results = []
        for method, path, body in ADMIN_PROBES:
            label = path if path != BLOB_PROBE else "/api/blobs/…"
            try:
                response = self.request(method, path, key=self.o.api_key, json=body)
                got, ok = str(response.status_code), response.status_code == 403
            except httpx.HTTPError as error:
                got, ok = _describe_error(error), False
            results.append(CheckResult(f"{method} {label} with client key", "403", got, ok))
        return results

    def admin_key(self) -> CheckResult:
        """The admin key reaches an admin route (Ollama answers 404 for an unknown blob, the gateway 401/403)."""
        name = "HEAD /api/blobs/… with admin key"
        if not self.o.admin_key:
            return CheckResult(name, "not 401/403", "no --admin-key", None)
        try:
            response = self.request("HEAD", BLOB_PROBE, key=self.o.admin_key)
        except httpx.HTTPError as error:
            return CheckResult(name, "not 401/403", _describe_error(error), False)
        ok = response.status_code not in (401, 403) and response.status_code < 500
        detail = "" if ok else "the admin key works only from gateway.adminCidrs"
        return CheckResult(name, "not 401/403", str(response.status_code), ok, detail)

    def metrics(self) -> CheckResult:
        name = f"metrics {TOKENS_METRIC}"
        if not self.o.metrics_url:
            return CheckResult(name, "present, > 0", "no --metrics-url", None)
        exporter = urlsplit(self.o.metrics_url).path.rstrip("/").endswith("/metrics")
        probe: Callable[[], tuple[float | None, str]] = self._exporter_tokens if exporter else self._prometheus_tokens
        deadline = time.monotonic() + self.o.metrics_wait_s
        while True:
            try:
                value, got = probe()
            except httpx.HTTPError as error:
                value, got = None, _describe_error(error)
            if value is not None and value > 0:
                return CheckResult(name, "present, > 0", got, True)
            if time.monotonic() >= deadline:
                return CheckResult(name, "present, > 0", got, False)
            time.sleep(min(2.0, max(deadline - time.monotonic(), 0.05)))

    def _exporter_tokens(self) -> tuple[float | None, str]:
        from prometheus_client.parser import text_string_to_metric_families

        response = self.client.get(self.o.metrics_url, timeout=self.o.timeout_s)
        if response.status_code != 200:
            return None, f"/metrics answered {response.status_code}"
        total, seen = 0.0, False
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == TOKENS_METRIC:
                    seen = True
                    total += sample.value
        return (total if seen else None), (f"{total:.0f} tokens" if seen else "metric absent")

    def _prometheus_tokens(self) -> tuple[float | None, str]:
        url = self.o.metrics_url.rstrip("/") + "/api/v1/query"
        response = self.client.get(
            url, params={"query": f"sum({TOKENS_METRIC})"}, auth=self.o.metrics_auth, timeout=self.o.timeout_s
        )
        if response.status_code == 401:
            return None, "query API answered 401 (Prometheus asks for a password: --metrics-password)"
        if response.status_code != 200:
            return None, f"query API answered {response.status_code}"
        try:
            result = response.json()["data"]["result"]
        except (ValueError, KeyError, TypeError):
            return None, "query API answer not understood"
        if not result:
            return None, "no series yet"
        value = float(result[0]["value"][1])
        return value, f"{value:.0f} tokens (Prometheus)"


def _verify(options: SmokeOptions) -> bool | ssl.SSLContext:
    if options.insecure:
        return False
    if options.ca_cert:
        return ssl.create_default_context(cafile=options.ca_cert)
    return True


def run_smoke(options: SmokeOptions, on_result: Callable[[CheckResult], None] | None = None) -> SmokeReport:
    """Run every check against `options.url`; `on_result` sees each result as it comes."""
    results: list[CheckResult] = []

    def record(items: CheckResult | list[CheckResult] | None) -> None:
        for item in [items] if isinstance(items, CheckResult) else (items or []):
            results.append(item)
            if on_result:
                on_result(item)

    with httpx.Client(verify=_verify(options), follow_redirects=False) as client:
        smoke = _Smoke(options, client)
        record(smoke.health())
        record(smoke.unauthenticated())
        model, listed = smoke.pick_model()
        record(listed)
        record(smoke.generate(model))
        record(smoke.admin_closed())
        record(smoke.admin_key())
        record(smoke.metrics())
    return SmokeReport(url=options.url, results=results)
