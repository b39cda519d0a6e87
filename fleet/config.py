"""Typed configuration of one stack.

A stack file (`Pulumi.<stack>.yaml`) holds the whole fleet under one object key, ``ollama-fleet:fleet``, plus a
few secret keys. Everything a stack can set is a field below, with its default and a description; the
reference in docs/configuration.md is generated from these models so it cannot drift.

Keys are camelCase in YAML (Pulumi's convention) and snake_case in Python.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from fleet import address_ranges, catalog, ollama_rules, ports
from fleet import config_text as rules
from fleet.config_text import SettingProblem, text
from fleet.model_names import short_name
from fleet.plans.subnets import VPC_PREFIX_MAX, VPC_PREFIX_MIN, plan_subnets

PROJECT = "ollama-fleet"
FLEET_KEY = f"{PROJECT}:fleet"

Quantization = Literal["q4_0", "q4_1", "q4_K_M", "q5_K_M", "q6_K", "q8_0", "fp16"]
KvCacheType = Literal["f16", "q8_0", "q4_0"]
Environment = Literal["dev", "staging", "prod"]
Target = Literal["local", "aws"]
TlsMode = Literal["self-signed", "acme", "provided", "off"]
Enforcement = Literal["advisory", "mandatory", "disabled"]

_IMAGE = re.compile(
    r"(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*(?::[0-9]{1,5}/[a-z0-9]+(?:[._/-][a-z0-9]+)*)?)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?",
    re.ASCII,
)

DnsLabel = text(rules.DNS_LABEL)
Cidr = text(rules.CIDR)


class Model(BaseModel):
    """Base for every settings model: camelCase keys, unknown keys refused, strict types (no `true` for a
    number, no "5" for 5), finite numbers only."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        strict=True,
        allow_inf_nan=False,
    )


# Aliases one model may have (each is one more manifest on every node of its groups and one more routing key).
MAX_ALIASES = 16


class ModelSpec(Model):
    """One model served by a node group."""

    name: text(rules.MODEL_NAME) = Field(description="Model family as Ollama names it, e.g. `llama3.1`, `qwen2.5`, `nomic-embed-text`.")
    tag: text(rules.MODEL_TAG) = Field(description="Size tag, e.g. `8b`, `70b`, `135m`. The served name is `name:tag`.")
    quantization: Quantization = Field(
        "q4_K_M", description="Weight quantization pulled for this model; decides the weight bytes in VRAM."
    )
    num_ctx: int | None = Field(
        None,
        ge=256,
        le=1_048_576,
        description=(
            "Context window per request slot, in tokens. Unset means Ollama's VRAM-tiered default "
            "(4096 / 32768 / 262144 tokens), which reserves a large KV cache on big GPUs: set it in prod."
        ),
    )
    gguf: text(rules.GGUF_PATH) | None = Field(
        None,
        description="Path to a GGUF file for a model not in the catalog: its header gives the architecture and it is imported with `ollama create`.",
    )
    digest: text(rules.DIGEST) | None = Field(
        None,
        description=(
            "Pinned Ollama manifest digest of the pulled model, as `/api/tags` lists it (required for every model "
            "without `gguf` in staging and prod by policy `pinned-images`; `fleet promote` writes the one the "
            "previous stack pulled)."
        ),
    )
    keep_loaded: bool = Field(
        True, description="Keep this model resident; all resident models of a node must fit in VRAM together."
    )
    aliases: list[text(rules.MODEL_ALIAS)] = Field(
        [],
        max_length=MAX_ALIASES,
        description=(
            f"Other names clients may send for this model (at most {MAX_ALIASES}), e.g. `chat` or `gpt-4o-mini`. "
            "Each node makes each one a name of the model in Ollama (`ollama cp`), so Ollama answers it with the "
            "same loaded model (no second copy in memory), and the gateway routes it like the model's own name. An "
            "alias may not be the name of a model any group serves nor another model's alias; a model served by "
            "several groups has the same aliases in each."
        ),
    )

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"

    @model_validator(mode="after")
    def _aliases_are_other_names(self) -> "ModelSpec":
        own = short_name(self.ref)
        seen: dict[str, int] = {}
        for index, alias in enumerate(self.aliases):
            name = short_name(alias)
            if name == own:
                raise SettingProblem(("aliases", index), f"is the model's own name {self.ref}; an alias is another name for it", alias)
            if name in seen:
                raise SettingProblem(
                    ("aliases", index), f"names {name} as aliases[{seen[name]}] does; each alias is listed once", alias
                )
            seen[name] = index
        return self

    @model_validator(mode="after")
    def _known_model(self) -> "ModelSpec":
        if self.gguf is None and catalog.find_model(self.ref) is None:
            raise ValueError(
                f"unknown model {self.ref!r}; known models: {', '.join(sorted(catalog.MODELS))} "
                "(or set `gguf` to a GGUF file for a custom model)"
            )
        if self.gguf is None:
            entry = catalog.find_model(self.ref)
            if self.quantization not in entry.weights:
                raise ValueError(
                    f"quantization {self.quantization!r} is not published for {self.ref}; "
                    f"allowed: {', '.join(entry.weights)}"
                )
            if self.num_ctx is not None and self.num_ctx > entry.max_context:
                raise ValueError(f"numCtx {self.num_ctx} exceeds {self.ref}'s maximum context {entry.max_context}")
        return self


class OllamaSettings(Model):
    """Ollama server knobs for every node of a group (environment variables of the container)."""

    num_parallel: int = Field(
        2, ge=1, le=64, description="OLLAMA_NUM_PARALLEL: parallel requests per loaded model; each slot has its own KV cache."
    )
    max_queue: int = Field(
        512, ge=1, le=65_536, description="OLLAMA_MAX_QUEUE: requests waiting for a model before Ollama answers 503."
    )
    max_loaded_models: int | None = Field(
        None, ge=1, le=64, description="OLLAMA_MAX_LOADED_MODELS; unset means the number of models of the group."
    )
    keep_alive: text(rules.OLLAMA_DURATION) = Field(
        "24h", description="OLLAMA_KEEP_ALIVE: how long an idle model stays loaded (`5m`, `24h`, `-1` for ever)."
    )
    flash_attention: bool = Field(True, description="OLLAMA_FLASH_ATTENTION; required for a quantized KV cache.")
    kv_cache_type: KvCacheType = Field(
        "f16", description="OLLAMA_KV_CACHE_TYPE: f16, q8_0 (about half the KV bytes) or q4_0 (about a quarter)."
    )
    context_length: int | None = Field(
        None,
        ge=256,
        le=1_048_576,
        description="OLLAMA_CONTEXT_LENGTH for requests to models without numCtx; unset means the largest numCtx of the group.",
    )
    gpu_overhead_bytes: int = Field(
        0, ge=0, le=1 << 40, description="OLLAMA_GPU_OVERHEAD: VRAM per GPU that Ollama leaves unused, in bytes."
    )
    sched_spread: bool = Field(False, description="OLLAMA_SCHED_SPREAD: spread each model over all GPUs.")
    num_thread: int | None = Field(
        None,
        ge=1,
        le=1024,
        description=(
            "CPU threads of each model runner (the Modelfile's `num_thread`); unset means Ollama's default, one per "
            "physical core. Set it when several nodes share one host's CPU, or they slow each other down."
        ),
    )

    @model_validator(mode="after")
    def _quantized_kv_needs_flash(self) -> "OllamaSettings":
        if self.kv_cache_type != "f16" and not self.flash_attention:
            raise ValueError(
                f"kvCacheType {self.kv_cache_type} needs flashAttention: true "
                "(llama.cpp refuses a quantized V cache without flash attention); allowed without it: f16"
            )
        return self


class Measured(Model):
    """How fast this group's nodes serve, as `fleet tune --param concurrency` measured it (for gateway.ttftTargetSeconds)."""

    service_time_seconds: float = Field(
        gt=0, le=3_600, description="Seconds one request holds a parallel slot on average (busy slots ÷ requests served per second)."
    )
    first_token_seconds: float = Field(
        ge=0, le=3_600, description="Time to first token of a request that finds a free slot (p50 at the lowest load)."
    )


class NodeGroup(Model):
    """A set of identical Ollama hosts serving the same models."""

    name: DnsLabel = Field(description="Short DNS-safe name of the group, e.g. `chat`.")
    instance_type: str = Field(
        description="AWS GPU instance type (g5.xlarge, g6e.xlarge, p5.48xlarge, ...) or `local-cpu` for the local Docker host."
    )
    count: int = Field(1, ge=1, le=64, description="Number of nodes (hosts) in the group.")
    models: list[ModelSpec] = Field(min_length=1, description="Models every node of the group serves.")
    ollama: OllamaSettings = Field(default_factory=OllamaSettings, description="Ollama server knobs.")
    model_volume_gb: int = Field(200, ge=20, le=16_384, description="Size of the retained EBS volume holding the models.")
    root_volume_gb: int = Field(100, ge=30, le=2_048, description="Size of the encrypted root volume.")
    measured: Measured | None = Field(
        None, description="Service speed measured by `fleet tune --param concurrency`; needed by gateway.ttftTargetSeconds."
    )

    @field_validator("instance_type")
    @classmethod
    def _known_instance(cls, value: str) -> str:
        if catalog.find_instance(value) is None:
            raise ValueError(f"unknown instance type {value!r}; allowed: {', '.join(sorted(catalog.INSTANCES))}")
        return value

    @field_validator("models")
    @classmethod
    def _unique_models(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        seen: set[str] = set()
        for model in models:
            if model.ref in seen:
                raise ValueError(f"model {model.ref} is listed twice; each model appears once per group")
            seen.add(model.ref)
        return models

    @property
    def resident_models(self) -> list[ModelSpec]:
        return [m for m in self.models if m.keep_loaded]

    @property
    def max_loaded_models(self) -> int:
        return self.ollama.max_loaded_models or len(self.models)


def _validate_image(value: str) -> str:
    match = _IMAGE.fullmatch(value) if value.isascii() else None
    if not match:
        raise ValueError("must be an image reference `repository:tag@sha256:<64 hex>`")
    if not match.group("tag"):
        raise ValueError("must name a tag (`repository:tag@sha256:...`); an untagged image means `latest`")
    if match.group("tag") == "latest":
        raise ValueError("`latest` is not allowed: pin a release tag and its digest")
    return value


ImageRef = Annotated[str, Field(description="Image reference `repository:tag@sha256:digest`.")]


class Images(Model):
    """Container images, pinned by tag and digest (policy `pinned-images` requires the digest in staging and prod)."""

    # Ollama 0.32.15: tag and digest as pinned in public deployment files (a renovate-managed
    # `docker.io/ollama/ollama:0.32.15@sha256:57d60e68…` in a Podman LLM-server start script, and a GPU
    # `docker run` guide); its memory rules are fleet.ollama_rules' v0.30+ range.
    ollama: ImageRef = Field(
        "ollama/ollama:0.32.15@sha256:57d60e686821ea81a7748a3ec8141308c8b8f95b27105713954abf7a6529e700",
        description=(
            "Ollama server image (GPU and CPU builds in one multi-arch image); its tag is the Ollama release "
            "whose memory rules the capacity model applies (supported: v0.13.1 and later)."
        ),
    )
    nginx: ImageRef = Field(
        "nginx:1.28.0-alpine@sha256:30f1c0d78e0ad60901648be663a710bdadf19e4c10ac6782c235200619158284",
        description="nginx image of the gateway.",
    )
    prometheus: ImageRef = Field(
        "prom/prometheus:v3.5.0@sha256:63805ebb8d2b3920190daf1cb14a60871b16fd38bed42b857a3182bc621f4996",
        description="Prometheus (v3.5 LTS).",
    )
    alertmanager: ImageRef = Field(
        # The multi-arch index digest of v0.28.1, as pinned by public deployments on GitHub (code search).
        "prom/alertmanager:v0.28.1@sha256:27c475db5fb156cab31d5c18a4251ac7ed567746a2483ff264516437a39b15ba",
        description="Alertmanager (receives Prometheus' alerts, routes them to the receivers).",
    )
    grafana: ImageRef = Field(
        "grafana/grafana:12.1.1@sha256:a1701c2180249361737a99a01bc770db39381640e4d631825d38ff4535efa47d",
        description="Grafana.",
    )
    node_exporter: ImageRef = Field(
        "prom/node-exporter:v1.9.1@sha256:d00a542e409ee618a4edc67da14dd48c5da66726bbd5537ab2af9c1dfc442c8a",
        description="Host metrics exporter.",
    )
    nginx_exporter: ImageRef = Field(
        "nginx/nginx-prometheus-exporter:1.5.1@sha256:9f6d963bb2b19d706d401cc3e2c3ea8de2f1c471b96a2156ca45e76f650b1625",
        description="Exporter of nginx stub_status.",
    )
    dcgm_exporter: ImageRef = Field(
        "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.9-3.6.1-ubuntu22.04@sha256:3d4e0dfa5fc4d7d12689d29fc6b56cd6c610750e8d187a393882e341fbba6c12",
        description="NVIDIA DCGM exporter (GPU utilisation and memory) on GPU hosts.",
    )
    python: ImageRef = Field(
        "python:3.11-slim@sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff",
        description="Base image of the metering exporter container.",
    )

    @field_validator("*")
    @classmethod
    def _pinned(cls, value: str) -> str:
        return _validate_image(value)


class RateLimits(Model):
    """Request rate limits: per API key first, per client IP as a backstop (a NAT'd team shares one IP)."""

    per_key_per_minute: int = Field(600, ge=1, le=1_000_000, description="Sustained requests per minute per API key.")
    per_key_burst: int = Field(60, ge=0, le=100_000, description="Requests above the rate a key may burst.")
    per_ip_per_minute: int = Field(3000, ge=1, le=1_000_000, description="Sustained requests per minute per client IP.")
    per_ip_burst: int = Field(300, ge=0, le=100_000, description="Burst per client IP.")


class Client(Model):
    """An API key holder. The key itself comes from secret config or is generated (pulumi_random)."""

    name: DnsLabel = Field(description="Name of the key holder (team or application); appears in logs and metrics, never the key.")
    per_minute: int | None = Field(None, ge=1, le=1_000_000, description="Override of the per-key rate for this client.")
    tokens_per_day: int | None = Field(
        None,
        ge=1,
        le=10**15,
        description=(
            "Token budget (prompt + completion, every node and model) per UTC day. Past it the gateway answers "
            "this client's inference requests 429 until 00:00 UTC; unset means no budget. Needs monitoring (the counts come from Prometheus)."
        ),
    )


class Tls(Model):
    """How the gateway gets its TLS certificate."""

    mode: TlsMode = Field(
        "self-signed",
        description="`self-signed` (pulumi-tls), `acme` (DNS-01 via Route53), `provided` (certificate and key as secret config) or `off` (dev only).",
    )
    acme_email: text(rules.EMAIL) | None = Field(None, description="Contact address for the ACME account (required with mode `acme`).")
    acme_server: text(rules.HTTPS_URL) = Field(
        "https://acme-v02.api.letsencrypt.org/directory", description="ACME directory URL (use the staging URL for staging)."
    )


# Requests a node may queue when the stack sets neither gateway.queuePerNode nor gateway.ttftTargetSeconds.
DEFAULT_QUEUE_PER_NODE = 4


class Gateway(Model):
    """The nginx gateway in front of the nodes."""

    domain: text(rules.DOMAIN) | None = Field(None, description="Public DNS name of the API, e.g. `llm.example.com` (required on AWS with DNS).")
    hosted_zone: text(rules.HOSTED_ZONE) | None = Field(None, description="Existing Route53 hosted zone (name or id) that holds `domain`.")
    tls: Tls = Field(default_factory=Tls, description="How the gateway gets its certificate.")
    https_port: int = Field(443, ge=1, le=65_535, description="Port the gateway serves HTTPS on.")
    http_port: int = Field(80, ge=1, le=65_535, description="Port that redirects to HTTPS.")
    client_cidrs: list[Cidr] = Field(["0.0.0.0/0"], description="CIDRs allowed to reach the gateway.")
    admin_cidrs: list[Cidr] = Field(
        [], description="CIDRs from which the admin key may use admin routes and reach monitoring. Empty: nowhere."
    )
    clients: list[Client] = Field(
        default_factory=lambda: [Client(name="default")], min_length=1, description="API key holders."
    )
    rate_limits: RateLimits = Field(default_factory=RateLimits, description="Rate limits per key and per IP.")
    max_body_size: text(rules.NGINX_SIZE) = Field("16m", description="Largest request body (nginx size: `16m`); larger gets 413.")
    client_header_timeout_s: int = Field(
        10, ge=1, le=60, description="Time a client has to send the whole request header (and finish the TLS handshake), seconds; slower connections are closed."
    )
    client_body_timeout_s: int = Field(
        30, ge=1, le=600, description="Longest pause between two reads of a request body, seconds; a stalled upload gets 408."
    )
    max_connections_per_ip: int = Field(
        256,
        ge=1,
        le=65_535,  # nginx: "connection limit must be less 65536"
        description="Requests in progress at once from one client address (streams included); more get 429. A team behind one NAT address shares it.",
    )
    connect_timeout_s: int = Field(5, ge=1, le=300, description="Upstream connect timeout, seconds.")
    read_timeout_s: int = Field(600, ge=5, le=86_400, description="Upstream read timeout (time between streamed chunks), seconds.")
    send_timeout_s: int = Field(600, ge=5, le=86_400, description="Upstream send timeout, seconds.")
    queue_per_node: int | None = Field(
        None,
        ge=0,
        le=10_000,
        description="Requests a node may hold waiting beyond its parallel slots; the gateway sheds (503) beyond it. "
        f"When set, it overrides the queue derived from gateway.ttftTargetSeconds; unset and without a target: "
        f"{DEFAULT_QUEUE_PER_NODE}.",
    )
    ttft_target_seconds: float | None = Field(
        None,
        gt=0,
        le=600,
        description="Time-to-first-token target: each node queues only the requests that can start within it, derived "
        "from the group's slots and nodeGroups[].measured (queue = (target − firstTokenSeconds) × slots ÷ "
        "serviceTimeSeconds, rounded down); the gateway sheds the rest at once.",
    )
    retry_after_s: int = Field(5, ge=1, le=3_600, description="Retry-After seconds sent with 429 and 503.")
    high_availability: bool = Field(False, description="Two gateway hosts in two zones behind Route53 failover (AWS).")
    instance_type: str = Field("t3.medium", description="Instance type of the gateway/monitoring host (AWS).")

    @field_validator("instance_type")
    @classmethod
    def _known_gateway_instance(cls, value: str) -> str:
        if value not in catalog.GATEWAY_INSTANCES:
            raise ValueError(f"unknown gateway instance type; allowed: {', '.join(catalog.GATEWAY_INSTANCES)}")
        return value

    @field_validator("admin_cidrs")
    @classmethod
    def _admin_not_the_world(cls, values: list[str]) -> list[str]:
        # Whether monitoring is on or not: the admin key's admin routes are open from these ranges.
        found = address_ranges.exposure(values)
        if found.is_world:
            raise ValueError(
                f"these ranges hold {found.describe()}: the admin key would work from the whole internet; "
                f"allowed: {address_ranges.WORLD_RULE}"
            )
        return values

    @model_validator(mode="after")
    def _distinct_ports(self) -> "Gateway":
        if self.http_port == self.https_port:
            raise SettingProblem(("httpPort",), f"must differ from httpsPort ({self.https_port})", self.http_port)
        # The gateway's ports face clients: never one the fleet's services listen on or keeps private (Ollama,
        # the meter, exporters, monitoring, SSH), which the security groups would then open to clientCidrs.
        taken = sorted({*ports.GATEWAY_HOST_PORTS, *ports.PRIVATE_PORTS, ports.SSH})
        for key, port in (("httpsPort", self.https_port), ("httpPort", self.http_port)):
            if port in taken:
                raise SettingProblem(
                    (key,),
                    f"{port} is used by the fleet's own services (Ollama, the meter, exporters, monitoring, SSH) and "
                    f"kept private; allowed: any port from 1 to 65535 except {', '.join(map(str, taken))}",
                    port,
                )
        return self

    @field_validator("clients")
    @classmethod
    def _unique_clients(cls, clients: list[Client]) -> list[Client]:
        names = [c.name for c in clients]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"client names must be unique; repeated: {', '.join(duplicates)}")
        return clients


ReceiverKind = Literal["webhook", "email", "slack", "pagerduty"]
Severity = Literal["critical", "warning"]


class Receiver(Model):
    """Where alerts go. Secrets (Slack and PagerDuty keys, SMTP password, a webhook URL holding a token) come
    from the secret key `ollama-fleet:alertReceiverSecrets`, never from this file."""

    name: DnsLabel = Field(description="Name of the receiver, used in `critical`/`warning` and in notifications.")
    kind: ReceiverKind = Field(
        description=(
            "`webhook` (POST of Alertmanager's JSON; `url` here or its secret), `email` (`to`, `from`, "
            "`smarthost`; the SMTP password is the secret), `slack` (the incoming-webhook URL is the secret) or "
            "`pagerduty` (the Events API v2 routing key is the secret)."
        )
    )
    url: text(rules.HTTP_URL) | None = Field(None, description="Webhook URL when it holds no token (kind `webhook`); else set it as the secret.")
    to: text(rules.EMAIL) | None = Field(None, description="Recipient address (kind `email`).")
    from_address: text(rules.EMAIL) | None = Field(None, description="Sender address (kind `email`).")
    smarthost: text(rules.HOST_PORT) | None = Field(None, description="SMTP server `host:port` (kind `email`).")
    auth_username: text(rules.LOGIN_NAME) | None = Field(None, description="SMTP user (kind `email`); its password is the secret.")
    require_tls: bool = Field(True, description="SMTP STARTTLS required (kind `email`).")
    channel: text(rules.SLACK_CHANNEL) | None = Field(None, description="Slack channel, e.g. `#llm-oncall` (kind `slack`); unset: the webhook's own.")
    send_resolved: bool = Field(True, description="Also notify when the alert resolves.")

    @model_validator(mode="after")
    def _fields_of_kind(self) -> "Receiver":
        if self.kind == "email":
            missing = [alias for alias, value in (("to", self.to), ("fromAddress", self.from_address), ("smarthost", self.smarthost)) if not value]
            if missing:
                raise ValueError(f"kind `email` needs {', '.join(missing)}")
        extra = {
            "url": self.url if self.kind != "webhook" else None,
            "to": self.to if self.kind != "email" else None,
            "channel": self.channel if self.kind != "slack" else None,
        }
        misplaced = [key for key, value in extra.items() if value]
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)} does not apply to kind `{self.kind}`")
        return self


class Alerting(Model):
    """Alertmanager, deployed beside Prometheus: who gets which alerts, grouped and de-duplicated."""

    receivers: list[Receiver] = Field([], description="Places alerts go (webhook, email, Slack, PagerDuty).")
    critical: list[DnsLabel] = Field(
        [], description="Receivers of `critical` alerts (a node down): each one gets them. Empty: nobody is paged."
    )
    warning: list[DnsLabel] = Field([], description="Receivers of `warning` alerts (latency, errors, refusals, VRAM).")
    group_wait: text(rules.PROM_DURATION) = Field("30s", description="Wait before the first notification of a new group, to gather its alerts.")
    group_interval: text(rules.PROM_DURATION) = Field("5m", description="Wait before notifying about alerts added to (or resolved in) a group.")
    repeat_interval: text(rules.PROM_DURATION) = Field("4h", description="Repeat a notification for alerts that still fire.")

    @field_validator("receivers")
    @classmethod
    def _unique_receivers(cls, receivers: list[Receiver]) -> list[Receiver]:
        names = [r.name for r in receivers]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"receiver names must be unique; repeated: {', '.join(repeated)}")
        return receivers

    @model_validator(mode="after")
    def _known_receivers(self) -> "Alerting":
        known = {r.name for r in self.receivers}
        for severity in ("critical", "warning"):
            unknown = [n for n in getattr(self, severity) if n not in known]
            if unknown:
                raise ValueError(
                    f"{severity} names receivers that `receivers` does not define: {', '.join(unknown)}; "
                    f"defined: {', '.join(sorted(known)) or 'none'}"
                )
        return self

    def receivers_for(self, severity: Severity) -> list[Receiver]:
        by_name = {r.name: r for r in self.receivers}
        return [by_name[n] for n in getattr(self, severity)]


class Alerts(Model):
    """Thresholds of the alert rules."""

    ttft_p95_seconds: float = Field(5.0, gt=0, description="Alert when p95 time to first token exceeds this.")
    error_ratio: float = Field(0.05, gt=0, lt=1, description="Alert when 5xx responses exceed this share.")
    refusal_ratio: float = Field(0.10, gt=0, lt=1, description="Alert when 429/503 refusals exceed this share.")
    vram_full_ratio: float = Field(0.95, gt=0, le=1, description="Alert when used VRAM exceeds this share of total.")
    queue_growth_per_minute: float = Field(5.0, gt=0, description="Alert when in-flight requests grow faster than this.")
    node_down_for: text(rules.PROM_DURATION) = Field("2m", description="How long a node must be unreachable before `OllamaNodeDown` fires.")


class Monitoring(Model):
    """Prometheus, Grafana, exporters and alert rules."""

    enabled: bool = Field(True, description="Deploy Prometheus, Grafana and the exporters.")
    retention: text(rules.PROM_DURATION) = Field("15d", description="Prometheus TSDB retention (`15d`, `720h`).")
    scrape_interval: text(rules.PROM_DURATION) = Field("15s", description="Prometheus scrape interval.")
    grafana_admin_user: text(rules.LOGIN_NAME) = Field("admin", description="Grafana admin user (the password is secret config or generated).")
    alerts: Alerts = Field(default_factory=Alerts, description="Alert thresholds.")
    alerting: Alerting = Field(default_factory=Alerting, description="Alertmanager: receivers and routes per severity.")


class Policy(Model):
    """How the policy pack treats this stack."""

    enforcement: Enforcement = Field("advisory", description="`advisory` warns, `mandatory` blocks the update, `disabled` skips.")
    vram_headroom: float = Field(
        0.10, ge=0, lt=0.9, description="Share of each GPU's VRAM kept free beyond the estimate (fragmentation, spikes)."
    )


# Tag keys the fleet sets itself on every AWS resource (fleet/tags.py), and AWS's 50 tags per resource.
RESERVED_TAG_KEYS = ("project", "stack", "component", "environment", "Name")
MAX_EXTRA_TAGS = 50 - len(RESERVED_TAG_KEYS)


def domain_in_zone(fqdn: str, zone: str) -> bool:
    fqdn, zone = fqdn.rstrip(".").lower(), zone.rstrip(".").lower()
    return fqdn == zone or fqdn.endswith("." + zone)


class Aws(Model):
    """AWS placement of the hosts."""

    region: str = Field(description="AWS region, e.g. `us-east-1`.")
    zones: list[text(rules.ZONE)] = Field(min_length=1, description="Availability zones the nodes are spread over.")
    vpc_id: text(rules.VPC_ID) | None = Field(None, description="Existing VPC to use; unset creates one.")
    subnet_ids: list[text(rules.SUBNET_ID)] = Field([], description="Existing subnets (one per zone, in the order of `zones`) when `vpcId` is set.")
    vpc_cidr: Cidr = Field(
        "10.42.0.0/16",
        description=f"IPv4 CIDR of the VPC that is created when `vpcId` is unset, /{VPC_PREFIX_MIN} to /{VPC_PREFIX_MAX} (AWS's limits).",
    )
    ami_id: text(rules.AMI_ID) | None = Field(
        None, description="Pinned AMI; unset looks up the newest AWS Deep Learning Base GPU AMI."
    )
    ssh_cidrs: list[Cidr] = Field(
        [], description="CIDRs allowed to SSH (port 22). Empty (default): no SSH port; access goes through SSM Session Manager."
    )
    ssh_user: text(rules.UNIX_USER) = Field("ubuntu", description="Login user of the AMI, used by the Docker provider over SSH-through-SSM.")

    @field_validator("region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        if value not in catalog.AWS_REGIONS:
            raise ValueError(f"unknown AWS region; allowed: {', '.join(catalog.AWS_REGIONS)}")
        return value

    @field_validator("zones")
    @classmethod
    def _zones_in_region(cls, zones: list[str], info) -> list[str]:
        region = info.data.get("region")
        for zone in zones:
            if region and not zone.startswith(region):
                raise ValueError(f"zone {zone!r} is not in region {region!r}")
        if len(set(zones)) != len(zones):
            raise ValueError("zones must be distinct")
        return zones

    @field_validator("ssh_cidrs")
    @classmethod
    def _ssh_cidrs(cls, values: list[str]) -> list[str]:
        try:
            found = address_ranges.exposure(values)
        except ValueError as exc:
            raise ValueError(f"not a list of CIDR ranges such as 203.0.113.0/24 ({exc})") from None
        if found.is_world:
            raise ValueError(
                f"these ranges hold {found.describe()}: SSH from the whole internet; leave the list empty to use SSM; "
                f"allowed: {address_ranges.WORLD_RULE}"
            )
        return values

    @model_validator(mode="after")
    def _network_shape(self) -> "Aws":
        if self.vpc_id is not None:
            if len(self.subnet_ids) != len(self.zones):
                raise SettingProblem(
                    ("subnetIds",),
                    f"with aws.vpcId, give one subnet per zone in the order of aws.zones "
                    f"({len(self.zones)} zones, {len(self.subnet_ids)} subnets)",
                )
            return self
        if self.subnet_ids:
            raise SettingProblem(("subnetIds",), "existing subnets need aws.vpcId; leave both unset to create a VPC")
        try:
            plan_subnets(self.vpc_cidr, len(self.zones))
        except ValueError as exc:
            raise SettingProblem(("vpcCidr",), str(exc), self.vpc_cidr) from None
        return self


# The most RAM `local.memoryGib` (and `fleet fit --memory-gib`) may declare, in GiB.
MAX_MEMORY_GIB = 65536


class Local(Model):
    """The local Docker host used by the dev stack."""

    docker_host: text(rules.DOCKER_HOST) = Field("unix:///var/run/docker.sock", description="Docker endpoint of the local host.")
    publish_beyond_loopback: bool = Field(
        False,
        description="Allow a `bindAddress` other than loopback: the gateway, Prometheus and Grafana are then published to every network that address is on.",
    )
    bind_address: text(rules.IPV4_ADDRESS) = Field(
        "127.0.0.1",
        description="IPv4 address the gateway and monitoring ports are published on; loopback unless `publishBeyondLoopback`.",
    )
    memory_gib: float | None = Field(
        None,
        gt=0,
        le=MAX_MEMORY_GIB,
        description=(
            "RAM of the local Docker host that Ollama's models may use, in GiB. The `vram-fit` policy and `fleet plan` "
            "judge `local-cpu` node groups against it (weights, KV cache and graph, with `policy.vramHeadroom` kept "
            "free) as they judge GPU groups against VRAM; unset, a `local-cpu` group gets no memory verdict and "
            "`vram-fit` reports that it cannot judge one."
        ),
    )

    @field_validator("bind_address")
    @classmethod
    def _loopback_unless_allowed(cls, value: str, info) -> str:
        if not ipaddress.ip_address(value).is_loopback and not info.data.get("publish_beyond_loopback"):
            raise ValueError(
                f"{value} publishes the gateway, Prometheus and Grafana beyond this machine; allowed: a loopback "
                "address (127.0.0.0/8), or set publishBeyondLoopback: true to mean it"
            )
        return value


class FleetSettings(Model):
    """Everything one stack sets, under the `ollama-fleet:fleet` key of `Pulumi.<stack>.yaml`."""

    environment: Environment = Field(
        description="`dev`, `staging` or `prod`; decides which policies are strict. A stack whose name names an environment (`prod`, `prod-eu`, `euprod`, `prd2`, `stg`; `preprod` is staging; the rule is in docs/runbook.md) must declare that one."
    )
    target: Target = Field(description="`local` (a Docker host, CPU Ollama) or `aws` (GPU instances).")
    aws: Aws | None = Field(None, description="AWS placement; required when target is `aws`.")
    local: Local = Field(default_factory=Local, description="Local Docker host; used when target is `local`.")
    node_groups: list[NodeGroup] = Field(min_length=1, description="Groups of identical Ollama nodes.")
    images: Images = Field(default_factory=Images, description="Pinned container images.")
    gateway: Gateway = Field(default_factory=Gateway, description="The nginx gateway.")
    monitoring: Monitoring = Field(default_factory=Monitoring, description="Prometheus, Grafana and alerts.")
    policy: Policy = Field(default_factory=Policy, description="Policy pack enforcement for this stack.")
    tags: dict[text(rules.TAG_KEY), text(rules.TAG_VALUE)] = Field(
        {}, description=f"Extra tags put on every AWS resource (at most {MAX_EXTRA_TAGS}; keys {', '.join(RESERVED_TAG_KEYS)} and `aws:*` are the fleet's and AWS's)."
    )

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: dict[str, str]) -> dict[str, str]:
        for key in tags:
            if key.lower().startswith("aws:"):
                raise SettingProblem((key,), "keys starting with `aws:` are reserved by AWS", key)
            if key in RESERVED_TAG_KEYS:
                raise SettingProblem((key,), f"set by the fleet itself; reserved keys: {', '.join(RESERVED_TAG_KEYS)}", key)
        if len(tags) > MAX_EXTRA_TAGS:
            raise ValueError(f"at most {MAX_EXTRA_TAGS} extra tags (AWS allows {MAX_EXTRA_TAGS + len(RESERVED_TAG_KEYS)} per resource)")
        return tags

    @model_validator(mode="after")
    def _target_consistency(self) -> "FleetSettings":
        if self.target == "aws" and self.aws is None:
            raise SettingProblem(("aws",), "target `aws` needs an `aws` section (region, zones)")
        for index, group in enumerate(self.node_groups):
            is_local = group.instance_type == catalog.LOCAL_INSTANCE
            if self.target == "local" and not is_local:
                raise SettingProblem(
                    ("nodeGroups", index, "instanceType"),
                    f"node group {group.name!r}: target `local` runs on `{catalog.LOCAL_INSTANCE}` only",
                    group.instance_type,
                )
            if self.target == "aws" and is_local:
                raise SettingProblem(
                    ("nodeGroups", index, "instanceType"),
                    f"node group {group.name!r}: `{catalog.LOCAL_INSTANCE}` is for target `local`; name an AWS GPU instance type",
                    group.instance_type,
                )
            problem = ollama_rules.variant_problem(self.images.ollama, catalog.find_instance(group.instance_type).gpus)
            if problem:
                raise SettingProblem(("images", "ollama"), f"node group {group.name!r} runs on {group.instance_type}: {problem}")
        names = [g.name for g in self.node_groups]
        for index, name in enumerate(names):
            if names.index(name) != index:
                raise SettingProblem(("nodeGroups", index, "name"), "node group names must be unique", name)
        self._check_model_names()
        self._check_gateway_names()
        self._check_monitoring_access()
        self._check_budgets_enforced()
        self._check_ttft_target()
        return self

    def _check_budgets_enforced(self) -> None:
        # The budget controller counts tokens in Prometheus: without monitoring a budget would be ignored.
        if self.monitoring.enabled:
            return
        for index, client in enumerate(self.gateway.clients):
            if client.tokens_per_day is not None:
                raise SettingProblem(
                    ("gateway", "clients", index, "tokensPerDay"),
                    f"client {client.name!r}: a token budget is enforced from Prometheus' token counts, and "
                    "monitoring.enabled is false; allowed: enable monitoring, or leave tokensPerDay unset",
                    client.tokens_per_day,
                )

    def _check_model_names(self) -> None:
        """Every name a client may send means one model: an alias is no served model's name and no other model's
        alias; a model served by several groups has the same aliases in each (the gateway spreads its requests,
        aliases included, over all of them). Names compare as Ollama reads them (`chat` is `chat:latest`)."""
        served: dict[str, tuple[int, int]] = {}  # served model -> where it is first listed
        for g, group in enumerate(self.node_groups):
            for m, model in enumerate(group.models):
                served.setdefault(short_name(model.ref), (g, m))
        owners: dict[str, tuple[str, int, int, int]] = {}  # alias -> (its model, where it is first listed)
        for g, group in enumerate(self.node_groups):
            for m, model in enumerate(group.models):
                mine = short_name(model.ref)
                first_g, first_m = served[mine]
                first = self.node_groups[first_g].models[first_m]
                if (g, m) != (first_g, first_m) and {short_name(a) for a in model.aliases} != {
                    short_name(a) for a in first.aliases
                }:
                    raise SettingProblem(
                        ("nodeGroups", g, "models", m, "aliases"),
                        f"{model.ref} is also served by group {self.node_groups[first_g].name!r} with aliases "
                        f"[{', '.join(first.aliases)}] (nodeGroups[{first_g}].models[{first_m}].aliases); a model served by "
                        "several groups has the same aliases in each, since the gateway spreads its requests over them all",
                        model.aliases,
                    )
                for k, alias in enumerate(model.aliases):
                    name = short_name(alias)
                    key = ("nodeGroups", g, "models", m, "aliases", k)
                    if name in served:
                        where_g, where_m = served[name]
                        raise SettingProblem(
                            key,
                            f"is the name of the model {name} that group {self.node_groups[where_g].name!r} serves "
                            f"(nodeGroups[{where_g}].models[{where_m}]); allowed: a name no group serves",
                            alias,
                        )
                    owner = owners.setdefault(name, (mine, g, m, k))
                    if owner[0] != mine:
                        raise SettingProblem(
                            key,
                            f"is already an alias of {owner[0]} (nodeGroups[{owner[1]}].models[{owner[2]}].aliases"
                            f"[{owner[3]}]); each alias names one model",
                            alias,
                        )

    def _check_ttft_target(self) -> None:
        if self.gateway.ttft_target_seconds is None or self.gateway.queue_per_node is not None:
            return
        for index, group in enumerate(self.node_groups):
            if group.measured is None:
                raise SettingProblem(
                    ("gateway", "ttftTargetSeconds"),
                    f"needs nodeGroups[{index}].measured (group {group.name!r}): measure it with `fleet tune --group "
                    f"{group.name} --param concurrency` (it prints the values to set), or set gateway.queuePerNode instead",
                    self.gateway.ttft_target_seconds,
                )

    def _check_gateway_names(self) -> None:
        gateway = self.gateway
        if gateway.tls.mode == "acme":
            if self.target != "aws" or not (gateway.domain and gateway.hosted_zone):
                raise SettingProblem(
                    ("gateway", "tls", "mode"),
                    "`acme` proves the domain with a DNS-01 challenge in Route 53: it needs target `aws`, "
                    "gateway.domain and gateway.hostedZone (the Route53 zone that holds it); "
                    "use `self-signed` or `provided` otherwise",
                    gateway.tls.mode,
                )
            if not gateway.tls.acme_email:
                raise SettingProblem(
                    ("gateway", "tls", "acmeEmail"),
                    "required with mode `acme` (the CA's contact for expiry and revocation notices); "
                    "allowed: an e-mail address such as `platform@example.com`",
                )
        if gateway.domain and self.target == "aws" and not gateway.hosted_zone:
            raise SettingProblem(
                ("gateway", "hostedZone"), "gateway.domain on AWS needs gateway.hostedZone (the Route53 zone that holds it)"
            )
        zone = gateway.hosted_zone
        if gateway.domain and zone and not rules.is_zone_id(zone) and not domain_in_zone(gateway.domain, zone):
            raise SettingProblem(
                ("gateway", "domain"), f"is not inside the hosted zone {zone}; allowed: {zone} or a name ending in .{zone.rstrip('.')}", gateway.domain
            )

    def _check_monitoring_access(self) -> None:
        if not self.monitoring.enabled:
            return
        for index, cidr in enumerate(self.gateway.admin_cidrs):
            if ipaddress.ip_network(cidr).prefixlen == 0:
                raise SettingProblem(
                    ("gateway", "adminCidrs", index),
                    "would open Prometheus and Grafana to the internet; name the admins' CIDRs "
                    "or leave the list empty and use SSM port forwarding",
                    cidr,
                )

    @property
    def node_count(self) -> int:
        return sum(g.count for g in self.node_groups)


# Secret keys a stack may set besides the fleet object. Each must be stored encrypted (`--secret`).
SECRET_KEYS: dict[str, str] = {
    f"{PROJECT}:apiKeys": "JSON object mapping client name to API key; clients without one get a generated key.",
    f"{PROJECT}:adminApiKey": "Admin API key for the admin routes (/api/pull, ...); generated when unset.",
    f"{PROJECT}:grafanaAdminPassword": "Grafana admin password; generated when unset.",
    f"{PROJECT}:prometheusPassword": "Password of Prometheus' basic auth (user `fleet`; Grafana and the self-scrape send it); generated when unset.",
    f"{PROJECT}:tlsCertificate": "PEM certificate chain for gateway.tls.mode `provided`.",
    f"{PROJECT}:tlsPrivateKey": "PEM private key for gateway.tls.mode `provided`.",
    f"{PROJECT}:alertReceiverSecrets": (
        "JSON object mapping an alert receiver's name to its secret: the Slack incoming-webhook URL, the PagerDuty "
        "routing key, the SMTP password, or the URL of a webhook receiver without `url`."
    ),
}
# Non-secret keys of other namespaces that a stack may carry.
PASSTHROUGH_PREFIXES = ("aws:", "pulumi:", "docker:")
