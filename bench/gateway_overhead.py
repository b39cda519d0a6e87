"""Benchmark (b): what the gateway adds over going direct, both measured in one run on a fast backend.

A fast fake backend (16 streamed tokens 1 ms apart: every token its own chunk, as a model streams them, but
a thousand times faster) is loaded directly and through this project's nginx gateway
(rendered by fleet.render.nginx; plain HTTP and TLS), alternating targets:

1. saturation, closed loop: throughput through the gateway against direct (the ratio), with the CPU each
   party used, so the saturated party is visible;
2. equal offered load, open loop at a quarter of the gateway's saturated rate, alternating targets again:
   latency and TTFT p50/p99 direct and through the gateway; the added p99 is the gateway's cost per request
   at that load. nginx's CPU time per request is printed too (from /proc, unaffected by other load).

Run: .venv/bin/python bench/gateway_overhead.py [--seconds 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics

from common import (
    API_KEY, BENCH_MODEL, bench_settings, cpu_per_request, fake_backends, fleet_gateway, machine_line, measure, ms, pct, print_table,
    workdir,
)

from fleet.ops.loadtest import LoadSpec, percentile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of direct / gateway at saturation")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--token-delay", type=float, default=0.001,
                        help="seconds between tokens: each token its own chunk on both paths, as a model streams them")
    args = parser.parse_args()
    print(machine_line())

    with workdir("overhead") as wd, fake_backends(1, wd, "--tokens", str(args.tokens), "--token-delay", str(args.token_delay)) as backends:
        backend = backends[0]
        settings = bench_settings(num_parallel=64, queue_per_node=1000)
        with fleet_gateway(settings, [backend.address], wd / "plain", access_log=True) as plain, \
             fleet_gateway(settings, [backend.address], wd / "tls", tls=True, access_log=True) as tls:
            targets = {
                "direct": (backend.url, None, None),
                "gateway (http)": (plain.url, API_KEY, plain),
                "gateway (TLS)": (tls.url, API_KEY, tls),
            }
            base = dict(model=BENCH_MODEL, max_tokens=args.tokens, timeout_s=30.0, read_timeout_s=30.0, verify_tls=False)

            saturation: dict[str, list] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, (url, key, gw) in targets.items():
                    spec = LoadSpec(url=url, api_key=key, concurrency=(args.concurrency,), duration_s=args.seconds, **base)
                    saturation[name].append(measure(spec, backends, gw))

            gateway_rate = statistics.mean(m.summary.throughput_rps for m in saturation["gateway (http)"])
            # a quarter of the gateway's saturated rate: every party has spare CPU, so added latency is the hop
            rate = max(10.0, round(gateway_rate / 4 / 10) * 10)
            equal: dict[str, list] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, (url, key, gw) in targets.items():
                    spec = LoadSpec(url=url, api_key=key, rate=(rate,), duration_s=args.seconds, **base)
                    equal[name].append(measure(spec, backends, gw))

    rows = []
    direct_rate = statistics.mean(m.summary.throughput_rps for m in saturation["direct"])
    for name, runs in saturation.items():
        r = statistics.mean(m.summary.throughput_rps for m in runs)
        gateway_cpu = statistics.mean(m.gateway_cpu for m in runs) if runs[0].gateway_cpu is not None else None
        rows.append([
            name, sum(m.summary.requests for m in runs), sum(m.summary.errors for m in runs), f"{r:.0f}",
            f"{r / direct_rate:.2f}", pct(statistics.mean(m.generator_cpu for m in runs)),
            pct(statistics.mean(m.backend_cpu for m in runs)), pct(gateway_cpu), cpu_per_request(gateway_cpu, r),
        ])
    print_table(
        f"saturation: closed loop, {args.concurrency} clients, {args.rounds} × {args.seconds:g} s per target, "
        f"{args.tokens} tokens per answer {1000 * args.token_delay:g} ms apart (CPU: share of one core)",
        ["target", "requests", "errors", "req/s", "ratio to direct", "generator CPU", "backend CPU", "nginx CPU",
         "nginx CPU/request"],
        rows,
    )

    def pooled(name: str, field: str, q: float) -> float | None:
        values = [getattr(r, field) for m in equal[name] for r in m.records if r.ok and getattr(r, field) is not None]
        return percentile(values, q)

    rows = []
    for name, runs in equal.items():
        rows.append([
            name, sum(m.summary.requests for m in runs), sum(m.summary.errors for m in runs),
            ms(pooled(name, "ttft_s", 50)), ms(pooled(name, "ttft_s", 99)),
            ms(pooled(name, "latency_s", 50)), ms(pooled(name, "latency_s", 99)),
            "-" if name == "direct" else ms(pooled(name, "ttft_s", 50) - pooled("direct", "ttft_s", 50)),
            "-" if name == "direct" else ms(pooled(name, "ttft_s", 99) - pooled("direct", "ttft_s", 99)),
            "-" if name == "direct" else ms(pooled(name, "latency_s", 50) - pooled("direct", "latency_s", 50)),
            "-" if name == "direct" else ms(pooled(name, "latency_s", 99) - pooled("direct", "latency_s", 99)),
        ])
    print_table(
        f"equal load: open loop at {rate:g} req/s, {args.rounds} × {args.seconds:g} s per target (percentiles over all rounds)",
        ["target", "requests", "errors", "TTFT p50", "TTFT p99", "latency p50", "latency p99",
         "added TTFT p50", "added TTFT p99", "added latency p50", "added latency p99"],
        rows,
    )
    plain_ratio = statistics.mean(m.summary.throughput_rps for m in saturation["gateway (http)"]) / direct_rate
    tls_ratio = statistics.mean(m.summary.throughput_rps for m in saturation["gateway (TLS)"]) / direct_rate
    print(f"\nthroughput ratio gateway/direct: http {plain_ratio:.2f}, TLS {tls_ratio:.2f}")
    direct_p99 = pooled("direct", "latency_s", 99)
    print(f"added p99 latency at {rate:g} req/s: http {ms(pooled('gateway (http)', 'latency_s', 99) - direct_p99)}, "
          f"TLS {ms(pooled('gateway (TLS)', 'latency_s', 99) - direct_p99)}")
    direct_ttft = pooled("direct", "ttft_s", 99)
    print(f"added p99 TTFT at {rate:g} req/s: http {ms(pooled('gateway (http)', 'ttft_s', 99) - direct_ttft)}, "
          f"TLS {ms(pooled('gateway (TLS)', 'ttft_s', 99) - direct_ttft)}")


if __name__ == "__main__":
    main()
