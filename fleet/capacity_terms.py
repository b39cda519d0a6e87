"""One model's memory terms as Ollama counts them: weights per layer, KV cache, compute graph, flash attention.

Pure functions of a model's architecture (`fleet.catalog.ModelArch`), its settings and the Ollama release's
rules (`fleet.ollama_rules`). Sources, by tag:

* Flash attention: Ollama keeps the configured `OLLAMA_FLASH_ATTENTION` only for models that support it
  (v0.24.0 `llm/server.go:199-210`): not embedding models (a `<arch>.pooling_type` key), not gemma2 or
  grok, and only when the K and V head sizes are equal (`fs/ggml/ggml.go:868-887`). Without flash attention
  a quantized `OLLAMA_KV_CACHE_TYPE` is dropped and the cache is f16 (`llm/server.go:237-246` for the
  llama.cpp runner, 257-271 for Ollama's engine). From v0.30 both settings go to llama-server unchanged
  (v0.32.15 `llm/llama_server.go:393-396`, 597-621).
* KV cache: `context × (K head dim + V head dim) × KV heads × bytes` per layer, context = num_ctx ×
  num_parallel (v0.24.0 `fs/ggml/ggml.go:600-660`). Ollama's placement of llama.cpp-runner models counts
  q8_0 as 1 byte and q4_0 as ½ (`fs/ggml/ggml.go:911-922`); Ollama's engine and llama.cpp allocate ggml's
  block sizes (34/32 and 18/32). Sliding-window layers hold `window × num_parallel + batch` tokens where
  the serving engine implements the window (Ollama's engine; llama.cpp from v0.30); gemma2 on the
  v0.13-v0.29 llama.cpp runner reserves the full context on every layer.
* Compute graph on the llama.cpp runner: `GraphSize`'s partial- and full-offload estimates
  (`fs/ggml/ggml.go:663-805`), of which Ollama reserves the larger on every GPU it uses
  (`llm/server.go:664`); architectures without a formula get `heads / KV heads × KV / 6`
  (`llm/server.go:631-640`). Models on Ollama's engine have their graph measured by the runner; the
  formula here was calibrated on v0.24.0's logged `compute graph` (SmolLM2-135M, OLLAMA_NEW_ENGINE=1).
* Layers: Ollama places `blk.N` layers (their tensors plus their KV) and one output layer
  (`output_norm` + `output`, or `token_embd` when the output is tied); an untied `token_embd` stays in
  system memory and is not counted (`llm/server.go:583-593`).
"""

from __future__ import annotations

from fractions import Fraction

from fleet.catalog import ModelArch
from fleet.ollama_rules import GGML_KV_BYTES, OllamaRules

NUM_BATCH = 512  # Ollama's default num_batch; the graph is sized for min(num_batch, num_ctx) tokens

# The KV cache types a node may configure (bytes per element that ggml allocates).
KV_BYTES: dict[str, Fraction] = dict(GGML_KV_BYTES)

# Bytes per weight of a file's main tensor type per quantization (llama.cpp block sizes: q4_0 18 B/32,
# q4_1 20 B/32, q4_K 144 B/256, q5_K 176 B/256, q6_K 210 B/256, q8_0 34 B/32, f16 2 B). An untied
# token_embd is stored in this type.
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

# llama.cpp's quantizer stores the output projection (and a tied token_embd, which serves as the output) as
# q6_K in every 4-, 5- and 6-bit file, q8_0 in q8_0 files, unquantized in f16/f32 files
# (llama.cpp src/llama-quant.cpp llama_tensor_get_type).
OUTPUT_BYTES_PER_WEIGHT: dict[str, Fraction] = {
    **{q: Fraction(210, 256) for q in ("q4_0", "q4_1", "q4_K_M", "q5_K_M", "q6_K")},
    "q8_0": Fraction(34, 32),
    "fp16": Fraction(2),
    "bf16": Fraction(2),
    "fp32": Fraction(4),
}

NO_FLASH_ATTENTION_ARCHS = frozenset({"gemma2", "grok"})  # fs/ggml/ggml.go:879


class CapacityError(ValueError):
    """A model, quantization, instance or Ollama version the capacity model cannot estimate."""


def kv_bytes_per_element(kv_cache_type: str, table: dict[str, Fraction] = KV_BYTES) -> Fraction:
    try:
        return table[kv_cache_type]
    except KeyError:
        raise CapacityError(f"unknown KV cache type {kv_cache_type!r}; allowed: {', '.join(KV_BYTES)}") from None


def value_dim(arch: ModelArch) -> int:
    return arch.value_dim or arch.head_dim


def supports_flash_attention(arch: ModelArch) -> bool:
    """Ollama's `SupportsFlashAttention`: not embedding models, not gemma2/grok, equal K and V head sizes."""
    if arch.embedding or arch.arch in NO_FLASH_ATTENTION_ARCHS:
        return False
    return arch.head_dim != 0 and arch.head_dim == value_dim(arch)


def effective_attention(arch: ModelArch, rules: OllamaRules, kv_cache_type: str, flash_attention: bool) -> tuple[bool, str, str]:
    """(flash attention, KV cache type, why they differ from the configuration or "") as the runner starts."""
    kv_bytes_per_element(kv_cache_type)
    if not rules.flash_attention_fallback:
        if not flash_attention and kv_cache_type != "f16":
            return False, "f16", "a quantized KV cache needs flash attention; llama.cpp keeps f16"
        return flash_attention, kv_cache_type, ""
    if flash_attention and not supports_flash_attention(arch):
        reason = "embedding model" if arch.embedding else (
            arch.arch if arch.arch in NO_FLASH_ATTENTION_ARCHS else "K and V head sizes differ"
        )
        note = f"Ollama turns flash attention off ({reason})"
        if kv_cache_type != "f16":
            note += f"; the {kv_cache_type} KV cache falls back to f16"
        return False, "f16", note
    if not flash_attention and kv_cache_type != "f16":
        return False, "f16", f"{kv_cache_type} KV cache needs flash attention; Ollama uses f16"
    return flash_attention, kv_cache_type, ""


def effective_num_parallel(arch: ModelArch, num_parallel: int) -> int:
    """Embedding models always load with one slot (server/sched.go `load`)."""
    return 1 if arch.embedding else num_parallel


def batch_size(num_ctx: int) -> int:
    return min(NUM_BATCH, num_ctx)


def windowed(arch: ModelArch, rules: OllamaRules) -> bool:
    """Whether the serving engine keeps only the window on sliding-window layers."""
    if not (arch.sliding_window and arch.sliding_window_layers):
        return False
    return rules.layout == "llama-server-fit" or rules.engine(arch.arch) == "ollama"


def kv_cache_per_layer(arch: ModelArch, num_ctx: int, num_parallel: int, kv_cache_type: str, rules: OllamaRules) -> tuple[int, int]:
    """Placement KV bytes of one full-context layer and of one sliding-window layer (0 when none)."""
    bpe = kv_bytes_per_element(kv_cache_type, rules.placement_kv_bytes(rules.engine(arch.arch)))
    tokens = num_ctx * num_parallel
    per_token = (arch.head_dim + value_dim(arch)) * arch.n_head_kv * bpe
    full = int(per_token * tokens)
    if not windowed(arch, rules):
        return full, 0
    window_tokens = min(tokens, arch.sliding_window * num_parallel + batch_size(num_ctx))
    return full, int(per_token * window_tokens)


def kv_cache_bytes(arch: ModelArch, num_ctx: int, num_parallel: int, kv_cache_type: str, rules: OllamaRules) -> int:
    full, window = kv_cache_per_layer(arch, num_ctx, num_parallel, kv_cache_type, rules)
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


def output_layer_bytes(arch: ModelArch, quantization: str) -> int:
    """Ollama's output layer: `output_norm` (f32) plus `output`, or the tied `token_embd`."""
    if quantization in arch.output_layer_bytes:
        return arch.output_layer_bytes[quantization]
    per_weight = OUTPUT_BYTES_PER_WEIGHT.get(quantization, EMBEDDING_BYTES_PER_WEIGHT.get(quantization, Fraction(2)))
    return int(arch.vocab_size * arch.n_embd * per_weight) + 4 * arch.n_embd


def weight_bytes(arch: ModelArch, quantization: str, on_gpu: bool = True) -> int:
    """Weight bytes a device holds: on a GPU the layers and the output layer (an untied input embedding
    stays in system memory); on a CPU host the whole file."""
    if quantization not in arch.weights:
        published = ", ".join(arch.quantizations()) or "none"
        raise CapacityError(f"{arch.ref}: quantization {quantization!r} is not published; allowed: {published}")
    if on_gpu and quantization in arch.offload_bytes:
        return arch.offload_bytes[quantization]
    blob = arch.weights[quantization]
    if on_gpu and not arch.tied_embeddings:
        return blob - token_embedding_bytes(arch, quantization)
    return blob


def block_bytes(arch: ModelArch, quantization: str) -> int:
    """Bytes of one repeating layer's tensors (`blk.0`; an even share of the layers for catalog models)."""
    if quantization in arch.block_bytes:
        return arch.block_bytes[quantization]
    layers = weight_bytes(arch, quantization) - output_layer_bytes(arch, quantization)
    return max(layers, 0) // max(arch.n_layer, 1)


def expert_gate_bytes(arch: ModelArch, quantization: str) -> int:
    """Bytes of `blk.0.ffn_gate_exps.weight` (merged experts), 0 for dense models."""
    if not arch.n_expert:
        return 0
    if quantization in arch.expert_gate_bytes:
        return arch.expert_gate_bytes[quantization]
    per_weight = EMBEDDING_BYTES_PER_WEIGHT.get(quantization, Fraction(2))
    return int(arch.n_expert * arch.n_ff * arch.n_embd * per_weight)


def _ollama_engine_graph(arch: ModelArch, context: int, batch: int, flash_attention: bool) -> int:
    # Measured by Ollama from the worst-case batch: the f16 KQ mask lives through the whole graph, the peak
    # stage is the gated FFN (3 × n_ff) plus the residual activations (4 × n_embd); without flash attention
    # the f32 scores of every head for the whole context, when larger.
    embd, heads = arch.n_embd, arch.n_head
    ffn_stage = 2 * batch * context + 4 * batch * (4 * embd + 3 * arch.n_ff)
    if flash_attention:
        return ffn_stage
    return max(4 * batch * (4 * embd + heads * context), ffn_stage)


def graph_size(arch: ModelArch, quantization: str, num_ctx: int, num_parallel: int, kv_cache_type: str, rules: OllamaRules) -> tuple[int, int]:
    """(partial, full) offload graph estimates of `GraphSize` for the llama.cpp runner, with the fallback
    of `llamaServer.Load` for architectures without a formula."""
    context = num_ctx * num_parallel
    b = batch_size(num_ctx)
    e, h, hkv, v = arch.n_embd, arch.n_head, arch.n_head_kv, arch.vocab_size
    eh = e // max(h, 1)  # EmbeddingHeadCountMax: embedding / heads
    ehk = arch.head_dim  # EmbeddingHeadCountK: attention.key_length
    family = arch.arch
    partial = full = 0
    if family in ("llama", "llama4"):
        full = max(4 * b * (1 + 4 * e + context * (1 + h)), 4 * b * (e + v))
        partial = 4 * b * e + max(
            4 * b * (1 + e + max(context, e)) + e * e * 9 // 16 + 4 * context * (b * h + eh * hkv),
            4 * b * (e + v) + e * v * 105 // 128,
        )
        gate = expert_gate_bytes(arch, quantization)
        if gate:
            ff = arch.n_ff
            partial = max(
                3 * gate + 4 * b * (2 * ff + hkv + e + context + eh * hkv),
                4 * (context * b * h + context * eh * hkv + b * 1024 + eh * hkv * b),
            )
    elif family in ("gemma", "gemma2", "gemma3", "gemma3n"):
        full = max(4 * b * (e + v), 4 * b * (2 + context + context * h + 2 * e + 2 * ehk * h))
        partial = max(
            4 * e * b + e * v * 105 // 128 + 4 * v * b,
            4 * b * (2 * e + 1 + 2 * ehk * h + context + context * h) + 4 * ehk * context * 8 + e * ehk * h * 9 // 16,
        )
        if family == "gemma3n":
            full, partial = 4 * full, 4 * partial
    elif family == "qwen2":
        full = max(4 * b * (e + v), 4 * b * (1 + 2 * e + context + context * h))
        partial = max(4 * b * (e + v) + e * v * 105 // 128, 4 * (b * (1 + 2 * e + context * (1 + h)) + e * (1 + context)))
    elif family == "phi2":
        full = max(4 * b * (e + v), 4 * b * (1 + 4 * e + context + context * h))
        partial = max(4 * b * (2 * e + v) + e * v * 105 // 128, 4 * b * (2 + 3 * e + context + context * h))
    if partial == 0:
        gqa = h // max(hkv, 1)
        partial = gqa * kv_cache_bytes(arch, num_ctx, num_parallel, kv_cache_type, rules) // 6
    if full == 0:
        full = partial
    return partial, full


GENERATION_BATCHES = (2048, 1024, 512)  # v0.32.15 server/sched.go:797-805
GENERATION_BATCH_SURCHARGE = {2048: 2 * 1024**3, 1024: 768 * 1024**2, 512: 0}  # server/sched.go:908-917


def generation_batch(effective_ctx: int, predicted: int, available: int, flash_attention: bool, embedding: bool = False) -> int:
    """v0.30+: the batch Ollama starts llama-server with when num_batch is not set (v0.32.15
    server/sched.go:807-906): 512 without flash attention; else 2048 above 32768 tokens of context, 1024
    above 4096, stepped down while the prediction leaves too little room (80% of the free memory, and
    60% / 75% for the larger batches, with the batch's surcharge on top). `available` 0: unknown (no cap)."""
    if embedding or not flash_attention:
        return 512
    batch = 2048 if effective_ctx > 32768 else 1024 if effective_ctx > 4096 else 512

    def fits(size: int) -> bool:
        if not predicted or not available:
            return True
        threshold = available * 80 // 100
        if predicted > threshold:
            return False
        share = 60 if size >= 2048 else 75 if size >= 1024 else 100
        if predicted > available * share // 100:
            return False
        return GENERATION_BATCH_SURCHARGE[size] <= threshold - predicted

    while batch > 512 and not fits(batch):
        batch = GENERATION_BATCHES[GENERATION_BATCHES.index(batch) + 1]
    return batch


def llama_server_graph(arch: ModelArch, num_ctx: int, batch: int, flash_attention: bool) -> int:
    """llama-server's compute buffer, derived from what llama.cpp allocates (measured on the test bed's
    Ollama v0.24.0 llama.cpp runner on CPU, docs/benchmarks.md): it depends on the context of one slot, not
    on num_parallel; the logits of the batch, `4·b·(E + V)`, plus with flash attention the KQ mask (f32 and
    its f16 copy, 6 bytes per batch row and token) and the gated FFN stage, summed to stay above the peak;
    without flash attention the f32 scores of every head, `4·b·(1 + 4E + C·(1 + H))`, plus the logits."""
    e, v = arch.n_embd, arch.vocab_size
    logits = 4 * batch * (e + v)
    if flash_attention:
        return logits + 6 * batch * num_ctx + 4 * batch * (4 * e + 3 * arch.n_ff)
    return logits + 4 * batch * (1 + 4 * e + num_ctx * (1 + arch.n_head))


def graph_bytes(
    arch: ModelArch,
    quantization: str,
    num_ctx: int,
    num_parallel: int,
    kv_cache_type: str,
    flash_attention: bool,
    rules: OllamaRules,
    batch: int | None = None,
) -> int:
    """Compute-graph bytes reserved on each GPU that holds layers of the model (`batch`: v0.30+'s
    generation batch, by default the largest its context allows)."""
    context = num_ctx * num_parallel
    engine = rules.engine(arch.arch)
    if rules.layout == "ollama":
        if engine == "ollama":
            return _ollama_engine_graph(arch, context, batch_size(num_ctx), flash_attention)
        return max(graph_size(arch, quantization, num_ctx, num_parallel, kv_cache_type, rules))
    if batch is None:
        batch = generation_batch(context, 0, 0, flash_attention, arch.embedding)
    return llama_server_graph(arch, num_ctx, min(batch, max(num_ctx, 1)) if arch.embedding else batch, flash_attention)


def predicted_server_vram(arch: ModelArch, quantization: str, num_ctx: int, num_parallel: int) -> int:
    """v0.30+ scheduler's pre-check figure: file size plus an f16 KV cache with head dim = embedding / heads
    (v0.32.15 llm/llama_server.go:2681-2700 `PredictServerVRAM`, context = num_ctx × num_parallel)."""
    head_dim = arch.n_embd // arch.n_head if arch.n_head else 0
    tokens = num_ctx * num_parallel
    return arch.weights[quantization] + 2 * arch.n_layer * max(arch.n_head_kv, 1) * head_dim * tokens * 2
