"""Usage per client: tokens and requests by client and model over a window, read from Prometheus' HTTP API.

The counts come from the metering exporters (`ollama_inference_tokens_total` and
`ollama_inference_requests_total`, labelled `client` by the gateway's client header). A count over a window
is exact where it can be (see `counted_since`): the counter now minus the counter at the window's start, or
the whole counter for a series born inside the window. Only a series that was reset inside the window (its
meter restarted) or is gone by now falls back to `increase()`, which Prometheus extrapolates to the window's
edges. The same queries feed the dashboard's client panels, `fleet usage` and the budget controller.

Only the standard library is used: the budget controller runs from the exporter image (exporter/Dockerfile).
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

TOKENS_METRIC = "ollama_inference_tokens_total"
REQUESTS_METRIC = "ollama_inference_requests_total"


class UsageError(RuntimeError):
    """Prometheus cannot be reached or refuses a query; the message says which and why."""


# A Prometheus duration above zero, ASCII digits, matched over the whole value (a trailing newline is refused).
_WINDOW = re.compile(r"[1-9][0-9]{0,5}(ms|s|m|h|d|w|y)", re.ASCII)


def check_window(window: str) -> str:
    if not _WINDOW.fullmatch(window):
        raise UsageError(f"window {json.dumps(window)} must be a Prometheus duration such as `24h`, `90m` or `7d`")
    return window


def check_url(url: str) -> str:
    """An `http://` or `https://` URL with a host (Prometheus' base URL)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - reading it checks it
    except ValueError as exc:
        raise UsageError(f"Prometheus URL {json.dumps(url)}: not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"Prometheus URL {json.dumps(url)}: must be http:// or https:// with a host, such as http://127.0.0.1:9090")
    return url


def counted_since(metric: str, window: str, by: str) -> str:
    """What a counter counted over the last `window`, summed by `by`.

    `increase()` alone extrapolates a series born inside the window (a new client, model or node) to the
    window's start as if it had been counting all along: a client's first 50 tokens can read 61. So series
    that lived through the window without a reset use the exact difference, series born inside it their whole
    value (the meters create a series with its first count), and only the rest `increase()`.
    """
    exact = f"(({metric} - {metric} offset {window}) or {metric}) unless resets({metric}[{window}]) > 0"
    return f"sum by ({by}) ({exact} or increase({metric}[{window}]))"


def tokens_query(window: str, by: str = "client, model, type") -> str:
    return counted_since(TOKENS_METRIC, window, by)


# Where every client of Prometheus here (fleet usage, the budget controller, Grafana) reads its basic-auth password.
PASSWORD_ENV = "FLEET_PROMETHEUS_PASSWORD"

def requests_query(window: str, by: str = "client, model") -> str:
    return counted_since(REQUESTS_METRIC, window, by)


@dataclass
class PrometheusApi:
    """Instant queries against Prometheus' HTTP API, with basic auth when Prometheus requires it."""

    url: str
    username: str | None = None
    password: str | None = None
    timeout_s: float = 15.0

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of each series of an instant vector."""
        request = urllib.request.Request(
            f"{self.url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': expr})}",
            headers={"Accept": "application/json"},
        )
        if self.username:
            token = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise UsageError(f"Prometheus at {self.url} cannot be reached: {getattr(exc, 'reason', None) or exc}") from None
        if status == 401:
            raise UsageError(f"Prometheus at {self.url} wants credentials (user and password): 401")
        try:
            body = json.loads(raw)
        except ValueError:
            raise UsageError(f"Prometheus at {self.url} answered {status} without JSON") from None
        if status != 200 or body.get("status") != "success":
            raise UsageError(f"Prometheus refused {expr!r}: {body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        if data.get("resultType") != "vector":
            raise UsageError(f"Prometheus answered {expr!r} with a {data.get('resultType')}, not a vector")
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]


@dataclass
class UsageRow:
    client: str
    model: str
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    requests: float = 0.0

    @property
    def total_tokens(self) -> float:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class UsageReport:
    window: str
    rows: list[UsageRow] = field(default_factory=list)

    def by_client(self) -> dict[str, UsageRow]:
        totals: dict[str, UsageRow] = {}
        for row in self.rows:
            total = totals.setdefault(row.client, UsageRow(row.client, "*"))
            total.prompt_tokens += row.prompt_tokens
            total.completion_tokens += row.completion_tokens
            total.requests += row.requests
        return totals

    def to_json(self) -> dict:
        return {
            "window": self.window,
            "rows": [
                {
                    "client": r.client,
                    "model": r.model,
                    "promptTokens": round(r.prompt_tokens),
                    "completionTokens": round(r.completion_tokens),
                    "totalTokens": round(r.total_tokens),
                    "requests": round(r.requests),
                }
                for r in self.rows
            ],
        }


def usage_report(api: PrometheusApi, window: str, clients: Iterable[str] = ()) -> UsageReport:
    """Tokens and requests per (client, model) over `window`. Configured `clients` appear even without use;
    rows with neither tokens nor requests are left out otherwise."""
    check_window(window)
    rows: dict[tuple[str, str], UsageRow] = {}

    def row(labels: Mapping[str, str]) -> UsageRow:
        key = (labels.get("client", "unknown"), labels.get("model", "unknown"))
        return rows.setdefault(key, UsageRow(*key))

    for labels, value in api.query(tokens_query(window)):
        kind = labels.get("type")
        if kind == "prompt":
            row(labels).prompt_tokens += value
        elif kind == "completion":
            row(labels).completion_tokens += value
    for labels, value in api.query(requests_query(window)):
        row(labels).requests += value
    report = UsageReport(window)
    used = [r for r in rows.values() if r.total_tokens > 0 or r.requests > 0]
    seen = {r.client for r in used}
    report.rows = sorted(used, key=lambda r: (r.client, r.model))
    report.rows += [UsageRow(c, "-") for c in sorted(set(clients) - seen)]
    return report
