"""The real Pulumi program under mocks, once per stack, through the offline preview command (a subprocess each,
since Pulumi's mocks are process-global)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fleet import contract, ports
from fleet.plans.naming import container_name, monitoring_component
from fleet.preview.mock_cloud import fake_outputs

ROOT = Path(__file__).resolve().parents[2]
CONTAINER = "docker:index/container:Container"
INSTANCE = "aws:ec2/instance:Instance"


def run_preview(stack: str, cwd: Path = ROOT, *extra: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = cwd / f".preview-{stack}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "preview", "--stack", stack, "--json", str(out), *extra],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    data = json.loads(out.read_text()) if out.exists() else None
    out.unlink(missing_ok=True)
    return proc, data


@pytest.fixture(scope="module")
def previews() -> dict[str, tuple[subprocess.CompletedProcess, dict]]:
    return {stack: run_preview(stack) for stack in ("dev", "staging", "prod")}


def containers(data: dict, role: str | None = None) -> list[dict]:
    found = []
    for resource in data["resources"]:
        if resource["type"] != CONTAINER:
            continue
        labels = {item["label"]: item["value"] for item in resource["inputs"].get("labels", [])}
        if role is None or labels.get(contract.LABELS.role) == role:
            found.append(resource)
    return found


def of_type(data: dict, type_: str) -> list[dict]:
    return [r for r in data["resources"] if r["type"] == type_]


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_preview_succeeds_and_prints_plan_capacity_and_verdict(previews, stack):
    proc, data = previews[stack]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "Resources by type" in proc.stdout
    assert data["counts"][CONTAINER] == len(containers(data))
    assert sum(data["counts"].values()) == len(data["resources"])


def test_dev_runs_on_the_local_docker_host_without_gpus(previews):
    _, data = previews["dev"]
    assert not [r for r in data["resources"] if r["type"].startswith("aws:")]
    ollama = containers(data, "ollama")
    assert len(ollama) == 1
    assert not ollama[0]["inputs"].get("deviceRequests") and not ollama[0]["inputs"].get("gpus")
    roles = {r for c in containers(data) for r in [dict((i["label"], i["value"]) for i in c["inputs"]["labels"])[contract.LABELS.role]]}
    assert {"ollama", "meter", "gateway", "prometheus", "grafana"} <= roles


def test_dev_gateway_starts_after_every_meter(previews):
    """On the local host nginx reaches the meters by container name and resolves those names when it starts:
    started before a meter runs, it exits with "host not found in upstream"."""
    _, data = previews["dev"]
    [gateway] = containers(data, "gateway")
    meters = {meter["urn"] for meter in containers(data, "meter")}
    assert meters and meters <= set(gateway["dependsOn"])


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_aws_stacks_have_gpu_nodes_with_device_requests(previews, stack):
    _, data = previews[stack]
    settings = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]["ollama-fleet:fleet"]
    expected_nodes = sum(g["count"] for g in settings["nodeGroups"])
    ollama = containers(data, "ollama")
    assert len(ollama) == expected_nodes
    for container in ollama:
        requests = container["inputs"].get("deviceRequests") or []
        assert requests and requests[0]["capabilities"] == ["gpu"]
    node_instances = [i for i in of_type(data, INSTANCE) if i["inputs"]["instanceType"] == settings["nodeGroups"][0]["instanceType"]]
    assert len(node_instances) == expected_nodes
    for instance in of_type(data, INSTANCE):
        assert instance["inputs"]["metadataOptions"]["httpTokens"] == "required"
        assert instance["inputs"]["rootBlockDevice"]["encrypted"] is True


def test_prod_spreads_nodes_over_two_zones_and_protects_model_volumes(previews):
    _, data = previews["prod"]
    zones = {i["inputs"].get("availabilityZone") for i in of_type(data, INSTANCE)}
    assert len(zones) >= 2
    volumes = of_type(data, "aws:ebs/volume:Volume")
    assert volumes and all(v["inputs"]["encrypted"] and v["protect"] and v["retainOnDelete"] for v in volumes)
    assert of_type(data, "aws:route53/record:Record")


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_every_image_is_pinned_by_digest(previews, stack):
    _, data = previews[stack]
    images = [c["inputs"]["image"] for c in containers(data)]
    images += [r["inputs"]["name"] for r in of_type(data, "docker:index/remoteImage:RemoteImage")]
    assert images
    for image in images:
        assert ":latest" not in image
        if not image.startswith("sha256:"):
            assert "@sha256:" in image, image


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_no_private_port_is_open_to_the_world(previews, stack):
    _, data = previews[stack]
    rules = [r for r in data["resources"] if "ngress" in r["type"]]
    assert rules
    for rule in rules:
        inputs = rule["inputs"]
        world = inputs.get("cidrIpv4") == "0.0.0.0/0" or "0.0.0.0/0" in (inputs.get("cidrBlocks") or [])
        if world:
            assert inputs.get("fromPort") not in ports.PRIVATE_PORTS, rule["name"]


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_grafana_is_reached_through_the_gateway_over_https_only(previews, stack):
    _, data = previews[stack]
    outputs = data["outputs"]
    assert outputs["gatewayUrl"].startswith("https://")
    assert outputs["grafanaUrl"] == outputs["gatewayUrl"].rstrip("/") + "/grafana/"
    # no range reaches Grafana's port: on AWS the security groups open it to the gateways' group at most, and
    # on the local Docker host it is not published at all (nginx reaches it on the shared network)
    assert not [
        r for r in data["resources"] if "ngress" in r["type"] and r["inputs"].get("fromPort") == ports.GRAFANA and r["inputs"].get("cidrIpv4")
    ]
    published = [p for c in containers(data, "grafana") for p in c["inputs"].get("ports") or []]
    if stack == "dev":
        assert published == []
    else:
        # the first gateway host's private address, for the gateways' nginx
        assert published and all(p["internal"] == ports.GRAFANA and p["ip"] not in ("", "0.0.0.0") for p in published)


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_secrets_never_reach_the_preview_output(previews, stack):
    proc, data = previews[stack]
    text = json.dumps(data) + proc.stdout + proc.stderr
    # The mock cloud's generated passwords and private keys all start with these markers.
    assert "BEGIN PRIVATE KEY-----\nmock" not in text
    assert "OPENSSH PRIVATE KEY-----\nmock" not in text
    passwords = of_type(data, "random:index/randomPassword:RandomPassword")
    assert passwords, "API keys and the Grafana password are generated when not configured"
    for resource in passwords:
        _, outputs = fake_outputs(resource["type"], resource["name"], resource["inputs"])
        assert outputs["result"] not in text, f"{resource['name']} leaked"
    assert "[secret]" in json.dumps(data)


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_prometheus_scrapes_the_log_exporter_of_every_gateway(previews, stack):
    _, data = previews[stack]
    exporters = containers(data, "gateway-log-exporter")
    gateways = containers(data, "gateway")
    assert len(exporters) == len(gateways) >= 1
    (prometheus,) = containers(data, "prometheus")
    # Prometheus' uploads carry its password file and web config, so the preview masks them whole; the scrape
    # config and its targets are checked with the secrets unwrapped in tests/unit/test_monitoring_component.py.
    assert prometheus["inputs"]["uploads"] == "[secret]"
    nginx_exporters = containers(data, "nginx-exporter")
    assert len(nginx_exporters) == len(gateways)
    names = sorted(c["inputs"]["name"] for c in exporters)
    assert all("gateway-log-exporter" in n for n in names)


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_monitoring_containers_carry_the_names_the_plans_address_them_by(previews, stack):
    """The core plans Grafana behind the gateway and Prometheus' Alertmanager by container name
    (fleet.plans.naming); the program must register exactly those names."""
    _, data = previews[stack]
    for role in ("prometheus", "alertmanager", "grafana"):
        (container,) = containers(data, role)
        assert container["inputs"]["name"] == container_name(monitoring_component(), role)


def test_components_form_a_tree_under_the_fleet(previews):
    _, data = previews["prod"]
    fleet = [r for r in data["resources"] if r["type"] == "ollama-fleet:index:Fleet"]
    assert len(fleet) == 1
    by_urn = {r["urn"]: r for r in data["resources"]}
    for resource in data["resources"]:
        if resource is fleet[0]:
            continue
        # Walk up: every resource descends from the Fleet component.
        parent = resource["parent"]
        while parent in by_urn and by_urn[parent]["type"] != "ollama-fleet:index:Fleet":
            parent = by_urn[parent]["parent"]
        assert parent == fleet[0]["urn"], resource["urn"]


def _project_copy(tmp_path: Path) -> Path:
    for name in ("Pulumi.yaml", "Pulumi.prod.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_preview_refuses_a_stack_that_does_not_fit_the_gpus(tmp_path):
    project = _project_copy(tmp_path)
    document = yaml.safe_load((project / "Pulumi.prod.yaml").read_text())
    group = document["config"]["ollama-fleet:fleet"]["nodeGroups"][0]
    group["models"] = [{"name": "llama3.1", "tag": "70b", "quantization": "fp16", "numCtx": 8192}]
    (project / "Pulumi.oversize.yaml").write_text(yaml.safe_dump(document))
    proc, _ = run_preview("oversize", project, "--no-tree")
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "vram-fit" in proc.stdout


def test_preview_of_a_bad_stack_is_a_clear_error(tmp_path):
    project = _project_copy(tmp_path)
    document = yaml.safe_load((project / "Pulumi.prod.yaml").read_text())
    document["config"]["ollama-fleet:fleet"]["nodeGroups"][0]["ollama"]["numParallel"] = 0
    (project / "Pulumi.bad.yaml").write_text(yaml.safe_dump(document))
    proc, data = run_preview("bad", project)
    assert proc.returncode == 2
    assert data is None
    assert "Traceback" not in proc.stderr
    assert "Pulumi.bad.yaml" in proc.stderr and "numParallel" in proc.stderr


def test_each_stack_exports_what_it_runs(previews):
    """The `deployed` output (the deployment record `fleet promote` reads): the pinned images, the model
    digests per node group, and the one AMI every GPU node of the stack boots."""
    for stack in ("staging", "prod"):
        _, data = previews[stack]
        deployed = data["outputs"]["deployed"]
        config = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]["ollama-fleet:fleet"]
        for key, reference in config.get("images", {}).items():
            assert deployed["images"][key] == reference
        assert all("@sha256:" in ref for ref in deployed["images"].values())
        amis = {r["inputs"]["ami"] for r in of_type(data, INSTANCE) if "host-" in r["name"] and "gateway" not in r["name"]}
        assert amis == {deployed["amiId"]}, amis  # resolved once for the whole stack
        assert deployed["amiId"].startswith("ami-")
        assert set(deployed["models"]) == {g["name"] for g in config["nodeGroups"]}
    _, dev = previews["dev"]
    assert dev["outputs"]["deployed"]["amiId"] is None  # no AWS hosts


# `fleet preview` with the Pulumi SDK as shipped: fleet.preview.sdk_overrides left out, the garbage collector left on.
AS_SHIPPED = (
    "import contextlib, sys\n"
    "from fleet.preview import offline as preview, sdk_overrides\n"
    "sdk_overrides.apply = lambda *args, **kwargs: []\n"
    "preview.cyclic_gc_paused = contextlib.nullcontext\n"
    "from fleet.cli import main\n"
    "main()\n"
)


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_two_previews_of_the_same_stack_are_byte_identical(stack, tmp_path):
    """A pull request's preview diff shows only what changed: resource order, dependsOn order, mock ids and
    addresses, the tree and the policy report are the same in every run (two processes, run side by side). A third
    run with the SDK as shipped (no overrides, the garbage collector on) shows the same: what makes the preview
    fast changes nothing it shows."""
    runs = []
    for index, entry in enumerate((["-m", "fleet.cli"], ["-m", "fleet.cli"], ["-c", AS_SHIPPED])):
        out = tmp_path / f"{stack}-{index}.json"
        argv = [sys.executable, *entry, "preview", "--stack", stack, "--json", str(out)]
        runs.append((out, subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    results = []
    for out, proc in runs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        results.append((stdout.replace(str(out).encode(), b"<json>"), out.read_bytes()))
    (first_text, first_json), (second_text, second_json), (shipped_text, shipped_json) = results
    assert first_json == second_json == shipped_json
    assert first_text == second_text == shipped_text
    data = json.loads(first_json)
    assert [r["urn"] for r in data["resources"]] == sorted(r["urn"] for r in data["resources"])
    assert all(r["dependsOn"] == sorted(r["dependsOn"]) for r in data["resources"])
