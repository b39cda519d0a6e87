"""Benchmark (c): overload at twice the capacity, this gateway's config against the seed's plain nginx config.

The backend is a fake Ollama node with 4 parallel slots (its NUM_PARALLEL) and an unbounded queue; each answer
takes about 1 s (0.2 s to the first token, then 16 tokens 50 ms apart), so it serves about 4 requests/s. An
open-loop load of twice that arrives for a fixed time; clients give up after --client-timeout seconds.

* this gateway: fleet.render.nginx for a stack whose node has numParallel 4 and gateway.queuePerNode 2
  (max_conns 6 from fleet.capacity), with the dev stack's rate limits. Beyond max_conns it answers 503 with
  Retry-After at once.
* this gateway with gateway.ttftTargetSeconds instead of a fixed queue: the node's measured service time
  (here the fake node's known figures: ~0.95 s per answer, 0.2 s to the first token) and its slots give the
  queue (fleet.capacity.queue_for_ttft_target), for a target of twice the unloaded time to first token and
  for one just above first token + one slot interval (0.2 + 0.95 / 4 s).
* unloaded: this gateway at 1 request/s, the time to first token the targets are compared with.
* the seed: bench/seed_nginx.conf.j2, `limit_req` 10 r/m burst 20 per client IP, no max_conns: what is
  admitted queues in the node (and, for one IP, in nginx's limit_req delay).

Both are loaded from many client addresses (127.0.0.2-65, many users, each under the seed's per-IP rate) and
the seed also from one address (a team behind one NAT address).

Run: .venv/bin/python bench/overload.py [--seconds 15] [--client-timeout 15] [--no-seed]
"""

from __future__ import annotations

import argparse

from common import (
    API_KEY, BENCH_MODEL, REPO, bench_settings, fake_backends, fleet_gateway, machine_line, ms, print_table, seed_gateway, workdir,
)

from fleet import capacity
from fleet.config import Measured
from fleet.stack_file import load_stack
from fleet.ops.loadtest import LoadSpec, percentile, run_load

SLOTS = 4
FIRST_TOKEN_S = 0.2
TOKENS = 16
TOKEN_DELAY_S = 0.05
QUEUE_PER_NODE = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="how long the load arrives")
    parser.add_argument("--client-timeout", type=float, default=15.0)
    parser.add_argument("--ips", type=int, default=64, help="client addresses for the many-users case")
    parser.add_argument("--no-seed", action="store_true", help="leave out the seed nginx scenarios")
    args = parser.parse_args()
    print(machine_line())

    service_s = FIRST_TOKEN_S + (TOKENS - 1) * TOKEN_DELAY_S
    capacity_rps = SLOTS / service_s
    offered = round(2 * capacity_rps, 1)
    many = tuple(f"127.0.0.{i}" for i in range(2, 2 + args.ips))
    limits = load_stack("dev", REPO).settings.gateway.rate_limits  # the dev stack's own rate limits
    settings = bench_settings(
        num_parallel=SLOTS, queue_per_node=QUEUE_PER_NODE,
        per_key_per_minute=limits.per_key_per_minute, per_key_burst=limits.per_key_burst,
        per_ip_per_minute=limits.per_ip_per_minute, per_ip_burst=limits.per_ip_burst,
    )
    max_conns = capacity.max_conns_per_node(settings.node_groups[0], QUEUE_PER_NODE)
    measured = Measured(service_time_seconds=service_s, first_token_seconds=FIRST_TOKEN_S)
    targets = (2 * FIRST_TOKEN_S, round(FIRST_TOKEN_S + service_s / SLOTS + 0.01, 2))
    targeted = {
        target: bench_settings(
            num_parallel=SLOTS, queue_per_node=None, ttft_target_s=target, measured=measured,
            per_key_per_minute=limits.per_key_per_minute, per_key_burst=limits.per_key_burst,
            per_ip_per_minute=limits.per_ip_per_minute, per_ip_burst=limits.per_ip_burst,
        )
        for target in targets
    }
    for target, target_settings in targeted.items():
        group = target_settings.node_groups[0]
        print(f"ttftTargetSeconds {target:g}: queue {capacity.queue_per_node(group, target_settings.gateway)} "
              f"(max_conns {capacity.max_conns_per_node(group, capacity.queue_per_node(group, target_settings.gateway))})")
    print(f"node: {SLOTS} slots, ~{service_s:.2f} s per answer → capacity ~{capacity_rps:.1f} req/s; "
          f"offered {offered} req/s for {args.seconds:g} s; client timeout {args.client_timeout:g} s")
    print(f"this gateway: max_conns {max_conns} per node, per-key {limits.per_key_per_minute} r/m burst {limits.per_key_burst}, "
          f"per-IP {limits.per_ip_per_minute} r/m burst {limits.per_ip_burst}; seed: 10 r/m burst 20 per IP")

    backend_args = ("--slots", str(SLOTS), "--first-token-delay", str(FIRST_TOKEN_S),
                    "--tokens", str(TOKENS), "--token-delay", str(TOKEN_DELAY_S))
    results = {}
    with workdir("overload") as wd:
        scenarios = [
            ("unloaded, 1 req/s", "fleet", many, settings, 1.0),
            (f"this gateway, queuePerNode {QUEUE_PER_NODE}", "fleet", many, settings, offered),
            *[(f"this gateway, ttftTargetSeconds {t:g}", "fleet", many, s, offered) for t, s in targeted.items()],
        ]
        if not args.no_seed:
            scenarios += [("seed nginx, many IPs", "seed", many, settings, offered),
                          ("seed nginx, one IP", "seed", ("127.0.0.2",), settings, offered)]
        for index, (name, kind, sources, scenario_settings, rate) in enumerate(scenarios):
            # a fresh node per scenario: nothing left queued from the previous one
            with fake_backends(1, wd / f"s{index}", *backend_args) as backends:
                gateway_cm = (fleet_gateway(scenario_settings, [backends[0].address], wd / f"s{index}") if kind == "fleet"
                              else seed_gateway([backends[0].address], wd / f"s{index}"))
                with gateway_cm as gateway:
                    spec = LoadSpec(
                        url=gateway.url, api_key=API_KEY, model=BENCH_MODEL, max_tokens=TOKENS, rate=(rate,),
                        duration_s=args.seconds, timeout_s=args.client_timeout, read_timeout_s=args.client_timeout,
                        source_addresses=sources,
                    )
                    results[name] = run_load(spec)

    unloaded_p95 = results["unloaded, 1 req/s"].levels[0].ttft_p95_s or float("nan")
    rows = []
    for name, result in results.items():
        s = result.levels[0]
        records = result.records[result.spec.levels[0]]
        refused = [r for r in records if r.status in (429, 503)]
        with_retry = sum(1 for r in refused if r.retry_after is not None)
        other = s.errors - len(refused) - s.timeouts
        rows.append([
            name, s.requests, s.ok, len(refused), f"{with_retry}/{len(refused)}",
            ms(s.refusal_latency_p50_s), ms(s.refusal_latency_p95_s), s.timeouts, other,
            ms(s.ttft_p50_s), ms(s.ttft_p95_s), f"{(s.ttft_p95_s or float('nan')) / unloaded_p95:.2f}",
            f"{s.throughput_rps:.2f}", f"{s.throughput_rps / capacity_rps:.0%}",
        ])
    print_table(
        "overload at 2x capacity",
        ["config", "sent", "served", "refused", "Retry-After", "refuse p50", "refuse p95", "timeouts", "other errors",
         "admitted TTFT p50", "admitted TTFT p95", "p95 / unloaded p95", "served req/s", "of capacity"],
        rows,
    )
    for name, result in results.items():
        s = result.levels[0]
        print(f"{name}: status {s.status_counts}, errors {s.error_counts}")
    for name, result in results.items():
        if name.startswith("this gateway"):
            waits = [r.ttft_s for r in result.records[offered] if r.ok and r.ttft_s is not None]
            print(f"{name}: admitted TTFT p99 {ms(percentile(waits, 99))} (node service time {service_s:.2f} s)")


if __name__ == "__main__":
    main()
