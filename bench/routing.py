"""Benchmark: what routing by model costs per request, against the same gateway without it, in one run.

One gateway (rendered by fleet.render.nginx, plain HTTP) in front of a fast fake backend (16 streamed
tokens 1 ms apart). The same requests go three ways, alternating: straight to the backend, through the
gateway's group route `/groups/<group>/v1/chat/completions` (plain proxying: the unrouted baseline), and
through the bare `/v1/chat/completions`, where the njs router reads the body's `model` and redirects to the
group. Open loop at the same rate for each (140 req/s by default): latency and TTFT p50/p99, what the router
adds over the unrouted route, and nginx's CPU time per request on each route.

Run: .venv/bin/python bench/routing.py [--rate 140] [--seconds 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from common import (
    API_KEY, BENCH_MODEL, bench_settings, cpu_per_request, fake_backends, fleet_gateway, machine_line, measure, ms,
    print_table, workdir,
)

from fleet.ops.loadtest import LoadSpec, percentile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=140.0, help="requests per second offered to every target")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the three targets")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--token-delay", type=float, default=0.001)
    args = parser.parse_args()
    print(machine_line())
    began = time.perf_counter()

    with workdir("routing") as wd, fake_backends(1, wd, "--tokens", str(args.tokens), "--token-delay", str(args.token_delay)) as backends:
        backend = backends[0]
        settings = bench_settings(num_parallel=64, queue_per_node=1000)
        group = settings.node_groups[0].name
        with fleet_gateway(settings, [backend.address], wd, access_log=True) as gateway:
            targets = {
                "direct": (backend.url, None, None),
                "gateway, unrouted (/groups/…)": (gateway.unrouted_url(group), API_KEY, gateway),
                "gateway, routed by model": (gateway.url, API_KEY, gateway),
            }
            base = dict(model=BENCH_MODEL, api="openai", max_tokens=args.tokens, timeout_s=30.0, read_timeout_s=30.0)
            runs: dict[str, list] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, (url, key, gw) in targets.items():
                    spec = LoadSpec(url=url, api_key=key, rate=(args.rate,), duration_s=args.seconds, **base)
                    runs[name].append(measure(spec, backends, gw))
            routed_log = [e for e in gateway_log(gateway) if e.get("uri") == "/v1/chat/completions"]

    def pooled(name: str, field: str, q: float) -> float | None:
        values = [getattr(r, field) for m in runs[name] for r in m.records if r.ok and getattr(r, field) is not None]
        return percentile(values, q)

    rows = []
    for name, measured in runs.items():
        rate = statistics.mean(m.summary.throughput_rps for m in measured)
        cpu = statistics.mean(m.gateway_cpu for m in measured) if measured[0].gateway_cpu is not None else None
        rows.append([
            name, sum(m.summary.requests for m in measured), sum(m.summary.errors for m in measured), f"{rate:.0f}",
            ms(pooled(name, "ttft_s", 50)), ms(pooled(name, "ttft_s", 99)),
            ms(pooled(name, "latency_s", 50)), ms(pooled(name, "latency_s", 99)), cpu_per_request(cpu, rate),
        ])
    print_table(
        f"open loop at {args.rate:g} req/s, {args.rounds} × {args.seconds:g} s per target, {args.tokens} tokens "
        f"{1000 * args.token_delay:g} ms apart (percentiles over all rounds)",
        ["target", "requests", "errors", "req/s", "TTFT p50", "TTFT p99", "latency p50", "latency p99",
         "nginx CPU/request"],
        rows,
    )
    unrouted, routed = "gateway, unrouted (/groups/…)", "gateway, routed by model"
    for field, label in (("ttft_s", "TTFT"), ("latency_s", "latency")):
        for q in (50, 99):
            added = pooled(routed, field, q) - pooled(unrouted, field, q)
            print(f"routing adds to {label} p{q} at {args.rate:g} req/s: {ms(added)}")
    cpu = {name: statistics.mean(m.gateway_cpu / max(m.summary.throughput_rps, 1e-9) for m in runs[name])
           for name in (unrouted, routed)}
    print(f"nginx CPU per request: unrouted {1000 * cpu[unrouted]:.3f} ms, routed {1000 * cpu[routed]:.3f} ms "
          f"(routing step {1000 * (cpu[routed] - cpu[unrouted]):.3f} ms)")
    groups = {e.get("group") for e in routed_log}
    print(f"routed requests in the access log: {len(routed_log)}, group(s) named: {', '.join(sorted(groups))}")
    print(f"elapsed {time.perf_counter() - began:.1f} s")


def gateway_log(gateway) -> list[dict]:
    path = gateway.conf.parent / "logs" / "access.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    main()
