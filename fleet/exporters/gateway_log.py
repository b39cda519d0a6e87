"""Gateway log exporter: counts what the nginx gateway answered, from its JSON access log.

nginx's stub_status counts requests but not how they ended, and the meters beside the nodes see only what
reached a node. Every gateway answer is one line of the access log (`log_format fleet_json` in
templates/nginx.conf.j2), so this process follows that file (fleet/exporters/log_follower.py: it survives the file
appearing late, truncation and rotation by rename and reopen) and exports:

* `fleet_gateway_requests_total{gateway,client,status,route}`: every logged request;
* `fleet_gateway_refusals_total{gateway,client,reason}`: requests the gateway refused itself, without a
  node's answer: `unauthorized` (401), `forbidden` (403), `too_large` (413), `rate_limited` (429) and
  `shed` (503 because no node could take the request: every node at `max_conns` or marked down);
* `fleet_gateway_request_duration_seconds{gateway,client}`: proxied inference requests answered 2xx,
  request to last byte (`request_time`);
* `fleet_gateway_upstream_header_seconds{gateway,client}`: the same requests, until the answering node's
  response headers (all attempts' `upstream_header_time`); streamed answers send their headers with the
  first token, so this is the time to first token as the gateway sees it.

Labels are bounded: `route` is a class (inference, read, admin, health, other) from the gateway's route
allow-list (fleet/gateway_routes.py), `client` one of the configured clients (`--client`), the admin
client (`_admin`) or `unknown` (no or a wrong key, or a name not configured), `status` nginx's status code.
The log holds client names, never keys; nothing here logs a line's content.

    python -m fleet.exporters.gateway_log --log /var/log/nginx/fleet/access.log --metrics-listen 0.0.0.0:9115 \\
        [--gateway NAME] [--client NAME ...] [--from-start]

Only prometheus_client is needed at run time (the exporter image: exporter/Dockerfile).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily

from fleet import ports
from fleet.gateway_routes import (
    ADMIN_CLIENT,
    ADMIN_PREFIXES,
    ADMIN_ROUTES,
    GROUP_ROUTE_PREFIX,
    HEALTH_ROUTE,
    INFERENCE_ROUTES,
    READ_ONLY_PREFIXES,
    READ_ONLY_ROUTES,
    UNKNOWN_CLIENT,
    UPSTREAM_PREFIX,
)
from fleet.exporters.log_follower import LogFollower

log = logging.getLogger("fleet.exporters.gateway_log")

ROUTES = ("inference", "read", "admin", "health", "other")
REASONS = ("unauthorized", "forbidden", "too_large", "rate_limited", "shed")
# Request series of authenticated clients that exist from the start: served (200), rate-limited (429) and
# shed (503) answers on the routes nginx proxies.
INITIAL_STATUSES = ("200", "429", "503")
PROXIED_ROUTES = ("inference", "read", "admin")
# Statuses nginx answers itself (error_page ... in nginx.conf) and the refusal each stands for.
_OWN_REFUSALS = {401: "unauthorized", 403: "forbidden", 413: "too_large", 429: "rate_limited"}
_UPSTREAM_GROUP = re.compile(rf"^{re.escape(UPSTREAM_PREFIX)}[a-z0-9_]+$")
_STATUS = re.compile(r"^[1-5][0-9][0-9]$")

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
HEADER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60)


# ---- classification ---------------------------------------------------------------------------------


def route_class(uri: str) -> str:
    """The route class of a logged `$uri` (normalised by nginx), by the gateway's own allow-list."""
    if uri == HEALTH_ROUTE:
        return "health"
    path = uri
    if uri.startswith(GROUP_ROUTE_PREFIX):
        # /groups/<name>/api/chat serves /api/chat of that group.
        _, _, rest = uri[len(GROUP_ROUTE_PREFIX) :].partition("/")
        path = "/" + rest
    if path in INFERENCE_ROUTES:
        return "inference"
    if path in READ_ONLY_ROUTES or path.startswith(READ_ONLY_PREFIXES):
        return "read"
    if path in ADMIN_ROUTES or path.startswith(ADMIN_PREFIXES):
        return "admin"
    return "other"


def _attempts(value: str) -> list[str]:
    """nginx lists one entry per upstream attempt, `, ` between servers and ` : ` across internal redirects."""
    return [part.strip() for part in re.split(r"[,:]\s", value) if part.strip()] if value else []


def _addresses(value: str) -> list[str]:
    # Addresses hold colons themselves (`10.0.0.1:11435`): split on the separators only.
    return [part.strip() for part in re.split(r", | : ", value) if part.strip()] if value else []


def reached_node(upstream_status: str) -> bool:
    """A node was tried (nginx logs no upstream status when it answered without one)."""
    return any(part not in ("-", "") for part in _attempts(upstream_status))


def no_live_node(upstream_addr: str) -> bool:
    """nginx names the upstream group instead of a node when it found none to try (as the renderer's
    `$fleet_unavailable_reason` map does)."""
    addresses = _addresses(upstream_addr)
    return bool(addresses) and bool(_UPSTREAM_GROUP.match(addresses[-1]))


def refusal_reason(status: int, upstream_addr: str, upstream_status: str) -> str | None:
    """Why the gateway refused a request itself, or None when it did not (a node answered, or tried to)."""
    if status == 503:
        return "shed" if not reached_node(upstream_status) or no_live_node(upstream_addr) else None
    if reached_node(upstream_status):
        return None  # the node's own 401/403/413/429, passed through
    return _OWN_REFUSALS.get(status)


def _seconds(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


def header_seconds(upstream_header_time: str, upstream_response_time: str = "") -> float | None:
    """Time until the answering node's headers, over every attempt: an attempt that failed before its
    headers counts until it failed. None when the last attempt has no header time."""
    headers = _attempts(upstream_header_time)
    if not headers or _seconds(headers[-1]) is None:
        return None
    responses = _attempts(upstream_response_time)
    total = 0.0
    for index, value in enumerate(headers):
        seconds = _seconds(value)
        if seconds is None and index < len(responses):
            seconds = _seconds(responses[index])
        total += seconds or 0.0
    return total


@dataclass(frozen=True)
class Request:
    """One access-log line, reduced to what the metrics need."""

    client: str
    status: str
    route: str
    refusal: str | None
    proxied_ok: bool  # inference answered 2xx by a node
    request_time: float | None
    header_time: float | None


def parse_line(line: bytes | str, clients: frozenset[str]) -> Request | None:
    """A `fleet_json` access-log line, or None when it is not one."""
    try:
        entry = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("status"), int) or not isinstance(entry.get("uri"), str):
        return None
    status = entry["status"]
    name = entry.get("client")
    client = name if name == ADMIN_CLIENT or name in clients else UNKNOWN_CLIENT
    upstream_addr = str(entry.get("upstream_addr") or "")
    upstream_status = str(entry.get("upstream_status") or "")
    route = route_class(entry["uri"])
    reason = refusal_reason(status, upstream_addr, upstream_status)
    proxied_ok = route == "inference" and 200 <= status < 300 and reached_node(upstream_status)
    return Request(
        client=client,
        status=str(status) if _STATUS.match(str(status)) else "other",
        route=route,
        refusal=reason,
        proxied_ok=proxied_ok,
        request_time=_seconds(entry.get("request_time")) if proxied_ok else None,
        header_time=header_seconds(str(entry.get("upstream_header_time") or ""), str(entry.get("upstream_response_time") or ""))
        if proxied_ok
        else None,
    )


# ---- metrics ----------------------------------------------------------------------------------------


class GatewayLogMetrics:
    """The exporter's series in their own registry (one per instance: tests build many)."""

    def __init__(self, gateway: str, clients: Iterable[str] = ()) -> None:
        self.gateway = gateway
        self.clients = frozenset(c for c in clients if c)
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "fleet_gateway_requests",
            "Requests the gateway answered, by client, HTTP status and route class (from its access log).",
            ["gateway", "client", "status", "route"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "fleet_gateway_refusals",
            "Requests the gateway refused itself, without a node's answer: unauthorized (401), forbidden (403), "
            "too_large (413), rate_limited (429), shed (503: no node could take it).",
            ["gateway", "client", "reason"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "fleet_gateway_request_duration_seconds",
            "Proxied inference requests answered 2xx: request to last byte at the gateway.",
            ["gateway", "client"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.header = Histogram(
            "fleet_gateway_upstream_header_seconds",
            "Proxied inference requests answered 2xx: until the node's response headers (the first token of a stream).",
            ["gateway", "client"],
            buckets=HEADER_BUCKETS,
            registry=self.registry,
        )
        self._lines = {"counted": 0, "malformed": 0}
        self._follower: LogFollower | None = None
        self.registry.register(_FollowerCollector(self))
        # Series the refusal alert divides exist from the start at 0: Prometheus sees no increase in a series'
        # first sample, so a counter born at 4 next to one that was at 0 before would skew the share.
        for client in sorted(self.clients | {ADMIN_CLIENT, UNKNOWN_CLIENT}):
            for reason in REASONS:
                self.refusals.labels(gateway, client, reason)
        for client in sorted(self.clients | {ADMIN_CLIENT}):
            for status in INITIAL_STATUSES:
                for route in PROXIED_ROUTES:
                    self.requests.labels(gateway, client, status, route)

    def attach(self, follower: LogFollower) -> None:
        self._follower = follower

    def observe_line(self, line: bytes | str) -> Request | None:
        request = parse_line(line, self.clients)
        if request is None:
            self._lines["malformed"] += 1
            return None
        self._lines["counted"] += 1
        self.requests.labels(self.gateway, request.client, request.status, request.route).inc()
        if request.refusal:
            self.refusals.labels(self.gateway, request.client, request.refusal).inc()
        if request.request_time is not None:
            self.duration.labels(self.gateway, request.client).observe(request.request_time)
        if request.header_time is not None:
            self.header.labels(self.gateway, request.client).observe(request.header_time)
        return request

    def line_counts(self) -> Mapping[str, int]:
        return dict(self._lines)


class _FollowerCollector:
    """Lines read and what happened to the file, read from the follower at scrape time."""

    def __init__(self, metrics: GatewayLogMetrics) -> None:
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        lines = CounterMetricFamily(
            "fleet_gateway_log_lines", "Access-log lines read: counted, or malformed (not a fleet_json line).", labels=["gateway", "result"]
        )
        for result, value in self.metrics.line_counts().items():
            lines.add_metric([self.metrics.gateway, result], value)
        yield lines
        events = CounterMetricFamily(
            "fleet_gateway_log_file_events",
            "What happened to the followed log file: opened, rotated, truncated, dropped_lines (over-long or unfinished).",
            labels=["gateway", "event"],
        )
        stats = self.metrics._follower.stats if self.metrics._follower else None
        for event in ("opened", "rotations", "truncations", "dropped_lines"):
            events.add_metric([self.metrics.gateway, event], getattr(stats, event) if stats else 0)
        yield events


# ---- the process ------------------------------------------------------------------------------------


def exporter_arguments(log_path: str, metrics_listen: str, gateway: str, clients: Iterable[str]) -> list[str]:
    """Arguments of `python -m fleet.exporters.gateway_log` (the gateway component and the loopback data plane)."""
    args = ["--log", log_path, "--metrics-listen", metrics_listen, "--gateway", gateway]
    for client in clients:
        args += ["--client", client]
    return args


def parse_address(value: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) → (host, port), for argparse."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65_535:
        raise argparse.ArgumentTypeError(f"{value!r} is not host:port, e.g. 0.0.0.0:{ports.GATEWAY_LOG_EXPORTER}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be above 0")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fleet.exporters.gateway_log", description="Counts the nginx gateway's answers from its JSON access log."
    )
    parser.add_argument("--log", required=True, help="the JSON access log nginx writes (may not exist yet)")
    parser.add_argument(
        "--metrics-listen",
        type=parse_address,
        default=f"0.0.0.0:{ports.GATEWAY_LOG_EXPORTER}",
        help="/metrics address (default: %(default)s)",
    )
    parser.add_argument("--gateway", default="gateway", help="value of the `gateway` label (default: %(default)s)")
    parser.add_argument(
        "--client", action="append", default=[], metavar="NAME", help="a configured client name (repeatable); others are `unknown`"
    )
    parser.add_argument(
        "--from-start", action="store_true", help="read a log that exists at start from its beginning (default: its end)"
    )
    parser.add_argument("--poll-interval", type=_positive, default=0.25, help="seconds between reads when idle")
    parser.add_argument(
        "--rotate-grace", type=_positive, default=5.0, help="seconds a rotated file is still read after it last grew"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def run(
    metrics: GatewayLogMetrics, follower: LogFollower, stop: threading.Event, poll_interval: float = 0.25
) -> None:
    """Feed the follower's lines to the metrics until `stop` is set."""
    metrics.attach(follower)
    waiting_logged = False
    while not stop.is_set():
        lines = follower.poll()
        for line in lines:
            metrics.observe_line(line)
        if not follower.is_open and not waiting_logged:
            log.info("waiting for %s to appear", follower.path)
            waiting_logged = True
        elif follower.is_open:
            waiting_logged = False
        if not lines:
            stop.wait(poll_interval)
    follower.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics = GatewayLogMetrics(args.gateway, args.client)
    host, port = args.metrics_listen
    try:
        start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:  # e.g. the port is taken
        print(f"fleet.exporters.gateway_log: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("following %s; metrics on %s:%d", args.log, host, port)
    follower = LogFollower(args.log, from_start=args.from_start, grace_s=args.rotate_grace)
    run(metrics, follower, stop, args.poll_interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
