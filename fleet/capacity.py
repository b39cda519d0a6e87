"""VRAM capacity model: the one place that decides whether models, quantizations and concurrency fit a GPU host.

Every consumer (the `fleet plan`/`fleet fit` commands, the policy pack, the gateway's `max_conns`) calls
this module; nothing else does this arithmetic.

Per loaded model, following what Ollama reserves when it schedules a model (sources: ollama/ollama
v0.13.1 `llm/server.go` `Load`, `fs/ggml/ggml.go` `GraphSize`, `ml/device.go` `MinimumMemory`,
`server/sched.go`; current releases' llama-server fit target in `llm/llama_server.go`):

* **weights**: the GGUF blob, less the input token-embedding matrix when the model has a separate output
  matrix (llama.cpp and Ollama keep the embedding lookup in system memory; a tied embedding is the output
  matrix and stays on the GPU).
* **KV cache**: one cache of `num_ctx × num_parallel` tokens (Ollama starts the runner with
  `KvSize = num_ctx * numParallel`): `2 (K and V) × layers × tokens × n_head_kv × head_dim × bytes per
  element` with f16 = 2, q8_0 = 34/32, q4_0 = 18/32 bytes. Sliding-window layers (gemma3, served by the
  Ollama engine) hold `window × num_parallel + batch` tokens, as Ollama's estimate does; gemma2 runs on
  the llama.cpp runner, whose estimate in these releases reserves the full context on every layer.
* **compute graph**, per GPU that holds layers (every GPU keeps its own copy), with `C = num_ctx ×
  num_parallel`, `B = min(num_batch = 512, num_ctx)`, `E` embedding length, `H` heads, `V` vocabulary:
  - models on the llama.cpp runner: Ollama's own full-offload estimate (`GraphSize`), by architecture
      llama/mistral/mixtral: `max(4·B·(1 + 4E + C·(1+H)), 4·B·(E + V))`
      qwen2:                 `max(4·B·(E + V), 4·B·(1 + 2E + C + C·H))`
      gemma/gemma2:          `max(4·B·(E + V), 4·B·(2 + C + C·H + 2E + 2·head_dim·H))`
      others (phi3, ...):    `(H / H_kv) × KV / 6` (Ollama's fallback when it has no formula)
    This is what these releases reserve when they place layers, so a node that fits it is never partly
    offloaded to the CPU. It ignores flash attention and so exceeds llama.cpp's actual compute buffer at long
    contexts (v0.24.0, SmolLM2-135M, C = 32768: 101.8 MB allocated against 675.8 MB estimated).
  - models on the Ollama engine (qwen3, gemma3, nomic-bert, ...), whose graph Ollama measures by building
    the worst-case batch (it computes logits only for the positions it returns): the f16 attention mask
    `2·B·C` plus the peak stage, the gated feed-forward `4·B·(4E + 3·n_ff)`; without flash attention the f32
    scores of every head, `4·B·(4E + H·C)`, when larger. Calibrated on Ollama v0.24.0 (`OLLAMA_NEW_ENGINE=1`,
    SmolLM2-135M on CPU), whose logged `compute graph` it reproduces to the byte at C = 8192 and 32768.
* **per-GPU margin**: Ollama keeps `457 MiB` free on each CUDA GPU (`MinimumMemory`) plus one layer's
  weights and KV as a placement buffer (llama.cpp runner), plus `OLLAMA_GPU_OVERHEAD`; current releases
  instead let llama.cpp fit layers leaving `1024 MiB` free per GPU. The margin is the larger of the two,
  plus `OLLAMA_GPU_OVERHEAD`, counted once per GPU in use.

A model that does not fit one GPU is split over the fewest GPUs that hold it (all of them with
`OLLAMA_SCHED_SPREAD`), weights and KV divided evenly, the graph on each. All models of a node that stay
loaded are placed together; a node fits when every GPU's total stays within `VRAM × (1 − headroom)`.
On a CPU host (`local-cpu`) the same terms are reported against system memory, with no VRAM verdict.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

from fleet import catalog
from fleet.catalog import GIB, MIB, GpuInstance, ModelArch
from fleet.config import ModelSpec, NodeGroup, OllamaSettings

NUM_BATCH = 512  # Ollama's default num_batch; the graph is sized for min(num_batch, num_ctx) tokens
OLLAMA_MIN_GPU_MEMORY = 457 * MIB  # ml/device.go MinimumMemory for CUDA devices
LLAMA_FIT_TARGET = 1024 * MIB  # free VRAM per device that llama.cpp's fit leaves in current releases
DEFAULT_HEADROOM = 0.10

# Bytes per KV cache element.
KV_BYTES: dict[str, Fraction] = {"f16": Fraction(2), "q8_0": Fraction(34, 32), "q4_0": Fraction(18, 32)}

# Bytes per weight of the token-embedding matrix in each file quantization (llama.cpp block sizes:
# q4_0 18 B/32, q4_1 20 B/32, q4_K 144 B/256, q5_K 176 B/256, q6_K 210 B/256, q8_0 34 B/32, f16 2 B).
EMBEDDING_BYTES_PER_WEIGHT: dict[str, Fraction] = {
    "q4_0": Fraction(18, 32),
    "q4_1": Fraction(20, 32),
    "q4_K_M": Fraction(144, 256),
    "q5_K_M": Fraction(176, 256),
    "q6_K": Fraction(210, 256),
    "q8_0": Fraction(34, 32),
    "fp16": Fraction(2),
    "bf16": Fraction(2),
    "fp32": Fraction(4),
}

# Architectures Ollama serves with its own engine (ollama v0.13.1 fs/ggml KV.OllamaEngineRequired); the
# rest run on the llama.cpp runner, which Ollama places with the GraphSize estimate.
OLLAMA_ENGINE_ARCHS = frozenset(
    {
        "gemma3", "gemma3n", "gptoss", "gpt-oss", "llama4", "mistral3", "mllama", "qwen25vl", "qwen3",
        "qwen3moe", "qwen3vl", "qwen3vlmoe", "deepseekocr", "deepseek2", "nomic-bert", "bert",
    }
)

# Ollama's default context when neither the request nor OLLAMA_CONTEXT_LENGTH sets one:
# (minimum total VRAM, tokens), checked in order (server/routes.go).
CONTEXT_TIERS: tuple[tuple[int, int], ...] = ((47 * GIB, 262144), (23 * GIB, 32768), (0, 4096))


class CapacityError(ValueError):
    """A model, quantization or instance the capacity model cannot estimate."""


# --------------------------------------------------------------------------------------------- terms


def kv_bytes_per_element(kv_cache_type: str) -> Fraction:
    try:
        return KV_BYTES[kv_cache_type]
    except KeyError:
        raise CapacityError(f"unknown KV cache type {kv_cache_type!r}; allowed: {', '.join(KV_BYTES)}") from None


def engine(arch: ModelArch) -> str:
    """`ollama` (Ollama's own engine) or `llama.cpp` (the llama.cpp runner) for this architecture."""
    return "ollama" if arch.arch in OLLAMA_ENGINE_ARCHS else "llama.cpp"


def batch_size(num_ctx: int) -> int:
    return min(NUM_BATCH, num_ctx)


def _windowed(arch: ModelArch) -> bool:
    return bool(arch.sliding_window and arch.sliding_window_layers and engine(arch) == "ollama")


def kv_cache_per_layer(arch: ModelArch, num_ctx: int, num_parallel: int, kv_cache_type: str) -> tuple[int, int]:
    """KV bytes of one full-context layer and of one sliding-window layer (0 when there is none)."""
    bpe = kv_bytes_per_element(kv_cache_type)
    tokens = num_ctx * num_parallel
    per_token = 2 * arch.n_head_kv * arch.head_dim * bpe  # K and V
    full = int(per_token * tokens)
    if not _windowed(arch):
        return full, 0
    window_tokens = min(tokens, arch.sliding_window * num_parallel + batch_size(num_ctx))
    return full, int(per_token * window_tokens)


def kv_cache_bytes(arch: ModelArch, num_ctx: int, num_parallel: int, kv_cache_type: str = "f16") -> int:
    full, window = kv_cache_per_layer(arch, num_ctx, num_parallel, kv_cache_type)
    if window:
        return arch.full_attention_layers * full + arch.sliding_window_layers * window
    return arch.n_layer * full


def token_embedding_bytes(arch: ModelArch, quantization: str) -> int:
    if quantization in arch.token_embd_bytes:
        return arch.token_embd_bytes[quantization]
    per_weight = EMBEDDING_BYTES_PER_WEIGHT.get(quantization)
    if per_weight is None or not arch.vocab_size:
        return 0
    return int(arch.vocab_size * arch.n_embd * per_weight)


def weight_bytes(arch: ModelArch, quantization: str, on_gpu: bool = True) -> int:
    """Weight bytes a device holds: on a GPU, the blob less an untied input embedding (kept in system RAM)."""
    if quantization not in arch.weights:
        published = ", ".join(arch.quantizations()) or "none"
        raise CapacityError(f"{arch.ref}: quantization {quantization!r} is not published; allowed: {published}")
    blob = arch.weights[quantization]
    if on_gpu and not arch.tied_embeddings:
        return blob - token_embedding_bytes(arch, quantization)
    return blob


def graph_bytes(
    arch: ModelArch,
    num_ctx: int,
    num_parallel: int,
    kv_cache_type: str = "f16",
    flash_attention: bool = True,
    serving_engine: str | None = None,
) -> int:
    """Compute-graph bytes per GPU holding layers (see the module docstring for the formulas and sources)."""
    context = num_ctx * num_parallel
    batch = batch_size(num_ctx)
    embd, heads, vocab = arch.n_embd, arch.n_head, arch.vocab_size
    if (serving_engine or engine(arch)) == "ollama":
        # Measured by Ollama from the worst-case batch: the f16 KQ mask lives through the whole graph, the
        # peak stage is the gated FFN (3 × n_ff) plus the residual activations (4 × n_embd); without flash
        # attention the f32 scores of every head for the whole context, when larger.
        ffn_stage = 2 * batch * context + 4 * batch * (4 * embd + 3 * arch.n_ff)
        if flash_attention:
            return ffn_stage
        return max(4 * batch * (4 * embd + heads * context), ffn_stage)
    family = arch.arch
    if family in ("llama", "llama4"):
        return max(4 * batch * (1 + 4 * embd + context * (1 + heads)), 4 * batch * (embd + vocab))
    if family == "qwen2":
        return max(4 * batch * (embd + vocab), 4 * batch * (1 + 2 * embd + context + context * heads))
    if family in ("gemma", "gemma2"):
        return max(
            4 * batch * (embd + vocab),
            4 * batch * (2 + context + context * heads + 2 * embd + 2 * arch.head_dim * heads),
        )
    if family == "phi2":
        return max(4 * batch * (embd + vocab), 4 * batch * (1 + 4 * embd + context + context * heads))
    gqa = heads // max(arch.n_head_kv, 1)
    return gqa * kv_cache_bytes(arch, num_ctx, num_parallel, kv_cache_type) // 6


def default_num_ctx(instance: GpuInstance, gpu_overhead: int = 0) -> int:
    """Ollama's context when none is set: a tier of the host's total VRAM (less OLLAMA_GPU_OVERHEAD per GPU)."""
    total = instance.gpus * max(instance.vram_per_gpu - gpu_overhead, 0)
    for minimum, tokens in CONTEXT_TIERS:
        if total >= minimum:
            return tokens
    return CONTEXT_TIERS[-1][1]


def gpu_margin(layer_buffer: int, gpu_overhead: int = 0) -> int:
    """VRAM kept free on each GPU in use: max(Ollama's minimum + one-layer buffer, llama.cpp's fit target) + overhead."""
    return max(OLLAMA_MIN_GPU_MEMORY + layer_buffer, LLAMA_FIT_TARGET) + gpu_overhead


# ---------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ModelEstimate:
    """One model's terms, in bytes. `graph` is per GPU; `total` counts it once per GPU the model spans."""

    ref: str
    arch: str
    engine: str
    quantization: str
    kv_cache_type: str
    flash_attention: bool
    num_ctx: int
    num_ctx_source: str  # "numCtx", "contextLength", "group", "vram-tier"
    num_parallel: int
    resident: bool
    weights: int
    kv_cache: int
    graph: int
    layer_buffer: int  # one layer's weights + KV kept free while placing (llama.cpp runner)
    gpus: int = 1  # GPUs the model spans (0 on a CPU host)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.graph * max(self.gpus, 1)

    def to_dict(self) -> dict[str, Any]:
        data = _camel(asdict(self))
        data["total"] = self.total
        return data


def _camel(data: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        head, *rest = key.split("_")
        out[head + "".join(part.title() for part in rest)] = value
    return out


@dataclass(frozen=True)
class GpuUsage:
    """One GPU of a node: what the placed models use, the margin kept free, and the usable limit."""

    index: int
    vram: int
    usable: int  # vram × (1 − headroom)
    used: int  # model parts placed here (weights + KV shares and graph)
    margin: int  # kept free on this GPU (0 when no model uses it)
    models: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.used + self.margin

    @property
    def fits(self) -> bool:
        return self.total <= self.usable

    def to_dict(self) -> dict[str, Any]:
        data = _camel(asdict(self))
        data["models"] = list(self.models)
        data.update(total=self.total, fits=self.fits)
        return data


@dataclass(frozen=True)
class NodeEstimate:
    """Every model a node of `group` keeps loaded, placed on its GPUs, against VRAM with headroom."""

    group: str
    instance_type: str
    gpu_model: str
    gpus: int
    vram_per_gpu: int
    memory: int
    headroom: float
    models: tuple[ModelEstimate, ...]
    gpu_usage: tuple[GpuUsage, ...]
    problems: tuple[str, ...] = ()
    suggestions: tuple[str, ...] = ()

    @property
    def cpu_only(self) -> bool:
        return self.gpus == 0

    @property
    def capacity(self) -> int:
        """Total VRAM (system memory on a CPU host, 0 when unknown)."""
        return self.memory if self.cpu_only else self.gpus * self.vram_per_gpu

    @property
    def usable(self) -> int:
        return int(self.capacity * (1 - self.headroom))

    @property
    def weights(self) -> int:
        return sum(m.weights for m in self.models)

    @property
    def kv_cache(self) -> int:
        return sum(m.kv_cache for m in self.models)

    @property
    def graph(self) -> int:
        return sum(m.graph * max(m.gpus, 1) for m in self.models)

    @property
    def overhead(self) -> int:
        return sum(g.margin for g in self.gpu_usage)

    @property
    def total(self) -> int:
        if self.cpu_only:
            return sum(m.total for m in self.models)
        return sum(g.total for g in self.gpu_usage)

    @property
    def free_share(self) -> float | None:
        """Share of the capacity left free by the estimate (None without a known capacity)."""
        if not self.capacity:
            return None
        return 1 - self.total / self.capacity

    @property
    def has_verdict(self) -> bool:
        return not self.cpu_only or self.memory > 0

    @property
    def fits(self) -> bool:
        if self.problems:
            return False
        if self.cpu_only:
            return self.memory == 0 or self.total <= self.usable
        return all(g.fits for g in self.gpu_usage)

    @property
    def verdict(self) -> str:
        if not self.has_verdict:
            return "no VRAM verdict (CPU)"
        return "fits" if self.fits else "does not fit"

    def model(self, ref: str) -> ModelEstimate:
        return next(m for m in self.models if m.ref == ref)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "instanceType": self.instance_type,
            "gpuModel": self.gpu_model,
            "gpus": self.gpus,
            "vramPerGpu": self.vram_per_gpu,
            "capacity": self.capacity,
            "headroom": self.headroom,
            "usable": self.usable,
            "weights": self.weights,
            "kvCache": self.kv_cache,
            "graph": self.graph,
            "overhead": self.overhead,
            "total": self.total,
            "freeShare": self.free_share,
            "fits": self.fits,
            "verdict": self.verdict,
            "models": [m.to_dict() for m in self.models],
            "gpuUsage": [g.to_dict() for g in self.gpu_usage],
            "problems": list(self.problems),
            "suggestions": list(self.suggestions),
        }


# ------------------------------------------------------------------------------------------ inputs


def resolve_arch(spec: ModelSpec, root: Path | None = None) -> ModelArch:
    """The architecture of a configured model: from its GGUF header when `gguf` is set, else the catalog."""
    if spec.gguf:
        from fleet.gguf_arch import read_arch

        path = Path(spec.gguf).expanduser()
        if not path.is_absolute() and root is not None:
            path = root / path
        return read_arch(path)
    arch = catalog.find_model(spec.ref)
    if arch is None:
        raise CapacityError(f"unknown model {spec.ref!r}; known: {', '.join(sorted(catalog.MODELS))}")
    return arch


def resolve_quantization(spec: ModelSpec, arch: ModelArch) -> str:
    """A GGUF file has exactly one quantization (its own); a catalog model uses the configured one."""
    if spec.gguf:
        return next(iter(arch.weights))
    return spec.quantization


def instance_for(group: NodeGroup) -> GpuInstance:
    instance = catalog.find_instance(group.instance_type)
    if instance is None:
        raise CapacityError(f"unknown instance type {group.instance_type!r}")
    return instance


def effective_num_ctx(spec: ModelSpec, group: NodeGroup, arch: ModelArch | None = None) -> tuple[int, str]:
    """The context each slot of this model gets, and where it comes from.

    The model's `numCtx`; else OLLAMA_CONTEXT_LENGTH, which the node sets to `ollama.contextLength` or the
    largest `numCtx` of the group; else Ollama's VRAM-tier default. Ollama clamps it to the trained context.
    """
    if spec.num_ctx is not None:
        value, source = spec.num_ctx, "numCtx"
    elif group.ollama.context_length is not None:
        value, source = group.ollama.context_length, "contextLength"
    elif any(m.num_ctx for m in group.models):
        value, source = max(m.num_ctx for m in group.models if m.num_ctx), "group"
    else:
        value, source = default_num_ctx(instance_for(group), group.ollama.gpu_overhead_bytes), "vram-tier"
    if arch is not None and arch.max_context and value > arch.max_context:
        value = arch.max_context
    return value, source


def context_length_env(group: NodeGroup) -> int | None:
    """The OLLAMA_CONTEXT_LENGTH a node of this group runs with (None: leave Ollama's tiered default)."""
    if group.ollama.context_length is not None:
        return group.ollama.context_length
    sizes = [m.num_ctx for m in group.models if m.num_ctx]
    return max(sizes) if sizes else None


def estimate_model(
    arch: ModelArch,
    quantization: str,
    num_ctx: int,
    num_parallel: int,
    kv_cache_type: str = "f16",
    flash_attention: bool = True,
    on_gpu: bool = True,
    resident: bool = True,
    num_ctx_source: str = "numCtx",
) -> ModelEstimate:
    """One model's terms in bytes (placed on one GPU; `estimate_node` splits it further when needed)."""
    if num_ctx < 1 or num_parallel < 1:
        raise CapacityError("num_ctx and num_parallel must be positive")
    if kv_cache_type != "f16" and not flash_attention:
        kv_cache_type = "f16"  # llama.cpp refuses a quantized V cache without flash attention; Ollama falls back
    if arch.max_context and num_ctx > arch.max_context:
        num_ctx = arch.max_context
    weights = weight_bytes(arch, quantization, on_gpu=on_gpu)
    kv = kv_cache_bytes(arch, num_ctx, num_parallel, kv_cache_type)
    full_layer, window_layer = kv_cache_per_layer(arch, num_ctx, num_parallel, kv_cache_type)
    first_layer_kv = window_layer if window_layer else full_layer
    buffer = weights // max(arch.n_layer, 1) + first_layer_kv if engine(arch) == "llama.cpp" else 0
    return ModelEstimate(
        ref=arch.ref,
        arch=arch.arch,
        engine=engine(arch),
        quantization=quantization,
        kv_cache_type=kv_cache_type,
        flash_attention=flash_attention,
        num_ctx=num_ctx,
        num_ctx_source=num_ctx_source,
        num_parallel=num_parallel,
        resident=resident,
        weights=weights,
        kv_cache=kv,
        graph=graph_bytes(arch, num_ctx, num_parallel, kv_cache_type, flash_attention),
        layer_buffer=buffer,
        gpus=1 if on_gpu else 0,
    )


# --------------------------------------------------------------------------------------- placement


@dataclass
class _Gpu:
    index: int
    vram: int
    usable: int
    gpu_overhead: int
    used: int = 0
    buffer: int = 0
    models: list[str] = field(default_factory=list)

    def margin(self, buffer: int | None = None) -> int:
        if not self.models and buffer is None:
            return 0
        return gpu_margin(max(self.buffer, buffer or 0), self.gpu_overhead)

    def free(self) -> int:
        return self.usable - self.used - self.margin()

    def freeze(self) -> GpuUsage:
        return GpuUsage(self.index, self.vram, self.usable, self.used, self.margin(), tuple(self.models))


def _share(model: ModelEstimate, gpus: int) -> int:
    return math.ceil((model.weights + model.kv_cache) / gpus) + model.graph


def _try_place(gpus: list[_Gpu], model: ModelEstimate, spread: bool) -> list[_Gpu] | None:
    counts = [len(gpus)] if spread else range(1, len(gpus) + 1)
    for count in counts:
        chosen = sorted(gpus, key=lambda g: (-g.free(), g.index))[:count]
        part = _share(model, count)
        if all(g.used + part + g.margin(model.layer_buffer) <= g.usable for g in chosen):
            return chosen
    return None


def _place(gpus: list[_Gpu], model: ModelEstimate, chosen: list[_Gpu]) -> ModelEstimate:
    part = _share(model, len(chosen))
    for gpu in chosen:
        gpu.used += part
        gpu.buffer = max(gpu.buffer, model.layer_buffer)
        gpu.models.append(model.ref)
    return ModelEstimate(**{**asdict(model), "gpus": len(chosen)})


def _copy(gpus: list[_Gpu]) -> list[_Gpu]:
    return [_Gpu(g.index, g.vram, g.usable, g.gpu_overhead, g.used, g.buffer, list(g.models)) for g in gpus]


def _estimate(group: NodeGroup, headroom: float, root: Path | None = None, suggest: bool = True) -> NodeEstimate:
    instance = instance_for(group)
    knobs: OllamaSettings = group.ollama
    on_gpu = instance.gpus > 0
    drafts: list[ModelEstimate] = []
    for spec in group.models:
        arch = resolve_arch(spec, root)
        num_ctx, source = effective_num_ctx(spec, group, arch)
        drafts.append(
            estimate_model(
                arch,
                resolve_quantization(spec, arch),
                num_ctx,
                knobs.num_parallel,
                knobs.kv_cache_type,
                knobs.flash_attention,
                on_gpu=on_gpu,
                resident=spec.keep_loaded,
                num_ctx_source=source,
            )
        )
    problems: list[str] = []
    resident = [m for m in drafts if m.resident]
    on_demand = [m for m in drafts if not m.resident]
    loaded_together = len(resident) + (1 if on_demand else 0)
    if loaded_together > group.max_loaded_models:
        problems.append(
            f"{loaded_together} models must be loaded together but OLLAMA_MAX_LOADED_MODELS is "
            f"{group.max_loaded_models}: Ollama would unload a resident model"
        )

    if not on_gpu:
        estimate = NodeEstimate(
            group=group.name,
            instance_type=instance.name,
            gpu_model=instance.gpu_model,
            gpus=0,
            vram_per_gpu=0,
            memory=instance.memory,
            headroom=headroom,
            models=tuple(resident + on_demand),
            gpu_usage=(),
            problems=tuple(problems),
        )
        return estimate

    usable = int(instance.vram_per_gpu * (1 - headroom))
    gpus = [_Gpu(i, instance.vram_per_gpu, usable, knobs.gpu_overhead_bytes) for i in range(instance.gpus)]
    placed: dict[str, ModelEstimate] = {}
    for model in sorted(resident, key=lambda m: m.total, reverse=True):
        chosen = _try_place(gpus, model, knobs.sched_spread)
        if chosen is None:
            problems.append(
                f"{model.ref} needs {_gib(model.total)} but the free VRAM left on {instance.name} "
                f"({instance.gpus} × {_gib(instance.vram_per_gpu)}, {headroom:.0%} headroom) cannot hold it"
            )
            chosen = gpus  # show it spread over every GPU, over the limit
        placed[model.ref] = _place(gpus, model, chosen)
    # A model loaded on demand must fit next to the resident ones (else loading it evicts one of them);
    # the largest one is shown loaded.
    for model in sorted(on_demand, key=lambda m: m.total, reverse=True):
        trial = _copy(gpus)
        chosen = _try_place(trial, model, knobs.sched_spread)
        if chosen is None:
            problems.append(f"{model.ref} (loaded on demand) does not fit next to the resident models")
            chosen = trial
        placed_model = _place(trial, model, chosen)
        if model is max(on_demand, key=lambda m: m.total):
            gpus = trial
        placed[model.ref] = placed_model
    estimate = NodeEstimate(
        group=group.name,
        instance_type=instance.name,
        gpu_model=instance.gpu_model,
        gpus=instance.gpus,
        vram_per_gpu=instance.vram_per_gpu,
        memory=instance.memory,
        headroom=headroom,
        models=tuple(placed[m.ref] for m in drafts),
        gpu_usage=tuple(g.freeze() for g in gpus),
        problems=tuple(problems),
    )
    if suggest and not estimate.fits:
        estimate = NodeEstimate(**{**_fields(estimate), "suggestions": tuple(suggestions(group, headroom, estimate, root))})
    return estimate


def _fields(estimate: NodeEstimate) -> dict[str, Any]:
    return {f: getattr(estimate, f) for f in estimate.__dataclass_fields__}


def estimate_node(group: NodeGroup, headroom: float = DEFAULT_HEADROOM, root: Path | None = None) -> NodeEstimate:
    """All models of one node of `group` placed on its GPUs; `.fits`, per-model terms in bytes, suggestions."""
    if not 0 <= headroom < 1:
        raise CapacityError("headroom must be in [0, 1)")
    return _estimate(group, headroom, root)


def fits(group: NodeGroup, headroom: float = DEFAULT_HEADROOM, root: Path | None = None) -> bool:
    return _estimate(group, headroom, root, suggest=False).fits


def estimate_fit(
    model: str,
    quantization: str,
    num_ctx: int | None,
    num_parallel: int,
    instance_type: str,
    kv_cache_type: str = "f16",
    flash_attention: bool = True,
    headroom: float = DEFAULT_HEADROOM,
) -> NodeEstimate:
    """One model on one instance type (the `fleet fit` question). `model` is `name:tag` or a GGUF path."""
    return estimate_node(single_model_group(model, quantization, num_ctx, num_parallel, instance_type, kv_cache_type, flash_attention), headroom)


def single_model_group(
    model: str,
    quantization: str,
    num_ctx: int | None,
    num_parallel: int,
    instance_type: str,
    kv_cache_type: str = "f16",
    flash_attention: bool = True,
) -> NodeGroup:
    """A one-model node group (validated like a stack file's) for `fit` questions."""
    if model.endswith(".gguf") or Path(model).expanduser().is_file():
        path = Path(model).expanduser()
        spec = ModelSpec(name=path.stem.lower().replace("_", "-")[:40] or "custom", tag="gguf", gguf=str(path), num_ctx=num_ctx)
    else:
        name, _, tag = model.partition(":")
        if not tag:
            tags = sorted(m.tag for m in catalog.MODELS.values() if m.name == name)
            if len(tags) != 1:
                known = ", ".join(f"{name}:{t}" for t in tags) or ", ".join(sorted(catalog.MODELS))
                raise CapacityError(f"name a size tag for {name!r}: {known}")
            tag = tags[0]
        spec = ModelSpec(name=name, tag=tag, quantization=quantization, num_ctx=num_ctx)
    return NodeGroup(
        name="fit",
        instance_type=instance_type,
        models=[spec],
        ollama=OllamaSettings(num_parallel=num_parallel, kv_cache_type=kv_cache_type, flash_attention=flash_attention),
    )


# -------------------------------------------------------------------------------- inverse questions


def _with_knobs(group: NodeGroup, **updates: Any) -> NodeGroup:
    return group.model_copy(update={"ollama": group.ollama.model_copy(update=updates)})


def _with_model(group: NodeGroup, ref: str, **updates: Any) -> NodeGroup:
    models = [m.model_copy(update=updates) if m.ref == ref else m for m in group.models]
    return group.model_copy(update={"models": models})


def _largest(lo: int, hi: int, ok) -> int | None:
    """The largest value in [lo, hi] for which the monotone predicate `ok` holds."""
    if lo > hi or not ok(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def max_num_parallel(group: NodeGroup, headroom: float = DEFAULT_HEADROOM, root: Path | None = None, limit: int = 64) -> int | None:
    """The largest OLLAMA_NUM_PARALLEL at which the node still fits (None: not even 1)."""
    return _largest(1, limit, lambda p: fits(_with_knobs(group, num_parallel=p), headroom, root))


def max_num_ctx(group: NodeGroup, model_ref: str, headroom: float = DEFAULT_HEADROOM, root: Path | None = None, step: int = 256) -> int | None:
    """The largest numCtx (a multiple of `step`) for `model_ref` at which the node still fits."""
    spec = next((m for m in group.models if m.ref == model_ref), None)
    if spec is None:
        raise CapacityError(f"{model_ref} is not a model of group {group.name}")
    limit = resolve_arch(spec, root).max_context or 1_048_576
    best = _largest(1, limit // step, lambda k: fits(_with_model(group, model_ref, num_ctx=k * step), headroom, root))
    return best * step if best else None


def fitting_quantizations(group: NodeGroup, model_ref: str, headroom: float = DEFAULT_HEADROOM, root: Path | None = None) -> list[str]:
    """Published quantizations of `model_ref` with which the node fits, smallest weights first."""
    spec = next((m for m in group.models if m.ref == model_ref), None)
    if spec is None:
        raise CapacityError(f"{model_ref} is not a model of group {group.name}")
    if spec.gguf:
        return [resolve_quantization(spec, resolve_arch(spec, root))] if fits(group, headroom, root) else []
    arch = resolve_arch(spec, root)
    return [q for q in arch.quantizations() if fits(_with_model(group, model_ref, quantization=q), headroom, root)]


def best_quantization(group: NodeGroup, model_ref: str, headroom: float = DEFAULT_HEADROOM, root: Path | None = None) -> str | None:
    """The most precise (largest) published quantization that fits, None when none does."""
    options = fitting_quantizations(group, model_ref, headroom, root)
    return options[-1] if options else None


def smallest_fitting_instance(group: NodeGroup, headroom: float = DEFAULT_HEADROOM, root: Path | None = None) -> str | None:
    """The GPU instance type with the least total VRAM (then fewest GPUs) on which the node fits."""
    candidates = sorted(
        (i for i in catalog.INSTANCES.values() if i.gpus > 0),
        key=lambda i: (i.total_vram, i.gpus, i.vcpus, i.name),
    )
    for instance in candidates:
        if fits(group.model_copy(update={"instance_type": instance.name}), headroom, root):
            return instance.name
    return None


def suggestions(group: NodeGroup, headroom: float, estimate: NodeEstimate, root: Path | None = None) -> list[str]:
    """What to change so that the node fits, each option on its own (the others left as configured)."""
    out: list[str] = []
    for model in estimate.models:
        if model.num_ctx_source == "vram-tier":
            out.append(
                f"{model.ref}: set numCtx — unset, Ollama gives every slot its VRAM-tier default of "
                f"{model.num_ctx} tokens on {group.instance_type}"
            )
    parallel = max_num_parallel(group, headroom, root)
    if parallel is not None and parallel < group.ollama.num_parallel:
        out.append(f"ollama.numParallel: {group.ollama.num_parallel} → {parallel}")
    for model in sorted(estimate.models, key=lambda m: m.total, reverse=True):
        ctx = max_num_ctx(group, model.ref, headroom, root)
        if ctx is not None and ctx < model.num_ctx:
            out.append(f"{model.ref}: numCtx {model.num_ctx} → {ctx}")
        quant = best_quantization(group, model.ref, headroom, root)
        if quant is not None and quant != model.quantization:
            out.append(f"{model.ref}: quantization {model.quantization} → {quant}")
    knobs = group.ollama
    for kv_type in ("q8_0", "q4_0"):
        if kv_bytes_per_element(kv_type) < kv_bytes_per_element(knobs.kv_cache_type):
            trial = _with_knobs(group, kv_cache_type=kv_type, flash_attention=True)
            if fits(trial, headroom, root):
                needs_fa = "" if knobs.flash_attention else " with flashAttention: true"
                out.append(f"ollama.kvCacheType: {knobs.kv_cache_type} → {kv_type}{needs_fa}")
                break
    instance = smallest_fitting_instance(group, headroom, root)
    if instance is not None and instance != group.instance_type:
        out.append(f"instanceType: {group.instance_type} → {instance}")
    if not out:
        out.append("no single change fits: split the models over more node groups or a larger instance type")
    return out


def max_conns_per_node(group: NodeGroup, queue_per_node: int) -> int:
    """Connections the gateway lets through to one node: a slot per parallel request of each resident
    model plus the allowed queue. The one place this number is computed (gateway `max_conns`, policy)."""
    resident = max(1, len(group.resident_models))
    return group.ollama.num_parallel * resident + queue_per_node


def _gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"


def human(value: int | None) -> str:
    """Bytes as GiB/MiB for tables."""
    if value is None:
        return "-"
    if abs(value) >= GIB:
        return f"{value / GIB:.2f} GiB"
    return f"{value / MIB:.0f} MiB"


def estimate_groups(groups: Iterable[NodeGroup], headroom: float, root: Path | None = None) -> list[NodeEstimate]:
    return [estimate_node(g, headroom, root) for g in groups]
