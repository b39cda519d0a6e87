"""Benchmark (a): the load generator is not the bottleneck.

The generator (fleet loadtest, one Python process) against the trivial fake backend (one token per answer,
no delay): its closed-loop request rate at saturation, the CPU it spends per request, and whether it keeps an
open-loop schedule; then the same load through this project's nginx gateway in front of the same backend, in
the same run, with the CPU nginx spends per request. Comparing the generator's ceiling with the rates the
other benchmarks drive tells whether their figures measure the gateway or the generator.

Run: .venv/bin/python bench/generator_rate.py [--seconds 8]
"""

from __future__ import annotations

import argparse

from common import (
    API_KEY, BENCH_MODEL, bench_settings, cpu_per_request, fake_backends, fleet_gateway, machine_line, measure, pct, print_table,
    workdir,
)

from fleet.ops.loadtest import LoadSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each level")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    print(machine_line())

    with workdir("generator") as wd, fake_backends(1, wd, "--tokens", "1") as backends:
        backend = backends[0]
        base = dict(model=BENCH_MODEL, max_tokens=1, timeout_s=30.0, read_timeout_s=30.0)

        direct = measure(LoadSpec(url=backend.url, concurrency=(args.concurrency,), duration_s=args.seconds, **base), backends)
        max_rate = direct.summary.throughput_rps

        open_rows = []
        for share in (0.25, 0.5, 0.75):
            rate = round(max_rate * share / 10) * 10 or 10
            run = measure(LoadSpec(url=backend.url, rate=(float(rate),), duration_s=args.seconds / 2, **base), backends)
            s = run.summary
            open_rows.append([f"{rate} req/s", s.requests, f"{s.requests / s.wall_s:.0f}", f"{1000 * s.schedule_lag_max_s:.1f} ms",
                              s.errors, pct(run.generator_cpu)])

        with fleet_gateway(bench_settings(num_parallel=64, queue_per_node=1000), [backend.address], wd, access_log=False) as gateway:
            through = measure(
                LoadSpec(url=gateway.url, api_key=API_KEY, concurrency=(args.concurrency,), duration_s=args.seconds, **base),
                backends, gateway,
            )

    rows = []
    for name, run in (("direct to fake backend", direct), ("through the gateway", through)):
        s = run.summary
        rows.append([name, s.requests, s.errors, f"{s.throughput_rps:.0f}", pct(run.generator_cpu), pct(run.backend_cpu),
                     pct(run.gateway_cpu), cpu_per_request(run.generator_cpu, s.throughput_rps),
                     cpu_per_request(run.gateway_cpu, s.throughput_rps)])
    print_table(
        f"closed loop, {args.concurrency} clients, {args.seconds:g} s each (CPU: share of one core)",
        ["target", "requests", "errors", "req/s", "generator CPU", "backend CPU", "nginx CPU", "generator CPU/request",
         "nginx CPU/request"],
        rows,
    )
    print_table("open loop against the fake backend (schedule kept?)", ["offered", "sent", "sent/s", "max lag", "errors", "generator CPU"], open_rows)
    ratio = direct.summary.throughput_rps / max(through.summary.throughput_rps, 1e-9)
    print(f"\ngenerator rate against the trivial backend: {direct.summary.throughput_rps:.0f} req/s")
    print(f"rate through the gateway (same generator, same backend): {through.summary.throughput_rps:.0f} req/s")
    print(f"generator / gateway rate: {ratio:.2f}x")
    gen_ms = 1e3 * direct.generator_cpu / max(direct.summary.throughput_rps, 1e-9)
    gw_ms = 1e3 * through.gateway_cpu / max(through.summary.throughput_rps, 1e-9)
    print(f"CPU per request: generator {gen_ms:.3f} ms, nginx gateway {gw_ms:.3f} ms ({gen_ms / max(gw_ms, 1e-9):.0f}x less)")
    if direct.generator_cpu >= 0.9:
        print("the generator saturated its core first: the rates above are the generator's ceiling on this machine, "
              "and the gateway's own ceiling (CPU per request) lies above it")
    else:
        print("the generator did not saturate its core: the backend or the machine set the rate")


if __name__ == "__main__":
    main()
