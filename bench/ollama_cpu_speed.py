"""Benchmark (g): decode and prompt speed of the test bed's Ollama, a baseline build against the current build.

Both binaries serve SmolLM2-135M (Q4_1, the test model) on loopback, one at a time, with one request in
flight: a fixed prompt, temperature 0, a fixed seed, `num_predict` tokens. Tokens per second are Ollama's own
figures (`eval_count / eval_duration`, `prompt_eval_count / prompt_eval_duration` of the final response), so
HTTP and the client are not counted. Runs alternate between the two binaries (A B A B …) so that load from other
jobs on the machine falls on both alike; the table gives the median, the spread (min–max) and the ratio of
medians.

The baseline is a build with Go's default cgo flags (`-O2 -g`, no vector extensions); the current one is what
`fleet.local.ollama_build.ensure_ollama()` returns (built for this CPU's extensions).

Run: .venv/bin/python bench/ollama_cpu_speed.py --baseline ~/.cache/ollama-fleet/ollama-v0.24.0/bin/ollama
     [--repeat 5] [--tokens 64] [--threads N]
"""

from __future__ import annotations

import argparse
import signal
import statistics
from pathlib import Path

import httpx
from common import REPO, machine_line, print_table, workdir  # noqa: F401  (REPO puts the project on sys.path)

from fleet.local.ollama import TEST_MODEL_NAME, OllamaServer, OllamaSettings
from fleet.local.ollama_build import build_profile, ensure_ollama

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def generate(server: OllamaServer, tokens: int, threads: int | None) -> tuple[float, float]:
    """(decode tokens/s, prompt tokens/s) of one request, from Ollama's own timings."""
    options = {"temperature": 0, "seed": 7, "num_predict": tokens, "num_ctx": 2048}
    if threads:
        options["num_thread"] = threads
    body = {"model": TEST_MODEL_NAME, "prompt": PROMPT, "stream": False, "options": options, "keep_alive": "30m"}
    resp = httpx.post(f"{server.base_url}/api/generate", json=body, timeout=600)
    resp.raise_for_status()
    data = resp.json()
    if not data.get("eval_duration") or not data.get("prompt_eval_duration"):
        raise SystemExit(f"{server.name}: the answer has no timings: {data}")
    decode = data["eval_count"] / (data["eval_duration"] / 1e9)
    prompt = data["prompt_eval_count"] / (data["prompt_eval_duration"] / 1e9)
    return decode, prompt


def _exit_on_signal(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="Ollama binary built with Go's default cgo flags")
    parser.add_argument("--current", type=Path, default=None, help="binary to compare (default: ensure_ollama())")
    parser.add_argument("--repeat", type=int, default=5, help="measured requests per binary (after one warm-up)")
    parser.add_argument("--tokens", type=int, default=64, help="num_predict per request")
    parser.add_argument("--threads", type=int, default=None, help="num_thread (default: Ollama's choice)")
    args = parser.parse_args()
    # A `timeout` or Ctrl-C still stops the servers (the finally below).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    print(machine_line())
    current = args.current or ensure_ollama()
    print(f"baseline: {args.baseline}\ncurrent:  {current} (CGO_CFLAGS {build_profile().cflags!r})")

    binaries = {"baseline": args.baseline, "current": current}
    results: dict[str, dict[str, list[float]]] = {name: {"decode": [], "prompt": []} for name in binaries}
    with workdir("cpu-speed") as wd:
        models = wd / "models"
        servers = {}
        try:
            for name, binary in binaries.items():
                settings = OllamaSettings(num_parallel=1, keep_alive="30m")
                servers[name] = OllamaServer(binary, wd / name, models, settings=settings, name=name).start()
                servers[name].ensure_model(TEST_MODEL_NAME)
                servers[name].load(TEST_MODEL_NAME, keep_alive="30m")  # not counted
            for _ in range(args.repeat):
                for name, server in servers.items():
                    decode, prompt = generate(server, args.tokens, args.threads)
                    results[name]["decode"].append(decode)
                    results[name]["prompt"].append(prompt)
        finally:
            for server in servers.values():
                server.stop()

    base = {k: statistics.median(v) for k, v in results["baseline"].items()}
    rows = []
    for name in binaries:
        med = {k: statistics.median(v) for k, v in results[name].items()}
        rows.append([name, spread(results[name]["decode"]), f"{med['decode'] / base['decode']:.2f}",
                     spread(results[name]["prompt"]), f"{med['prompt'] / base['prompt']:.2f}"])
    print_table(
        f"SmolLM2-135M Q4_1, one request at a time, {args.tokens} tokens, median (min–max) of {args.repeat}",
        ["build", "decode tokens/s", "ratio", "prompt tokens/s", "ratio"],
        rows,
    )


if __name__ == "__main__":
    main()
