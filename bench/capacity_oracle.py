"""fleet.capacity against Ollama v0.24.0's own code (tools/ollama-oracle) on the matrix of catalog models.

Prints the number of cases, the verdicts that differ (false "fits" separately) and, per term, the largest
deviation of the estimate from what Ollama computes. Usage: .venv/bin/python bench/capacity_oracle.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "oracle"))

from oracle_matrix import TERMS, VERSION, boundary_cases, compare, grid_cases  # noqa: E402


def main() -> None:
    started = time.monotonic()
    cases = grid_cases() + boundary_cases()
    results = compare(cases)
    boundary = [r for r in results if r.case.kind == "boundary"]
    differ = [r for r in results if r.fleet_fits != r.oracle_fits]
    false_fits = [r for r in differ if r.fleet_fits]
    print(f"# fleet.capacity against Ollama v{VERSION} fs/ggml on sparse GGUF files, headroom 0, one GPU")
    print(f"cases: {len(results)} ({len(boundary)} within ±2% of the fit limit); models: {len({r.case.ref for r in results})}")
    print(f"verdicts: fits {sum(r.oracle_fits for r in results)}, does not fit {sum(not r.oracle_fits for r in results)}")
    print(f"verdicts that differ: {len(differ)}; false fits: {len(false_fits)}")
    print(f"{'term':<14} {'max deviation':>14}  worst case")
    for term in TERMS:
        worst = max(results, key=lambda r: abs(r.deviation(term)))
        case = worst.case
        print(f"{term:<14} {worst.deviation(term):>+13.4%}  {case.ref} {case.quantization} {case.num_ctx}×{case.num_parallel} {case.kv_cache_type} {case.instance}")
    print(f"elapsed: {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
