"""The metering pass-through: an aiohttp server that forwards every request to Ollama and meters inference.

Responses are relayed chunk by chunk as Ollama produces them (nothing is buffered, so streaming clients
see every token when Ollama writes it); a copy of each chunk is read on the side by the response meters
of `fleet.exporters.meter_stream`. Request bodies are forwarded byte for byte.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client.exposition import choose_encoder

from fleet.exporters.meter_metrics import LoadedModel, MeterMetrics
from fleet.gateway_routes import CLIENT_HEADER
from fleet.exporters.meter_stream import INFERENCE_ROUTES, NullMeter, ResponseMeter, meter_for, model_from_body, route_label

log = logging.getLogger("fleet.exporters.meter")

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded.
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
# Errors that mean Ollama could not be reached or broke off. (Write errors towards the client are
# ConnectionErrors raised by the server side and are handled where they occur.)
_UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


@dataclass(frozen=True)
class ExporterConfig:
    upstream: str = "http://127.0.0.1:11434"
    node: str = "node"
    ps_interval_s: float = 5.0
    connect_timeout_s: float = 5.0
    probe_timeout_s: float = 3.0
    max_body_bytes: int = 64 << 20  # the gateway enforces the real limit; this only guards the exporter
    max_models: int = 32
    models: tuple[str, ...] = field(default_factory=tuple)
    clients: tuple[str, ...] = field(default_factory=tuple)  # configured client names (the `client` label)
    aliases: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (alias, served model): labelled as the model


class MeteringProxy:
    """One exporter: the proxy application, the /metrics application and the /api/ps poller."""

    def __init__(self, config: ExporterConfig, metrics: MeterMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or MeterMetrics(
            config.node, config.max_models, config.models, config.clients, dict(config.aliases)
        )
        self._upstream = config.upstream.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._poller: asyncio.Task[None] | None = None
        self._was_up: bool | None = None

    # Life cycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        # No overall or read timeout: a generation may run for minutes and a queued request waits silently;
        # the gateway owns those limits. Connecting, though, must fail fast so the gateway can retry
        # another node before any byte was sent.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout_s)
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
        )
        await self.poll_once()
        if self.config.ps_interval_s > 0:
            self._poller = asyncio.create_task(self._poll_forever(), name="ollama-ps-poller")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass
            self._poller = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def proxy_app(self) -> web.Application:
        # client_max_size bounds only the inference bodies the exporter reads; other bodies are streamed.
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def metrics_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._healthz)
        return app

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("MeteringProxy.start() has not run")
        return self._session

    # /metrics -----------------------------------------------------------------------------------------

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.metrics.registry), headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    # Upstream state -----------------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.ps_interval_s)
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a malformed answer must not stop the poller
                log.exception("polling Ollama failed")

    async def poll_once(self) -> None:
        """Read /api/version (is Ollama up?) and /api/ps (which models are loaded, in how much VRAM)."""
        timeout = aiohttp.ClientTimeout(total=self.config.probe_timeout_s)
        version: str | None = None
        loaded: list[LoadedModel] = []
        try:
            async with self.session.get(f"{self._upstream}/api/version", timeout=timeout) as resp:
                up = resp.status == 200
                if up:
                    version = str((await resp.json(content_type=None)).get("version") or "") or None
            if up:
                async with self.session.get(f"{self._upstream}/api/ps", timeout=timeout) as resp:
                    if resp.status == 200:
                        loaded = _loaded_models(await resp.json(content_type=None))
        except (*_UPSTREAM_ERRORS, ValueError, AttributeError):
            up = False
        if up != self._was_up:
            log.info("Ollama at %s is %s", self._upstream, "up" if up else "down")
            self._was_up = up
        self.metrics.set_upstream(up, version, loaded)

    # Proxying -----------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = route_label(request.path)
        if route in INFERENCE_ROUTES and request.method == "POST":
            return await self._inference(request, route)
        return await self._passthrough(request, route)

    async def _passthrough(self, request: web.Request, route: str) -> web.StreamResponse:
        """Any non-inference route: streamed both ways, counted by route and status only."""
        status = "client_closed"  # if cancelled before an answer
        try:
            data = request.content.iter_any() if request.body_exists else None
            resp, status = await self._forward(request, data, identity=False, body=None)
            return resp
        finally:
            self.metrics.http(route, status)

    async def _inference(self, request: web.Request, route: str) -> web.StreamResponse:
        """An inference route: relayed like any other, and metered per model on the way through."""
        started = time.perf_counter()
        try:
            payload = await request.read()  # bounded by client_max_size; aiohttp answers 413 beyond it
        except web.HTTPRequestEntityTooLarge:
            self.metrics.http(route, "413")
            raise
        model = self.metrics.served_name(model_from_body(payload))
        client = self.metrics.clients.label(request.headers.get(CLIENT_HEADER))
        label = self.metrics.start(model)
        body = MeteredBody()
        status = "client_closed"  # if cancelled before an answer
        try:
            resp, status = await self._forward(request, payload, identity=True, body=body)
            if status.startswith("2") and body.meter.error:
                status = "error"  # Ollama gave up mid-stream and said so in the body
            return resp
        finally:
            if status == "client_closed" and body.meter.done and not body.meter.error:
                # The client had the whole answer (the final object or `[DONE]`) and hung up before the
                # response's last bytes, as SDKs do once they see the end: the work was done and delivered.
                status = "200"
            finished = time.perf_counter()
            first_at, last_at = body.first_at, body.last_at
            self.metrics.finish(
                model,
                label,
                status,
                duration_s=finished - started,
                ttft_s=None if first_at is None else first_at - started,
                decode_s=None if first_at is None or last_at is None else last_at - first_at,
                usage=body.meter.usage,
                client=client,
            )
            self.metrics.http(route, status)

    async def _forward(
        self, request: web.Request, data: object, identity: bool, body: MeteredBody | None
    ) -> tuple[web.StreamResponse, str]:
        """Send the request to Ollama and relay its answer; returns the response and the outcome label.

        The outcome is the HTTP status, `client_closed` or `upstream_closed`. A client that disconnects
        while its handler waits raises CancelledError here (aiohttp's handler cancellation); leaving the
        `async with` then closes the upstream connection, which is how Ollama learns to stop.
        """
        prepared = False
        try:
            async with self.session.request(
                request.method,
                self._upstream + request.raw_path,  # path and query exactly as the client sent them
                headers=_request_headers(request.headers, identity=identity),
                data=data,
                allow_redirects=False,
                skip_auto_headers=("User-Agent", "Content-Type"),
            ) as upstream:
                if body is not None:
                    body.meter = meter_for(upstream.headers.get("Content-Type", ""))
                resp = web.StreamResponse(
                    status=upstream.status, reason=upstream.reason, headers=_response_headers(upstream.headers)
                )
                try:
                    await resp.prepare(request)
                except ConnectionError:
                    return resp, "client_closed"
                prepared = True
                outcome = await _relay(upstream, resp, request, body)
                return resp, str(upstream.status) if outcome == "ok" else outcome
        except _UPSTREAM_ERRORS as exc:
            if prepared:
                raise
            return _bad_gateway(exc), "502"


class MeteredBody:
    """The response meter of one inference request plus the arrival times it needs."""

    def __init__(self) -> None:
        self.meter: ResponseMeter = NullMeter()
        self.first_at: float | None = None  # first chunk carrying generated content
        self.last_at: float | None = None

    def feed(self, chunk: bytes) -> None:
        now = time.perf_counter()
        self.last_at = now
        if self.meter.feed(chunk) and self.first_at is None:
            self.first_at = now

    def finish(self) -> None:
        self.meter.finish()


async def _relay(
    upstream: aiohttp.ClientResponse, resp: web.StreamResponse, request: web.Request, body: MeteredBody | None
) -> str:
    """Copy the upstream body to the client as it arrives: "ok", "client_closed" or "upstream_closed"."""
    reader = upstream.content
    while True:
        try:
            chunk = await reader.readany()
        except _UPSTREAM_ERRORS:
            # Headers (and maybe tokens) were sent already: end the client's connection without the final
            # chunk, so the client sees an incomplete response rather than a clean but truncated one.
            if request.transport is not None:
                request.transport.close()
            return "upstream_closed"
        if not chunk:
            break
        if body is not None:
            body.feed(chunk)
        try:
            await resp.write(chunk)
        except ConnectionError:
            return "client_closed"
    if body is not None:
        body.finish()
    try:
        await resp.write_eof()
    except ConnectionError:
        return "client_closed"
    return "ok"


# Also answered on this hop: the Host of the exporter, and `Expect: 100-continue`, which aiohttp has already
# honoured towards the client before the body was read.
# The gateway's client name is for the meter only.
_NOT_FORWARDED = _HOP_BY_HOP | {"host", "expect", CLIENT_HEADER.lower()}


def _request_headers(headers: CIMultiDictProxy[str], identity: bool) -> CIMultiDict[str]:
    out = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _NOT_FORWARDED)
    if identity:
        # Metering reads the body, so ask Ollama for it uncompressed (on loopback compression buys nothing),
        # and let aiohttp set the length of the bytes it sends.
        out.popall("Content-Length", None)
        out["Accept-Encoding"] = "identity"
    elif "Accept-Encoding" not in out:
        out["Accept-Encoding"] = "identity"  # stop aiohttp from asking for gzip on the client's behalf
    return out


def _response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _HOP_BY_HOP)


def _bad_gateway(exc: BaseException) -> web.Response:
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    log.warning("Ollama unreachable: %s", reason)
    return web.json_response({"error": f"ollama upstream unavailable ({reason})"}, status=502)


def _loaded_models(document: object) -> list[LoadedModel]:
    models = document.get("models") if isinstance(document, dict) else None
    loaded = []
    for entry in models or []:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name") or entry.get("model")
        if isinstance(name, str) and name:
            loaded.append(LoadedModel(name, _int(entry.get("size")), _int(entry.get("size_vram"))))
    return loaded


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class ExporterServer:
    """The exporter's two listening sockets (proxy, /metrics) around one MeteringProxy."""

    def __init__(self, config: ExporterConfig, listen: tuple[str, int], metrics_listen: tuple[str, int]) -> None:
        self.proxy = MeteringProxy(config)
        self._listen, self._metrics_listen = listen, metrics_listen
        # handler_cancellation: a client that disconnects cancels its handler at once, which closes the
        # upstream connection, which makes Ollama stop generating for nobody.
        self._proxy_runner = web.AppRunner(self.proxy.proxy_app(), handler_cancellation=True, access_log=None)
        self._metrics_runner = web.AppRunner(self.proxy.metrics_app(), access_log=None)

    async def start(self) -> None:
        await self.proxy.start()
        await self._proxy_runner.setup()
        await self._metrics_runner.setup()
        await web.TCPSite(self._proxy_runner, *self._listen).start()
        await web.TCPSite(self._metrics_runner, *self._metrics_listen).start()
        config = self.proxy.config
        log.info("metering %s as node %r on %s, metrics on %s", config.upstream, config.node, self.url, self.metrics_url)

    @property
    def url(self) -> str:
        host, port = self._proxy_runner.addresses[0][:2]
        return f"http://{_url_host(host)}:{port}"

    @property
    def metrics_url(self) -> str:
        host, port = self._metrics_runner.addresses[0][:2]
        return f"http://{_url_host(host)}:{port}/metrics"

    async def close(self) -> None:
        await self._proxy_runner.cleanup()
        await self._metrics_runner.cleanup()
        await self.proxy.close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve(config: ExporterConfig, listen: tuple[str, int], metrics_listen: tuple[str, int]) -> None:
    """Run the exporter until cancelled (SIGTERM and SIGINT end it cleanly)."""
    server = ExporterServer(config, listen, metrics_listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    await server.start()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await server.close()
