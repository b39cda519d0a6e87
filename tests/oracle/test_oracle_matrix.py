"""fleet.capacity against Ollama v0.24.0's own code on sparse GGUF files of every catalog model.

What the oracle reaches (fs/ggml and ml of github.com/ollama/ollama v0.24.0): per-layer weights, the KV
cache, partial/full graph estimates, the one-layer buffer, the 457 MiB minimum, and the runner settings
(flash attention, KV cache type, slots, engine). Verdicts are for one GPU at headroom 0.

What it cannot reach, and where those terms are tested instead:
* the multi-GPU layout (`assignLayers`/`findBestFit`/`greedyFit` are unexported in package llm): by hand
  against the source in tests/unit/test_capacity.py (whole layers, output layer on one GPU, spread);
* graphs and caches that Ollama's own engine measures while loading (qwen3, gemma3, nomic-bert): against
  the real v0.24.0 binary in tests/unit/test_capacity.py::test_estimate_against_a_real_ollama and
  tests/e2e/test_capacity_real.py;
* the v0.30+ rules (llama-server cannot be built here): by hand against v0.32.15's source in
  tests/unit/test_ollama_rules.py.
"""

from __future__ import annotations

import os

import pytest
from oracle_matrix import (
    TERMS,
    boundary_cases,
    compare,
    engine_cases,
    grid_cases,
    model_file,
    runner_models,
    settings_agree,
)

from fleet import catalog
from fleet.gguf_arch import read_arch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def comparisons():
    return compare(grid_cases() + boundary_cases())


def test_the_matrix_is_large_and_probes_the_fit_limit(comparisons):
    boundary = [c for c in comparisons if c.case.kind == "boundary"]
    assert len(comparisons) >= 500 and len(boundary) >= 100
    # Both sides of the limit are present: the matrix is not all "fits" or all "does not fit".
    assert {c.oracle_fits for c in boundary} == {True, False}
    assert {c.case.ref for c in comparisons} == {m.ref for m in runner_models()}


def test_no_false_fits_and_identical_verdicts(comparisons):
    false_fits = [c.case for c in comparisons if c.fleet_fits and not c.oracle_fits]
    assert not false_fits, false_fits[:5]
    differ = [c.case for c in comparisons if c.fleet_fits != c.oracle_fits]
    assert not differ, differ[:5]


@pytest.mark.parametrize("term", TERMS)
def test_every_term_within_two_percent(comparisons, term):
    worst = max(comparisons, key=lambda c: abs(c.deviation(term)))
    print(f"{term}: max deviation {worst.deviation(term):+.4%} ({worst.case.ref} {worst.case.quantization})")
    assert abs(worst.deviation(term)) <= 0.02, (worst.case, worst.fleet, worst.oracle)


def test_runner_settings_match_ollamas_decision():
    # Flash attention off for gemma2 and the embedding model, the quantized cache dropped with it, one slot
    # for the embedding model, Ollama's engine for qwen3/gemma3/nomic-bert.
    cases = engine_cases() + [c for c in grid_cases() if c.num_ctx == 2048 and c.instance == "g5.xlarge"]
    assert not settings_agree(cases)


def test_sparse_files_carry_the_catalog_architecture_and_cost_no_data():
    arch = catalog.find_model("llama3.1:70b")
    path = model_file(arch, "q4_K_M")
    read = read_arch(path)
    for field in ("arch", "n_layer", "n_embd", "n_head", "n_head_kv", "head_dim", "max_context", "vocab_size", "n_ff"):
        assert getattr(read, field) == getattr(arch, field), field
    assert not read.tied_embeddings and read.weights["q4_K_M"] == path.stat().st_size > 35e9
    assert os.stat(path).st_blocks * 512 < 16e6  # a hole, not 40 GB of zeros
