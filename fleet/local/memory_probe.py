"""Ollama's own memory figures for a loaded model, in bytes: what the capacity estimate is checked against.

Two sources, both from a real server:
- `/api/ps`: `size` (what Ollama accounts for the loaded model) and `size_vram` (the part on GPUs).
- the server log. Ollama logs its layout per device when it loads a model (`msg="model weights"`,
  `msg="kv cache"`, `msg="compute graph"`, `msg="total memory"`), and the llama.cpp runner logs what it
  actually allocated (`model buffer size`, `KV buffer size`, `compute buffer size`, `output buffer size`).
The log rounds to 0.1 MiB (Ollama) or 0.01 MiB (llama.cpp), well inside the ±5% the comparison needs.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from fleet.local.ollama import TEST_MODEL_NAME, OllamaServer, OllamaSettings, smollm2_gguf

_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}

# Ollama (slog text handler): msg="kv cache" device=CPU size="45.0 MiB"
_OLLAMA_LINE = re.compile(
    r'msg="(?P<what>model weights|kv cache|compute graph|total memory)"'
    r'(?:\s+device=(?P<device>"[^"]*"|\S+))?\s+size="(?P<num>[\d.]+) (?P<unit>[KMGT]?i?B)"'
)
# llama.cpp: "llama_kv_cache:        CPU KV buffer size =    45.00 MiB"
_LLAMA_CPP_LINE = re.compile(
    r"(?P<buffer>\S+)\s+(?P<what>model|KV|compute|output) buffer size =\s*(?P<num>[\d.]+) (?P<unit>[KMGT]?i?B)"
)

_OLLAMA_KEYS = {
    "model weights": "ollama_weights",
    "kv cache": "ollama_kv_cache",
    "compute graph": "ollama_compute_graph",
    "total memory": "ollama_total",
}
_LLAMA_CPP_KEYS = {
    "model": "llamacpp_model_buffer",
    "KV": "llamacpp_kv_buffer",
    "compute": "llamacpp_compute_buffer",
    "output": "llamacpp_output_buffer",
}


def _bytes(num: str, unit: str) -> int:
    return round(float(num) * _UNITS[unit])


def parse_memory_log(text: str) -> dict[str, int]:
    """Memory figures (bytes) of the last model load found in `text`, a slice of an Ollama server log.

    Per figure and device (or llama.cpp buffer), the last line wins, since Ollama logs its layout again when
    it retries a load; the figures are then summed over devices. Keys present only when logged:
    ollama_weights, ollama_kv_cache, ollama_compute_graph, ollama_total, llamacpp_model_buffer,
    llamacpp_kv_buffer, llamacpp_compute_buffer, llamacpp_output_buffer.
    """
    latest: dict[tuple[str, str], int] = {}
    for line in text.splitlines():
        if m := _OLLAMA_LINE.search(line):
            device = (m["device"] or "").strip('"')
            latest[(_OLLAMA_KEYS[m["what"]], device)] = _bytes(m["num"], m["unit"])
        elif m := _LLAMA_CPP_LINE.search(line):
            latest[(_LLAMA_CPP_KEYS[m["what"]], m["buffer"])] = _bytes(m["num"], m["unit"])
    out: dict[str, int] = {}
    for (key, _device), value in latest.items():
        out[key] = out.get(key, 0) + value
    return out


def measure(server: OllamaServer, model: str, num_ctx: int, timeout: float = 300.0) -> dict[str, int]:
    """Load `model` on a running `server` at `num_ctx` and return Ollama's figures for that load (bytes)."""
    offset = server.process.log_size()
    entry = server.load(model, options={"num_ctx": num_ctx}, timeout=timeout)
    with open(server.log_path, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    figures = parse_memory_log(text)
    figures["ps_size"] = int(entry["size"])
    figures["ps_size_vram"] = int(entry.get("size_vram", 0))
    figures["num_ctx"] = num_ctx
    ctx = entry.get("context_length")
    if ctx is not None:
        figures["ps_context_length"] = int(ctx)
    return figures


def probe_matrix(binary: Path, num_ctxs: Iterable[int] = (2048, 4096, 8192),
                 num_parallels: Iterable[int] = (1, 2, 4), gguf: Path | None = None,
                 model: str = TEST_MODEL_NAME, workdir: Path | None = None,
                 settings: OllamaSettings | None = None) -> list[dict[str, int]]:
    """Figures for every (num_ctx, num_parallel): one server per num_parallel (a server-wide setting)."""
    results: list[dict[str, int]] = []
    gguf = gguf or smollm2_gguf()
    with tempfile.TemporaryDirectory(prefix="ollama-memprobe-", dir=workdir) as tmp:
        models = Path(tmp) / "models"
        for parallel in num_parallels:
            knobs = replace(settings or OllamaSettings(), num_parallel=parallel, keep_alive="-1")
            server = OllamaServer(binary, Path(tmp) / f"p{parallel}", models, settings=knobs,
                                  name=f"memprobe-p{parallel}")
            try:
                server.start()
                server.ensure_model(model, gguf)
                for ctx in num_ctxs:
                    figures = measure(server, model, ctx)
                    figures["num_parallel"] = parallel
                    results.append(figures)
            finally:
                server.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    """Print the matrix as JSON lines: python -m fleet.local.memory_probe --num-ctx 2048 4096 --num-parallel 1 2"""
    import argparse
    import json

    from fleet.local.ollama_build import ensure_ollama

    parser = argparse.ArgumentParser(description="Ollama's own memory figures for the test model, in bytes")
    parser.add_argument("--num-ctx", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--num-parallel", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--new-engine", action="store_true", help="set OLLAMA_NEW_ENGINE=1")
    args = parser.parse_args(argv)
    settings = OllamaSettings(new_engine=True) if args.new_engine else None
    for row in probe_matrix(ensure_ollama(), args.num_ctx, args.num_parallel, settings=settings):
        print(json.dumps(row, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
