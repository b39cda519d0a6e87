"""A fast, trivial Ollama-compatible HTTP backend on loopback, for load-generator and gateway benchmarks.

It answers `/api/generate`, `/api/chat` and `/v1/chat/completions` in Ollama's wire formats (NDJSON and SSE
streams, or one JSON object with `"stream": false`) with made-up tokens, as fast as asyncio allows or with
configured delays. It is not an Ollama emulator: there is no model, no tokenizer and no scheduler beyond an
optional slot count, so the gateway and the generator are what a benchmark measures.

What a request gets is a `Behavior`; a backend cycles through a list of them, one per inference request, so a
test can script "ok, ok, 429 with Retry-After, hang" exactly. `slots` makes at most that many streams run at
once (the others wait, like Ollama's NUM_PARALLEL); `max_queue` answers 503 beyond that many waiting, with
Ollama's message.

Run it alone: `python -m fleet.fake_backend --port 11434 --tokens 16 --token-delay 0.01`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import itertools
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

INFERENCE_PATHS = ("/api/generate", "/api/chat", "/v1/chat/completions")
QUEUE_FULL_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Behavior:
    """How the backend answers one inference request."""

    status: int = 200  # anything but 200 answers `{"error": ...}` with this status
    tokens: int = 8  # tokens streamed (capped by the request's num_predict / max_tokens)
    first_token_delay_s: float = 0.0  # after the slot is taken, before the first token
    token_delay_s: float = 0.0  # between tokens
    retry_after: str | None = None  # Retry-After header value on an error status
    hang_before_headers: bool = False  # read the request, never answer (client timeouts before the first byte)
    hang_after_tokens: int | None = None  # stop sending after this many tokens, keep the socket open
    drop_after_tokens: int | None = None  # close the connection after this many tokens (a dying node)
    headers_early: bool = False  # send the response headers before first_token_delay (Ollama sends them with the first token)


@dataclass
class BackendStats:
    """Counters a test or benchmark reads back."""

    requests: int = 0  # inference requests received
    completed: int = 0  # streams finished normally
    refused_queue_full: int = 0
    active: int = 0  # requests being answered right now
    peak_active: int = 0
    waiting: int = 0  # waiting for a slot
    by_path: dict[str, int] = field(default_factory=dict)
    authorization: dict[str, int] = field(default_factory=dict)  # Authorization header values seen (tests)
    connections_by_peer: dict[str, int] = field(default_factory=dict)  # client address -> connections opened


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _ConnectionClosed(Exception):
    pass


class FakeBackend:
    """An asyncio HTTP/1.1 server (keep-alive, chunked streaming) speaking Ollama's inference formats."""

    def __init__(
        self,
        behaviors: Sequence[Behavior] | Behavior = Behavior(),
        *,
        model: str = "fake:1b",
        slots: int | None = None,
        max_queue: int | None = None,
    ) -> None:
        self.behaviors = (behaviors,) if isinstance(behaviors, Behavior) else tuple(behaviors)
        if not self.behaviors:
            raise ValueError("at least one Behavior is needed")
        if slots is not None and slots < 1:
            raise ValueError("slots must be at least 1")
        self.model = model
        self.slots = slots
        self.max_queue = max_queue
        self.stats = BackendStats()
        self._cycle = itertools.cycle(self.behaviors)
        self._semaphore: asyncio.Semaphore | None = None
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        if not _is_loopback(host):
            raise ValueError(f"the fake backend listens on loopback only, not {host!r}")
        self._semaphore = asyncio.Semaphore(self.slots) if self.slots else None
        self._server = await asyncio.start_server(self._serve, host, port, backlog=8192, limit=_MAX_HEADER_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self._server = None

    # -- HTTP ------------------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
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
                        headers[name.strip().lower()] = value.strip()
                body = await self._read_body(reader, headers)
                if body is None:
                    await self._respond(writer, 400, {"error": "bad request body"}, keep_alive=False)
                    return
                connection = headers.get("connection", "").lower()
                keep_alive = version == "HTTP/1.1" and connection != "close" or connection == "keep-alive"
                path = target.split("?", 1)[0]
                keep_alive = await self._dispatch(writer, method, path, headers, body, keep_alive)
                if not keep_alive:
                    return
        except (ConnectionError, _ConnectionClosed):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes | None:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
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

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: object,
        *,
        keep_alive: bool,
        extra_headers: Sequence[tuple[str, str]] = (),
        content_type: str = "application/json; charset=utf-8",
    ) -> bool:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(data)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
            *(f"{k}: {v}" for k, v in extra_headers),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)
        await writer.drain()
        return keep_alive

    async def _dispatch(self, writer, method: str, path: str, headers: dict[str, str], body: bytes, keep_alive: bool) -> bool:
        if path in INFERENCE_PATHS:
            if method != "POST":
                return await self._respond(writer, 405, {"error": "method not allowed"}, keep_alive=keep_alive)
            try:
                request = json.loads(body or b"{}")
                if not isinstance(request, dict):
                    raise ValueError
            except ValueError:
                return await self._respond(writer, 400, {"error": "invalid JSON body"}, keep_alive=keep_alive)
            auth = headers.get("authorization", "")
            self.stats.authorization[auth] = self.stats.authorization.get(auth, 0) + 1
            return await self._inference(writer, path, request, keep_alive)
        if path in ("/", "/health") and method in ("GET", "HEAD"):
            return await self._respond(writer, 200, b"Ollama is running", keep_alive=keep_alive, content_type="text/plain")
        if path == "/api/version":
            return await self._respond(writer, 200, {"version": "0.0.0-fake"}, keep_alive=keep_alive)
        if path == "/api/tags":
            return await self._respond(writer, 200, {"models": [{"name": self.model, "model": self.model}]}, keep_alive=keep_alive)
        if path == "/_fake/stats":  # counters for benchmarks running the backend as a subprocess
            return await self._respond(writer, 200, asdict(self.stats), keep_alive=keep_alive)
        if path == "/api/ps":
            return await self._respond(writer, 200, {"models": []}, keep_alive=keep_alive)
        return await self._respond(writer, 404, {"error": "not found"}, keep_alive=keep_alive)

    # -- inference -------------------------------------------------------------------------------------
    async def _inference(self, writer, path: str, request: dict, keep_alive: bool) -> bool:
        stats = self.stats
        stats.requests += 1
        stats.by_path[path] = stats.by_path.get(path, 0) + 1
        behavior = next(self._cycle)
        if behavior.hang_before_headers:
            await asyncio.Event().wait()  # until the client gives up and the server is stopped
        if behavior.status != 200:
            extra = [("Retry-After", behavior.retry_after)] if behavior.retry_after else []
            return await self._respond(
                writer, behavior.status, {"error": f"fake backend status {behavior.status}"}, keep_alive=keep_alive, extra_headers=extra
            )
        semaphore = self._semaphore
        if semaphore is not None and semaphore.locked():
            if self.max_queue is not None and stats.waiting >= self.max_queue:
                stats.refused_queue_full += 1
                return await self._respond(writer, 503, {"error": QUEUE_FULL_MESSAGE}, keep_alive=keep_alive)
        stats.waiting += 1
        try:
            if semaphore is not None:
                await semaphore.acquire()
        finally:
            stats.waiting -= 1
        stats.active += 1
        stats.peak_active = max(stats.peak_active, stats.active)
        try:
            return await self._stream(writer, path, request, behavior, keep_alive)
        finally:
            stats.active -= 1
            if semaphore is not None:
                semaphore.release()

    def _token_budget(self, path: str, request: dict, behavior: Behavior) -> int:
        if path == "/v1/chat/completions":
            asked = request.get("max_tokens") or request.get("max_completion_tokens")
        else:
            asked = (request.get("options") or {}).get("num_predict")
        if isinstance(asked, int) and asked > 0:
            return min(asked, behavior.tokens)
        return behavior.tokens

    async def _stream(self, writer, path: str, request: dict, behavior: Behavior, keep_alive: bool) -> bool:
        model = str(request.get("model") or self.model)
        n_tokens = self._token_budget(path, request, behavior)
        stream = request.get("stream", path != "/v1/chat/completions")  # Ollama streams by default, OpenAI does not
        openai = path == "/v1/chat/completions"
        began = time.monotonic_ns()
        content_type = "text/event-stream" if openai else "application/x-ndjson"
        head = (
            "HTTP/1.1 200 OK\r\n"
            f"Content-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        ).encode()
        if stream and behavior.headers_early:
            writer.write(head)
            await writer.drain()
        if behavior.first_token_delay_s:
            await asyncio.sleep(behavior.first_token_delay_s)

        if not stream:
            for _ in range(n_tokens):
                if behavior.token_delay_s:
                    await asyncio.sleep(behavior.token_delay_s)
            text = "".join(f"tok{i} " for i in range(n_tokens))
            payload = self._final_openai_body(model, text, n_tokens) if openai else self._final_ollama(path, model, text, n_tokens, began)
            self.stats.completed += 1
            return await self._respond(writer, 200, payload, keep_alive=keep_alive)

        if not behavior.headers_early:
            writer.write(head)
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        for i in range(n_tokens):
            if i and behavior.token_delay_s:
                await asyncio.sleep(behavior.token_delay_s)
            if behavior.drop_after_tokens is not None and i >= behavior.drop_after_tokens:
                await writer.drain()
                writer.transport.abort()
                raise _ConnectionClosed
            if behavior.hang_after_tokens is not None and i >= behavior.hang_after_tokens:
                await writer.drain()
                await asyncio.Event().wait()
            writer.write(_chunk(self._token_event(path, model, f"tok{i} ")))
            if behavior.token_delay_s or i == 0:
                await writer.drain()  # each token leaves as it is produced
        if openai:
            writer.write(_chunk(self._openai_event(model, "", finish="stop")))
            if include_usage:
                writer.write(_chunk(self._openai_usage_event(model, n_tokens)))
            writer.write(_chunk(b"data: [DONE]\n\n"))
        else:
            writer.write(_chunk(json.dumps(self._final_ollama(path, model, "", n_tokens, began)).encode() + b"\n"))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        self.stats.completed += 1
        return keep_alive

    def _token_event(self, path: str, model: str, text: str) -> bytes:
        if path == "/v1/chat/completions":
            return self._openai_event(model, text)
        created = "2024-01-01T00:00:00Z"
        if path == "/api/chat":
            obj = {"model": model, "created_at": created, "message": {"role": "assistant", "content": text}, "done": False}
        else:
            obj = {"model": model, "created_at": created, "response": text, "done": False}
        return json.dumps(obj).encode() + b"\n"

    @staticmethod
    def _openai_event(model: str, text: str, finish: str | None = None) -> bytes:
        delta = {"role": "assistant", "content": text}
        obj = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1704067200,
            "model": model,
            "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    @staticmethod
    def _openai_usage_event(model: str, n_tokens: int) -> bytes:
        obj = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1704067200,
            "model": model,
            "choices": [],
            "usage": {"prompt_tokens": 8, "completion_tokens": n_tokens, "total_tokens": 8 + n_tokens},
        }
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    @staticmethod
    def _final_openai_body(model: str, text: str, n_tokens: int) -> dict:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1704067200,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 8, "completion_tokens": n_tokens, "total_tokens": 8 + n_tokens},
        }

    @staticmethod
    def _final_ollama(path: str, model: str, text: str, n_tokens: int, began_ns: int) -> dict:
        total = time.monotonic_ns() - began_ns
        obj: dict = {"model": model, "created_at": "2024-01-01T00:00:00Z"}
        if path == "/api/chat":
            obj["message"] = {"role": "assistant", "content": text}
        else:
            obj["response"] = text
        obj.update(
            done=True,
            done_reason="stop",
            total_duration=total,
            load_duration=0,
            prompt_eval_count=8,
            prompt_eval_duration=0,
            eval_count=n_tokens,
            eval_duration=total,
        )
        return obj


class BackendThread:
    """A FakeBackend on its own event loop in a daemon thread, for synchronous tests.

    >>> with BackendThread(FakeBackend(Behavior(tokens=4))) as backend:
    ...     url = backend.url
    """

    def __init__(self, backend: FakeBackend, host: str = "127.0.0.1", port: int = 0) -> None:
        self.backend = backend
        self.host = host
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-backend", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.backend.port}"

    def __enter__(self) -> "BackendThread":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.backend.start(self.host, self._port), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.backend.stop(), self._loop).result(timeout=10)

        async def _cancel_rest() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(_cancel_rest(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fleet.fake_backend", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--first-token-delay", type=float, default=0.0, help="seconds before the first token")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--status", type=int, default=200, help="answer every inference request with this status")
    parser.add_argument("--retry-after", default=None)
    parser.add_argument("--slots", type=int, default=None, help="parallel streams (others wait), like NUM_PARALLEL")
    parser.add_argument("--max-queue", type=int, default=None, help="503 beyond this many waiting, like MAX_QUEUE")
    parser.add_argument("--model", default="fake:1b")
    parser.add_argument("--nofile", type=int, default=0, help="raise the open-files limit to this (many clients)")
    return parser.parse_args(argv)


async def _serve_forever(args: argparse.Namespace) -> None:
    backend = FakeBackend(
        Behavior(
            status=args.status,
            tokens=args.tokens,
            first_token_delay_s=args.first_token_delay,
            token_delay_s=args.token_delay,
            retry_after=args.retry_after,
        ),
        model=args.model,
        slots=args.slots,
        max_queue=args.max_queue,
    )
    port = await backend.start(args.host, args.port)
    print(f"listening on {args.host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await backend.stop()


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-files soft limit towards `wanted` (up to the hard limit); returns the new limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


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
