"""VRAM capacity model: the one place that decides whether models, quantizations and concurrency fit a GPU host.

Every consumer (the `fleet plan`/`fleet fit` commands, the policy pack, the gateway's `max_conns`) calls
this module; nothing else does this arithmetic. The answer depends on the Ollama release the node runs
(`fleet.ollama_rules`: the tag of `images.ollama`, or `--ollama-version`); the per-model terms and their
sources are in `fleet.capacity_terms`.

Per model: weights (the `blk.N` layers and the output layer), KV cache, compute graph, after the
flash-attention fallback and with one slot for embedding models. Placement follows the release:

* v0.13.1–v0.29: Ollama places whole layers (`llm/server.go` `buildLayout`/`assignLayers`/`greedyFit`):
  on each GPU it keeps 457 MiB, `OLLAMA_GPU_OVERHEAD` and one layer (`blk.0` + its KV) free, and the
  larger of the partial/full graph on every GPU it uses; it packs the fewest GPUs (all of them with
  `OLLAMA_SCHED_SPREAD`) from the output layer down, balanced by a capacity factor, so the output layer
  sits on one GPU and the fullest GPU decides. A model fits when every layer lands on a GPU.
* v0.30+: llama-server `--fit` places layers leaving 1024 MiB free per GPU (plus `OLLAMA_GPU_OVERHEAD`),
  and a model joining loaded ones must pass the scheduler's pre-check (predicted ≤ 80% of free memory).

Memory per GPU is what the driver reports (nvidia-smi's total less its idle reservation,
`fleet.catalog.GPU_CARDS`); the policy headroom is taken from that. Models that stay loaded are placed
one after the other, largest first, each GPU keeping the largest margin of the models on it. On a CPU
host (`local-cpu`) the same terms are judged against the RAM the stack declares (`local.memoryGib`), with
the same headroom; without it there is no memory verdict.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from fleet import catalog
from fleet import capacity_terms as terms
from fleet.capacity_terms import (  # noqa: F401 - re-exported: the capacity vocabulary other modules use
    KV_BYTES,
    NUM_BATCH,
    CapacityError,
    batch_size,
    effective_attention,
    effective_num_parallel,
    supports_flash_attention,
    token_embedding_bytes,
    weight_bytes,
)
from fleet.catalog import GIB, MIB, GpuInstance, ModelArch
from fleet.config import DEFAULT_QUEUE_PER_NODE, FleetSettings, Gateway, Images, ModelSpec, NodeGroup, OllamaSettings
from fleet.ollama_rules import OllamaRules, OllamaVersionError, ollama_version_of, rules_for

DEFAULT_HEADROOM = 0.10

# Ollama's default context when neither the request nor OLLAMA_CONTEXT_LENGTH sets one (v0.15.5+):
# (minimum total VRAM as the GPUs report it, tokens), checked in order (server/routes.go).
CONTEXT_TIERS: tuple[tuple[int, int], ...] = ((47 * GIB, 262144), (23 * GIB, 32768), (0, 4096))
FLAT_DEFAULT_CONTEXT = 4096  # before v0.15.5


@lru_cache(maxsize=1)
def default_ollama_version() -> str:
    """The Ollama release the default image (`images.ollama`) deploys."""
    return ollama_version_of(Images.model_fields["ollama"].default)


def rules_of(ollama_version: str | None) -> OllamaRules:
    """The rules of a release (the default image's when None), as a CapacityError when unsupported."""
    try:
        return rules_for(ollama_version or default_ollama_version())
    except OllamaVersionError as error:
        raise CapacityError(str(error)) from None


def version_of_image(image_ref: str) -> str:
    """The Ollama version of an image reference, as a CapacityError when it has none."""
    try:
        return ollama_version_of(image_ref)
    except OllamaVersionError as error:
        raise CapacityError(str(error)) from None


def supported_version_of_image(image_ref: str) -> str:
    """The Ollama version of an image reference whose rules the capacity model has, as a CapacityError when
    it has no version or an unsupported one."""
    version = version_of_image(image_ref)
    rules_of(version)
    return version


# --------------------------------------------------------------------------------------------- terms


def kv_bytes_per_element(kv_cache_type: str) -> Any:
    return terms.kv_bytes_per_element(kv_cache_type)


def engine(arch: ModelArch, ollama_version: str | None = None) -> str:
    """`ollama` (Ollama's own engine) or `llama.cpp` for this architecture under a release's rules."""
    return rules_of(ollama_version).engine(arch.arch)


def kv_cache_bytes(arch: ModelArch, num_ctx: int, num_parallel: int, kv_cache_type: str = "f16", ollama_version: str | None = None) -> int:
    """KV bytes the placement counts for `num_ctx × num_parallel` tokens (no fallback applied)."""
    return terms.kv_cache_bytes(arch, num_ctx, num_parallel, kv_cache_type, rules_of(ollama_version))


def graph_bytes(
    arch: ModelArch,
    num_ctx: int,
    num_parallel: int,
    kv_cache_type: str = "f16",
    flash_attention: bool = True,
    quantization: str | None = None,
    ollama_version: str | None = None,
) -> int:
    """Compute-graph bytes reserved per GPU holding layers (no fallback applied)."""
    quant = quantization or (arch.quantizations() or ["fp16"])[0]
    return terms.graph_bytes(arch, quant, num_ctx, num_parallel, kv_cache_type, flash_attention, rules_of(ollama_version))


def default_num_ctx(instance: GpuInstance, gpu_overhead: int = 0, ollama_version: str | None = None) -> int:
    """Ollama's context when none is set: flat 4096 before v0.15.5, then a tier of the total VRAM the GPUs
    report (less OLLAMA_GPU_OVERHEAD per GPU)."""
    if not rules_of(ollama_version).tiered_default_context:
        return FLAT_DEFAULT_CONTEXT
    total = instance.gpus * max(instance.vram_per_gpu - gpu_overhead, 0)
    for minimum, tokens in CONTEXT_TIERS:
        if total >= minimum:
            return tokens
    return CONTEXT_TIERS[-1][1]


# ---------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ModelEstimate:
    """One model's terms, in bytes. `graph` is per GPU; `total` counts it once per GPU the model spans.

    `num_parallel`, `kv_cache_type` and `flash_attention` are what the runner really starts with (after
    the embedding and flash-attention fallbacks, explained in `notes`)."""

    ref: str
    arch: str
    engine: str
    quantization: str
    kv_cache_type: str
    flash_attention: bool
    num_ctx: int
    num_ctx_source: str  # "numCtx", "contextLength", "group", "vram-tier", "default"
    num_parallel: int
    resident: bool
    weights: int  # on a GPU: every layer and the output layer; on a CPU host: the whole file
    kv_cache: int
    graph: int
    layer_buffer: int  # one layer's weights + KV kept free while placing (v0.13-v0.29 llama.cpp runner)
    output_layer: int = 0  # the output layer, placed whole on one GPU
    gpus: int = 1  # GPUs the model spans (0 on a CPU host)
    gpu_reserve: int = 0  # kept free per GPU in use: 457 MiB (Ollama) or 1024 MiB (llama-server --fit)
    kv_layers: tuple[int, ...] = ()  # KV bytes per repeating layer
    predicted: int = 0  # v0.30+ scheduler pre-check figure (file + f16 KV + batch surcharge), 0 before v0.30
    batch: int = 0  # the batch the runner is started with (v0.30+ raises it for long contexts)
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.graph * max(self.gpus, 1)

    def layers(self) -> list[int]:
        """Bytes of each layer Ollama places: the repeating layers (weights + KV), then the output layer."""
        count = len(self.kv_layers)
        body = self.weights - self.output_layer
        share, extra = divmod(body, count) if count else (0, 0)
        sizes = [share + (1 if i < extra else 0) + kv for i, kv in enumerate(self.kv_layers)]
        return sizes + [self.output_layer]

    def to_dict(self) -> dict[str, Any]:
        data = _camel({k: v for k, v in asdict(self).items() if k != "kv_layers"})
        data["notes"] = list(self.notes)
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
    vram: int  # as the driver reports it
    usable: int  # (vram − driver reservation) × (1 − headroom)
    used: int  # model parts placed here (layers with their KV, and the graph)
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
    ollama_version: str = ""
    ollama_rules: str = ""
    driver_reserved: int = 0  # per GPU

    @property
    def cpu_only(self) -> bool:
        return self.gpus == 0

    @property
    def capacity(self) -> int:
        """Total VRAM as reported (system memory on a CPU host, 0 when unknown)."""
        return self.memory if self.cpu_only else self.gpus * self.vram_per_gpu

    @property
    def usable(self) -> int:
        if self.cpu_only:
            return int(self.capacity * (1 - self.headroom))
        return sum(g.usable for g in self.gpu_usage)

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
        """Margins kept free on the GPUs in use plus the driver's reservation on every GPU."""
        return sum(g.margin for g in self.gpu_usage) + self.gpus * self.driver_reserved

    @property
    def total(self) -> int:
        if self.cpu_only:
            return sum(m.total for m in self.models)
        return sum(g.total for g in self.gpu_usage) + self.gpus * self.driver_reserved

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
            "driverReservedPerGpu": self.driver_reserved,
            "capacity": self.capacity,
            "headroom": self.headroom,
            "usable": self.usable,
            "ollamaVersion": self.ollama_version,
            "ollamaRules": self.ollama_rules,
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


def effective_num_ctx(
    spec: ModelSpec, group: NodeGroup, arch: ModelArch | None = None, ollama_version: str | None = None
) -> tuple[int, str]:
    """The context each slot of this model gets, and where it comes from.

    The model's `numCtx`; else OLLAMA_CONTEXT_LENGTH, which the node sets to `ollama.contextLength` or the
    largest `numCtx` of the group; else Ollama's default (VRAM-tiered from v0.15.5, 4096 before).
    Ollama clamps it to the trained context.
    """
    if spec.num_ctx is not None:
        value, source = spec.num_ctx, "numCtx"
    elif group.ollama.context_length is not None:
        value, source = group.ollama.context_length, "contextLength"
    elif any(m.num_ctx for m in group.models):
        value, source = max(m.num_ctx for m in group.models if m.num_ctx), "group"
    else:
        value = default_num_ctx(instance_for(group), group.ollama.gpu_overhead_bytes, ollama_version)
        source = "vram-tier" if rules_of(ollama_version).tiered_default_context else "default"
    if arch is not None and arch.max_context and value > arch.max_context:
        value = arch.max_context
    return value, source


def context_length_env(group: NodeGroup) -> int | None:
    """The OLLAMA_CONTEXT_LENGTH a node of this group runs with (None: leave Ollama's default)."""
    if group.ollama.context_length is not None:
        return group.ollama.context_length
    sizes = [m.num_ctx for m in group.models if m.num_ctx]
    return max(sizes) if sizes else None


def _kv_layers(arch: ModelArch, full: int, window: int) -> tuple[int, ...]:
    if not window:
        return (full,) * arch.n_layer
    # gemma2 alternates (even layers local); gemma3 makes every sixth layer global (fs/ggml/ggml.go:735).
    period = arch.n_layer // max(arch.full_attention_layers, 1)
    return tuple(full if (i + 1) % period == 0 else window for i in range(arch.n_layer))


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
    ollama_version: str | None = None,
    available: int = 0,
) -> ModelEstimate:
    """One model's terms in bytes under a release's rules (`estimate_node` places it on GPUs).

    `available`: free GPU memory of the host, which v0.30+ weighs when it picks a larger batch (0: unknown)."""
    if num_ctx < 1 or num_parallel < 1:
        raise CapacityError("num_ctx and num_parallel must be positive")
    rules = rules_of(ollama_version)
    if arch.max_context and num_ctx > arch.max_context:
        num_ctx = arch.max_context
    notes: list[str] = []
    parallel = effective_num_parallel(arch, num_parallel)
    if parallel != num_parallel:
        notes.append(f"embedding model: Ollama loads it with one slot, not OLLAMA_NUM_PARALLEL={num_parallel}")
    fa, kv_type, why = effective_attention(arch, rules, kv_cache_type, flash_attention)
    if why:
        notes.append(why)
    weights = weight_bytes(arch, quantization, on_gpu)
    full, window = terms.kv_cache_per_layer(arch, num_ctx, parallel, kv_type, rules)
    kv_layers = _kv_layers(arch, full, window)
    engine_name = rules.engine(arch.arch)
    output = min(terms.output_layer_bytes(arch, quantization), weights) if on_gpu else 0
    buffer = 0
    if rules.layer_buffer and engine_name == "llama.cpp":
        buffer = terms.block_bytes(arch, quantization) + (kv_layers[0] if kv_layers else 0)
    predicted = 0
    batch = terms.batch_size(num_ctx)
    if rules.precheck_share is not None:
        predicted = terms.predicted_server_vram(arch, quantization, num_ctx, parallel)
        batch = terms.generation_batch(num_ctx * parallel, predicted, available, fa, arch.embedding)
        if not arch.embedding:
            predicted += terms.GENERATION_BATCH_SURCHARGE[batch]
    return ModelEstimate(
        ref=arch.ref,
        arch=arch.arch,
        engine=engine_name,
        quantization=quantization,
        kv_cache_type=kv_type,
        flash_attention=fa,
        num_ctx=num_ctx,
        num_ctx_source=num_ctx_source,
        num_parallel=parallel,
        resident=resident,
        weights=weights,
        kv_cache=sum(kv_layers),
        graph=terms.graph_bytes(arch, quantization, num_ctx, parallel, kv_type, fa, rules, batch),
        layer_buffer=buffer,
        output_layer=output,
        gpus=1 if on_gpu else 0,
        gpu_reserve=rules.gpu_reserve,
        kv_layers=kv_layers,
        predicted=predicted,
        batch=batch,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------------------- placement


@dataclass
class _Gpu:
    index: int
    vram: int
    usable: int
    gpu_overhead: int
    used: int = 0
    reserve: int = 0  # the largest margin (reserve + layer buffer) of the models placed here
    models: list[str] = field(default_factory=list)

    def margin(self) -> int:
        return self.reserve + self.gpu_overhead if self.models else 0

    def freeze(self) -> GpuUsage:
        return GpuUsage(self.index, self.vram, self.usable, self.used, self.margin(), tuple(self.models))


def _greedy_fit(layers: list[int], free: list[int], capacity: float) -> dict[int, list[int]]:
    """Ollama's `greedyFit`: from the last layer down, fill the last GPU, then the one before, …"""
    device = len(free) - 1
    placed: dict[int, list[int]] = {device: []}
    space = int(free[device] * capacity)
    for i in range(len(layers) - 1, -1, -1):
        while layers[i] > space:
            device -= 1
            if device < 0:
                return placed
            placed[device] = []
            space = int(free[device] * capacity)
        placed[device].insert(0, i)
        space -= layers[i]
    return placed


def _count(placed: dict[int, list[int]]) -> int:
    return sum(len(v) for v in placed.values())


def _best_fit(layers: list[int], free: list[int]) -> dict[int, list[int]]:
    """Ollama's `findBestFit`: the smallest capacity factor that still places as many layers (balance)."""
    best = _greedy_fit(layers, free, 1.0)
    most = _count(best)
    if len(free) == 1:
        return best
    low, high = 0.0, 1.0
    while high - low > 1e-6:
        mid = (low + high) / 2
        trial = _greedy_fit(layers, free, mid)
        if _count(trial) == most:
            high, best = mid, trial
        else:
            low = mid
    return best


def _assign(layers: list[int], free: list[int], spread: bool) -> dict[int, list[int]]:
    """Ollama's `assignLayers`: the fewest GPUs (largest free first) that take every layer; all with spread."""
    if spread:
        return _best_fit(layers, free)
    placed: dict[int, list[int]] = {}
    for count in range(1, len(free) + 1):
        placed = _best_fit(layers, free[:count])
        if _count(placed) == len(layers):
            break
    return placed


def _layout(gpus: list[_Gpu], model: ModelEstimate, spread: bool) -> tuple[dict[int, int], bool]:
    """Place a model's layers on the GPUs as the release does: {gpu index: bytes used}, all layers placed."""
    layers = model.layers()
    order = sorted(gpus, key=lambda g: (-(g.usable - g.used), g.index))
    margin = model.gpu_reserve + model.layer_buffer

    def free(gpu: _Gpu, with_graph: bool) -> int:
        keep = max(gpu.reserve, margin) + gpu.gpu_overhead + (model.graph if with_graph else 0)
        return max(gpu.usable - gpu.used - keep, 0)

    # Ollama first lays out without graphs, then reserves the graph on every GPU used and lays out again
    # until the number of GPUs stops growing (llm/server.go:648-670).
    with_graph: set[int] = set()
    placed: dict[int, list[int]] = {}
    while True:
        placed = _assign(layers, [free(g, g.index in with_graph) for g in order], spread)
        used = {order[slot].index for slot, items in placed.items() if items}
        if len(used) > len(with_graph):
            with_graph |= used
            continue
        break
    usage = {order[slot].index: sum(layers[i] for i in items) + model.graph for slot, items in placed.items() if items}
    fits = _count(placed) == len(layers) and all(
        usage[g.index] <= g.usable - g.used - max(g.reserve, margin) - g.gpu_overhead for g in gpus if g.index in usage
    )
    return usage, fits


def _place(gpus: list[_Gpu], model: ModelEstimate, usage: dict[int, int]) -> ModelEstimate:
    margin = model.gpu_reserve + model.layer_buffer
    for gpu in gpus:
        if gpu.index in usage:
            gpu.used += usage[gpu.index]
            gpu.reserve = max(gpu.reserve, margin)
            gpu.models.append(model.ref)
    return ModelEstimate(**{**asdict(model), "gpus": len(usage)})


def _spread_over_all(gpus: list[_Gpu], model: ModelEstimate) -> dict[int, int]:
    """A model that does not fit, shown divided over every GPU (over the limit)."""
    share = -(-(model.weights + model.kv_cache) // len(gpus))
    return {g.index: share + model.graph for g in gpus}


def _copy(gpus: list[_Gpu]) -> list[_Gpu]:
    return [_Gpu(g.index, g.vram, g.usable, g.gpu_overhead, g.used, g.reserve, list(g.models)) for g in gpus]


def _precheck_problems(placed: list[ModelEstimate], gpus: list[_Gpu], share: float | None) -> list[str]:
    """v0.30+: a model started next to loaded ones is refused when its predicted size exceeds `share` of
    the memory the others leave free (server/sched.go:546-551); checked for each model as the last one."""
    if share is None or len(placed) < 2:
        return []
    problems = []
    free_total = sum(g.usable for g in gpus)
    for model in placed:
        others = sum(m.total for m in placed if m is not model)
        available = max(free_total - others, 0)
        if model.predicted > share * available:
            problems.append(
                f"{model.ref}: Ollama's scheduler predicts {_gib(model.predicted)} (file + f16 KV) for it, more than "
                f"{share:.0%} of the {_gib(available)} the other loaded models leave free: it would evict one of them"
            )
    return problems


def host_memory(settings: FleetSettings, group: NodeGroup) -> int | None:
    """RAM a CPU group's node may use, in bytes, as the stack declares it (`local.memoryGib`); None for a GPU group
    or when the stack does not say."""
    if instance_for(group).gpus or settings.local.memory_gib is None:
        return None
    return int(settings.local.memory_gib * GIB)


def _estimate(
    group: NodeGroup,
    headroom: float,
    root: Path | None = None,
    suggest: bool = True,
    ollama_version: str | None = None,
    memory: int | None = None,
) -> NodeEstimate:
    instance = instance_for(group)
    version = ollama_version or default_ollama_version()
    rules = rules_of(version)
    knobs: OllamaSettings = group.ollama
    on_gpu = instance.gpus > 0
    drafts: list[ModelEstimate] = []
    for spec in group.models:
        arch = resolve_arch(spec, root)
        num_ctx, source = effective_num_ctx(spec, group, arch, version)
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
                ollama_version=version,
                available=instance.gpus * instance.free_per_gpu,
            )
        )
        # Named as the stack names it (a GGUF file's own name is its file's stem).
        drafts[-1] = ModelEstimate(**{**asdict(drafts[-1]), "ref": spec.ref})
    problems: list[str] = []
    resident = [m for m in drafts if m.resident]
    on_demand = [m for m in drafts if not m.resident]
    loaded_together = len(resident) + (1 if on_demand else 0)
    if loaded_together > group.max_loaded_models:
        problems.append(
            f"{loaded_together} models must be loaded together but OLLAMA_MAX_LOADED_MODELS is "
            f"{group.max_loaded_models}: Ollama would unload a resident model"
        )
    common = dict(
        group=group.name,
        instance_type=instance.name,
        gpu_model=instance.gpu_model,
        memory=memory if memory and not instance.gpus else instance.memory,
        headroom=headroom,
        ollama_version=version,
        ollama_rules=rules.name,
    )
    if not on_gpu:
        return NodeEstimate(
            **common, gpus=0, vram_per_gpu=0, models=tuple(resident + on_demand), gpu_usage=(), problems=tuple(problems)
        )

    usable = int(instance.free_per_gpu * (1 - headroom))
    gpus = [_Gpu(i, instance.vram_per_gpu, usable, knobs.gpu_overhead_bytes) for i in range(instance.gpus)]
    placed: dict[str, ModelEstimate] = {}
    for model in sorted(resident, key=lambda m: m.total, reverse=True):
        usage, ok = _layout(gpus, model, knobs.sched_spread)
        if not ok:
            problems.append(
                f"{model.ref} needs {_gib(model.total)} but the free VRAM left on {instance.name} "
                f"({instance.gpus} × {_gib(instance.free_per_gpu)} free of {_gib(instance.vram_per_gpu)} reported, "
                f"{headroom:.0%} headroom) cannot hold every layer: Ollama would run part of it on the CPU"
            )
            usage = _spread_over_all(gpus, model)
        placed[model.ref] = _place(gpus, model, usage)
    # A model loaded on demand must fit next to the resident ones (else loading it evicts one of them);
    # the largest one is shown loaded.
    largest = max(on_demand, key=lambda m: m.total) if on_demand else None
    for model in sorted(on_demand, key=lambda m: m.total, reverse=True):
        trial = _copy(gpus)
        usage, ok = _layout(trial, model, knobs.sched_spread)
        if not ok:
            problems.append(f"{model.ref} (loaded on demand) does not fit next to the resident models")
            usage = _spread_over_all(trial, model)
        placed[model.ref] = _place(trial, model, usage)
        if model is largest:
            gpus = trial
    loaded = [placed[m.ref] for m in resident] + ([placed[largest.ref]] if largest else [])
    problems += _precheck_problems(loaded, gpus, rules.precheck_share)
    estimate = NodeEstimate(
        **common,
        gpus=instance.gpus,
        vram_per_gpu=instance.vram_per_gpu,
        models=tuple(placed[m.ref] for m in drafts),
        gpu_usage=tuple(g.freeze() for g in gpus),
        problems=tuple(problems),
        driver_reserved=instance.driver_reserved,
    )
    if suggest and not estimate.fits:
        found = suggestions(group, headroom, estimate, root, version)
        estimate = NodeEstimate(**{**_fields(estimate), "suggestions": tuple(found)})
    return estimate


def _fields(estimate: NodeEstimate) -> dict[str, Any]:
    return {f: getattr(estimate, f) for f in estimate.__dataclass_fields__}


def estimate_node(
    group: NodeGroup,
    headroom: float = DEFAULT_HEADROOM,
    root: Path | None = None,
    ollama_version: str | None = None,
    suggest: bool = True,
    host_memory: int | None = None,
) -> NodeEstimate:
    """All models of one node of `group` placed on its GPUs under the rules of `ollama_version` (default:
    the release of the default image); `.fits`, per-model terms in bytes, and (with `suggest`) what to
    change when it does not fit. A CPU group is judged against `host_memory` (bytes, `host_memory()`), and
    gets no verdict without it."""
    if not 0 <= headroom < 1:
        raise CapacityError("headroom must be in [0, 1)")
    return _estimate(group, headroom, root, suggest=suggest, ollama_version=ollama_version, memory=host_memory)


def fits(group: NodeGroup, headroom: float = DEFAULT_HEADROOM, root: Path | None = None, ollama_version: str | None = None) -> bool:
    return _estimate(group, headroom, root, suggest=False, ollama_version=ollama_version).fits


def estimate_fit(*fit: Any, headroom: float = DEFAULT_HEADROOM, ollama_version: str | None = None) -> NodeEstimate:
    """One model on one instance type (the `fleet fit` question); `fit` are `single_model_group`'s arguments."""
    return estimate_node(single_model_group(*fit), headroom, ollama_version=ollama_version)


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


def with_num_parallel(group: NodeGroup, num_parallel: int) -> NodeGroup:
    """The group with OLLAMA_NUM_PARALLEL `num_parallel`, the rest as configured."""
    return _with_knobs(group, num_parallel=num_parallel)


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


def max_num_parallel(
    group: NodeGroup, headroom: float = DEFAULT_HEADROOM, root: Path | None = None, limit: int = 64, ollama_version: str | None = None
) -> int | None:
    """The largest OLLAMA_NUM_PARALLEL at which the node still fits (None: not even 1)."""
    return _largest(1, limit, lambda p: fits(with_num_parallel(group, p), headroom, root, ollama_version))


def max_num_ctx(
    group: NodeGroup, model_ref: str, headroom: float = DEFAULT_HEADROOM, root: Path | None = None, step: int = 256, ollama_version: str | None = None
) -> int | None:
    """The largest numCtx (a multiple of `step`) for `model_ref` at which the node still fits."""
    spec = next((m for m in group.models if m.ref == model_ref), None)
    if spec is None:
        raise CapacityError(f"{model_ref} is not a model of group {group.name}")
    limit = resolve_arch(spec, root).max_context or 1_048_576
    best = _largest(1, limit // step, lambda k: fits(_with_model(group, model_ref, num_ctx=k * step), headroom, root, ollama_version))
    return best * step if best else None


def fitting_quantizations(
    group: NodeGroup, model_ref: str, headroom: float = DEFAULT_HEADROOM, root: Path | None = None, ollama_version: str | None = None
) -> list[str]:
    """Published quantizations of `model_ref` with which the node fits, smallest weights first."""
    spec = next((m for m in group.models if m.ref == model_ref), None)
    if spec is None:
        raise CapacityError(f"{model_ref} is not a model of group {group.name}")
    arch = resolve_arch(spec, root)
    if spec.gguf:
        return [resolve_quantization(spec, arch)] if fits(group, headroom, root, ollama_version) else []
    return [q for q in arch.quantizations() if fits(_with_model(group, model_ref, quantization=q), headroom, root, ollama_version)]


def best_quantization(
    group: NodeGroup, model_ref: str, headroom: float = DEFAULT_HEADROOM, root: Path | None = None, ollama_version: str | None = None
) -> str | None:
    """The most precise (largest) published quantization that fits, None when none does."""
    options = fitting_quantizations(group, model_ref, headroom, root, ollama_version)
    return options[-1] if options else None


def smallest_fitting_instance(
    group: NodeGroup, headroom: float = DEFAULT_HEADROOM, root: Path | None = None, ollama_version: str | None = None
) -> str | None:
    """The GPU instance type with the least total VRAM (then fewest GPUs) on which the node fits."""
    candidates = sorted(
        (i for i in catalog.INSTANCES.values() if i.gpus > 0),
        key=lambda i: (i.total_vram, i.gpus, i.vcpus, i.name),
    )
    for instance in candidates:
        if fits(group.model_copy(update={"instance_type": instance.name}), headroom, root, ollama_version):
            return instance.name
    return None


def _kv_change_honoured(group: NodeGroup, kv_type: str, root: Path | None, ollama_version: str | None) -> bool:
    """A quantized KV cache is a real change only when every model keeps it (flash attention stays on)."""
    rules = rules_of(ollama_version)
    for spec in group.models:
        arch = resolve_arch(spec, root)
        _, effective, _ = effective_attention(arch, rules, kv_type, True)
        if effective != kv_type:
            return False
    return True


def suggestions(
    group: NodeGroup, headroom: float, estimate: NodeEstimate, root: Path | None = None, ollama_version: str | None = None
) -> list[str]:
    """What to change so that the node fits, each option on its own (the others left as configured).

    Every option is re-checked with the same estimate before it is offered, and only changes the release
    honours are offered (no quantized KV cache for a model whose flash attention Ollama turns off)."""
    out: list[str] = []
    for model in estimate.models:
        if model.num_ctx_source in ("vram-tier", "default"):
            out.append(
                f"{model.ref}: set numCtx — unset, Ollama gives every slot its default of "
                f"{model.num_ctx} tokens on {group.instance_type}"
            )
    parallel = max_num_parallel(group, headroom, root, ollama_version=ollama_version)
    if parallel is not None and parallel < group.ollama.num_parallel:
        out.append(f"ollama.numParallel: {group.ollama.num_parallel} → {parallel}")
    for model in sorted(estimate.models, key=lambda m: m.total, reverse=True):
        ctx = max_num_ctx(group, model.ref, headroom, root, ollama_version=ollama_version)
        if ctx is not None and ctx < model.num_ctx:
            out.append(f"{model.ref}: numCtx {model.num_ctx} → {ctx}")
        quant = best_quantization(group, model.ref, headroom, root, ollama_version)
        if quant is not None and quant != model.quantization:
            out.append(f"{model.ref}: quantization {model.quantization} → {quant}")
    knobs = group.ollama
    for kv_type in ("q8_0", "q4_0"):
        if kv_bytes_per_element(kv_type) < kv_bytes_per_element(knobs.kv_cache_type):
            if not _kv_change_honoured(group, kv_type, root, ollama_version):
                continue
            trial = _with_knobs(group, kv_cache_type=kv_type, flash_attention=True)
            if fits(trial, headroom, root, ollama_version):
                needs_fa = "" if knobs.flash_attention else " with flashAttention: true"
                out.append(f"ollama.kvCacheType: {knobs.kv_cache_type} → {kv_type}{needs_fa}")
                break
    instance = smallest_fitting_instance(group, headroom, root, ollama_version)
    if instance is not None and instance != group.instance_type:
        out.append(f"instanceType: {group.instance_type} → {instance}")
    if not out:
        out.append("no single change fits: split the models over more node groups or a larger instance type")
    return out


def max_conns_per_node(group: NodeGroup, queue_per_node: int) -> int:
    """Connections the gateway lets through to one node: a slot per parallel request of each resident
    model plus the allowed queue. The one place this number is computed (gateway `max_conns`, policy)."""
    return slots_per_node(group) + queue_per_node


def slot_models(group: NodeGroup) -> int:
    """Models of a node that each hold `numParallel` slots: the resident ones (at least one)."""
    return max(1, len(group.resident_models))


def slots_per_node(group: NodeGroup) -> int:
    """Requests one node serves at once: a slot per parallel request of each resident model."""
    return group.ollama.num_parallel * slot_models(group)


def slots_per_group(group: NodeGroup) -> int:
    """Requests all the nodes of `group` serve at once."""
    return slots_per_node(group) * group.count


def num_parallel_for_slots(group: NodeGroup, slots: int) -> int:
    """The largest numParallel whose slots per node stay within `slots` (at least 1)."""
    return max(1, slots // slot_models(group))


def queue_for_ttft_target(group: NodeGroup, target_s: float) -> int:
    """Requests a node may hold waiting so that the last of them still has its first token within `target_s`.

    With every slot busy, a slot frees every serviceTime ÷ slots seconds on average, so the k-th waiting
    request starts after about k × serviceTime ÷ slots and has its first token firstToken later. Capped at
    OLLAMA_MAX_QUEUE (beyond it Ollama refuses)."""
    if group.measured is None:
        raise CapacityError(f"node group {group.name!r} has no measured service time (nodeGroups[].measured)")
    budget = target_s - group.measured.first_token_seconds
    if budget <= 0:
        return 0
    # Compared before rounding: a tiny measured service time makes the quotient overflow to infinity.
    share = budget * slots_per_node(group) / group.measured.service_time_seconds + 1e-9
    if not share < group.ollama.max_queue:
        return group.ollama.max_queue
    return math.floor(share)


def queue_per_node(group: NodeGroup, gateway: Gateway) -> int:
    """The queue the gateway allows a node of `group`: gateway.queuePerNode when the stack sets it, else the
    one derived from gateway.ttftTargetSeconds, else the default."""
    if gateway.queue_per_node is not None:
        return gateway.queue_per_node
    if gateway.ttft_target_seconds is not None:
        return queue_for_ttft_target(group, gateway.ttft_target_seconds)
    return DEFAULT_QUEUE_PER_NODE


def _gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"


def human(value: int | None) -> str:
    """Bytes as GiB/MiB for tables."""
    if value is None:
        return "-"
    if abs(value) >= GIB:
        return f"{value / GIB:.2f} GiB"
    return f"{value / MIB:.0f} MiB"


def estimate_groups(
    groups: Iterable[NodeGroup], headroom: float, root: Path | None = None, ollama_version: str | None = None
) -> list[NodeEstimate]:
    return [estimate_node(g, headroom, root, ollama_version) for g in groups]
