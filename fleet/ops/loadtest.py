"""Load generator for any Ollama-compatible endpoint (a node directly, or the gateway with an API key).

Closed loop: at each concurrency level, that many clients send one streaming request after another.
Open loop: requests start at a fixed rate whatever happens to the earlier ones. Every level is bounded by a
request count, a duration, or both; an unbounded run is refused.

Each request is streamed and timed from the client's side: time to the response headers (first byte), time
to the first streamed chunk carrying a token (TTFT), tokens counted from the chunks (and the count the
server reports: `eval_count`, or `usage.completion_tokens` on /v1), decode rate, total latency, status, the
`Retry-After` header, and for failures what kind (HTTP status, timeout, connection refused, disconnect,
error inside the stream, stream cut short) and whether it happened before or after the first byte — the
line that decides whether a gateway may still retry a request on another node.

Results go to a folder: `results.json` (the spec and one summary per level), `summary.csv` (one row per
level), `requests-<level>.csv` (one row per request) and `plot.png`.
"""

from __future__ import annotations

import asyncio
import csv
import ipaddress
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import httpx

Api = Literal["ollama", "chat", "openai"]
ROUTES: dict[str, str] = {"ollama": "/api/generate", "chat": "/api/chat", "openai": "/v1/chat/completions"}
Phase = Literal["before_first_byte", "after_first_byte"]
BEFORE: Phase = "before_first_byte"
AFTER: Phase = "after_first_byte"
REFUSAL_STATUSES = (429, 503)
# A response body read for an error status is capped: only its first bytes are kept as the detail.
_ERROR_BODY_LIMIT = 4096


class LoadSpecError(ValueError):
    """A load test that cannot run as asked (names the option and what is allowed)."""


# Beyond these a run is a mistake (a typo's extra digits), not a load test: 10^11 clients would never start.
MAX_CONCURRENCY = 10_000
MAX_RATE = 100_000.0  # requests per second
MAX_SECONDS = 7 * 86_400.0  # a level's duration, drain and timeouts


def check_ca_bundle(path: str) -> None:
    """A --ca-cert that TLS can load: a readable file of PEM certificates."""
    import ssl

    where = Path(path)
    if where.is_dir():
        raise LoadSpecError(f"--ca-cert {path}: is a folder; give a PEM file of CA certificates")
    if not where.is_file():
        raise LoadSpecError(f"--ca-cert {path}: no such file")
    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise LoadSpecError(f"--ca-cert {path}: not a readable PEM file of CA certificates ({getattr(exc, 'reason', None) or exc})") from None


@dataclass(frozen=True)
class LoadSpec:
    """What to send, how hard, and for how long. Build it, then `validate()` (the CLI does)."""

    url: str
    api: Api = "ollama"
    model: str = "smollm2:135m"
    prompt: str = "Why is the sky blue? Answer in one sentence."
    max_tokens: int = 64
    concurrency: tuple[int, ...] = (1,)  # closed-loop levels
    rate: tuple[float, ...] = ()  # open-loop levels in requests/s; when set, concurrency is not used
    requests: int | None = None  # per level
    duration_s: float | None = None  # per level: no request starts after it
    timeout_s: float = 120.0  # whole request, headers to last chunk
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0  # longest silence between two chunks
    api_key: str | None = field(default=None, repr=False)
    verify_tls: bool | str = True  # False for a self-signed gateway, or a CA bundle path
    max_in_flight: int = 10_000  # open loop: arrivals beyond this many outstanding are counted as dropped
    # With a duration: how long requests still in flight at the level's end may run before they are cut (and
    # reported as cut); None means as long as the level itself, so a level lasts at most twice its duration.
    drain_s: float | None = None
    # Local addresses the clients send from, in turn (e.g. many 127.0.0.x to look like many users to per-IP limits).
    source_addresses: tuple[str, ...] = ()

    @property
    def mode(self) -> Literal["closed", "open"]:
        return "open" if self.rate else "closed"

    @property
    def levels(self) -> tuple[float, ...]:
        return tuple(self.rate) if self.rate else tuple(self.concurrency)

    @property
    def route(self) -> str:
        return ROUTES[self.api]

    @property
    def drain_after_s(self) -> float | None:
        """Seconds after a level's end at which requests still running are cut (None: no level end)."""
        if self.duration_s is None:
            return None
        return self.duration_s if self.drain_s is None else self.drain_s

    def validate(self) -> "LoadSpec":
        if not self.url.startswith(("http://", "https://")):
            raise LoadSpecError(f"URL {self.url!r}: must start with http:// or https://")
        try:
            if not httpx.URL(self.url).host:
                raise httpx.InvalidURL("no host")
        except httpx.InvalidURL as exc:
            raise LoadSpecError(f"URL {self.url!r}: not a valid URL ({exc})") from None
        if self.api not in ROUTES:
            raise LoadSpecError(f"--api {self.api!r}: allowed: {', '.join(ROUTES)}")
        if self.requests is None and self.duration_s is None:
            raise LoadSpecError("unbounded run refused: give --requests N, --duration S, or both (per level)")
        if self.requests is not None and self.requests < 1:
            raise LoadSpecError(f"--requests {self.requests}: must be at least 1")
        if self.duration_s is not None and not 0 < self.duration_s <= MAX_SECONDS:
            raise LoadSpecError(f"--duration {self.duration_s}: must be more than 0 and at most {MAX_SECONDS:g} seconds")
        if not self.rate and (not self.concurrency or any(not 1 <= c <= MAX_CONCURRENCY for c in self.concurrency)):
            raise LoadSpecError(f"--concurrency {list(self.concurrency)}: every level must be from 1 to {MAX_CONCURRENCY} clients")
        if self.rate and any(not 0 < r <= MAX_RATE for r in self.rate):
            raise LoadSpecError(f"--rate {list(self.rate)}: every rate must be more than 0 and at most {MAX_RATE:g} requests/s")
        if self.max_tokens < 1:
            raise LoadSpecError(f"--max-tokens {self.max_tokens}: must be at least 1")
        for address in self.source_addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise LoadSpecError(f"--source-ip {address!r}: not an IP address") from None
        if self.drain_s is not None and not 0 <= self.drain_s <= MAX_SECONDS:
            raise LoadSpecError(f"--drain {self.drain_s}: must be from 0 to {MAX_SECONDS:g} seconds")
        for name, option in (("timeout_s", "--timeout"), ("connect_timeout_s", "connect timeout"), ("read_timeout_s", "--read-timeout")):
            if not 0 < getattr(self, name) <= MAX_SECONDS:
                raise LoadSpecError(f"{option} {getattr(self, name)}: must be more than 0 and at most {MAX_SECONDS:g} seconds")
        if isinstance(self.verify_tls, str):
            check_ca_bundle(self.verify_tls)
        return self

    def body(self) -> dict[str, Any]:
        """The request body for the chosen API: always streaming, output capped at max_tokens."""
        if self.api == "ollama":
            return {"model": self.model, "prompt": self.prompt, "stream": True, "options": {"num_predict": self.max_tokens}}
        messages = [{"role": "user", "content": self.prompt}]
        if self.api == "chat":
            return {"model": self.model, "messages": messages, "stream": True, "options": {"num_predict": self.max_tokens}}
        return {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "max_tokens": self.max_tokens,
            "stream_options": {"include_usage": True},  # the server's token count arrives in a last chunk
        }

    def public_dict(self) -> dict[str, Any]:
        """The spec as written to results: the API key is never included, only whether one was sent."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "api_key"}
        data["api_key_sent"] = self.api_key is not None
        data["route"] = self.route
        data["concurrency"] = list(self.concurrency)
        data["rate"] = list(self.rate)
        data["source_addresses"] = list(self.source_addresses)
        return data


@dataclass
class RequestRecord:
    """One request as the client saw it. Times are seconds; `start_s` counts from the level's start."""

    level: float
    index: int
    start_s: float
    status: int | None = None
    ok: bool = False
    # http | timeout | connect | disconnect | transport | stream_error | incomplete | dropped | cut (still running
    # when the level's drain time was over: not a server error, reported apart)
    error: str | None = None
    # Transport failures: before or after the first byte (the response headers). A request that failed before
    # it may still be retried on another node (nginx does so); after it, the client has a broken answer.
    # HTTP error answers have no phase: they are counted by status.
    phase: Phase | None = None
    ttfb_s: float | None = None  # response headers received
    ttft_s: float | None = None  # first chunk carrying a token
    latency_s: float | None = None
    tokens: int = 0  # chunks carrying a token, counted by the client
    server_tokens: int | None = None  # eval_count / usage.completion_tokens
    decode_tps: float | None = None  # tokens/s between the first and the last token
    retry_after: str | None = None
    detail: str = ""

    @property
    def error_key(self) -> str | None:
        if self.ok or self.error is None:
            return None
        if self.error == "http":
            return f"http_{self.status}"
        return f"{self.error}/{self.phase}" if self.phase else self.error


# ---------------------------------------------------------------------------------------------------------
# Stream parsing
# ---------------------------------------------------------------------------------------------------------
@dataclass
class StreamEvent:
    token: bool = False  # carries generated text
    done: bool = False  # the stream's normal end
    server_tokens: int | None = None
    error: str | None = None


class StreamParser:
    """Turns the bytes of an NDJSON (Ollama) or SSE (OpenAI) stream into events, line by line."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self._buffer = b""

    def feed(self, data: bytes) -> list[StreamEvent]:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        events = []
        for line in lines:
            event = self._line(line.strip())
            if event is not None:
                events.append(event)
        return events

    def finish(self) -> list[StreamEvent]:
        rest, self._buffer = self._buffer.strip(), b""
        event = self._line(rest) if rest else None
        return [event] if event else []

    def _line(self, line: bytes) -> StreamEvent | None:
        if not line:
            return None
        if self.api == "openai":
            if not line.startswith(b"data:"):
                return None  # SSE comments, `event:` lines
            line = line[5:].strip()
            if line == b"[DONE]":
                return StreamEvent(done=True)
        try:
            obj = json.loads(line)
        except ValueError:
            return StreamEvent(error=f"unparseable chunk {line[:80]!r}")
        if not isinstance(obj, dict):
            return StreamEvent(error="chunk is not a JSON object")
        if "error" in obj:
            message = obj["error"]
            return StreamEvent(error=str(message.get("message", message) if isinstance(message, dict) else message))
        if self.api == "openai":
            event = StreamEvent()
            usage = obj.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                event.server_tokens = usage["completion_tokens"]
            for choice in obj.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    event.token = True
            return event
        text = obj.get("response") if self.api == "ollama" else (obj.get("message") or {}).get("content")
        event = StreamEvent(token=bool(text), done=bool(obj.get("done")))
        if event.done and isinstance(obj.get("eval_count"), int):
            event.server_tokens = obj["eval_count"]
        return event


# ---------------------------------------------------------------------------------------------------------
# One request
# ---------------------------------------------------------------------------------------------------------
async def send_one(client: httpx.AsyncClient, spec: LoadSpec, body: bytes, record: RequestRecord,
                   cut_at: float | None = None) -> RequestRecord:
    """Send one streaming request and fill `record` from what arrives. Never raises for network trouble.

    `cut_at` (a time.perf_counter() value) ends a request still running then as `cut`: the level is over."""
    started = time.perf_counter()
    budget = spec.timeout_s if cut_at is None else max(0.0, min(spec.timeout_s, cut_at - started))
    cut_by_level = cut_at is not None and budget < spec.timeout_s
    headers = {"Content-Type": "application/json", "Accept": "application/x-ndjson, text/event-stream"}
    if spec.api_key:
        headers["Authorization"] = f"Bearer {spec.api_key}"
    first_token_at: float | None = None
    last_token_at: float | None = None
    done = False
    try:
        async with asyncio.timeout(budget):
            async with client.stream("POST", spec.route, content=body, headers=headers) as response:
                now = time.perf_counter()
                record.ttfb_s = now - started
                record.status = response.status_code
                record.retry_after = response.headers.get("retry-after")
                if response.status_code != 200:
                    record.error = "http"  # counted by status; phases are for transport failures
                    raw = b""
                    async for part in response.aiter_bytes():
                        raw += part
                        if len(raw) > _ERROR_BODY_LIMIT:
                            break
                    record.detail = raw[:200].decode("utf-8", "replace").strip()
                    return record
                parser = StreamParser(spec.api)
                async for data in response.aiter_bytes():
                    events = parser.feed(data)
                    if not events:
                        continue
                    now = time.perf_counter()
                    for event in events:
                        if event.error is not None:
                            record.error, record.phase, record.detail = "stream_error", AFTER, event.error[:200]
                            return record
                        if event.token:
                            record.tokens += 1
                            last_token_at = now
                            if first_token_at is None:
                                first_token_at = now
                        if event.server_tokens is not None:
                            record.server_tokens = event.server_tokens
                        done = done or event.done
                for event in parser.finish():
                    if event.error is not None:
                        record.error, record.phase, record.detail = "stream_error", AFTER, event.error[:200]
                        return record
                    done = done or event.done
                if not done:
                    record.error, record.phase, record.detail = "incomplete", AFTER, "stream ended without its final chunk"
                    return record
                record.ok = True
    except TimeoutError as exc:
        if cut_by_level:
            record.error, record.detail = "cut", "still running when the level's drain time was over"
        else:
            record.error, record.detail = "timeout", type(exc).__name__
    except httpx.TimeoutException as exc:
        record.error, record.detail = "timeout", type(exc).__name__
    except httpx.ConnectError as exc:
        record.error, record.detail = "connect", str(exc)[:200] or type(exc).__name__
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.CloseError) as exc:
        record.error, record.detail = "disconnect", str(exc)[:200] or type(exc).__name__
    except httpx.HTTPError as exc:
        record.error, record.detail = "transport", f"{type(exc).__name__}: {exc}"[:200]
    finally:
        ended = time.perf_counter()
        record.latency_s = ended - started
        if first_token_at is not None:
            record.ttft_s = first_token_at - started
            if record.tokens > 1 and last_token_at > first_token_at:
                record.decode_tps = (record.tokens - 1) / (last_token_at - first_token_at)
        if record.error not in (None, "http") and record.phase is None:
            record.phase = AFTER if record.ttfb_s is not None else BEFORE
    return record


# ---------------------------------------------------------------------------------------------------------
# Levels
# ---------------------------------------------------------------------------------------------------------
class ProgressSink:
    """Receives progress; the default does nothing (the CLI passes a rich progress bar)."""

    def start_level(self, spec: LoadSpec, level: float) -> None: ...

    def advance(self, record: RequestRecord) -> None: ...

    def end_level(self, summary: "LevelSummary") -> None: ...


class _Clients:
    """HTTP clients of one connection each, reused between requests (keep-alive).

    One shared pool with many connections costs O(connections) per request in httpcore, which would make
    the generator, not the server, the bottleneck at high concurrency; a client per in-flight request keeps
    every request O(1). The TLS context is built once and shared. With source addresses, each `acquire`
    takes the next address in turn (closed loop: one per client; open loop: one per request).
    """

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self._sources: tuple[str | None, ...] = spec.source_addresses or (None,)
        self._turn = 0
        self._free: dict[str | None, list[httpx.AsyncClient]] = {source: [] for source in self._sources}
        self._source_of: dict[int, str | None] = {}
        self._all: list[httpx.AsyncClient] = []
        # Built once: httpx would otherwise build (and load the CA store into) a context per client, even for http.
        self._tls = httpx.create_ssl_context(verify=spec.verify_tls)
        self._timeout = httpx.Timeout(
            connect=spec.connect_timeout_s, read=spec.read_timeout_s, write=spec.read_timeout_s, pool=None
        )

    def acquire(self) -> httpx.AsyncClient:
        source = self._sources[self._turn % len(self._sources)]
        self._turn += 1
        if self._free[source]:
            return self._free[source].pop()
        # Retries off: every refusal and failure is what the server did.
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=60)
        transport = httpx.AsyncHTTPTransport(retries=0, limits=limits, verify=self._tls, local_address=source)
        client = httpx.AsyncClient(base_url=self.spec.url.rstrip("/"), timeout=self._timeout, transport=transport)
        self._all.append(client)
        self._source_of[id(client)] = source
        return client

    def release(self, client: httpx.AsyncClient) -> None:
        self._free[self._source_of[id(client)]].append(client)

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._all), return_exceptions=True)
        self._all.clear()
        self._source_of.clear()
        for free in self._free.values():
            free.clear()


async def _closed_level(spec: LoadSpec, concurrency: int, sink: ProgressSink) -> tuple[list[RequestRecord], float, float, float]:
    body = json.dumps(spec.body()).encode()
    records: list[RequestRecord] = []
    issued = 0
    clients = _Clients(spec)
    try:
        start = time.perf_counter()
        deadline = start + spec.duration_s if spec.duration_s else math.inf
        cut_at = deadline + spec.drain_after_s if spec.drain_after_s is not None else None

        async def worker() -> None:
            nonlocal issued
            client = clients.acquire()
            while issued < (spec.requests or math.inf):
                now = time.perf_counter()
                if now >= deadline:
                    return
                issued += 1
                record = RequestRecord(level=concurrency, index=issued, start_s=now - start)
                await send_one(client, spec, body, record, cut_at)
                records.append(record)
                sink.advance(record)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    finally:
        await clients.aclose()
    return records, wall, 0.0, start


async def _open_level(spec: LoadSpec, rate: float, sink: ProgressSink) -> tuple[list[RequestRecord], float, float, float]:
    body = json.dumps(spec.body()).encode()
    records: list[RequestRecord] = []
    pending: set[asyncio.Task] = set()
    max_lag = 0.0
    interval = 1.0 / rate
    clients = _Clients(spec)
    try:
        start = time.perf_counter()
        drain = spec.drain_after_s
        cut_at = start + spec.duration_s + drain if drain is not None and spec.duration_s is not None else None

        async def one(record: RequestRecord) -> None:
            client = clients.acquire()
            try:
                await send_one(client, spec, body, record, cut_at)
            finally:
                clients.release(client)
            records.append(record)
            sink.advance(record)

        n = 0
        while n < (spec.requests or math.inf):
            due = start + n * interval
            if spec.duration_s is not None and due - start >= spec.duration_s:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.perf_counter()
            max_lag = max(max_lag, now - due)  # how far the generator fell behind its schedule
            n += 1
            record = RequestRecord(level=rate, index=n, start_s=now - start)
            if len(pending) >= spec.max_in_flight:
                record.error, record.phase, record.detail = "dropped", BEFORE, "generator at --max-in-flight"
                records.append(record)
                sink.advance(record)
                continue
            task = asyncio.create_task(one(record))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)
        wall = time.perf_counter() - start
    finally:
        await clients.aclose()
    return records, wall, max_lag, start


# ---------------------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) of the values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class LevelSummary:
    """One level's figures: what the plot, the CSV and `fleet tune` use."""

    mode: str
    level: float
    requests: int
    ok: int
    errors: int
    error_rate: float
    wall_s: float
    throughput_rps: float  # successful requests per second
    tokens_per_s: float  # tokens of successful requests per second (client count)
    server_tokens_per_s: float | None
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    ttft_p99_s: float | None
    ttfb_p50_s: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_p99_s: float | None
    decode_tps_p50: float | None
    refusals: int  # 429 and 503 answers
    refusal_latency_p50_s: float | None  # how fast a refusal came
    refusal_latency_p95_s: float | None
    timeouts: int
    errors_before_first_byte: int
    errors_after_first_byte: int
    retry_after_seen: int
    retry_after_values: list[str]
    status_counts: dict[str, int]
    error_counts: dict[str, int]
    schedule_lag_max_s: float  # open loop: how late the generator started a request (0 when closed)
    # Requests still running when the level's drain time was over, ended by the generator (not errors).
    cut: int = 0
    # This machine while the level ran: the share of its CPUs that were busy (0-1), how many CPUs the load
    # generator itself used on average, and how many it has. None where not measured (older results).
    host_cpu_busy: float | None = None
    generator_cpus: float | None = None
    host_cpus: int | None = None

    @property
    def x(self) -> float:
        return self.level


@dataclass(frozen=True)
class CpuUsage:
    """What this machine's CPUs did during a level."""

    busy: float | None  # share of all CPUs busy, 0-1 (None where /proc/stat is unreadable)
    generator_cpus: float  # CPUs the load generator's process used on average
    cpus: int


class CpuMeter:
    """Measures the machine's CPU use and the generator's own between `start()` and `stop()`."""

    def __init__(self) -> None:
        self._host: tuple[int, int] | None = None
        self._process = 0.0
        self._wall = 0.0

    @staticmethod
    def _host_ticks() -> tuple[int, int] | None:
        """(busy, total) jiffies of all CPUs from /proc/stat (busy = everything but idle and iowait)."""
        try:
            with open("/proc/stat") as handle:
                values = [int(v) for v in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        total = sum(values[:8])  # guest time is already counted in user
        return total - idle, total

    def start(self) -> "CpuMeter":
        self._host = self._host_ticks()
        self._process = time.process_time()
        self._wall = time.perf_counter()
        return self

    def stop(self) -> CpuUsage:
        from fleet.local.sizing import usable_cpus

        wall = max(time.perf_counter() - self._wall, 1e-9)
        generator = (time.process_time() - self._process) / wall
        now = self._host_ticks()
        busy = None
        if self._host and now and now[1] > self._host[1]:
            busy = min(1.0, max(0.0, (now[0] - self._host[0]) / (now[1] - self._host[1])))
        return CpuUsage(busy=busy, generator_cpus=generator, cpus=usable_cpus())


def summarize(mode: str, level: float, records: Sequence[RequestRecord], wall_s: float, lag_s: float = 0.0,
              cpu: CpuUsage | None = None) -> LevelSummary:
    ok = [r for r in records if r.ok]
    cut = [r for r in records if r.error == "cut"]
    failed = [r for r in records if not r.ok and r.error != "cut"]
    refused = [r for r in records if r.status in REFUSAL_STATUSES]
    wall = max(wall_s, 1e-9)
    server_counts = [r.server_tokens for r in ok if r.server_tokens is not None]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    latency = [r.latency_s for r in ok if r.latency_s is not None]
    retry_after = [r.retry_after for r in records if r.retry_after is not None]
    return LevelSummary(
        mode=mode,
        level=level,
        requests=len(records),
        ok=len(ok),
        errors=len(failed),
        error_rate=len(failed) / len(records) if records else 0.0,
        wall_s=wall_s,
        throughput_rps=len(ok) / wall,
        tokens_per_s=sum(r.tokens for r in ok) / wall,
        server_tokens_per_s=sum(server_counts) / wall if server_counts else None,
        ttft_p50_s=percentile(ttft, 50),
        ttft_p95_s=percentile(ttft, 95),
        ttft_p99_s=percentile(ttft, 99),
        ttfb_p50_s=percentile([r.ttfb_s for r in ok if r.ttfb_s is not None], 50),
        latency_p50_s=percentile(latency, 50),
        latency_p95_s=percentile(latency, 95),
        latency_p99_s=percentile(latency, 99),
        decode_tps_p50=percentile([r.decode_tps for r in ok if r.decode_tps is not None], 50),
        refusals=len(refused),
        refusal_latency_p50_s=percentile([r.latency_s for r in refused if r.latency_s is not None], 50),
        refusal_latency_p95_s=percentile([r.latency_s for r in refused if r.latency_s is not None], 95),
        timeouts=sum(1 for r in failed if r.error == "timeout"),
        errors_before_first_byte=sum(1 for r in failed if r.phase == BEFORE),
        errors_after_first_byte=sum(1 for r in failed if r.phase == AFTER),
        retry_after_seen=len(retry_after),
        retry_after_values=sorted(set(retry_after)),
        status_counts=dict(sorted(Counter(str(r.status) if r.status is not None else "none" for r in records).items())),
        error_counts=dict(sorted(Counter(r.error_key for r in failed).items())),
        schedule_lag_max_s=lag_s,
        cut=len(cut),
        host_cpu_busy=cpu.busy if cpu else None,
        generator_cpus=cpu.generator_cpus if cpu else None,
        host_cpus=cpu.cpus if cpu else None,
    )


@dataclass
class LoadResult:
    spec: LoadSpec
    levels: list[LevelSummary]
    records: dict[float, list[RequestRecord]]
    started_at: str = ""
    level_starts: dict[float, float] = field(default_factory=dict)  # time.perf_counter() at each level's start

    def to_json(self) -> dict[str, Any]:
        return {
            "generator": "fleet loadtest",
            "started_at": self.started_at,
            "spec": self.spec.public_dict(),
            "levels": [asdict(s) for s in self.levels],
        }


async def run_load_async(spec: LoadSpec, sink: ProgressSink | None = None) -> LoadResult:
    spec.validate()
    sink = sink or ProgressSink()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    summaries: list[LevelSummary] = []
    by_level: dict[float, list[RequestRecord]] = {}
    starts: dict[float, float] = {}
    for level in spec.levels:
        sink.start_level(spec, level)
        meter = CpuMeter().start()
        if spec.mode == "open":
            records, wall, lag, starts[level] = await _open_level(spec, float(level), sink)
        else:
            records, wall, lag, starts[level] = await _closed_level(spec, int(level), sink)
        records.sort(key=lambda r: r.index)
        summary = summarize(spec.mode, level, records, wall, lag, meter.stop())
        summaries.append(summary)
        by_level[level] = records
        sink.end_level(summary)
    return LoadResult(spec=spec, levels=summaries, records=by_level, started_at=started_at, level_starts=starts)


def run_load(spec: LoadSpec, sink: ProgressSink | None = None) -> LoadResult:
    """Run every level of `spec` in turn (blocking)."""
    return asyncio.run(run_load_async(spec, sink))


# ---------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------
SUMMARY_COLUMNS = [f.name for f in fields(LevelSummary)]
REQUEST_COLUMNS = [f.name for f in fields(RequestRecord)]


def level_name(level: float) -> str:
    return str(int(level)) if float(level).is_integer() else f"{level:g}"


def _csv_value(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def write_results(result: LoadResult, out: Path, plot: bool = True, x_label: str | None = None) -> list[Path]:
    """Write results.json, summary.csv, one requests-<level>.csv per level and plot.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    path = out / "results.json"
    path.write_text(json.dumps(result.to_json(), indent=2, sort_keys=False) + "\n")
    written.append(path)

    path = out / "summary.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SUMMARY_COLUMNS)
        for summary in result.levels:
            row = asdict(summary)
            writer.writerow([_csv_value(row[c]) for c in SUMMARY_COLUMNS])
    written.append(path)

    prefix = "rate" if result.spec.mode == "open" else "concurrency"
    for level, records in result.records.items():
        path = out / f"requests-{prefix}-{level_name(level)}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(REQUEST_COLUMNS)
            for record in records:
                row = asdict(record)
                writer.writerow([_csv_value(row[c]) for c in REQUEST_COLUMNS])
        written.append(path)
    if plot:
        written.append(plot_levels(result, out / "plot.png", x_label))
    return written


def plot_levels(result: LoadResult, path: Path, x_label: str | None = None) -> Path:
    """The figure of `level_figure` as a PNG."""
    import matplotlib.pyplot as plt

    fig = level_figure(result, x_label)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def level_figure(result: LoadResult, x_label: str | None = None):
    """Four panels against the level (concurrency or rate), every y axis from zero, each point labelled with
    the number of requests it stands for: throughput (tokens/s and requests/s), latency (time to first token
    and whole request, p50 and p95), decode speed per request, and the share of requests that failed or were
    cut (in %, 0-100)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    levels = result.levels
    x = [s.level for s in levels]
    nan = float("nan")

    def values(name: str) -> list[float]:
        return [nan if getattr(s, name) is None else getattr(s, name) for s in levels]

    def counts(ax, ys: list[float], labels: list[str]) -> None:
        for xi, yi, text in zip(x, ys, labels):
            if yi == yi:  # not NaN
                ax.annotate(text, (xi, yi), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)

    ok_counts = [f"n={s.ok}" for s in levels]
    label = x_label or ("request rate (requests/s)" if result.spec.mode == "open" else "concurrency (clients)")
    fig, axes = plt.subplots(4, 1, figsize=(7, 12), sharex=True)

    ax = axes[0]
    ax.plot(x, [s.tokens_per_s for s in levels], "o-", label="tokens/s (all requests)")
    counts(ax, [s.tokens_per_s for s in levels], ok_counts)
    ax.set_ylabel("throughput (tokens/s)")
    ax2 = ax.twinx()
    ax2.plot(x, [s.throughput_rps for s in levels], "s--", color="tab:green", label="requests/s")
    ax2.set_ylabel("throughput (requests/s)")
    ax2.set_ylim(bottom=0)
    ax.set_title(f"{result.spec.url}{result.spec.route}  model {result.spec.model}\n(n = successful requests per point)")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize=8)

    ax = axes[1]
    ax.plot(x, values("ttft_p50_s"), "o-", label="time to first token p50")
    ax.plot(x, values("ttft_p95_s"), "o--", label="time to first token p95")
    ax.plot(x, values("latency_p50_s"), "^-", label="whole request p50")
    ax.plot(x, values("latency_p95_s"), "^--", label="whole request p95")
    counts(ax, values("latency_p95_s"), ok_counts)
    ax.set_ylabel("latency (s)")
    ax.legend(loc="upper left", fontsize=8)

    ax = axes[2]
    ax.plot(x, values("decode_tps_p50"), "o-", color="tab:purple", label="decode speed per request p50")
    counts(ax, values("decode_tps_p50"), ok_counts)
    ax.set_ylabel("decode speed (tokens/s per request)")
    ax.legend(loc="upper left", fontsize=8)

    ax = axes[3]
    errors = [100 * s.error_rate for s in levels]
    cut = [100 * s.cut / s.requests if s.requests else 0.0 for s in levels]
    ax.plot(x, errors, "o-", color="tab:red", label="failed")
    ax.plot(x, cut, "x--", color="tab:orange", label="cut at the level's end")
    counts(ax, errors, [f"{s.errors}/{s.requests}" for s in levels])
    ax.set_ylabel("share of requests (%)")
    ax.set_ylim(0, 105)
    ax.set_xlabel(label)
    ax.legend(loc="upper left", fontsize=8)

    for ax in axes:
        ax.grid(True, alpha=0.3)
        if ax is not axes[3]:
            ax.set_ylim(bottom=0)
    if len(set(x)) > 1 and min(x) > 0 and max(x) / min(x) >= 8:
        axes[3].set_xscale("log", base=2)
    axes[3].set_xticks(x)
    axes[3].set_xticklabels([level_name(v) for v in x])
    fig.tight_layout()
    return fig


def parse_levels(text: str, kind: Callable[[str], Any], option: str) -> tuple:
    """`1,2,4,8` → (1, 2, 4, 8), with a clear error for anything else."""
    try:
        values = tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise LoadSpecError(f"{option} {text!r}: expected comma-separated numbers such as 1,2,4,8") from None
    if not values:
        raise LoadSpecError(f"{option}: give at least one value")
    return values
