"""The fake Ollama of the tests and benchmarks: Ollama's wire formats on loopback, with scripted behaviour.

It answers what the gateway, the metering exporter and the load generator send, in the shapes Ollama sends:
NDJSON streams for /api/generate and /api/chat (a final object with `prompt_eval_count`, `eval_count` and
durations in ns), SSE for /v1/chat/completions and /v1/completions (usage only with
`stream_options.include_usage`; the zeroed per-chunk usage of /v1/completions included), one JSON object
with `"stream": false`, /api/embed and /v1/embeddings, /api/tags, /api/ps, /api/version, /v1/models[/{model}],
/api/show and `/`. Any other request (admin routes, blobs) is recorded and answered 200 with what arrived.
There is no model: tokens are made up, prompts are counted by words, so a test knows every number.

Scripting, for speed and for failure modes:
- `Behavior`: how one inference request is answered (status, tokens, delays, a hang, a cut or an error
  inside a 200 stream); a fake cycles through its list, one per request (`script()` replaces it).
- Model names choose failures as a real server produces them: `missing…` → 404 "model not found";
  `busy…` → 503 with Ollama's queue-full body; `broken…` → 500; `failing…` → a 200 stream that ends with an
  `{"error": …}` object; `crashing…` → a 200 stream cut off without its final chunk.
- `slots` / `max_queue`: at most that many requests generate at once, the others wait, and beyond
  `max_queue` waiting Ollama's 503 (OLLAMA_NUM_PARALLEL, OLLAMA_MAX_QUEUE).
- `hold()` / `release()`: requests (any route) wait once recorded; `busy = True`: every request is
  answered 503 queue-full; `gated = True`: each token after a stream's first waits for `open_gate()`.
- A client that leaves (the peer closes its connection) ends the request's handler at once, as Ollama
  stops generating; `aborted` names it.

Every response carries `X-Fake-Ollama: <name>`, so a test behind a gateway sees which node answered.
`stats` counts requests for tests and benchmarks (`GET /_fake/stats` when it runs as a process);
`received`, `completed` and `aborted` keep what each request was (off with `record=False`).

    with FakeOllama(Behavior(tokens=4)) as fake:          # in a thread of its own, for synchronous tests
        httpx.post(f"{fake.url}/api/generate", ...)
    async with FakeOllama(gated=True) as fake:            # on the running event loop
        ...

Run alone (benchmarks): `python tests/fake_ollama.py --port 11434 --tokens 16 --token-delay 0.01`.
Only the standard library is used, so it runs with any Python.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import itertools
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
WORDS = ("Hello", ",", " world", "!", " How", " are", " you", "?")
NODE_HEADER = "X-Fake-Ollama"

GENERATE, CHAT = "/api/generate", "/api/chat"
CHAT_COMPLETIONS, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
EMBEDDINGS = ("/api/embed", "/v1/embeddings")
INFERENCE = (GENERATE, CHAT, CHAT_COMPLETIONS, COMPLETIONS, *EMBEDDINGS)

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Behavior:
    """How the fake answers one inference request."""

    status: int = 200  # anything but 200 answers Ollama's error body with this status
    error: str | None = None  # that error's message (default: "fake Ollama status <status>")
    tokens: int | tuple[str, ...] = WORDS  # the tokens' texts, or a count of `tok<i> ` (capped by num_predict/max_tokens)
    first_token_delay_s: float = 0.0  # model load and prompt evaluation, before the first token
    token_delay_s: float = 0.0  # between tokens
    tail_delay_s: float = 0.0  # between the final chunk and the end of the response
    retry_after: str | None = None  # Retry-After header value on an error status
    headers_early: bool = False  # send the headers before first_token_delay (Ollama sends them with the first token)
    hang_before_headers: bool = False  # read the request, never answer (until the client leaves)
    hang_after_tokens: int | None = None  # stop after this many tokens, keep the connection open
    drop_after_tokens: int | None = None  # cut the connection after this many tokens (the runner died)
    error_after_tokens: int | None = None  # after this many tokens, an `{"error": …}` object ends the 200 stream

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(f"tok{i} " for i in range(self.tokens)) if isinstance(self.tokens, int) else tuple(self.tokens)


def _by_model_name(model: str, scripted: Behavior) -> Behavior:
    """The failure a model's name asks for (see the module's docstring), else the scripted behaviour."""
    base = model.rsplit("/", 1)[-1].split(":", 1)[0]
    if base.startswith("missing"):
        return Behavior(status=404, error=f'model "{model}" not found, try pulling it first')
    if base.startswith("busy"):
        return Behavior(status=503, error=QUEUE_FULL)
    if base.startswith("broken"):
        return Behavior(status=500, error="llama runner process has terminated: exit status 2")
    if base.startswith("failing"):
        return dataclasses.replace(scripted, error_after_tokens=2)
    if base.startswith("crashing"):
        return dataclasses.replace(scripted, drop_after_tokens=2)
    return scripted


@dataclass
class Stats:
    """Counters a test or benchmark reads back."""

    requests: int = 0  # inference requests received
    completed: int = 0  # inference requests answered to their end
    refused_queue_full: int = 0  # 503 beyond max_queue
    active: int = 0  # generating right now
    peak_active: int = 0
    waiting: int = 0  # waiting for a slot
    by_path: dict[str, int] = field(default_factory=dict)  # inference requests per route
    authorization: dict[str, int] = field(default_factory=dict)  # Authorization header values seen
    connections_by_peer: dict[str, int] = field(default_factory=dict)  # client address -> connections opened


@dataclass
class Received:
    method: str
    path: str  # as sent: the query string included
    body: bytes
    headers: dict[str, str]  # names as sent


class _ClientGone(Exception):
    pass


class _Connection(asyncio.StreamReaderProtocol):
    """One client connection; the peer closing it while a request is answered cancels that request's handler."""

    def __init__(self, fake: FakeOllama) -> None:
        super().__init__(asyncio.StreamReader(limit=_MAX_HEADER_BYTES), self._connected)
        self.fake = fake
        self.task: asyncio.Task | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.answering = False

    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.task = asyncio.get_running_loop().create_task(self.fake._serve(self, reader, writer))

    def _peer_left(self) -> None:
        if self.answering and self.task is not None:
            self.task.cancel()

    def eof_received(self) -> bool:
        self._peer_left()
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._peer_left()
        super().connection_lost(exc)


class FakeOllama:
    def __init__(
        self,
        behaviors: Sequence[Behavior] | Behavior = Behavior(),
        *,
        name: str = "fake",
        loaded: Sequence[tuple[str, int, int]] = (),  # (name, size, size_vram): /api/ps, and /api/tags lists the names
        version: str = "0.24.0",
        slots: int | None = None,
        max_queue: int | None = None,
        gated: bool = False,
        embedding_dim: int = 8,
        record: bool = True,
    ) -> None:
        if slots is not None and slots < 1:
            raise ValueError("slots must be at least 1")
        self.script(*((behaviors,) if isinstance(behaviors, Behavior) else behaviors))
        self.name = name
        self.loaded = list(loaded)
        self.version = version
        self.slots = slots
        self.max_queue = max_queue
        self.embedding_dim = embedding_dim
        self.record = record
        self.busy = False
        self.gated = gated
        self.stats = Stats()
        self.received: list[Received] = []
        self.completed: list[str] = []  # routes of the inference requests answered to their end
        self.aborted: list[str] = []  # routes of the inference requests whose client left
        self._gate: asyncio.Queue = asyncio.Queue()
        self._held: asyncio.Event | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.host = "127.0.0.1"
        self.port: int | None = None

    # -- scripting (safe to call from another thread than the fake's) -------------------------------------
    def script(self, *behaviors: Behavior) -> None:
        """Answer the following inference requests with these behaviours, in turn."""
        if not behaviors:
            raise ValueError("at least one Behavior is needed")
        self.behaviors = behaviors
        self._cycle = itertools.cycle(behaviors)

    def hold(self) -> None:
        """Requests wait, once recorded, until `release()`."""
        self._call(lambda: setattr(self, "_held", asyncio.Event()))

    def release(self) -> None:
        self._call(lambda: self._held.set() if self._held is not None else None)

    def open_gate(self, tokens: int = 1) -> None:
        """Let `tokens` more tokens out while `gated`: each token after a stream's first waits for one."""
        self._call(lambda: [self._gate.put_nowait(True) for _ in range(tokens)])

    def _call(self, fn: Callable[[], object]) -> None:
        loop = self._loop
        if loop is None or not loop.is_running():
            fn()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn()
        else:
            asyncio.run_coroutine_threadsafe(self._run(fn), loop).result(timeout=10)

    @staticmethod
    async def _run(fn: Callable[[], object]) -> None:
        fn()

    # -- lifecycle ------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on the running event loop; returns the URL."""
        if not _is_loopback(host):
            raise ValueError(f"the fake listens on loopback only, not {host!r}")
        self._loop = asyncio.get_running_loop()
        self._semaphore = asyncio.Semaphore(self.slots) if self.slots else None
        self._server = await self._loop.create_server(lambda: self._track(_Connection(self)), host, port, backlog=8192)
        self.host, self.port = host, self._server.sockets[0].getsockname()[1]
        return self.url

    def _track(self, connection: _Connection) -> _Connection:
        self._connections.add(connection)
        return connection

    async def stop(self) -> None:
        """Stop listening and end every connection (a node that went away)."""
        if self._server is None:
            return
        self._server.close()
        tasks = [c.task for c in self._connections if c.task is not None and not c.task.done()]
        for connection in self._connections:
            if connection.writer is not None:
                connection.writer.transport.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._connections.clear()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> FakeOllama:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_thread(self, host: str = "127.0.0.1", port: int = 0) -> FakeOllama:
        """Serve from an event loop in a daemon thread of its own (synchronous tests)."""
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name=f"fake-ollama-{self.name}", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start(host, port), loop).result(timeout=10)
        return self

    def stop_thread(self) -> None:
        """Stop serving and end the thread; a second call does nothing."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()

    def __enter__(self) -> FakeOllama:
        return self.start_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()

    # -- HTTP -----------------------------------------------------------------------------------------------
    async def _serve(self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = (writer.get_extra_info("peername") or ("?",))[0]
        self.stats.connections_by_peer[peer] = self.stats.connections_by_peer.get(peer, 0) + 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                request_line, _, header_block = head.decode("latin-1").partition("\r\n")
                parts = request_line.split(" ")
                if len(parts) != 3:
                    await self._respond(writer, 400, {"error": "bad request line"}, keep_alive=False)
                    return
                method, target, version = parts
                headers: dict[str, str] = {}
                for line in header_block.split("\r\n"):
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip()] = value.strip()
                lowered = {k.lower(): v for k, v in headers.items()}
                body = await self._read_body(reader, lowered)
                if body is None:
                    await self._respond(writer, 400, {"error": "bad request body"}, keep_alive=False)
                    return
                connection_header = lowered.get("connection", "").lower()
                keep_alive = version == "HTTP/1.1" and connection_header != "close" or connection_header == "keep-alive"
                if self.record:
                    self.received.append(Received(method, target, body, headers))
                connection.answering = True
                try:
                    keep_alive = await self._dispatch(writer, method, target, lowered, body, keep_alive)
                finally:
                    connection.answering = False
                if not keep_alive:
                    return
        except (ConnectionError, _ClientGone, asyncio.CancelledError):
            return  # the client left (or the fake stops): the request ends here, as in Ollama
        finally:
            self._connections.discard(connection)
            writer.close()

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes | None:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers are expected
                    return bytes(body)
                body += await reader.readexactly(size)
                await reader.readexactly(2)
                if len(body) > _MAX_BODY_BYTES:
                    return None
        length = int(headers.get("content-length", "0") or 0)
        if length > _MAX_BODY_BYTES:
            return None
        return await reader.readexactly(length) if length else b""

    def _head(self, status: int, content_type: str, keep_alive: bool, extra: Sequence[tuple[str, str]] = (),
              length: int | None = None) -> bytes:
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
            f"{NODE_HEADER}: {self.name}",
            *(f"{k}: {v}" for k, v in extra),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _respond(self, writer: asyncio.StreamWriter, status: int, payload: object, *, keep_alive: bool,
                       extra: Sequence[tuple[str, str]] = (), content_type: str = "application/json; charset=utf-8",
                       head_only: bool = False) -> bool:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        writer.write(self._head(status, content_type, keep_alive, extra, len(data)) + (b"" if head_only else data))
        await writer.drain()
        return keep_alive

    async def _dispatch(self, writer, method: str, target: str, headers: dict[str, str], body: bytes, keep_alive: bool) -> bool:
        path = target.split("?", 1)[0]
        if self._held is not None and not self._held.is_set():
            await self._held.wait()
        if self.busy:
            return await self._respond(writer, 503, _error_body(QUEUE_FULL, path), keep_alive=keep_alive)
        if path in INFERENCE:
            if method != "POST":
                return await self._respond(writer, 405, {"error": "method not allowed"}, keep_alive=keep_alive)
            auth = headers.get("authorization", "")
            self.stats.authorization[auth] = self.stats.authorization.get(auth, 0) + 1
            return await self._inference(writer, path, body, keep_alive)
        listed = [name for name, _, _ in self.loaded]
        if path == "/" and method in ("GET", "HEAD"):
            return await self._respond(writer, 200, b"Ollama is running", keep_alive=keep_alive,
                                       content_type="text/plain; charset=utf-8", head_only=method == "HEAD")
        if path == "/api/version":
            return await self._respond(writer, 200, {"version": self.version}, keep_alive=keep_alive)
        if path == "/api/tags":
            return await self._respond(writer, 200, {"models": [{"name": n, "model": n, "size": s} for n, s, _ in self.loaded]},
                                       keep_alive=keep_alive)
        if path == "/api/ps":
            return await self._respond(writer, 200, {"models": [_ps_entry(*m) for m in self.loaded]}, keep_alive=keep_alive)
        if path == "/v1/models":
            return await self._respond(writer, 200, {"object": "list", "data": [_openai_model(n) for n in listed]},
                                       keep_alive=keep_alive)
        if path.startswith("/v1/models/") and method == "GET":  # every name is served, as for inference
            model = path.removeprefix("/v1/models/")
            if _by_model_name(model, Behavior()).status == 404:
                return await self._respond(writer, 404, _error_body(f"model '{model}' not found", path), keep_alive=keep_alive)
            return await self._respond(writer, 200, _openai_model(model), keep_alive=keep_alive)
        if path == "/api/show" and method == "POST":
            return await self._respond(writer, 200, _show(), keep_alive=keep_alive)
        if path == "/_fake/stats":  # counters for benchmarks that run the fake as a process
            return await self._respond(writer, 200, asdict(self.stats), keep_alive=keep_alive)
        return await self._respond(writer, 200, {"path": path, "method": method, "bytes": len(body)}, keep_alive=keep_alive,
                                   head_only=method == "HEAD")

    # -- inference --------------------------------------------------------------------------------------------
    async def _inference(self, writer, path: str, body: bytes, keep_alive: bool) -> bool:
        stats = self.stats
        stats.requests += 1
        stats.by_path[path] = stats.by_path.get(path, 0) + 1
        try:
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            return await self._respond(writer, 400, _error_body(f"invalid JSON: {exc}", path), keep_alive=keep_alive)
        model = str(request.get("model") or "")
        if not model:
            return await self._respond(writer, 400, _error_body("model is required", path), keep_alive=keep_alive)
        behavior = _by_model_name(model, next(self._cycle))
        if behavior.hang_before_headers:
            await asyncio.Event().wait()  # until the client leaves or the fake stops
        if behavior.status != 200:
            extra = [("Retry-After", behavior.retry_after)] if behavior.retry_after else []
            message = behavior.error or f"fake Ollama status {behavior.status}"
            return await self._respond(writer, behavior.status, _error_body(message, path), keep_alive=keep_alive, extra=extra)
        semaphore = self._semaphore
        if semaphore is not None and semaphore.locked() and self.max_queue is not None and stats.waiting >= self.max_queue:
            stats.refused_queue_full += 1
            return await self._respond(writer, 503, _error_body(QUEUE_FULL, path), keep_alive=keep_alive)
        stats.waiting += 1
        try:
            if semaphore is not None:
                await semaphore.acquire()
        finally:
            stats.waiting -= 1
        stats.active += 1
        stats.peak_active = max(stats.peak_active, stats.active)
        try:
            keep_alive = await self._answer(writer, path, request, model, behavior, keep_alive)
        except (asyncio.CancelledError, ConnectionError):
            if self.record:
                self.aborted.append(path)
            raise
        finally:
            stats.active -= 1
            if semaphore is not None:
                semaphore.release()
        stats.completed += 1
        if self.record:
            self.completed.append(path)
        return keep_alive

    async def _answer(self, writer, path: str, request: dict, model: str, behavior: Behavior, keep_alive: bool) -> bool:
        openai = path.startswith("/v1/")
        prompt_tokens = _count_prompt(request)
        if path in EMBEDDINGS:
            await _sleep(behavior.first_token_delay_s)
            return await self._respond(writer, 200, self._embed(request, model, prompt_tokens, openai), keep_alive=keep_alive)
        texts = behavior.texts[: _token_budget(path, request, len(behavior.texts))]
        started = time.monotonic_ns()
        if not request.get("stream", not openai):  # Ollama streams by default, OpenAI does not
            await _sleep(behavior.first_token_delay_s + behavior.token_delay_s * len(texts))
            text = "".join(texts)
            payload = _openai_whole(path, model, text, prompt_tokens, len(texts)) if openai else \
                _native_final(path, model, text, prompt_tokens, len(texts), behavior, started)
            return await self._respond(writer, 200, payload, keep_alive=keep_alive)

        head = self._head(200, "text/event-stream" if openai else "application/x-ndjson", keep_alive)
        if behavior.headers_early:
            writer.write(head)
            await writer.drain()
        await _sleep(behavior.first_token_delay_s)
        if not behavior.headers_early:
            writer.write(head)
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        for i, text in enumerate(texts):
            if i:
                await _sleep(behavior.token_delay_s)
                if self.gated:
                    await self._gate.get()
            if behavior.drop_after_tokens is not None and i >= behavior.drop_after_tokens:
                await writer.drain()
                writer.transport.abort()  # no final chunk, no end of the chunked body
                raise _ClientGone
            if behavior.error_after_tokens is not None and i >= behavior.error_after_tokens:
                writer.write(_chunk(_line({"error": "an error was encountered while running the model"}, openai)) + b"0\r\n\r\n")
                await writer.drain()
                return keep_alive
            if behavior.hang_after_tokens is not None and i >= behavior.hang_after_tokens:
                await writer.drain()
                await asyncio.Event().wait()
            writer.write(_chunk(_line(_piece(path, model, text, include_usage), openai)))
            if behavior.token_delay_s or i == 0 or self.gated:
                await writer.drain()  # each token leaves as it is produced
        if openai:
            writer.write(_chunk(_line(_openai_last(path, model), openai)))
            if include_usage:
                writer.write(_chunk(_line(_openai_usage(path, model, prompt_tokens, len(texts)), openai)))
            writer.write(_chunk(b"data: [DONE]\n\n"))
        else:
            writer.write(_chunk(_line(_native_final(path, model, "", prompt_tokens, len(texts), behavior, started), openai)))
        if behavior.tail_delay_s:
            await writer.drain()
            await _sleep(behavior.tail_delay_s)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return keep_alive

    def _embed(self, request: dict, model: str, prompt_tokens: int, openai: bool) -> dict:
        inputs = request.get("input", "")
        count = len(inputs) if isinstance(inputs, list) else 1
        vectors = [[round(0.01 * (i + j), 4) for j in range(self.embedding_dim)] for i in range(count)]
        if openai:
            return {
                "object": "list",
                "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)],
                "model": model,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            }
        return {"model": model, "embeddings": vectors, "total_duration": 1_000_000, "load_duration": 1_000,
                "prompt_eval_count": prompt_tokens}


# -- Ollama's shapes ---------------------------------------------------------------------------------------------


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _line(obj: dict, sse: bool) -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode()
    return b"data: " + data + b"\n\n" if sse else data + b"\n"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def _error_body(message: str, path: str) -> dict:
    """Ollama's error shape: a string on its own API, OpenAI's object on /v1/."""
    if not path.startswith("/v1/"):
        return {"error": message}
    kind = "invalid_request_error" if message.startswith(("invalid", "model is")) else \
        "not_found_error" if "not found" in message else "api_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _count_prompt(request: dict) -> int:
    """A deterministic stand-in for tokenization: words of the prompt plus a template overhead per message."""
    if "messages" in request:
        return sum(len(str(m.get("content", "")).split()) + 4 for m in request["messages"] if isinstance(m, dict))
    value = request.get("prompt", request.get("input", ""))
    texts = value if isinstance(value, list) else [value]
    return sum(len(str(t).split()) for t in texts) + 1


def _token_budget(path: str, request: dict, available: int) -> int:
    if path.startswith("/v1/"):
        asked = request.get("max_tokens") or request.get("max_completion_tokens")
    else:
        asked = (request.get("options") or {}).get("num_predict")
    return min(asked, available) if isinstance(asked, int) and asked > 0 else available


def _piece(path: str, model: str, token: str, include_usage: bool) -> dict:
    if path == GENERATE:
        return {"model": model, "created_at": _now(), "response": token, "done": False}
    if path == CHAT:
        return {"model": model, "created_at": _now(), "message": {"role": "assistant", "content": token}, "done": False}
    if path == CHAT_COMPLETIONS:
        return _chat_chunk(model, [{"index": 0, "delta": {"role": "assistant", "content": token}, "finish_reason": None}])
    piece = _completion_chunk(model, token, None)
    if include_usage:  # Ollama's /v1/completions puts a zeroed usage on every chunk
        piece["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return piece


def _chat_chunk(model: str, choices: list) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "system_fingerprint": "fp_ollama", "choices": choices}


def _completion_chunk(model: str, text: str, finish: str | None) -> dict:
    return {"id": "cmpl-1", "object": "text_completion", "created": int(time.time()), "model": model,
            "system_fingerprint": "fp_ollama", "choices": [{"text": text, "index": 0, "finish_reason": finish}]}


def _openai_last(path: str, model: str) -> dict:
    if path == CHAT_COMPLETIONS:
        return _chat_chunk(model, [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "stop"}])
    return _completion_chunk(model, "", "stop")


def _openai_usage(path: str, model: str, prompt_tokens: int, completion_tokens: int) -> dict:
    last = _openai_last(path, model)
    last["choices"] = []
    last["usage"] = _usage(prompt_tokens, completion_tokens)
    return last


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def _openai_whole(path: str, model: str, text: str, prompt_tokens: int, completion_tokens: int) -> dict:
    if path == CHAT_COMPLETIONS:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        kind = "chat.completion"
    else:
        choice = {"text": text, "index": 0, "finish_reason": "stop"}
        kind = "text_completion"
    return {"id": "x-1", "object": kind, "created": int(time.time()), "model": model, "system_fingerprint": "fp_ollama",
            "choices": [choice], "usage": _usage(prompt_tokens, completion_tokens)}


def _native_final(path: str, model: str, text: str, prompt_tokens: int, tokens: int, behavior: Behavior,
                  started_ns: int) -> dict:
    final: dict = {"model": model, "created_at": _now()}
    if path == CHAT:
        final["message"] = {"role": "assistant", "content": text}
    else:
        final["response"] = text
    final.update(
        done=True,
        done_reason="stop",
        total_duration=max(time.monotonic_ns() - started_ns, 1),
        load_duration=int(behavior.first_token_delay_s * 1e9 / 2),
        prompt_eval_count=prompt_tokens,
        prompt_eval_duration=int(behavior.first_token_delay_s * 1e9 / 2),
        eval_count=tokens,
        eval_duration=max(int(behavior.token_delay_s * 1e9) * tokens, 1_000 * tokens),
    )
    if path == GENERATE:
        final["context"] = list(range(prompt_tokens + tokens))
    return final


def _ps_entry(name: str, size: int, vram: int) -> dict:
    return {
        "name": name,
        "model": name,
        "size": size,
        "digest": "0" * 64,
        "details": {"format": "gguf", "family": "llama", "parameter_size": "135M", "quantization_level": "Q4_1"},
        "expires_at": "2030-01-01T00:00:00Z",
        "size_vram": vram,
    }


def _openai_model(name: str) -> dict:
    return {"id": name, "object": "model", "created": 1704067200, "owned_by": "library"}


def _show() -> dict:
    return {"modelfile": "", "parameters": "", "template": "{{ .Prompt }}",
            "details": {"format": "gguf", "family": "llama", "parameter_size": "135M", "quantization_level": "Q4_1"}}


# -- as a process (benchmarks) ------------------------------------------------------------------------------------


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-files soft limit towards `wanted` (up to the hard limit); returns the new limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python tests/fake_ollama.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--name", default="fake", help=f"the name in the {NODE_HEADER} header")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per answer")
    parser.add_argument("--first-token-delay", type=float, default=0.0, help="seconds before the first token")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--status", type=int, default=200, help="answer every inference request with this status")
    parser.add_argument("--retry-after", default=None)
    parser.add_argument("--slots", type=int, default=None, help="parallel streams (others wait), like NUM_PARALLEL")
    parser.add_argument("--max-queue", type=int, default=None, help="503 beyond this many waiting, like MAX_QUEUE")
    parser.add_argument("--loaded", action="append", default=[], metavar="NAME", help="a model /api/ps and /api/tags list")
    parser.add_argument("--nofile", type=int, default=0, help="raise the open-files limit to this (many clients)")
    return parser.parse_args(argv)


async def _serve_forever(args: argparse.Namespace) -> None:
    fake = FakeOllama(
        Behavior(status=args.status, tokens=args.tokens, first_token_delay_s=args.first_token_delay,
                 token_delay_s=args.token_delay, retry_after=args.retry_after),
        name=args.name,
        loaded=[(name, 200_000_000, 0) for name in args.loaded],
        slots=args.slots,
        max_queue=args.max_queue,
        record=False,  # long runs: counters only
    )
    await fake.start(args.host, args.port)
    print(f"listening on {fake.address}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    if not _is_loopback(args.host):
        raise SystemExit(f"--host must be a loopback address, not {args.host!r}")
    if args.nofile:
        raise_nofile(args.nofile)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args))


if __name__ == "__main__":
    main()
