"""Benchmark (e): 5,000 simultaneous streaming clients held by the gateway against a fast backend.

Every client opens one streaming request at the same moment; the fake backend streams 10 tokens one second
apart, so all streams stay open together for ~10 s. The same load runs first straight at the backend (the
baseline: what the generator and the backend manage alone), then through this project's gateway rendered
with worker_connections 16384 (each proxied stream holds two connections in one worker). The open-files limit
is raised to the hard limit in this process; nginx and the backend inherit it. Connections held are sampled
from nginx's stub_status and the backend's counters while the streams are open, and nginx's resident memory
(master and workers) with them. The gateway runs twice, each time fresh: on a group's own route
(`/groups/<group>/…`, plain proxying) and on the bare route, where the njs model router picks the group for
every stream first.

Run: .venv/bin/python bench/many_clients.py [--clients 5000]
"""

from __future__ import annotations

import argparse
import resource
import threading
import time

from common import (
    API_KEY, BENCH_MODEL, bench_settings, fake_backends, fleet_gateway, machine_line, ms, print_table, raise_nofile, workdir,
)

from fleet.ops.loadtest import LoadSpec, run_load

TOKENS = 10
TOKEN_DELAY_S = 1.0


class Sampler(threading.Thread):
    """Polls a counter every 0.5 s and keeps its peak."""

    def __init__(self, read) -> None:
        super().__init__(daemon=True)
        self.read = read
        self.peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.5):
            try:
                self.peak = max(self.peak, self.read())
            except Exception:  # a busy server may not answer one poll; the next one counts
                pass

    def stop(self) -> int:
        self._halt.set()
        self.join(timeout=10)
        return self.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=5000)
    args = parser.parse_args()
    nofile = raise_nofile(4 * args.clients + 1000)
    print(machine_line())
    print(f"open files limit: {nofile}")
    if nofile < 2 * args.clients + 100:
        print(f"warning: the open-files limit {nofile} is below what {args.clients} proxied streams need")

    settings = bench_settings(num_parallel=64, queue_per_node=args.clients)
    spec_args = dict(model=BENCH_MODEL, max_tokens=TOKENS, concurrency=(args.clients,), requests=args.clients,
                     timeout_s=120, read_timeout_s=30, connect_timeout_s=60)
    rows = []
    statuses = {}
    with workdir("many") as wd, fake_backends(1, wd, "--tokens", str(TOKENS), "--token-delay", str(TOKEN_DELAY_S)) as backends:
        backend = backends[0]
        group = settings.node_groups[0].name
        for name in ("direct to backend", "gateway, unrouted (/groups/…)", "gateway, routed by model"):
            held_backend = Sampler(lambda: backend.stats()["active"])
            if name == "direct to backend":
                held_gateway = memory = None
                held_backend.start()
                started = time.perf_counter()
                result = run_load(LoadSpec(url=backend.url, **spec_args))
            else:
                with fleet_gateway(settings, [backend.address], wd / name.split()[1].strip(","),
                                   worker_connections=16384, access_log=False) as gateway:
                    url = gateway.url if "routed by model" in name else gateway.unrouted_url(group)
                    held_gateway = Sampler(gateway.active_connections)
                    memory = Sampler(gateway.rss_bytes)
                    for sampler in (held_gateway, memory, held_backend):
                        sampler.start()
                    started = time.perf_counter()
                    result = run_load(LoadSpec(url=url, api_key=API_KEY, **spec_args))
            wall = time.perf_counter() - started
            peak_backend = held_backend.stop()
            peak_gateway = held_gateway.stop() if held_gateway else None
            peak_memory = memory.stop() if memory else None
            s = result.levels[0]
            statuses[name] = (s.status_counts, s.error_counts)
            rows.append([
                name, s.requests, s.ok, s.errors, "-" if peak_gateway is None else peak_gateway, peak_backend,
                "-" if peak_memory is None else f"{peak_memory / 2**20:.0f} MiB",
                ms(s.ttft_p50_s), ms(s.ttft_p99_s), f"{s.latency_p99_s:.1f} s" if s.latency_p99_s else "-", f"{wall:.1f} s",
            ])
    print_table(
        f"{args.clients} simultaneous streams, {TOKENS} tokens {TOKEN_DELAY_S:g} s apart",
        ["target", "clients", "completed", "errors", "peak held by nginx", "peak open at backend",
         "nginx peak memory", "TTFT p50", "TTFT p99", "latency p99", "wall"],
        rows,
    )
    for name, (status, errors) in statuses.items():
        print(f"{name}: status {status}, errors {errors or 'none'}")
    print(f"generator peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
