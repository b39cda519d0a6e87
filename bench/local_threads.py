"""Two Ollama nodes on one machine: each runner on every core (Ollama's default) against the CPUs shared out
(`num_thread`, as `fleet local up` sizes them), with one node alone as the baseline.

For each setting, one streamed request per node at the same time (a few rounds); the figures are Ollama's own
decode speed of each answer (eval_count / eval_duration) and the two nodes' tokens per second together, as
ratios to one node serving alone with every core. Bounded: short answers, a fixed number of rounds.

    .venv/bin/python bench/local_threads.py [--rounds 3] [--tokens 48]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from common import machine_line, print_table, workdir

from fleet.local.ollama import TEST_MODEL_NAME, OllamaServer, smollm2_gguf
from fleet.local.ollama_build import ensure_ollama
from fleet.local.sizing import plan_threads, usable_cpus

PROMPT = "Write a short paragraph about the sea."


def generate(server: OllamaServer, model: str, tokens: int) -> tuple[float, int, float]:
    """(decode tokens/s by Ollama's count, tokens, wall seconds) of one streamed-off answer."""
    started = time.perf_counter()
    body = {"model": model, "prompt": PROMPT, "stream": False, "options": {"num_predict": tokens, "temperature": 0}}
    reply = httpx.post(f"{server.base_url}/api/generate", json=body, timeout=600).json()
    return reply["eval_count"] / (reply["eval_duration"] / 1e9), reply["eval_count"], time.perf_counter() - started


def run(servers: list[OllamaServer], model: str, tokens: int, rounds: int) -> tuple[float, float]:
    """Median decode speed of one answer, and all nodes' tokens per second together (median over rounds)."""
    speeds, totals = [], []
    with ThreadPoolExecutor(len(servers)) as pool:
        for _ in range(rounds):
            started = time.perf_counter()
            results = list(pool.map(lambda s: generate(s, model, tokens), servers))
            wall = time.perf_counter() - started
            speeds += [r[0] for r in results]
            totals.append(sum(r[1] for r in results) / wall)
    return statistics.median(speeds), statistics.median(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    # A terminated run stops its Ollama servers (they run in their own sessions) through the `finally` below.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    binary, gguf, cpus = ensure_ollama(), smollm2_gguf(), usable_cpus()
    sized = plan_threads([2], [None], cpus)[1][0]
    print(machine_line(), f"(usable: {cpus})")
    rows = []
    with workdir("threads") as root:
        models = root / "models"
        settings = [("one node, every core (baseline)", 1, None), ("two nodes, every core each", 2, None),
                    (f"two nodes, {sized} thread(s) each (sized)", 2, sized)]
        baseline = None
        for label, nodes, threads in settings:
            servers = [OllamaServer(binary, root / f"{nodes}-{threads}-{i}", models, name=f"bench-{i}") for i in range(nodes)]
            model = f"bench-threads-{threads or 'all'}"
            try:
                for server in servers:
                    server.start()
                servers[0].import_gguf(model, gguf, parameters={"num_thread": threads} if threads else None)
                for server in servers:
                    server.load(model, options={})  # loaded before timing
                speed, total = run(servers, model, args.tokens, args.rounds)
            finally:
                for server in servers:
                    server.stop()
            baseline = baseline or (speed, total)
            rows.append([label, f"{speed:.1f}", f"{speed / baseline[0]:.2f}", f"{total:.1f}", f"{total / baseline[1]:.2f}"])
    print_table(
        f"{TEST_MODEL_NAME} on loopback, {args.rounds} rounds of one {args.tokens}-token answer per node",
        ["setting", "decode tok/s (one answer)", "× baseline", "tok/s (all nodes)", "× baseline"],
        rows,
    )


if __name__ == "__main__":
    main()
