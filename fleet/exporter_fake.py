"""A small Ollama stand-in that speaks Ollama's wire formats, for the exporter's tests and benchmark.

It answers the routes the exporter meters with the shapes real Ollama sends: NDJSON streams for
/api/generate and /api/chat (a final object with `prompt_eval_count`, `eval_count` and durations in ns),
SSE for /v1/chat/completions and /v1/completions (usage only with `stream_options.include_usage`, the
zeroed per-chunk usage of /v1/completions included), /api/embed, /v1/embeddings, /api/ps, /api/version.
It writes each token as its own chunk, `token_delay` apart, and records what it received and which
streams a client abandoned.

Model names choose failure modes, as a real server would produce them:
`missing…` → 404 "model not found"; `busy…` → 503 with Ollama's queue-full body; `broken…` → 500;
`failing…` → 200 stream that ends with an `{"error": …}` object; `crashing…` → 200 stream cut off
without its final chunk. With `num_parallel`/`max_queue` set, overflow is answered 503 like Ollama.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from aiohttp import web

QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"


@dataclass
class Received:
    method: str
    path: str
    body: bytes
    headers: dict[str, str]


@dataclass
class FakeOllama:
    tokens: tuple[str, ...] = ("Hello", ",", " world", "!", " How", " are", " you", "?")
    token_delay_s: float = 0.0
    first_token_delay_s: float = 0.0  # model load + prompt evaluation
    tail_delay_s: float = 0.0  # between the final chunk and the end of the response
    version: str = "0.24.0"
    loaded: list[tuple[str, int, int]] = field(default_factory=list)  # (name, size, size_vram) for /api/ps
    embedding_dim: int = 8
    num_parallel: int | None = None
    max_queue: int = 512
    received: list[Received] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)  # paths of streams the client left
    completed: list[str] = field(default_factory=list)
    record_bodies: bool = True  # keep `received`, `aborted`, `completed` (off for long benchmark runs)
    # Lock-step streaming for tests: when set, each token after the first waits for an item on this queue.
    gate: asyncio.Queue | None = None

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.num_parallel) if self.num_parallel else None
        self._pending = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 << 20)
        app.router.add_get("/", self._root)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/ps", self._ps)
        app.router.add_get("/api/tags", self._tags)
        for path in ("/api/generate", "/api/chat", "/v1/chat/completions", "/v1/completions", "/api/embed", "/v1/embeddings"):
            app.router.add_post(path, self._inference)
        app.router.add_route("*", "/{tail:.*}", self._other)
        return app

    # Plain routes ---------------------------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self.version})

    async def _ps(self, request: web.Request) -> web.Response:
        models = [
            {
                "name": name,
                "model": name,
                "size": size,
                "digest": "0" * 64,
                "details": {"format": "gguf", "family": "llama", "parameter_size": "135M", "quantization_level": "Q4_1"},
                "expires_at": "2030-01-01T00:00:00Z",
                "size_vram": vram,
            }
            for name, size, vram in self.loaded
        ]
        return web.json_response({"models": models})

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": name, "model": name, "size": size} for name, size, _ in self.loaded]})

    async def _other(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._record(request, body)
        return web.json_response({"path": request.path, "method": request.method, "bytes": len(body)})

    # Inference ------------------------------------------------------------------------------------------

    def _note(self, log: list[str], path: str) -> None:
        if self.record_bodies:
            log.append(path)

    def _record(self, request: web.Request, body: bytes) -> None:
        if self.record_bodies:  # off for long benchmark runs
            self.received.append(Received(request.method, request.path_qs, body, dict(request.headers)))

    async def _inference(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self._record(request, raw)
        openai = request.path.startswith("/v1/")
        try:
            req = json.loads(raw)
        except ValueError as exc:
            return _error(400, f"invalid JSON: {exc}", openai)
        model = str(req.get("model", ""))
        base = model.split(":", 1)[0]
        if not model:
            return _error(400, "model is required", openai)
        if base.startswith("missing"):
            return _error(404, f'model "{model}" not found, try pulling it first', openai)
        if base.startswith("busy"):
            return _error(503, QUEUE_FULL, openai)
        if base.startswith("broken"):
            return _error(500, "llama runner process has terminated: exit status 2", openai)
        if self._slots is not None and self._pending >= self.num_parallel + self.max_queue:
            return _error(503, QUEUE_FULL, openai)
        self._pending += 1
        try:
            if self._slots is None:
                return await self._answer(request, req, model, base, openai)
            async with self._slots:
                return await self._answer(request, req, model, base, openai)
        finally:
            self._pending -= 1

    async def _answer(self, request: web.Request, req: dict, model: str, base: str, openai: bool) -> web.StreamResponse:
        path = request.path
        prompt_tokens = _count_prompt(req)
        if path in ("/api/embed", "/v1/embeddings"):
            return self._embed(req, model, prompt_tokens, openai)
        stream = bool(req.get("stream", not openai))  # Ollama streams by default, OpenAI does not
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        started = time.monotonic_ns()
        if not stream:
            await asyncio.sleep(self.first_token_delay_s + self.token_delay_s * len(self.tokens))
            final = self._native_final(model, "".join(self.tokens), prompt_tokens, started, path)
            self._note(self.completed, path)
            if path == "/api/generate" or path == "/api/chat":
                return web.json_response(final)
            return web.json_response(_openai_whole(path, model, "".join(self.tokens), prompt_tokens, len(self.tokens)))

        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream" if openai else "application/x-ndjson"}
        )
        try:
            await asyncio.sleep(self.first_token_delay_s)
            await resp.prepare(request)
            for i, token in enumerate(self.tokens):
                if i:
                    await asyncio.sleep(self.token_delay_s)
                    if self.gate is not None:
                        await self.gate.get()
                if base.startswith(("failing", "crashing")) and i == 2:
                    if base.startswith("crashing"):
                        request.transport.close()  # the runner died: no final chunk
                        return resp
                    await resp.write(_line({"error": "an error was encountered while running the model"}, openai))
                    await resp.write_eof()
                    self._note(self.completed, path)
                    return resp
                await resp.write(_line(self._piece(path, model, token, include_usage), openai))
            if openai:
                await resp.write(_line(self._openai_last(path, model), openai))
                if include_usage:
                    await resp.write(_line(self._openai_usage(path, model, prompt_tokens), openai))
                await resp.write(b"data: [DONE]\n\n")
            else:
                await resp.write(_line(self._native_final(model, "", prompt_tokens, started, path), openai))
            await asyncio.sleep(self.tail_delay_s)
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self._note(self.aborted, path)
            raise
        self._note(self.completed, path)
        return resp

    def _piece(self, path: str, model: str, token: str, include_usage: bool) -> dict:
        created = _now()
        if path == "/api/generate":
            return {"model": model, "created_at": created, "response": token, "done": False}
        if path == "/api/chat":
            return {"model": model, "created_at": created, "message": {"role": "assistant", "content": token}, "done": False}
        if path == "/v1/chat/completions":
            return _chunk(model, [{"index": 0, "delta": {"role": "assistant", "content": token}, "finish_reason": None}])
        piece = {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_ollama",
            "choices": [{"text": token, "index": 0, "finish_reason": None}],
        }
        if include_usage:  # Ollama's /v1/completions puts a zeroed usage on every chunk
            piece["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return piece

    def _openai_last(self, path: str, model: str) -> dict:
        if path == "/v1/chat/completions":
            return _chunk(model, [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "stop"}])
        return {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_ollama",
            "choices": [{"text": "", "index": 0, "finish_reason": "stop"}],
        }

    def _openai_usage(self, path: str, model: str, prompt_tokens: int) -> dict:
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(self.tokens), "total_tokens": prompt_tokens + len(self.tokens)}
        last = self._openai_last(path, model)
        last["choices"] = []
        last["usage"] = usage
        return last

    def _native_final(self, model: str, text: str, prompt_tokens: int, started_ns: int, path: str) -> dict:
        total = max(time.monotonic_ns() - started_ns, 1)
        eval_ns = max(int(self.token_delay_s * 1e9) * len(self.tokens), 1_000 * len(self.tokens))
        final = {"model": model, "created_at": _now()}
        if path == "/api/chat":
            final["message"] = {"role": "assistant", "content": text}
        else:
            final["response"] = text
        final.update(
            {
                "done": True,
                "done_reason": "stop",
                "total_duration": total,
                "load_duration": int(self.first_token_delay_s * 1e9 / 2),
                "prompt_eval_count": prompt_tokens,
                "prompt_eval_duration": int(self.first_token_delay_s * 1e9 / 2),
                "eval_count": len(self.tokens),
                "eval_duration": eval_ns,
            }
        )
        if path == "/api/generate":
            final["context"] = list(range(prompt_tokens + len(self.tokens)))
        return final

    def _embed(self, req: dict, model: str, prompt_tokens: int, openai: bool) -> web.Response:
        inputs = req.get("input", "")
        count = len(inputs) if isinstance(inputs, list) else 1
        vectors = [[round(0.01 * (i + j), 4) for j in range(self.embedding_dim)] for i in range(count)]
        if openai:
            return web.json_response(
                {
                    "object": "list",
                    "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)],
                    "model": model,
                    "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
                }
            )
        return web.json_response(
            {"model": model, "embeddings": vectors, "total_duration": 1_000_000, "load_duration": 1_000, "prompt_eval_count": prompt_tokens}
        )


def _count_prompt(req: dict) -> int:
    """A deterministic stand-in for tokenization: words of the prompt plus a template overhead per message."""
    if "messages" in req:
        return sum(len(str(m.get("content", "")).split()) + 4 for m in req["messages"] if isinstance(m, dict))
    value = req.get("prompt", req.get("input", ""))
    texts = value if isinstance(value, list) else [value]
    return sum(len(str(t).split()) for t in texts) + 1


def _chunk(model: str, choices: list) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": choices,
    }


def _openai_whole(path: str, model: str, text: str, prompt_tokens: int, completion_tokens: int) -> dict:
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
    if path == "/v1/chat/completions":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        kind = "chat.completion"
    else:
        choice = {"text": text, "index": 0, "finish_reason": "stop"}
        kind = "text_completion"
    return {"id": "x-1", "object": kind, "created": int(time.time()), "model": model, "system_fingerprint": "fp_ollama", "choices": [choice], "usage": usage}


def _line(obj: dict, sse: bool) -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode()
    return b"data: " + data + b"\n\n" if sse else data + b"\n"


def _error(status: int, message: str, openai: bool) -> web.Response:
    if openai:
        kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
        return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": None}}, status=status)
    return web.json_response({"error": message}, status=status)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


class FakeOllamaServer:
    """Runs a FakeOllama on 127.0.0.1 (port 0 picks a free one)."""

    def __init__(self, fake: FakeOllama, port: int = 0) -> None:
        self.fake = fake
        self._port = port
        self._runner = web.AppRunner(fake.app(), handler_cancellation=True, access_log=None)

    async def start(self) -> str:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self._port).start()
        return self.url

    @property
    def url(self) -> str:
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def close(self) -> None:
        await self._runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """`python -m fleet.exporter_fake --port N`: serve a FakeOllama on 127.0.0.1 until killed."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fleet.exporter_fake", description=main.__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=32, help="tokens per answer")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--first-token-delay", type=float, default=0.0, help="seconds before the first token")
    parser.add_argument("--loaded", action="append", default=[], metavar="NAME", help="a model /api/ps lists")
    args = parser.parse_args(argv)
    fake = FakeOllama(
        tokens=tuple(f" tok{i}" for i in range(args.tokens)),
        token_delay_s=args.token_delay,
        first_token_delay_s=args.first_token_delay,
        loaded=[(name, 200_000_000, 0) for name in args.loaded],
        record_bodies=False,
    )
    web.run_app(fake.app(), host="127.0.0.1", port=args.port, access_log=None, print=None, handler_cancellation=True)


if __name__ == "__main__":
    main()
