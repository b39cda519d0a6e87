"""What runs on an Ollama node, as pure values of the config: the server's environment, the Modelfile parameters
of each served model and its aliases, the metering exporter's options (`NodeRuntime`), and the shell steps that
pull and warm models.

Shared by the Pulumi component (`components/ollama_node.py`, through `fleet.plans.node`) and the loopback data
plane (`fleet/local`), so both run a node the same way. Each builds the same `NodeRuntime`; the text a process
reads (the Modelfile, the meter's argv) is rendered from it where it is handed over, never parsed back.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from fleet import catalog, contract, ports
from fleet.config import ModelSpec, NodeGroup

MODELS_DIR = "/models"
# How long the model steps wait for the Ollama server in a fresh container.
SERVER_WAIT_S = 180
# What an embedding model embeds to load; generative models load on an empty prompt and generate nothing.
WARM_PROMPT = "Reply with the single word OK."


def _container_environment(knobs: Mapping[str, str]) -> dict[str, str]:
    return {"OLLAMA_HOST": f"0.0.0.0:{ports.OLLAMA}", "OLLAMA_MODELS": MODELS_DIR, **knobs}


def pull_reference(model: ModelSpec) -> str | None:
    """The Ollama library reference pulled for a catalog model; None for a model imported from a GGUF file."""
    if model.gguf is not None:
        return None
    entry = catalog.find_model(model.ref)
    assert entry is not None  # ModelSpec validation guarantees it
    return entry.pull_tag(model.quantization)


# Ollama keeps one manifest per model under $OLLAMA_MODELS/manifests/<host>/<namespace>/<model>/<tag>, and the
# digest it lists (`/api/tags`, first 12 characters in `ollama list`) is the SHA-256 of that file (Ollama
# v0.24.0 manifest/manifest.go, ParseNamedManifest; types/model/name.go, Filepath).
_REGISTRY, _NAMESPACE = "registry.ollama.ai", "library"
DIGEST_LINE = "model-digest"  # `model-digest <served name> sha256:<hex>` lines of the pull step's output


def manifest_path(reference: str, models_dir: str = MODELS_DIR) -> str:
    """Where Ollama keeps the manifest of `reference` (`name:tag` or `namespace/name:tag`)."""
    name, _, tag = reference.partition(":")
    parts = name.split("/")
    if len(parts) == 1:
        parts = [_REGISTRY, _NAMESPACE, *parts]
    elif len(parts) == 2:
        parts = [_REGISTRY, *parts]
    return "/".join([models_dir.rstrip("/"), "manifests", *parts, tag or "latest"])


def model_digests(output: str | None) -> dict[str, str]:
    """The digests the pull step reported, by served name (`name:tag`)."""
    found: dict[str, str] = {}
    for line in (output or "").splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == DIGEST_LINE and fields[2].startswith("sha256:"):
            found[fields[1]] = fields[2]
    return found


def import_path(model: ModelSpec) -> str:
    """Where a GGUF file is placed inside the container for `ollama create` (removed afterwards)."""
    return f"/tmp/{model.name}-{model.tag}.gguf".replace(":", "-")


@dataclass(frozen=True)
class ServedModel:
    """One model as a node serves it: the name Ollama creates (`name:tag`), what its Modelfile starts FROM (the
    library reference pulled, or where its GGUF file is placed in the container), the Modelfile's parameters in
    order, and the other names it is copied to (`ollama cp`)."""

    name: str
    source: str
    parameters: Mapping[str, int] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @classmethod
    def of(cls, model: ModelSpec, num_thread: int | None = None) -> "ServedModel":
        """The served model of `model`: it pins the context window and, when set, the runner's CPU threads
        (Ollama has no server-wide setting for them: llm/server.go takes `num_thread` from the model's options,
        else one thread per physical core)."""
        parameters: dict[str, int] = {}
        if model.num_ctx:
            parameters["num_ctx"] = model.num_ctx
        if num_thread:
            parameters["num_thread"] = num_thread
        return cls(model.ref, pull_reference(model) or import_path(model), parameters, tuple(model.aliases))

    def modelfile(self) -> str:
        """The Modelfile text `ollama create` reads."""
        lines = [f"FROM {self.source}", *(f"PARAMETER {key} {value}" for key, value in self.parameters.items())]
        return "\n".join(lines) + "\n"


def modelfile(model: ModelSpec, num_thread: int | None = None) -> str:
    """The Modelfile that names the served model `name:tag` (`ServedModel.of`)."""
    return ServedModel.of(model, num_thread).modelfile()


@dataclass(frozen=True)
class MeterOptions:
    """The metering exporter's options (`python -m fleet.exporters.meter`): proxy Ollama at `upstream`, label
    series with the node and, from the start, with the models it serves and the gateway's clients
    (`gateway.clients`); a request by alias is labelled with the served model it names (`aliases`: alias,
    served name)."""

    upstream: str
    listen: str
    metrics_listen: str
    node: str
    models: tuple[str, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    clients: tuple[str, ...] = ()

    def at(self, upstream: str, listen: str, metrics_listen: str) -> "MeterOptions":
        """The same exporter at other addresses (the loopback data plane's ports)."""
        return replace(self, upstream=upstream, listen=listen, metrics_listen=metrics_listen)

    def argv(self) -> list[str]:
        """The command-line arguments, in the order the deployment has always given them."""
        command = ["--upstream", self.upstream, "--listen", self.listen, "--metrics-listen", self.metrics_listen]
        command += ["--node", self.node]
        aliases_of: dict[str, list[str]] = {}
        for alias, model in self.aliases:
            aliases_of.setdefault(model, []).append(alias)
        for model in self.models:
            command += ["--model", model]
            for alias in aliases_of.get(model, ()):
                command += ["--alias", f"{alias}={model}"]
        for client in self.clients:
            command += ["--client", client]
        return command


@dataclass(frozen=True)
class NodeRuntime:
    """What runs on one Ollama node: the knobs of its Ollama server (`environment`, fleet.contract: without where
    it listens and keeps models, which each place sets), the models it serves, and its metering exporter."""

    environment: Mapping[str, str]
    models: tuple[ServedModel, ...]
    meter: MeterOptions

    @classmethod
    def of(cls, group: NodeGroup, node: str, clients: Iterable[str] = (), ollama_host: str = "ollama") -> "NodeRuntime":
        """Node `node` of `group`, its meter proxying the Ollama server named `ollama_host` on the node's network
        and listening on every address."""
        meter = MeterOptions(
            upstream=f"http://{ollama_host}:{ports.OLLAMA}",
            listen=f"0.0.0.0:{ports.METER}",
            metrics_listen=f"0.0.0.0:{ports.METER_METRICS}",
            node=node,
            models=tuple(model.ref for model in group.models),
            aliases=tuple((alias, model.ref) for model in group.models for alias in model.aliases),
            clients=tuple(clients),
        )
        served = tuple(ServedModel.of(model, group.ollama.num_thread) for model in group.models)
        return cls(dict(contract.ollama_environment(group)), served, meter)

    def container_environment(self) -> dict[str, str]:
        """The Ollama container's environment: where it listens and keeps models, then the knobs the contract
        writes (fleet.contract: only knobs Ollama reads, every one from the config)."""
        return _container_environment(self.environment)

    def served(self, name: str) -> ServedModel:
        """The served model named `name` (`name:tag`)."""
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(f"{name} is not served here; served: {', '.join(m.name for m in self.models)}")


def cli_keep_alive(value: str) -> str:
    # `ollama run --keepalive` takes a Go duration; the config's "-1" (keep for ever) is any negative one.
    return "-1s" if value == "-1" else value


_SCRIPT_HEAD = """\
set -eu
container={container}
tries=0
until docker exec "$container" ollama list >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge {tries} ]; then
    echo "the Ollama server in $container did not answer within {wait}s" >&2
    exit 1
  fi
  sleep 2
done
# Run a step quietly (progress bars would flood the deployment log); on failure show its last lines.
step() {{
  what=$1
  shift
  if ! out=$("$@" 2>&1); then
    printf '%s\\n' "$out" | tail -n 20 >&2
    echo "$what failed on $container" >&2
    exit 1
  fi
}}
"""

_CREATE = """\
create() {  # served name, Modelfile text
  printf '%s' "$2" | docker exec -i "$container" sh -c \\
    'f=$(mktemp) && cat > "$f" && ollama create "$1" -f "$f"; s=$?; rm -f "$f"; exit $s' sh "$1"
}
check_digest() {  # pulled reference, pinned manifest digest
  got=$(docker exec "$container" ollama list | awk -v ref="$1" '$1 == ref { print $2 }')
  case "$got" in
    "") echo "$1 is missing on $container after the pull" >&2; exit 1 ;;
  esac
  case "$2" in
    "sha256:$got"*) ;;
    *) echo "$1 on $container has digest $got..., the stack pins $2" >&2; exit 1 ;;
  esac
}
"""


def _head(container: str) -> str:
    return _SCRIPT_HEAD.format(container=shlex.quote(container), tries=SERVER_WAIT_S // 2, wait=SERVER_WAIT_S)


def pull_script(container: str, group: NodeGroup, staged: dict[str, str] | None = None) -> str:
    """Shell steps (run where the Docker CLI reaches the node's daemon) that pull every model of the group,
    check pinned digests, create each served name `name:tag` with its pinned num_ctx, and copy it to each of
    its aliases (`ollama cp`).

    `staged` maps the served name of a GGUF model to the path of its file on the machine running the script.
    """
    staged = staged or {}
    lines = [_head(container), _CREATE]
    for model in group.models:
        q = shlex.quote
        reference = pull_reference(model)
        if reference is None:
            source = staged.get(model.ref, model.gguf)
            lines.append(f'step {q("copy of " + model.ref)} docker cp {q(source)} "$container:{import_path(model)}"')
        else:
            lines.append(f"step {q('ollama pull ' + reference)} docker exec \"$container\" ollama pull {q(reference)}")
            if model.digest:
                lines.append(f"check_digest {q(reference)} {q(model.digest)}")
        lines.append(f"step {q('ollama create ' + model.ref)} create {q(model.ref)} {q(modelfile(model, group.ollama.num_thread))}")
        if reference is None:
            lines.append(f'docker exec "$container" rm -f {q(import_path(model))}')
        # An alias is a second manifest naming the same layers: `ollama cp` (Ollama v0.24.0 server/images.go
        # CopyModel) copies the manifest file and nothing else, and the scheduler keys runners by the model's blob
        # path (server/sched.go schedulerModelKey: Model.ModelPath), so a request by alias is answered by the
        # runner the served name loaded, in the same VRAM, with the same Modelfile parameters (a layer the copied
        # manifest names). The capacity model counts `NodeGroup.models`, never aliases. /api/ps names a runner by
        # the name that loaded it; the meter labels both names as the served model (`MeterOptions.aliases`).
        for alias in model.aliases:
            lines.append(f"step {q(f'ollama cp {model.ref} {alias}')} docker exec \"$container\" ollama cp {q(model.ref)} {q(alias)}")
    # What the node really pulled, as Ollama lists it: the deployment record (`deployed` output) carries it.
    for model in group.models:
        reference = pull_reference(model)
        if reference is not None:
            lines.append(
                f'printf \'{DIGEST_LINE} %s sha256:%s\\n\' {q(model.ref)} '
                f'"$(docker exec "$container" sha256sum {q(manifest_path(reference))} | cut -d" " -f1)"'
            )
    return "\n".join(lines) + "\n"


def warm_prompt(model: ModelSpec) -> str:
    """The prompt of a model's warm-up. Empty for a generative model: Ollama then loads it and generates
    nothing (server/routes.go answers an empty prompt with done_reason "load"), where a real prompt would run
    until the model stops, for minutes on a CPU. An embedding model needs text (`ollama run` refuses an empty
    one) and embeds it in one pass."""
    from fleet.capacity import resolve_arch

    return WARM_PROMPT if resolve_arch(model).embedding else ""


def warm_script(container: str, group: NodeGroup) -> str | None:
    """Shell steps that load every resident model, kept loaded per `keepAlive`, without generating.
    None when the group has no resident model (they load on first use)."""
    resident = group.resident_models
    if not resident:
        return None
    keep_alive = cli_keep_alive(group.ollama.keep_alive)
    q = shlex.quote
    lines = [_head(container)]
    for model in resident:
        lines.append(
            f"step {q('warm-up of ' + model.ref)} docker exec \"$container\" "
            f"ollama run --keepalive {q(keep_alive)} {q(model.ref)} {q(warm_prompt(model))}"
        )
    return "\n".join(lines) + "\n"
