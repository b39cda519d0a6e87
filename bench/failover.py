"""Benchmark (d): failover under load. One of two nodes is killed (SIGKILL) in the middle of a run.

Two fake nodes (each answer ~0.65 s: 0.2 s before the first token, then 10 tokens 50 ms apart) behind this
project's gateway, loaded by streaming requests arriving at an even rate (open loop, so that at any moment
some requests are still waiting for their first token and others are streaming); node 1 is killed a third of
the way through. Failed requests are split by whether
they had started (response headers received) before failing: a request not yet started should be retried on
the other node by nginx (`proxy_next_upstream ... non_idempotent`), a started stream cannot be.

Run: .venv/bin/python bench/failover.py [--seconds 12] [--rate 12]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from common import (
    API_KEY, BENCH_MODEL, bench_settings, fake_backends, fleet_gateway, machine_line, ms, print_table, workdir,
)

from fleet.ops.loadtest import LoadSpec, percentile, run_load_async

TOKENS = 10
TOKEN_DELAY_S = 0.05
FIRST_TOKEN_S = 0.2  # a node "thinking" before its first token: a request sent but not started


def retried_requests(access_log) -> tuple[int, int]:
    """From the gateway's JSON access log: requests nginx sent to a second node, and how many of them ended 200."""
    import json

    retried = served = 0
    for line in access_log.read_text().splitlines():
        entry = json.loads(line)
        if "," in entry.get("upstream_addr", ""):
            retried += 1
            served += entry["status"] == 200
    return retried, served


async def _run_and_kill(spec: LoadSpec, victim, kill_at: float) -> tuple[object, float]:
    """Run the load; SIGKILL the victim `kill_at` seconds in. Returns the result and the kill time on the
    level's clock (the records' start_s)."""
    killed_at: list[float] = []

    async def killer() -> None:
        await asyncio.sleep(kill_at)
        killed_at.append(time.perf_counter())
        await asyncio.to_thread(victim.process.kill)

    task = asyncio.create_task(killer())
    result = await run_load_async(spec)
    await task
    return result, killed_at[0] - result.level_starts[spec.levels[0]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--rate", type=float, default=12.0, help="requests/s, arriving evenly (open loop)")
    args = parser.parse_args()
    print(machine_line())
    kill_at = args.seconds / 3
    settings = bench_settings(num_parallel=4, queue_per_node=8, count=2)
    backend_args = ("--tokens", str(TOKENS), "--token-delay", str(TOKEN_DELAY_S), "--first-token-delay", str(FIRST_TOKEN_S))

    with workdir("failover") as wd, fake_backends(2, wd, *backend_args) as backends:
        with fleet_gateway(settings, [b.address for b in backends], wd) as gateway:
            spec = LoadSpec(
                url=gateway.url, api_key=API_KEY, model=BENCH_MODEL, max_tokens=TOKENS,
                rate=(args.rate,), duration_s=args.seconds, timeout_s=30, read_timeout_s=30,
            )
            result, killed = asyncio.run(_run_and_kill(spec, backends[0], kill_at))
            resent, resent_served = retried_requests(wd / "gateway" / "logs" / "access.log")

    records = result.records[args.rate]
    failed = [r for r in records if not r.ok]
    # in flight at the kill: sent before it, not finished before it
    in_flight = [r for r in records if r.start_s <= killed <= r.start_s + (r.latency_s or 0) + 0.05]
    streaming = [r for r in in_flight if r.ttft_s is not None and r.start_s + r.ttft_s <= killed]
    waiting = [r for r in in_flight if r not in streaming]
    after = [r for r in records if r.start_s > killed]
    row = [
        len(records), len(failed),
        sum(1 for r in failed if r.phase == "before_first_byte"),
        sum(1 for r in failed if r.phase == "after_first_byte"),
        sum(1 for r in failed if r.error == "http"),
        f"{sum(1 for r in waiting if not r.ok)}/{len(waiting)}",
        f"{sum(1 for r in streaming if not r.ok)}/{len(streaming)}",
        f"{sum(1 for r in after if not r.ok)}/{len(after)}",
        ms(percentile([r.latency_s for r in after if r.ok], 99)),
    ]
    print_table(
        f"failover: this gateway, 2 nodes, {args.rate:g} streaming requests/s for {args.seconds:g} s, "
        f"node 1 killed at {killed:.2f} s",
        ["requests", "failed", "failed before start", "failed after start", "HTTP errors",
         "failed of waiting at kill", "failed of streaming at kill", "failed of sent after kill", "p99 latency after kill"],
        [row],
    )
    s = result.levels[0]
    print(f"status {s.status_counts}, errors {s.error_counts or 'none'}")
    print(f"gateway access log: {resent} request(s) resent to the other node before their first byte, {resent_served} of them served")
    print("(waiting: sent, no token yet — on either node; streaming: first token received — a stream on the killed node is cut)")

if __name__ == "__main__":
    main()
