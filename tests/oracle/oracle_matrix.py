"""fleet.capacity against Ollama's own code (tools/ollama-oracle) on a matrix of catalog models.

Each catalog model that Ollama v0.24.0 serves on its llama.cpp runner is written as a sparse GGUF file at
each published quantization (tests/oracle/sparse_gguf.py). The oracle decodes the same file with
Ollama's fs/ggml and prints the layer list, KV cache, graph estimates and flash-attention decision that
`llamaServer.Load` works with. Its verdict for one GPU follows `llamaServer.Load`/`buildLayout`: every
layer fits when their sum stays within the free memory less the one-layer buffer (blk.0 + its KV), the
457 MiB minimum and max(partial, full) graph (llm/server.go:557-571, 648-670, 1004). The free memory is
the card's as the driver reports it (fleet.catalog.GPU_CARDS): an input, not a formula.

The cases: every file × single-GPU instance types × contexts × parallel slots × KV cache types, plus,
for every file and instance, contexts within ±2% of the largest that fits and one 16-token step past it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sparse_gguf import write_sparse_gguf

from fleet import capacity, catalog
from fleet.config import ModelSpec, NodeGroup, OllamaSettings

ROOT = Path(__file__).resolve().parents[2]
VERSION = "0.24.0"  # the release the oracle is built against (tools/ollama-oracle/go.mod)
INSTANCES = ("g4dn.xlarge", "g5.xlarge", "g6.xlarge", "g6e.xlarge")
CONTEXTS = (2048, 8192, 32768)
PARALLEL = (1, 4)
KV_TYPES = ("f16", "q8_0", "q4_0")
STEP = 16
TERMS = ("weights", "kv_cache", "graph", "layer_buffer", "total")


def runner_models() -> list[catalog.ModelArch]:
    """Catalog models on the llama.cpp runner in v0.24.0 (the others' graph and KV are measured by Ollama's
    engine at load time, out of the oracle's reach; their flash-attention decision is still compared)."""
    rules = capacity.rules_of(VERSION)
    return [m for m in catalog.MODELS.values() if rules.engine(m.arch) == "llama.cpp"]


def engine_models() -> list[catalog.ModelArch]:
    rules = capacity.rules_of(VERSION)
    return [m for m in catalog.MODELS.values() if rules.engine(m.arch) == "ollama"]


def cache_dir() -> Path:
    """Sparse files are cached by the hash of what shapes them (they cost only their headers on disk)."""
    digest = hashlib.sha256()
    for source in (Path(__file__).with_name("sparse_gguf.py"), ROOT / "fleet" / "catalog.py"):
        digest.update(source.read_bytes())
    base = Path(os.environ.get("OLLAMA_FLEET_CACHE", Path.home() / ".cache" / "ollama-fleet"))
    path = base / f"oracle-gguf-{digest.hexdigest()[:16]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_file(arch: catalog.ModelArch, quantization: str) -> Path:
    path = cache_dir() / f"{arch.ref.replace(':', '-')}-{quantization}.gguf"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        write_sparse_gguf(partial, arch, quantization)
        partial.rename(path)
    return path


def oracle_binary() -> Path:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "build-oracle.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Case:
    ref: str
    quantization: str
    path: str
    instance: str
    num_ctx: int
    num_parallel: int
    kv_cache_type: str
    flash_attention: bool = True
    kind: str = "grid"

    def request(self) -> dict:
        return {
            "path": self.path,
            "num_ctx": self.num_ctx,
            "num_parallel": self.num_parallel,
            "kv_cache_type": self.kv_cache_type,
            "flash_attention": self.flash_attention,
        }


def run_oracle(cases: list[Case]) -> list[dict]:
    lines = "".join(json.dumps(c.request()) + "\n" for c in cases)
    out = subprocess.run([str(oracle_binary())], input=lines, check=True, capture_output=True, text=True)
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(answers) == len(cases)
    return answers


def group_for(case: Case) -> NodeGroup:
    return NodeGroup(
        name="oracle",
        instance_type=case.instance,
        models=[ModelSpec(name="oracle", tag="gguf", gguf=case.path, num_ctx=case.num_ctx)],
        ollama=OllamaSettings(num_parallel=case.num_parallel, kv_cache_type=case.kv_cache_type, flash_attention=case.flash_attention),
    )


def fleet_estimate(case: Case) -> capacity.NodeEstimate:
    return capacity.estimate_node(group_for(case), 0.0, ollama_version=VERSION, suggest=False)


def free_memory(instance: str) -> int:
    return catalog.find_instance(instance).free_per_gpu


def oracle_terms(answer: dict) -> dict[str, int]:
    """What Ollama counts for one GPU holding the whole model, term by term."""
    kv = answer["kv_total"]
    graph = max(answer["graph_partial"], answer["graph_full"])
    buffer = answer["block0"] + answer["kv"][0]
    weights = sum(answer["layers"]) - kv
    return {
        "weights": weights,
        "kv_cache": kv,
        "graph": graph,
        "layer_buffer": buffer,
        "total": weights + kv + graph + buffer + answer["minimum_memory"],
    }


def fleet_terms(estimate: capacity.NodeEstimate) -> dict[str, int]:
    model = estimate.models[0]
    gpu = estimate.gpu_usage[0]
    return {
        "weights": model.weights,
        "kv_cache": model.kv_cache,
        "graph": model.graph,
        "layer_buffer": model.layer_buffer,
        "total": gpu.used + gpu.margin,
    }


def grid_cases() -> list[Case]:
    cases = []
    for arch in runner_models():
        for quant in arch.quantizations():
            path = str(model_file(arch, quant))
            for instance in INSTANCES:
                for num_ctx in CONTEXTS:
                    for parallel in PARALLEL:
                        for kv in KV_TYPES:
                            cases.append(Case(arch.ref, quant, path, instance, num_ctx, parallel, kv))
    return cases


def boundary_cases() -> list[Case]:
    """Around the largest context that fits (parallel 4, f16 and q8_0 caches): ±2% and one step past it."""
    cases = []
    for arch in runner_models():
        for quant in arch.quantizations():
            path = str(model_file(arch, quant))
            for instance in INSTANCES:
                for kv in ("f16", "q8_0"):
                    base = Case(arch.ref, quant, path, instance, 8192, 4, kv, kind="boundary")
                    limit = capacity.max_num_ctx(group_for(base), "oracle:gguf", 0.0, step=STEP, ollama_version=VERSION)
                    if limit is None or limit >= arch.max_context:
                        continue
                    for num_ctx in sorted({int(limit * 0.98), limit, limit + STEP, int(limit * 1.02)}):
                        if 256 <= num_ctx <= arch.max_context:  # numCtx has a floor of 256
                            cases.append(Case(arch.ref, quant, path, instance, num_ctx, 4, kv, kind="boundary"))
    return cases


def engine_cases() -> list[Case]:
    """Ollama-engine models and an embedding model: the flash-attention and KV cache decision, parallel slots."""
    cases = []
    for arch in engine_models():
        quant = arch.quantizations()[0]
        path = str(model_file(arch, quant))
        for kv in KV_TYPES:
            for flash in (True, False):
                if kv != "f16" and not flash:
                    continue  # the stack config refuses a quantized cache without flash attention
                cases.append(Case(arch.ref, quant, path, "g6e.xlarge", 2048, 4, kv, flash, kind="engine"))
    return cases


@dataclass(frozen=True)
class Comparison:
    case: Case
    fleet: dict[str, int]
    oracle: dict[str, int]
    fleet_fits: bool
    oracle_fits: bool

    def deviation(self, term: str) -> float:
        expected = self.oracle[term]
        return 0.0 if expected == self.fleet[term] else (self.fleet[term] - expected) / max(expected, 1)


def compare(cases: list[Case]) -> list[Comparison]:
    out = []
    for case, answer in zip(cases, run_oracle(cases)):
        assert not answer.get("error"), answer
        estimate = fleet_estimate(case)
        oracle = oracle_terms(answer)
        out.append(
            Comparison(
                case=case,
                fleet=fleet_terms(estimate),
                oracle=oracle,
                fleet_fits=estimate.fits,
                oracle_fits=oracle["total"] <= free_memory(case.instance),
            )
        )
    return out


def settings_agree(cases: list[Case]) -> list[tuple[Case, dict, capacity.ModelEstimate]]:
    """Cases where the runner settings (flash attention, cache type, slots) of fleet and Ollama differ."""
    wrong = []
    for case, answer in zip(cases, run_oracle(cases)):
        model = fleet_estimate(case).models[0]
        same = (
            model.flash_attention == answer["flash_attention"]
            and model.kv_cache_type == answer["kv_cache_type"]
            and model.num_parallel == answer["num_parallel"]
            and (model.engine == "ollama") == answer["ollama_engine_required"]
        )
        if not same:
            wrong.append((case, answer, model))
    return wrong
