"""OllamaNode and LocalHost under Pulumi mocks: container specs, ordering, model steps; the model steps' shell
scripts run against a stand-in `docker` CLI; the metering exporter image's build inputs."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pytest
from packaging.requirements import Requirement

from components import images
from components.local_host import LocalHost, LocalHostArgs
from components.ollama_node import OllamaNode, OllamaNodeArgs
from fleet.node_runtime import WARM_PROMPT, NodeRuntime, modelfile, pull_script, warm_script
from fleet.plans.node import node_plan
from fleet.plans.placement import LocalHostPlan
from docker_mocks import (
    BUILT_IMAGE,
    LOCAL_COMMAND,
    PRIVATE_ADDRESS,
    REMOTE_COMMAND,
    REMOTE_IMAGE,
    ROOT,
    SSH_COMMAND,
    WireMonitor,
    make_host,
    unwrap,
    settings_of,
    use_mocks,
)
from fleet import catalog, contract, ports
from fleet.capacity import context_length_env
from fleet.config import FleetSettings, ModelSpec, NodeGroup
from fleet.exporters.meter import build_parser
from fleet.local.ollama import smollm2_gguf

# The server knobs Ollama reads (envconfig/config.go); nothing else may appear in the container's environment.
REAL_KNOBS = {
    "OLLAMA_NUM_PARALLEL",
    "OLLAMA_MAX_QUEUE",
    "OLLAMA_MAX_LOADED_MODELS",
    "OLLAMA_KEEP_ALIVE",
    "OLLAMA_FLASH_ATTENTION",
    "OLLAMA_KV_CACHE_TYPE",
    "OLLAMA_CONTEXT_LENGTH",
    "OLLAMA_GPU_OVERHEAD",
    "OLLAMA_SCHED_SPREAD",
    "OLLAMA_HOST",
    "OLLAMA_MODELS",
    "OLLAMA_ORIGINS",
}


@dataclass
class Built:
    monitor: WireMonitor
    settings: FleetSettings
    group: NodeGroup
    name: str
    outputs: dict = field(default_factory=dict)

    def resource(self, suffix: str):
        return self.monitor.named(f"{self.name}-{suffix}")


def build_node(stack: str, group: NodeGroup | None = None, **host: object) -> Built:
    monitor = use_mocks(stack)
    settings = settings_of(stack)
    group = group or settings.node_groups[0]
    built = Built(monitor, settings, group, f"ollama-{group.name}-0")

    @pulumi.runtime.test
    def program():
        on = make_host(**host)
        node = OllamaNode(built.name, OllamaNodeArgs(node_plan(settings, group, 0, built.name, on.config_path), on))
        return pulumi.Output.all(node.upstream_address, node.metrics_address).apply(
            lambda v: built.outputs.update(upstream=v[0], metrics_address=v[1])
        )

    program()
    return built


@pytest.fixture
def dev() -> Built:
    return build_node("dev", transport="local", models_path="ollama-local-models")


@pytest.fixture
def staging() -> Built:
    return build_node("staging", transport="ssh", gpus=1)


def env_of(container) -> dict[str, str]:
    return container.env_map


# ---- container specs -----------------------------------------------------------------------------------


def test_ollama_container_runs_the_pinned_image(dev):
    ollama = dev.monitor.container("ollama")
    image = dev.resource("ollama-image")
    assert image.type == REMOTE_IMAGE
    assert image.inputs["name"] == dev.settings.images.ollama
    assert re.search(r":[\w.-]+@sha256:[0-9a-f]{64}$", image.inputs["name"])
    assert image.inputs["keepLocally"] is True
    # The container runs exactly what was pulled: the image's ID, not a movable tag.
    assert ollama.inputs["image"] == image.outputs["imageId"]


def test_ollama_environment_is_only_real_knobs_and_matches_the_config(dev, staging):
    for built in (dev, staging):
        env = env_of(built.monitor.container("ollama"))
        knobs = built.group.ollama
        assert set(env) <= REAL_KNOBS
        assert env["OLLAMA_NUM_PARALLEL"] == str(knobs.num_parallel)
        assert env["OLLAMA_MAX_QUEUE"] == str(knobs.max_queue)
        assert env["OLLAMA_MAX_LOADED_MODELS"] == str(built.group.max_loaded_models)
        assert env["OLLAMA_KEEP_ALIVE"] == knobs.keep_alive
        assert env["OLLAMA_FLASH_ATTENTION"] == ("1" if knobs.flash_attention else "0")
        assert env["OLLAMA_KV_CACHE_TYPE"] == knobs.kv_cache_type
        assert env["OLLAMA_CONTEXT_LENGTH"] == str(context_length_env(built.group))
        assert env["OLLAMA_HOST"] == f"0.0.0.0:{ports.OLLAMA}"
        assert env["OLLAMA_MODELS"] == "/models"
    assert env_of(staging.monitor.container("ollama"))["OLLAMA_KV_CACHE_TYPE"] == "q8_0"
    assert env_of(dev.monitor.container("ollama"))["OLLAMA_FLASH_ATTENTION"] == "0"


def test_context_length_is_left_to_ollama_only_when_the_config_names_none():
    group = settings_of("dev").node_groups[0]
    model = group.models[0].model_copy(update={"num_ctx": None})
    bare = group.model_copy(update={"models": [model]})
    assert "OLLAMA_CONTEXT_LENGTH" not in NodeRuntime.of(bare, "cpu-0").container_environment()
    pinned = bare.model_copy(update={"ollama": bare.ollama.model_copy(update={"context_length": 2048})})
    assert NodeRuntime.of(pinned, "cpu-0").container_environment()["OLLAMA_CONTEXT_LENGTH"] == "2048"


def test_gpus_are_requested_only_on_gpu_hosts(dev, staging):
    assert not dev.monitor.container("ollama").inputs.get("deviceRequests")
    assert not dev.monitor.containers("dcgm-exporter")
    for role in ("ollama", "dcgm-exporter"):
        requests = staging.monitor.container(role).inputs["deviceRequests"]
        assert requests == [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}]
    assert not staging.monitor.container("meter").inputs.get("deviceRequests")


def test_every_container_restarts_rotates_logs_and_is_labelled(dev, staging):
    for built in (dev, staging):
        for container in built.monitor.containers():
            inputs = container.inputs
            assert inputs["restart"] == "unless-stopped", container.name
            assert inputs["logDriver"] == "json-file"
            assert set(inputs["logOpts"]) == {"max-size", "max-file"}
            assert container.label_map[contract.LABELS.environment] == built.settings.environment
    roles = {c.label_map[contract.LABELS.role] for c in staging.monitor.containers()}
    assert roles == {"ollama", "meter", "node-exporter", "dcgm-exporter"}


def test_ollama_labels_describe_the_models_for_the_policy_pack(staging):
    labels = staging.monitor.container("ollama").label_map
    assert labels[contract.LABELS.node_group] == "chat"
    assert labels[contract.LABELS.instance_type] == "g6e.xlarge"
    assert float(labels[contract.LABELS.vram_headroom]) == staging.settings.policy.vram_headroom
    assert contract.decode_models(labels) == staging.group.models
    assert [m["name"] for m in json.loads(labels[contract.LABELS.models])] == ["llama3.1"]
    # the pin staging's and prod's pinned-images policy checks travels with the model
    assert contract.decode_models(labels)[0].digest == staging.group.models[0].digest
    assert staging.group.models[0].digest.startswith("sha256:")


def test_health_checks_use_what_each_image_has(dev, staging):
    ollama = dev.monitor.container("ollama").inputs["healthcheck"]
    assert ollama["tests"] == ["CMD", "ollama", "list"]  # no curl in the Ollama image
    assert ollama["retries"] >= 1 and ollama["interval"] and ollama["startPeriod"]
    meter = dev.monitor.container("meter").inputs["healthcheck"]["tests"]
    assert meter[:2] == ["CMD", "python"] and f"127.0.0.1:{ports.METER_METRICS}/metrics" in meter[-1]
    node_exporter = staging.monitor.container("node-exporter").inputs["healthcheck"]["tests"]
    assert node_exporter[:2] == ["CMD", "wget"] and node_exporter[-1] == f"http://{PRIVATE_ADDRESS}:{ports.NODE_EXPORTER}/metrics"
    dcgm = staging.monitor.container("dcgm-exporter").inputs["healthcheck"]["tests"]
    assert dcgm[:2] == ["CMD", "bash"] and f"/dev/tcp/127.0.0.1/{ports.DCGM_EXPORTER}" in dcgm[-1]


def test_models_are_mounted_from_the_host_model_store(dev, staging):
    assert dev.monitor.container("ollama").inputs["volumes"] == [
        {"volumeName": "ollama-local-models", "containerPath": "/models"}
    ]
    assert staging.monitor.container("ollama").inputs["volumes"] == [
        {"hostPath": "/var/lib/ollama-fleet/models", "containerPath": "/models"}
    ]


def test_ollama_port_is_never_published_and_node_ports_stay_private(dev, staging):
    for built in (dev, staging):
        for container in built.monitor.containers():
            for port in container.inputs.get("ports") or []:
                assert port["internal"] != ports.OLLAMA and port.get("external") != ports.OLLAMA
                # Published node ports (AWS) bind to the private address only, never to every address.
                assert port["ip"] == PRIVATE_ADDRESS, (container.name, port)
    # On the local host nothing of a node is published at all: peers use the shared network.
    assert not [p for c in dev.monitor.containers() for p in c.inputs.get("ports") or []]
    meter_ports = {p["internal"] for p in staging.monitor.container("meter").inputs["ports"]}
    assert meter_ports == {ports.METER, ports.METER_METRICS}


def test_addresses_of_the_node_for_the_gateway_and_prometheus(dev, staging):
    assert dev.outputs["upstream"] == f"{dev.name}-meter:{ports.METER}"
    # Every exporter of the node answers at the meter's address (fleet.plans.scrape adds the ports): the node
    # exporter shares the meter's network namespace.
    assert dev.outputs["metrics_address"] == f"{dev.name}-meter"
    meter = dev.monitor.container("meter")
    assert dev.monitor.container("node-exporter").inputs["networkMode"] == f"container:{dev.monitor.id_of(meter)}"
    assert staging.outputs["upstream"] == f"{PRIVATE_ADDRESS}:{ports.METER}"
    assert staging.outputs["metrics_address"] == PRIVATE_ADDRESS
    published = {p["internal"]: p["ip"] for c in staging.monitor.containers() for p in c.inputs.get("ports") or []}
    assert published[ports.METER_METRICS] == published[ports.DCGM_EXPORTER] == PRIVATE_ADDRESS
    node_exporter = staging.monitor.container("node-exporter").inputs
    assert node_exporter["networkMode"] == "host" and node_exporter["pidMode"] == "host"
    assert f"--web.listen-address={PRIVATE_ADDRESS}:{ports.NODE_EXPORTER}" in node_exporter["command"]
    assert "--path.rootfs=/host" in node_exporter["command"]
    assert node_exporter["mounts"] == [
        {"type": "bind", "source": "/", "target": "/host", "readOnly": True, "bindOptions": {"propagation": "rslave"}}
    ]


def test_meter_command_is_accepted_by_the_exporter_cli(dev):
    command = dev.monitor.container("meter").inputs["command"]
    assert command == NodeRuntime.of(dev.group, "cpu-0", ["dev"], f"{dev.name}-ollama").meter.argv()
    assert command[-2:] == ["--client", "dev"]
    args = build_parser().parse_args(command)
    assert args.upstream == f"http://{dev.name}-ollama:{ports.OLLAMA}"
    assert args.listen == ("0.0.0.0", ports.METER)
    assert args.metrics_listen == ("0.0.0.0", ports.METER_METRICS)
    assert args.node == "cpu-0"
    assert args.model == [m.ref for m in dev.group.models]
    assert args.alias == [(alias, m.ref) for m in dev.group.models for alias in m.aliases]


def test_meter_command_names_each_alias_with_its_model():
    group = dev_group()
    model = group.models[0].model_copy(update={"aliases": ["chat", "gpt-4o-mini"]})
    command = NodeRuntime.of(group.model_copy(update={"models": [model]}), "cpu-0", (), "c").meter.argv()
    args = build_parser().parse_args(command)
    assert args.model == [model.ref] and args.alias == [("chat", model.ref), ("gpt-4o-mini", model.ref)]


# ---- ordering ------------------------------------------------------------------------------------------


def test_everything_waits_for_the_host_and_uses_its_daemon(dev, staging):
    for built in (dev, staging):
        ready = built.monitor.urn_of("host-ready")
        provider = built.monitor.named("host-docker")
        node = built.monitor.named(built.name)
        for resource in built.monitor.registered:
            if resource.type.startswith("docker:"):
                assert resource.provider and resource.provider.startswith(provider.urn), resource.name
            if resource.parent_urn == node.urn and resource.type.startswith("docker:"):
                assert ready in resource.depends_on, f"{resource.name} does not wait for the host"
        assert len(built.monitor.containers()) >= 3
        assert all(c.parent_urn == node.urn for c in built.monitor.containers())


def test_meter_and_model_steps_come_after_the_ollama_container(dev):
    ollama = dev.monitor.container("ollama").urn
    assert ollama in dev.monitor.container("meter").depends_on
    pull, warm = dev.resource("models"), dev.resource("warm")
    assert ollama in pull.depends_on
    assert ollama in warm.depends_on and pull.urn in warm.depends_on


# ---- model steps ---------------------------------------------------------------------------------------


def test_model_steps_rerun_only_when_the_model_list_changes(dev):
    labels = dev.monitor.container("ollama").label_map
    pull, warm = dev.resource("models"), dev.resource("warm")
    assert pull.inputs["triggers"] == [labels[contract.LABELS.models]]
    # The warm-up also follows the container: a new container starts with nothing loaded.
    assert warm.inputs["triggers"] == [labels[contract.LABELS.models], dev.monitor.id_of(dev.monitor.container("ollama"))]


def test_a_changed_model_list_changes_the_triggers():
    first = build_node("dev", transport="local")
    group = first.group
    bigger = group.model_copy(update={"models": [group.models[0].model_copy(update={"num_ctx": 8192})]})
    second = build_node("dev", group=bigger, transport="local")
    assert first.resource("models").inputs["triggers"] != second.resource("models").inputs["triggers"]
    assert "PARAMETER num_ctx 8192" in second.resource("models").inputs["create"]


def test_local_steps_use_the_local_daemon(dev):
    pull = dev.resource("models")
    assert pull.type == LOCAL_COMMAND
    assert pull.inputs["environment"] == {"DOCKER_HOST": dev.settings.local.docker_host}
    assert pull.inputs["create"] == pull_script(f"{dev.name}-ollama", dev.group)


def test_aws_steps_run_on_the_host(staging):
    pull = staging.resource("models")
    assert pull.type == LOCAL_COMMAND
    assert pull.inputs["create"] == f"{SSH_COMMAND} sh -s"
    assert pull.inputs["stdin"] == pull_script(f"{staging.name}-ollama", staging.group)
    direct = build_node("staging", transport="connection", gpus=1)
    pull = direct.resource("models")
    assert pull.type == REMOTE_COMMAND
    assert unwrap(pull.inputs["connection"])["host"] == PRIVATE_ADDRESS
    assert pull.inputs["create"] == pull_script(f"{direct.name}-ollama", direct.group)


def test_node_without_resident_models_has_no_warm_up():
    group = settings_of("dev").node_groups[0]
    lazy = group.model_copy(update={"models": [group.models[0].model_copy(update={"keep_loaded": False})]})
    built = build_node("dev", group=lazy, transport="local")
    assert not [r for r in built.monitor.registered if r.name.endswith("-warm")]
    assert warm_script("c", lazy) is None


# ---- the scripts, run against a stand-in docker CLI ----------------------------------------------------

FAKE_DOCKER = r"""#!/bin/sh
# Stand-in docker CLI: records each call; answers the `docker exec … ollama …` calls the model steps make.
printf '%s\n' "$*" >> "$FAKE_LOG"
case "$*" in
  *"ollama list"*) printf 'NAME ID SIZE MODIFIED\n%s %s 98 MB 1 second ago\n' "$FAKE_REF" "$FAKE_ID" ;;
  "exec -i "*) cat > "$FAKE_MODELFILE" ;;
  *"ollama cp"*)
    if [ -n "${FAKE_CP_FAIL:-}" ]; then
      echo "Error: destination \"$6\" is invalid" >&2
      exit 1
    fi ;;
  *"ollama pull"*)
    if [ -n "${FAKE_PULL_FAIL:-}" ]; then
      echo "pulling manifest" >&2
      echo "Error: pull model manifest: file does not exist" >&2
      exit 1
    fi ;;
esac
exit 0
"""


def run_script(tmp_path: Path, script: str, *, ref: str = "", digest_id: str = "", pull_fail: bool = False,
               cp_fail: bool = False):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "docker"
    fake.write_text(FAKE_DOCKER)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_LOG": str(tmp_path / "calls.log"),
        "FAKE_MODELFILE": str(tmp_path / "Modelfile"),
        "FAKE_REF": ref,
        "FAKE_ID": digest_id,
    }
    if pull_fail:
        env["FAKE_PULL_FAIL"] = "1"
    if cp_fail:
        env["FAKE_CP_FAIL"] = "1"
    proc = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    log = (tmp_path / "calls.log").read_text().splitlines() if (tmp_path / "calls.log").exists() else []
    return proc, log


def subdir(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir()
    return path


def dev_group() -> NodeGroup:
    return settings_of("dev").node_groups[0]


def test_pull_script_pulls_then_creates_the_served_name_with_num_ctx(tmp_path):
    group = dev_group()
    model = group.models[0]
    reference = catalog.find_model(model.ref).pull_tag(model.quantization)
    proc, calls = run_script(tmp_path, pull_script("node-ollama", group))
    assert proc.returncode == 0, proc.stderr
    assert calls[0] == "exec node-ollama ollama list"  # waits for the server first
    assert f"exec node-ollama ollama pull {reference}" in calls
    create = [c for c in calls if c.startswith("exec -i node-ollama")]
    assert len(create) == 1 and create[0].endswith(f" sh {model.ref}")
    assert (tmp_path / "Modelfile").read_text() == f"FROM {reference}\nPARAMETER num_ctx {model.num_ctx}\n"
    assert calls.index(f"exec node-ollama ollama pull {reference}") < calls.index(create[0])


def test_pull_script_copies_the_created_model_to_each_alias(tmp_path):
    group = dev_group()
    model = group.models[0].model_copy(update={"aliases": ["chat", "gpt-4o-mini"]})
    aliased = group.model_copy(update={"models": [model]})
    plain = group.model_copy(update={"models": [model.model_copy(update={"aliases": []})]})
    proc, calls = run_script(tmp_path, pull_script("node-ollama", aliased))
    assert proc.returncode == 0, proc.stderr
    copies = [c for c in calls if " ollama cp " in c]
    assert copies == [f"exec node-ollama ollama cp {model.ref} chat", f"exec node-ollama ollama cp {model.ref} gpt-4o-mini"]
    create = next(c for c in calls if c.startswith("exec -i node-ollama"))
    assert calls.index(create) < calls.index(copies[0])  # the served name exists before it is copied
    assert " ollama cp " not in pull_script("node-ollama", plain)  # no alias, no copy

    failed, _ = run_script(subdir(tmp_path, "failed"), pull_script("node-ollama", aliased), cp_fail=True)
    assert failed.returncode != 0
    assert "is invalid" in failed.stderr and f"ollama cp {model.ref} chat failed on node-ollama" in failed.stderr


def test_pull_script_refuses_a_model_whose_digest_differs_from_the_pin(tmp_path):
    group = dev_group()
    digest = "sha256:" + "ab12cd34ef56" + "0" * 52
    pinned = group.model_copy(update={"models": [group.models[0].model_copy(update={"digest": digest})]})
    reference = catalog.find_model(pinned.models[0].ref).pull_tag(pinned.models[0].quantization)

    ok, _ = run_script(subdir(tmp_path, "ok"), pull_script("n", pinned), ref=reference, digest_id="ab12cd34ef56")
    assert ok.returncode == 0, ok.stderr
    bad, calls = run_script(subdir(tmp_path, "bad"), pull_script("n", pinned), ref=reference, digest_id="ffffffffffff")
    assert bad.returncode != 0
    assert "ffffffffffff" in bad.stderr and digest in bad.stderr
    assert not [c for c in calls if c.startswith("exec -i")], "nothing is created from a wrong model"
    missing, _ = run_script(subdir(tmp_path, "missing"), pull_script("n", pinned), ref="other:tag", digest_id="ab12cd34ef56")
    assert missing.returncode != 0 and "missing" in missing.stderr


def test_a_failed_pull_stops_the_step_and_shows_why(tmp_path):
    proc, calls = run_script(tmp_path, pull_script("node-ollama", dev_group()), pull_fail=True)
    assert proc.returncode != 0
    assert "file does not exist" in proc.stderr and "failed on node-ollama" in proc.stderr
    assert not [c for c in calls if c.startswith("exec -i")]


def _warm_arguments(script: str) -> list[list[str]]:
    """The arguments of each `ollama run` of a warm-up script, as the shell passes them."""
    return [shlex.split(line)[shlex.split(line).index("ollama"):] for line in script.splitlines() if " ollama run " in line]


def test_warm_script_loads_resident_models_with_the_configured_keep_alive_and_generates_nothing(tmp_path):
    group = dev_group()
    script = warm_script("node-ollama", group)
    proc, calls = run_script(tmp_path, script)
    assert proc.returncode == 0, proc.stderr
    runs = [c for c in calls if " ollama run " in c]
    # The prompt is an empty last argument: Ollama loads the model and answers done_reason "load" at once,
    # where a real prompt would let a small model talk until num_ctx (minutes on a CPU).
    assert runs == [f"exec node-ollama ollama run --keepalive {group.ollama.keep_alive} {group.models[0].ref} "]
    assert _warm_arguments(script) == [["ollama", "run", "--keepalive", group.ollama.keep_alive, group.models[0].ref, ""]]
    forever = group.model_copy(update={"ollama": group.ollama.model_copy(update={"keep_alive": "-1"})})
    assert "--keepalive -1s " in warm_script("n", forever)  # `ollama run` takes a Go duration


def test_warm_script_gives_an_embedding_model_text_to_embed():
    # `ollama run` refuses an embedding model without text; one short text is one forward pass.
    embed = ModelSpec(name="nomic-embed-text", tag="v1.5", quantization="fp16")
    group = dev_group().model_copy(update={"models": [dev_group().models[0], embed]})
    [chat, embedding] = _warm_arguments(warm_script("n", group))
    assert chat[-1] == "" and embedding[-2:] == ["nomic-embed-text:v1.5", WARM_PROMPT]


def test_gguf_models_are_copied_in_and_imported(tmp_path, monkeypatch):
    # The program reads the file's header (the warm-up asks whether it is an embedding model): a real GGUF.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "custom.gguf").symlink_to(smollm2_gguf())
    custom = ModelSpec(name="custom", tag="1b", quantization="q4_0", gguf="models/custom.gguf", num_ctx=2048)
    group = dev_group().model_copy(update={"models": [custom]})
    proc, calls = run_script(tmp_path, pull_script("n", group))
    assert proc.returncode == 0, proc.stderr
    assert "cp models/custom.gguf n:/tmp/custom-1b.gguf" in calls
    assert not [c for c in calls if "ollama pull" in c]
    assert (tmp_path / "Modelfile").read_text() == modelfile(custom) == "FROM /tmp/custom-1b.gguf\nPARAMETER num_ctx 2048\n"
    assert calls[-1] == "exec n rm -f /tmp/custom-1b.gguf"
    # On an AWS host the file is staged on the host first, and copied from there.
    staged = group.model_copy(update={"name": "chat", "instance_type": "g6e.xlarge"})  # the staging stack's group
    built = build_node("staging", group=staged, transport="ssh", gpus=1)
    stage = built.resource("stage-custom-1b")
    assert stage.inputs["create"].startswith(SSH_COMMAND) and stage.inputs["create"].endswith("< models/custom.gguf")
    assert stage.urn in built.resource("models").depends_on
    assert "docker cp /etc/ollama-fleet/imports/custom.gguf" in built.resource("models").inputs["stdin"]


# ---- LocalHost -----------------------------------------------------------------------------------------


def test_local_host_gives_a_shared_network_and_a_kept_model_volume():
    monitor = use_mocks("dev")
    settings = settings_of("dev")
    hosts = []

    @pulumi.runtime.test
    def program():
        local = LocalHost("ollama-local", LocalHostArgs(LocalHostPlan.of(settings, "ollama-local")))
        hosts.append(local.host)
        return local.host.private_address

    program()
    host = hosts[0]
    provider = monitor.named("ollama-local-docker")
    assert provider.inputs["host"] == settings.local.docker_host
    network = monitor.named("ollama-local-net")
    volume = monitor.named("ollama-local-models")
    assert volume.retain_on_delete
    assert network.provider.startswith(provider.urn) and volume.provider.startswith(provider.urn)
    assert host.gpus == 0 and host.connection is None and host.ssh_command is None
    assert host.models_path == volume.inputs["name"] and not host.models_path.startswith("/")
    assert host.shared_network is not None and host.shared_network in host.ready and len(host.ready) == 2


# ---- the exporter image ---------------------------------------------------------------------------------


def test_meter_runs_the_exporter_image_built_on_the_host_from_the_pinned_python(dev):
    image = dev.resource("meter-image")
    assert image.type == BUILT_IMAGE
    assert image.inputs["skipPush"] is True
    assert image.inputs["build"]["args"] == {"PYTHON_IMAGE": dev.settings.images.python}
    assert image.inputs["build"]["dockerfile"].endswith("exporter/Dockerfile")
    assert image.inputs["imageName"] == f"ollama-fleet/meter:{images.exporter_tag(dev.settings.images.python)}"
    assert dev.monitor.container("meter").inputs["image"] == image.outputs["repoDigest"]


@pytest.mark.usefixtures("no_collection_during_parse")
def test_the_exporter_build_context_is_the_dockerignore_list_and_holds_every_module_it_imports():
    sources = images.exporter_sources()
    assert sources[:2] == ("exporter/Dockerfile", "exporter/requirements.txt")
    files = {p.relative_to(ROOT).as_posix() for p in images.exporter_files()}
    # The Dockerfile copies the requirements and the admitted fleet tree, nothing named one by one.
    copies = [line.split()[1:] for line in (ROOT / "exporter/Dockerfile").read_text().splitlines() if line.startswith("COPY ")]
    assert copies == [["exporter/requirements.txt", "/app/requirements.txt"], ["fleet/", "/app/fleet/"]]
    modules = {p for p in files if p.startswith("fleet/")}
    assert {"fleet/exporters/meter.py", "fleet/exporters/gateway_log.py", "fleet/exporters/budget.py"} <= modules
    # Every fleet module the image's code imports is in the image (and so in the tag's hash).
    for path in modules:
        tree = ast.parse((ROOT / path).read_text())
        for node in ast.walk(tree):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fleet"):
                names += [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if not name.startswith("fleet."):
                    continue
                as_module = name.replace(".", "/") + ".py"
                as_member = name.rpartition(".")[0].replace(".", "/") + ".py"
                as_package = name.replace(".", "/") + "/__init__.py"
                assert {as_module, as_member, as_package} & modules, f"{path} imports {name}, which the image lacks"


def test_a_module_outside_the_dockerignore_list_is_not_an_exporter_input(tmp_path):
    (tmp_path / "fleet/exporters").mkdir(parents=True)
    (tmp_path / "exporter").mkdir()
    for relative in ("exporter/Dockerfile", "exporter/requirements.txt", "fleet/__init__.py", "fleet/ports.py",
                     "fleet/gateway_routes.py", "fleet/usage.py", "fleet/exporters/meter.py", "fleet/config.py"):
        (tmp_path / relative).write_text("x = 1\n")
    (tmp_path / ".dockerignore").write_text((ROOT / ".dockerignore").read_text())
    found = {p.relative_to(tmp_path).as_posix() for p in images.exporter_files(tmp_path)}
    assert "fleet/exporters/meter.py" in found and "fleet/config.py" not in found


def test_exporter_tag_follows_the_build_inputs(tmp_path):
    shutil.copy(ROOT / ".dockerignore", tmp_path / ".dockerignore")
    for source in images.exporter_files():
        target = tmp_path / source.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    base = settings_of("dev").images.python
    tag = images.exporter_tag(base, tmp_path)
    assert tag == images.exporter_tag(base, ROOT)
    assert images.exporter_tag(base.replace("3.11", "3.12"), tmp_path) != tag
    proxy = tmp_path / "fleet/exporters/meter_proxy.py"
    proxy.write_text(proxy.read_text() + "\n# changed\n")
    assert images.exporter_tag(base, tmp_path) != tag
    (tmp_path / "fleet/usage.py").unlink()
    with pytest.raises(FileNotFoundError, match="fleet/usage.py"):
        images.exporter_tag(base, tmp_path)


def _requirements() -> dict[str, tuple[str, list[str]]]:
    text = (ROOT / "exporter/requirements.txt").read_text().replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, *hashes = line.split("--hash=")
        name, version = spec.strip().split("==")
        pins[name.lower().replace("_", "-")] = (version, [h.strip() for h in hashes])
    return pins


def _closure(roots: list[str]) -> set[str]:
    """The distributions `roots` need at runtime on CPython 3.11 / Linux, from the installed metadata."""
    environment = {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux", "extra": ""}
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for requirement in importlib.metadata.requires(name) or []:
            parsed = Requirement(requirement)
            if parsed.marker is None or parsed.marker.evaluate(environment):
                todo.append(parsed.name)
    return seen


@pytest.mark.usefixtures("no_collection_during_parse")
def test_exporter_requirements_are_the_hashed_closure_at_the_project_pins():
    pins = _requirements()
    constraints = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            constraints[name.strip().lower().replace("_", "-")] = version.strip()
    for name, (version, hashes) in pins.items():
        assert constraints.get(name) == version, f"{name}=={version} differs from constraints.txt"
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
    third_party = set()
    for source in images.exporter_files():
        path = source.relative_to(ROOT).as_posix()
        if path.startswith("fleet/"):
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    third_party.add(node.module.split(".")[0])
                elif isinstance(node, ast.Import):
                    third_party.update(a.name.split(".")[0] for a in node.names)
    stdlib = set(__import__("sys").stdlib_module_names) | {"fleet"}
    roots = sorted(third_party - stdlib)
    distributions = importlib.metadata.packages_distributions()
    root_dists = sorted({distributions[m][0] for m in roots})
    assert set(pins) == _closure(root_dists)


FAKE_DOCKER_MANIFESTS = r"""#!/usr/bin/env bash
# Fake docker CLI: `exec [-i] CONTAINER CMD…`; files under /models live in $MODELS_ROOT.
[ "$1" = exec ] || exit 2
shift
[ "$1" = -i ] && { shift; cat > /dev/null; }
shift  # the container
case "$1 $2" in
  "ollama list") printf 'NAME ID SIZE MODIFIED\n' ;;
  sha256sum*) exec sha256sum "$MODELS_ROOT${2#/models}" ;;
  *) exit 0 ;;
esac
"""


def test_the_pull_step_reports_the_digest_of_each_pulled_model(tmp_path):
    """The script runs (bash, a fake docker CLI): it prints, per registry model, the SHA-256 of the manifest
    Ollama keeps for it, which `model_digests` reads into the `deployed` output; imported GGUF models have none."""
    from fleet.config import NodeGroup
    from fleet.node_runtime import manifest_path, model_digests, pull_reference

    group = NodeGroup.model_validate({
        "name": "chat", "instanceType": "g6e.xlarge", "count": 1,
        "models": [{"name": "llama3.1", "tag": "8b", "quantization": "q4_K_M", "numCtx": 8192}],
    })
    reference = pull_reference(group.models[0])
    manifest = tmp_path / "models" / manifest_path(reference, "").lstrip("/")
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"schemaVersion": 2, "layers": []}')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER_MANIFESTS)
    (bin_dir / "docker").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "MODELS_ROOT": str(tmp_path / "models")}
    done = subprocess.run(["bash", "-c", pull_script("ollama-chat-0", group)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    import hashlib

    expected = "sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert model_digests(done.stdout) == {"llama3.1:8b": expected}
