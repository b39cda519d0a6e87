"""Overhead of the metering pass-through: the same load sent direct to a fast fake Ollama and through
`python -m fleet.exporters.meter`, in one run, phases interleaved (direct, metered, direct, metered, …).

The backend answers instantly (or with a fixed delay per token), so the figures show the exporter's own
cost: throughput ratio, added p50/p99 latency and time to first token. Every process runs on this
machine's cores, so the load generator and the backend compete with the exporter for CPU; the
measured ratio is therefore a pessimistic one.

    .venv/bin/python bench/exporter_overhead.py [--concurrency 16] [--seconds 6] [--rounds 2] [--tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from common import FAKE_OLLAMA, free_port
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench:1b"


@dataclass
class Phase:
    requests: int = 0
    tokens: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latency: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)

    def merge(self, other: Phase) -> None:
        self.requests += other.requests
        self.tokens += other.tokens
        self.errors += other.errors
        self.elapsed += other.elapsed
        self.latency += other.latency
        self.ttft += other.ttft

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _wait_ready(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as client:
        while True:
            try:
                async with client.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up")
            await asyncio.sleep(0.1)


async def _one(client: aiohttp.ClientSession, url: str, body: bytes, phase: Phase) -> None:
    started = time.perf_counter()
    first = None
    tokens = 0
    try:
        async with client.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            if resp.status != 200:
                await resp.read()
                phase.errors += 1
                return
            async for line in resp.content:
                if first is None and b'"response":"' in line and b'"response":""' not in line:
                    first = time.perf_counter()
                if line.endswith(b"\n") and b'"done":true' in line:
                    tokens = json.loads(line)["eval_count"]
    except aiohttp.ClientError:
        phase.errors += 1
        return
    end = time.perf_counter()
    phase.requests += 1
    phase.tokens += tokens
    phase.latency.append(end - started)
    if first is not None:
        phase.ttft.append(first - started)


async def _run_phase(base: str, concurrency: int, seconds: float) -> Phase:
    phase = Phase()
    url = f"{base}/api/generate"
    body = json.dumps({"model": MODEL, "prompt": "measure the pass-through overhead", "stream": True}).encode()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as client:
        # A short warm-up opens the keep-alive connections outside the measured window.
        await asyncio.gather(*(_one(client, url, body, Phase()) for _ in range(concurrency)))
        stop = time.perf_counter() + seconds
        started = time.perf_counter()

        async def worker() -> None:
            while time.perf_counter() < stop:
                await _one(client, url, body, phase)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        phase.elapsed = time.perf_counter() - started
    return phase


async def _scrape(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as client, client.get(url) as resp:
        text = await resp.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model") == MODEL and s.name in ("ollama_inference_requests_total", "ollama_inference_tokens_total"):
                key = s.name + ("/" + s.labels.get("type", s.labels.get("status", "")))
                values[key] = values.get(key, 0.0) + s.value
    return values


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _row(name: str, p: Phase) -> str:
    return (
        f"| {name:<9} | {p.requests:>8} | {p.rps:>8.1f} | {p.tokens / p.elapsed if p.elapsed else 0:>9.0f} | "
        f"{_pct(p.latency, 0.5) * 1e3:>8.2f} | {_pct(p.latency, 0.99) * 1e3:>8.2f} | "
        f"{_pct(p.ttft, 0.5) * 1e3:>8.2f} | {_pct(p.ttft, 0.99) * 1e3:>8.2f} | {p.errors:>6} |"
    )


async def scenario(args: argparse.Namespace, token_delay: float) -> tuple[Phase, Phase, dict[str, float], float | None]:
    backend_port, proxy_port, metrics_port = free_port(), free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    backend = await asyncio.create_subprocess_exec(
        sys.executable, str(FAKE_OLLAMA), "--port", str(backend_port), "--tokens", str(args.tokens),
        "--token-delay", str(token_delay), "--loaded", MODEL,
        cwd=ROOT, env=env,
    )
    exporter = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleet.exporters.meter", "--upstream", f"http://127.0.0.1:{backend_port}",
        "--listen", f"127.0.0.1:{proxy_port}", "--metrics-listen", f"127.0.0.1:{metrics_port}",
        "--node", "bench", "--ps-interval", "5", "--log-level", "WARNING",
        cwd=ROOT, env=env,
    )
    try:
        await _wait_ready(f"http://127.0.0.1:{backend_port}/api/version")
        await _wait_ready(f"http://127.0.0.1:{metrics_port}/healthz")
        direct, metered = Phase(), Phase()
        exporter_cpu = 0.0
        for _ in range(args.rounds):
            direct.merge(await _run_phase(f"http://127.0.0.1:{backend_port}", args.concurrency, args.seconds))
            cpu_before = _cpu_seconds(exporter.pid)
            metered.merge(await _run_phase(f"http://127.0.0.1:{proxy_port}", args.concurrency, args.seconds))
            cpu_after = _cpu_seconds(exporter.pid)
            exporter_cpu = None if cpu_before is None or cpu_after is None else exporter_cpu + cpu_after - cpu_before
        counted = await _scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        return direct, metered, counted, exporter_cpu
    finally:
        for proc in (exporter, backend):
            proc.terminate()
        for proc in (exporter, backend):
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each measured phase")
    parser.add_argument("--rounds", type=int, default=2, help="direct/metered phase pairs per scenario")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per streamed answer")
    parser.add_argument(
        "--token-delays", default="0,0.02", help="comma-separated seconds between tokens, one scenario each"
    )
    args = parser.parse_args()
    print(
        f"# exporter overhead: {args.concurrency} concurrent streaming /api/generate, {args.tokens} tokens each, "
        f"{args.rounds}×{args.seconds:g}s per side"
    )
    print(f"# {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}")
    for delay in (float(d) for d in args.token_delays.split(",")):
        direct, metered, counted, exporter_cpu = await scenario(args, delay)
        label = "instant backend" if delay == 0 else f"backend at {1 / delay:g} tokens/s per stream"
        print(f"\n## {label} (token delay {delay * 1e3:g} ms)\n")
        print("| path      | requests |    req/s |  tokens/s | p50 ms   | p99 ms   | TTFT p50 | TTFT p99 | errors |")
        print("|-----------|---------:|---------:|----------:|---------:|---------:|---------:|---------:|-------:|")
        print(_row("direct", direct))
        print(_row("metered", metered))
        ratio = metered.rps / direct.rps if direct.rps else float("nan")
        print(
            f"\nthroughput metered/direct: {ratio:.3f}; added latency p50 "
            f"{(_pct(metered.latency, 0.5) - _pct(direct.latency, 0.5)) * 1e3:+.2f} ms, p99 "
            f"{(_pct(metered.latency, 0.99) - _pct(direct.latency, 0.99)) * 1e3:+.2f} ms; added TTFT p50 "
            f"{(_pct(metered.ttft, 0.5) - _pct(direct.ttft, 0.5)) * 1e3:+.2f} ms, p99 "
            f"{(_pct(metered.ttft, 0.99) - _pct(direct.ttft, 0.99)) * 1e3:+.2f} ms"
        )
        if exporter_cpu is not None:
            # Independent of what else runs on the machine: the exporter's own CPU per request and per token
            # (warm-up requests of the metered phases included, as they ran inside the measured CPU window).
            served = metered.requests + args.rounds * args.concurrency
            print(
                f"exporter CPU: {exporter_cpu:.2f} s for {served} requests = {exporter_cpu / served * 1e3:.3f} ms per "
                f"request, {exporter_cpu / (served * args.tokens) * 1e6:.1f} µs per streamed token "
                f"(one core meters ≈ {served * args.tokens / exporter_cpu if exporter_cpu else float('inf'):,.0f} tokens/s)"
            )
        # The exporter counted every metered request (warm-ups included) and the tokens they carried.
        warmups = args.rounds * args.concurrency
        print(
            f"exporter counted {counted.get('ollama_inference_requests_total/200', 0):.0f} requests "
            f"(measured {metered.requests} + warm-up {warmups}) and "
            f"{counted.get('ollama_inference_tokens_total/completion', 0):.0f} completion tokens "
            f"(expected {(metered.requests + warmups) * args.tokens})"
        )


if __name__ == "__main__":
    asyncio.run(main())
