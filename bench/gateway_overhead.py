"""Benchmark (b): what the gateway adds over going direct, both measured in one run on a fast backend.

A fast fake backend (16 streamed tokens, no delay) is loaded directly and through this project's nginx gateway
(rendered by fleet.render.nginx; plain HTTP and TLS), alternating targets:

1. saturation, closed loop: throughput through the gateway against direct (the ratio), with the CPU each
   party used, so the saturated party is visible;
2. equal offered load, open loop at half the gateway's saturated rate: latency and TTFT p50/p99 direct and
   through the gateway; the added p99 is the gateway's cost per request at that load.

Run: .venv/bin/python bench/gateway_overhead.py [--seconds 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics

from common import (
    API_KEY, bench_settings, fake_backends, fleet_gateway, machine_line, measure, ms, pct, print_table, workdir,
)

from fleet.loadtest import LoadSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of direct / gateway at saturation")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    print(machine_line())

    with workdir("overhead") as wd, fake_backends(1, wd, "--tokens", str(args.tokens)) as backends:
        backend = backends[0]
        settings = bench_settings(num_parallel=64, queue_per_node=1000)
        with fleet_gateway(settings, [backend.address], wd / "plain", access_log=True) as plain, \
             fleet_gateway(settings, [backend.address], wd / "tls", tls=True, access_log=True) as tls:
            targets = {
                "direct": (backend.url, None, None),
                "gateway (http)": (plain.url, API_KEY, plain),
                "gateway (TLS)": (tls.url, API_KEY, tls),
            }
            base = dict(model="fake", max_tokens=args.tokens, timeout_s=30.0, read_timeout_s=30.0, verify_tls=False)

            saturation: dict[str, list] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, (url, key, gw) in targets.items():
                    spec = LoadSpec(url=url, api_key=key, concurrency=(args.concurrency,), duration_s=args.seconds, **base)
                    saturation[name].append(measure(spec, backends, gw))

            gateway_rate = statistics.mean(m.summary.throughput_rps for m in saturation["gateway (http)"])
            rate = max(10.0, round(gateway_rate / 2 / 10) * 10)
            equal: dict[str, object] = {}
            for name, (url, key, gw) in targets.items():
                spec = LoadSpec(url=url, api_key=key, rate=(rate,), duration_s=args.seconds, **base)
                equal[name] = measure(spec, backends, gw)

    rows = []
    direct_rate = statistics.mean(m.summary.throughput_rps for m in saturation["direct"])
    for name, runs in saturation.items():
        r = statistics.mean(m.summary.throughput_rps for m in runs)
        rows.append([
            name, sum(m.summary.requests for m in runs), sum(m.summary.errors for m in runs), f"{r:.0f}",
            f"{r / direct_rate:.2f}", pct(statistics.mean(m.generator_cpu for m in runs)),
            pct(statistics.mean(m.backend_cpu for m in runs)),
            pct(statistics.mean(m.gateway_cpu for m in runs)) if runs[0].gateway_cpu is not None else "-",
        ])
    print_table(
        f"saturation: closed loop, {args.concurrency} clients, {args.rounds} × {args.seconds:g} s per target, "
        f"{args.tokens} tokens per answer (CPU: share of one core)",
        ["target", "requests", "errors", "req/s", "ratio to direct", "generator CPU", "backend CPU", "nginx CPU"],
        rows,
    )

    rows = []
    d = equal["direct"].summary
    for name, m in equal.items():
        s = m.summary
        rows.append([
            name, s.requests, s.errors, ms(s.ttft_p50_s), ms(s.ttft_p99_s), ms(s.latency_p50_s), ms(s.latency_p99_s),
            "-" if name == "direct" else ms(s.latency_p99_s - d.latency_p99_s),
            "-" if name == "direct" else ms(s.latency_p50_s - d.latency_p50_s),
        ])
    print_table(
        f"equal load: open loop at {rate:g} req/s for {args.seconds:g} s per target",
        ["target", "requests", "errors", "TTFT p50", "TTFT p99", "latency p50", "latency p99", "added p99", "added p50"],
        rows,
    )
    plain_ratio = statistics.mean(m.summary.throughput_rps for m in saturation["gateway (http)"]) / direct_rate
    tls_ratio = statistics.mean(m.summary.throughput_rps for m in saturation["gateway (TLS)"]) / direct_rate
    print(f"\nthroughput ratio gateway/direct: http {plain_ratio:.2f}, TLS {tls_ratio:.2f}")
    print(f"added p99 latency at {rate:g} req/s: http {ms(equal['gateway (http)'].summary.latency_p99_s - d.latency_p99_s)}, "
          f"TLS {ms(equal['gateway (TLS)'].summary.latency_p99_s - d.latency_p99_s)}")


if __name__ == "__main__":
    main()
