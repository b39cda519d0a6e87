"""What the metering exporter reads from the traffic it passes through, without touching it.

Pure functions and small stateful readers: which routes are inference, which model a request names,
and, fed the response bytes as they arrive, when the first content came, how many tokens were used and
whether Ollama reported an error inside a 200 stream. Nothing here does I/O, so it is tested directly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from fleet.exporters.lines import LineSplitter
from fleet.gateway_routes import ADMIN_PREFIXES, ADMIN_ROUTES, READ_ONLY_PREFIXES, READ_ONLY_ROUTES
from fleet.gateway_routes import INFERENCE_ROUTES as GATEWAY_INFERENCE_ROUTES

# Inference routes: metered per model. Everything else is passed through with a request counter only. The
# meter sits beside Ollama, so it also meters the newer inference routes the gateway does not expose.
INFERENCE_ROUTES = frozenset(GATEWAY_INFERENCE_ROUTES) | {"/v1/responses", "/v1/messages"}

# Other routes Ollama serves; anything outside these and INFERENCE_ROUTES is counted as "other" so a
# scanner walking random paths cannot grow the label set.
_KNOWN_ROUTES = frozenset({"/", *READ_ONLY_ROUTES, *ADMIN_ROUTES})
# Routes with a parameter in the path (`/api/blobs/sha256:…`, `/v1/models/{model}`), labelled by their prefix.
_PREFIXES = ADMIN_PREFIXES + READ_ONLY_PREFIXES


def route_label(path: str) -> str:
    """A bounded label for a request path (`/api/blobs/sha256:…` → `/api/blobs`, unknown → `other`)."""
    if path in INFERENCE_ROUTES or path in _KNOWN_ROUTES:
        return path
    for prefix in _PREFIXES:
        if path.startswith(prefix):
            return prefix.rstrip("/")
    return "other"


def normalize_model(name: str) -> str:
    """Ollama's canonical spelling of a model reference: a bare `llama3.1` means its `latest` tag; both are one model.

    /api/ps reports `name:tag`, so requests are labelled the same way and the two can be joined.
    """
    name = name.strip()
    if not name:
        return ""
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        name += ":latest"
    return name


# Used only for bodies too large to parse cheaply: `"model"` as an object key (a key's opening quote
# follows `{` or `,`; inside a JSON string a quote would be escaped).
_MODEL_KEY = re.compile(rb'[{,]\s*"model"\s*:\s*"((?:[^"\\]|\\.){0,512})"')
_PARSE_LIMIT = 1 << 20


def model_from_body(body: bytes) -> str:
    """The `model` a JSON request body names, normalized; "" when absent or unreadable."""
    value: object = None
    if len(body) <= _PARSE_LIMIT:
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return ""
        if isinstance(document, dict):
            value = document.get("model")
    else:
        # A large body is mostly images or long prompts; a full parse would stall every other stream.
        match = _MODEL_KEY.search(body)
        if match:
            try:
                value = json.loads(b'"' + match.group(1) + b'"')
            except ValueError:
                value = None
    return normalize_model(value) if isinstance(value, str) else ""


@dataclass
class Usage:
    """What a response reported about the work done."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    eval_duration_ns: int | None = None  # Ollama's own generation time; only the native API reports it

    @property
    def reported(self) -> bool:
        return self.prompt_tokens is not None or self.completion_tokens is not None


def _as_count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _delta_has_content(delta: object) -> bool:
    if isinstance(delta, str):  # Responses API: `response.output_text.delta`
        return bool(delta)
    if isinstance(delta, dict):  # Messages API: `content_block_delta` (not `message_delta`, which ends it)
        return bool(delta.get("text") or delta.get("thinking") or delta.get("partial_json"))
    return False


class ResponseMeter:
    """Fed the body bytes of one response in arrival order; records content, usage and in-band errors.

    `feed` returns True the first time a piece of generated content is seen, so the caller can stamp the
    time to first token with its own clock.
    """

    def __init__(self) -> None:
        self.usage = Usage()
        self.error: str | None = None
        self.saw_content = False
        self.done = False

    def feed(self, chunk: bytes) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def finish(self) -> None:
        """Called once at the end of the body (parses whatever a non-streaming reader kept)."""

    # Shared interpretation of one decoded JSON object (an NDJSON line, an SSE `data:` payload, or a
    # whole non-streaming body). Returns True when it carries generated content.
    def _observe(self, obj: object) -> bool:
        if not isinstance(obj, dict):
            return False
        error = obj.get("error")
        if error:
            self.error = error if isinstance(error, str) else json.dumps(error)[:200]
        content = self._content_in(obj)
        # Native Ollama final object: counts and durations (ns).
        if "eval_count" in obj or "prompt_eval_count" in obj:
            self._set(prompt=obj.get("prompt_eval_count"), completion=obj.get("eval_count"))
            self.usage.eval_duration_ns = _as_count(obj.get("eval_duration")) or self.usage.eval_duration_ns
        if obj.get("done") is True:
            self.done = True
        # OpenAI-style usage (chat/completions/embeddings), Responses API and Messages API shapes.
        for holder in (obj, obj.get("response"), obj.get("message")):
            if isinstance(holder, dict) and isinstance(holder.get("usage"), dict):
                usage = holder["usage"]
                self._set(
                    prompt=usage.get("prompt_tokens", usage.get("input_tokens")),
                    completion=usage.get("completion_tokens", usage.get("output_tokens")),
                )
        return content

    def _set(self, prompt: object, completion: object) -> None:
        # Streams may repeat a zeroed usage on every chunk before the real one: keep the largest.
        prompt_count, completion_count = _as_count(prompt), _as_count(completion)
        if prompt_count is not None:
            self.usage.prompt_tokens = max(prompt_count, self.usage.prompt_tokens or 0)
        if completion_count is not None:
            self.usage.completion_tokens = max(completion_count, self.usage.completion_tokens or 0)

    @staticmethod
    def _content_in(obj: dict) -> bool:
        if obj.get("response") and isinstance(obj.get("response"), str):  # /api/generate
            return True
        message = obj.get("message")
        if isinstance(message, dict) and (  # /api/chat
            message.get("content") or message.get("thinking") or message.get("tool_calls")
        ):
            return True
        choices = obj.get("choices")
        if isinstance(choices, list):  # /v1/chat/completions, /v1/completions
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                if choice.get("text"):
                    return True
                delta = choice.get("delta")
                if isinstance(delta, dict) and (
                    delta.get("content") or delta.get("reasoning") or delta.get("reasoning_content") or delta.get("tool_calls")
                ):
                    return True
        # Responses API (`response.output_text.delta`) and Messages API (`content_block_delta`).
        event_type = obj.get("type")
        if isinstance(event_type, str) and event_type.endswith("delta"):
            return _delta_has_content(obj.get("delta"))
        return False

    def _first_content(self, obj: object) -> bool:
        if self._observe(obj) and not self.saw_content:
            self.saw_content = True
            return True
        return False


class _LineMeter(ResponseMeter):
    """Splits the body into lines across chunk boundaries and hands each complete line to `_line`."""

    # A line longer than this is skipped rather than buffered: metering must never hold much memory.
    MAX_LINE = 4 << 20

    def __init__(self) -> None:
        super().__init__()
        self._lines = LineSplitter(self.MAX_LINE)

    def feed(self, chunk: bytes) -> bool:
        first = False
        for line in self._lines.feed(chunk)[0]:
            first |= self._line(line)
        return first

    def finish(self) -> None:
        rest = self._lines.rest()
        if rest:
            self._line(rest)

    def _line(self, line: bytes) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


class NdjsonMeter(_LineMeter):
    """Ollama's native streams (`application/x-ndjson`): one JSON object per line."""

    def _line(self, line: bytes) -> bool:
        # Once the first content is seen, only the final object (counts) and error objects matter; Go's
        # encoder writes `"done":false` verbatim in every other line (inside a string it would be escaped).
        if self.saw_content and b'"done":false' in line:
            return False
        line = line.strip()
        if not line:
            return False
        try:
            obj = json.loads(line)
        except ValueError:
            return False
        return self._first_content(obj)


class SseMeter(_LineMeter):
    """OpenAI-compatible streams (`text/event-stream`): JSON in `data:` lines, ended by `data: [DONE]`."""

    def _line(self, line: bytes) -> bool:
        line = line.rstrip(b"\r")
        if not line.startswith(b"data:"):
            return False  # `event:`, `id:`, comments and the blank separators
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return False
        # After the first content only usage and errors are of interest; skip the JSON parse otherwise.
        if self.saw_content and b'"usage"' not in payload and b'"error"' not in payload:
            return False
        try:
            obj = json.loads(payload)
        except ValueError:
            return False
        return self._first_content(obj)


_TAIL_KEYS = re.compile(
    rb'[{,]\s*"(prompt_eval_count|eval_count|eval_duration|prompt_tokens|completion_tokens|input_tokens|output_tokens)"'
    rb"\s*:\s*(\d+)"
)


class JsonMeter(ResponseMeter):
    """A non-streaming JSON body: kept (bounded) and read at the end.

    Bodies beyond the bound (large embedding batches) are read from their tail, where Ollama's encoder
    puts the counts after the vectors.
    """

    MAX_BODY = 8 << 20
    TAIL = 64 << 10

    def __init__(self) -> None:
        super().__init__()
        self._body = bytearray()
        self._overflow = False

    def feed(self, chunk: bytes) -> bool:
        self._body += chunk
        if len(self._body) > self.MAX_BODY:
            self._overflow = True
            del self._body[: len(self._body) - self.TAIL]
        return False  # a non-streaming answer has no first token to time

    def finish(self) -> None:
        if not self._overflow:
            try:
                obj = json.loads(self._body)
            except (ValueError, UnicodeDecodeError):
                obj = None
            self._observe(obj)
        else:
            found = {key.decode(): int(value) for key, value in _TAIL_KEYS.findall(bytes(self._body))}
            self._set(
                prompt=found.get("prompt_eval_count", found.get("prompt_tokens", found.get("input_tokens"))),
                completion=found.get("eval_count", found.get("completion_tokens", found.get("output_tokens"))),
            )
            if "eval_duration" in found:
                self.usage.eval_duration_ns = found["eval_duration"]
        self._body = bytearray()


class NullMeter(ResponseMeter):
    """Bodies that carry no metering information (plain text, binary)."""

    def feed(self, chunk: bytes) -> bool:
        return False


def meter_for(content_type: str) -> ResponseMeter:
    """The reader for a response body, chosen by its media type."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/x-ndjson":
        return NdjsonMeter()
    if media == "text/event-stream":
        return SseMeter()
    if media == "application/json":
        return JsonMeter()
    return NullMeter()
