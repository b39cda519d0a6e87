"""llama.cpp's compute buffer against the estimate used for llama-server (Ollama v0.30+).

Loads a small untied llama GGUF (tests/e2e/test_capacity_real.py) in the test bed's Ollama v0.24.0, whose
llama.cpp runner logs `compute buffer size`, with flash attention on and off, at several num_ctx ×
num_parallel, and prints the measured buffer next to fleet.capacity_terms.llama_server_graph. Usage:
.venv/bin/python bench/llama_cpp_compute_buffer.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

from test_capacity_real import write_untied_llama  # noqa: E402

from fleet.capacity_terms import llama_server_graph  # noqa: E402
from fleet.gguf_arch import read_arch  # noqa: E402
from fleet.local.memory_probe import probe_matrix  # noqa: E402
from fleet.local.ollama import OllamaSettings  # noqa: E402
from fleet.local.ollama_build import ensure_ollama  # noqa: E402


def main() -> None:
    binary = ensure_ollama()
    with tempfile.TemporaryDirectory(prefix="compute-buffer-") as tmp:
        path = write_untied_llama(Path(tmp) / "untied.gguf")
        arch = read_arch(path)
        print("# llama.cpp compute buffer (Ollama v0.24.0 runner, CPU) against llama_server_graph, batch 512")
        print(f"{'flash':>5} {'num_ctx':>7} {'parallel':>8} {'measured':>10} {'estimate':>10} {'ratio':>6}")
        for flash in (True, False):
            rows = probe_matrix(binary, (1024, 4096), (1, 4), gguf=path, model="untied-test", workdir=Path(tmp),
                                settings=OllamaSettings(flash_attention=flash))
            for row in rows:
                measured = row["llamacpp_compute_buffer"]
                estimate = llama_server_graph(arch, row["num_ctx"], 512, flash)
                print(f"{'on' if flash else 'off':>5} {row['num_ctx']:>7} {row['num_parallel']:>8} {measured:>10} {estimate:>10} {estimate / measured:>6.2f}")


if __name__ == "__main__":
    main()
