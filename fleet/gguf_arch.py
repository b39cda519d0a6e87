"""Read a model's architecture from a real GGUF file header, so custom models get the same capacity math.

The fields are those Ollama's scheduler reads (`<arch>.block_count`, `<arch>.embedding_length`,
`<arch>.attention.head_count`, `<arch>.attention.head_count_kv`, `<arch>.attention.key_length`,
`<arch>.context_length`, `<arch>.attention.sliding_window`, `<arch>.feed_forward_length`) plus the vocabulary
size (`tokenizer.ggml.tokens`) and the tensors themselves (parameter count, exact bytes, tied output).
The weight size is the file's size, like the blob Ollama imports with `ollama create`.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from fleet.catalog import ModelArch
from fleet.gguf_header import GgufHeaderError, StringArray, read_header


class GgufError(ValueError):
    """The file is missing, not a GGUF file, or lacks a field the capacity model needs."""


# general.file_type (llama.cpp's llama_ftype) -> the quantization names the config uses.
_FILE_TYPES: dict[int, str] = {0: "fp32", 1: "fp16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 15: "q4_K_M", 17: "q5_K_M", 18: "q6_K", 32: "bf16"}

# Layers that use the sliding window, per architecture (the rest hold the full context).
# gemma2 alternates local/global layers; gemma3 has five local layers per global one.
_SLIDING_LAYERS = {
    "gemma2": lambda n: n // 2,
    "gemma3": lambda n: n - n // 6,
}


def _value(fields: dict[str, Any], key: str, default: Any = None) -> Any:
    value = fields.get(key)
    if value is None:
        return default
    if isinstance(value, list):  # per-layer arrays (some models vary heads by layer): take the largest
        numbers = [v for v in value if isinstance(v, (int, float))]
        return max(numbers) if numbers else default
    return value


def _fewest(value: Any, default: int) -> int:
    """The smallest non-zero head count of a per-layer array (or the value itself)."""
    if isinstance(value, list):
        numbers = [int(v) for v in value if isinstance(v, (int, float)) and v > 0]
        return min(numbers) if numbers else default
    return int(value) if isinstance(value, (int, float)) and value > 0 else default


def quantization_name(file_type: int | None) -> str:
    if file_type is None:
        return "unknown"
    return _FILE_TYPES.get(int(file_type), f"file_type_{int(file_type)}")


# Sizes a model's header may state: far above any real model, low enough that the capacity arithmetic stays
# exact and fast. A count outside them (negative, zero where it divides, 2^64 from a damaged file) is refused.
MAX_LAYERS = 4096  # the largest models have a few hundred; the capacity model walks them one by one
MAX_COUNT = 1 << 22  # heads, experts, head and feed-forward widths
MAX_TOKENS = 1 << 32  # context length, vocabulary, sliding window


@lru_cache(maxsize=256)
def _read(path: str, mtime_ns: int, size: int) -> ModelArch:
    try:
        header = read_header(path)
    except (GgufHeaderError, OSError, UnicodeDecodeError, ValueError, OverflowError, MemoryError, RecursionError) as exc:
        raise GgufError(f"{path}: not a readable GGUF file ({exc})") from None
    try:
        return _arch(path, header, size)
    except (ValueError, TypeError, OverflowError, ArithmeticError, KeyError) as exc:
        if isinstance(exc, GgufError):
            raise
        raise GgufError(f"{path}: GGUF header holds values the capacity model cannot use ({exc})") from None


def _shown(value: Any) -> str:
    """A header value in a message: JSON, ASCII-escaped (a newline or a control character stays visible), short."""
    text = json.dumps(value if isinstance(value, (str, int, float, bool, list)) else str(value), default=str, ensure_ascii=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _arch(path: str, header, size: int) -> ModelArch:
    fields = header.fields
    arch = _value(fields, "general.architecture")
    if not isinstance(arch, str) or not arch:
        raise GgufError(f"{path}: GGUF header has no general.architecture")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", arch, flags=re.ASCII):
        raise GgufError(f"{path}: GGUF header's general.architecture {_shown(arch)} is not an architecture name")

    def number(key: str, default: int | None, low: int, high: int) -> int:
        value = _value(fields, f"{arch}.{key}", default)
        if value is None:
            raise GgufError(f"{path}: GGUF header lacks {arch}.{key}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or not low <= value <= high:
            raise GgufError(f"{path}: GGUF header's {arch}.{key} is {_shown(value)}; a model's is a whole number from {low} to {high}")
        return int(value)

    n_layer = number("block_count", None, 1, MAX_LAYERS)
    n_embd = number("embedding_length", None, 1, MAX_COUNT)
    n_head = number("attention.head_count", None, 1, MAX_COUNT)
    n_head_kv = number("attention.head_count_kv", n_head, 0, MAX_COUNT)
    # Without key_length/value_length, K and V heads are embedding ÷ the fewest heads of any layer (Ollama
    # v0.24.0 fs/ggml/ggml.go:121-135 EmbeddingHeadCountMax; llama.cpp's n_embd_head_k/v likewise), each on its
    # own: a file that gives key_length alone has V heads of that default size, and Ollama then turns flash
    # attention off (K ≠ V).
    default_dim = max(n_embd // max(_fewest(fields.get(f"{arch}.attention.head_count"), n_head), 1), 1)
    head_dim = number("attention.key_length", default_dim, 1, MAX_COUNT)
    value_dim = number("attention.value_length", default_dim, 1, MAX_COUNT)
    # Ollama clamps numCtx to the trained context only when the file gives one (llm/server.go:167-171): 0 here
    # means no limit, not a guess.
    context = number("context_length", 0, 0, MAX_TOKENS)
    window = number("attention.sliding_window", 0, 0, MAX_TOKENS) or None
    tokens = fields.get("tokenizer.ggml.tokens")
    vocab = len(tokens) if isinstance(tokens, (list, StringArray)) else number("vocab_size", 0, 0, MAX_TOKENS)
    file_type = _value(fields, "general.file_type")
    quant = quantization_name(file_type if isinstance(file_type, int) and not isinstance(file_type, bool) else None)

    names = {t.name for t in header.tensors}
    embd = next((t for t in header.tensors if t.name == "token_embd.weight"), None)
    layers = _layer_bytes(header.tensors)
    blocks = sum(nbytes for name, nbytes in layers.items() if name.startswith("blk."))
    # Ollama's output layer: output_norm plus output, or the tied token_embd (llm/server.go:583-593).
    output_layer = layers.get("output_norm", 0) + (layers["output"] if "output" in layers else layers.get("token_embd", 0))
    gate = next((int(t.n_bytes) for t in header.tensors if t.name == "blk.0.ffn_gate_exps.weight"), 0)
    sliding_layers = _SLIDING_LAYERS.get(arch, lambda n: 0)(n_layer) if window else 0
    return ModelArch(
        ref=Path(path).stem,
        arch=str(arch),
        parameters=float(sum(int(t.n_elements) for t in header.tensors)),
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        max_context=context,
        weights={quant: size},
        sliding_window=int(window) if window and sliding_layers else None,
        sliding_window_layers=sliding_layers,
        # Ollama treats a model with a pooling type as an embedding model (fs/ggml/ggml.go:869-872).
        embedding=f"{arch}.pooling_type" in fields or arch in {"bert", "nomic-bert"},
        source=f"GGUF header of {path}",
        vocab_size=vocab,
        n_ff=number("feed_forward_length", 0, 0, MAX_COUNT),
        tied_embeddings="output.weight" not in names,
        n_expert=number("expert_count", 0, 0, MAX_COUNT),
        token_embd_bytes={quant: int(embd.n_bytes)} if embd is not None else {},
        value_dim=value_dim,
        block_bytes={quant: layers.get("blk.0", 0)},
        output_layer_bytes={quant: output_layer},
        offload_bytes={quant: blocks + output_layer},
        expert_gate_bytes={quant: gate} if gate else {},
    )


def _layer_bytes(tensors) -> dict[str, int]:
    """Tensor bytes grouped as Ollama groups layers: `blk.N` by block, the rest by the name's first part."""
    out: dict[str, int] = {}
    for tensor in tensors:
        parts = tensor.name.split(".")
        key = ".".join(parts[:2]) if parts[0] == "blk" else parts[0]
        out[key] = out.get(key, 0) + int(tensor.n_bytes)
    return out


def read_arch(path: str | Path) -> ModelArch:
    """The architecture of the GGUF file at `path` (its only quantization is the file's own)."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise GgufError(f"{file}: is a folder, not a GGUF file")
    if not file.is_file():
        raise GgufError(f"{file}: GGUF file not found")
    stat = file.stat()
    return _read(str(file.resolve()), stat.st_mtime_ns, stat.st_size)


def file_quantization(path: str | Path) -> str:
    """The quantization of a GGUF file (`q4_1`, `q8_0`, `fp16`, ...)."""
    arch = read_arch(path)
    return next(iter(arch.weights))
