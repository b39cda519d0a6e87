"""`fleet render --stack NAME --out DIR`: the files the program deploys, for every topology, taken from the
program itself (run under Pulumi's mocks as `fleet preview` runs it), and no secret among them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from fleet.render import bundle
from fleet.stack_file import load_stack

ROOT = Path(__file__).resolve().parents[2]

_PREVIEW_FILES = """
import json, sys
from fleet.preview import offline as preview
from fleet.render.bundle import program_files, stand_ins
from fleet.stack_file import load_stack
config = load_stack(sys.argv[1])
print(json.dumps(program_files(preview.run_program(config).resources, stand_ins(config.settings))))
"""


def fleet(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleet.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={"COLUMNS": "200", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"})


def rendered(stack: str, out: Path) -> dict[str, str]:
    done = fleet("render", "--stack", stack, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return {str(p.relative_to(out)): p.read_text() for p in out.rglob("*") if p.is_file()}


def test_render_writes_what_the_program_deploys(stack, tmp_path):
    files = rendered(stack, tmp_path / "out")
    settings = load_stack(stack).settings
    gateways = 2 if settings.gateway.high_availability and settings.target == "aws" else 1
    confs = sorted(p for p in files if p.endswith("-nginx/etc/nginx/nginx.conf"))
    assert len(confs) == gateways
    assert all("max_conns=" in files[p] and "api-keys.conf" in files[p] for p in confs)
    if settings.monitoring.enabled:
        prometheus = next(p for p in files if p.endswith("/etc/prometheus/prometheus.yml"))
        yaml.safe_load(files[prometheus])
        json.loads(next(files[p] for p in files if p.endswith(".json")))
        assert any(p.endswith("/etc/prometheus/rules/fleet.rules.yml") for p in files)
        alerting = [p for p in files if p.endswith("/etc/alertmanager/alertmanager.yml")]
        assert len(alerting) == 1 and yaml.safe_load(files[alerting[0]])["route"]
        scrape = yaml.safe_load(files[prometheus])
        node_job = next(job for job in scrape["scrape_configs"] if job["job_name"] == "node")
        watched = sorted(g["labels"]["node"] for g in node_job["static_configs"] if g["labels"]["group"] == "gateway")
        # AWS gateway hosts have node exporters of their own; on the local Docker host the nodes' report the host.
        assert watched == ([f"gateway-{i}" for i in range(gateways)] if settings.target == "aws" else [])
    hosts = sorted(p for p in files if p.startswith("cloud-init/"))
    if settings.target == "aws":
        assert len(hosts) == gateways + sum(g.count for g in settings.node_groups)
    else:
        assert hosts == []
    for relative, text in files.items():
        assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text, relative
    assert not [p for p in files if p.endswith(("api-keys.conf", ".key", ".crt", ".pem"))]
    assert all(f"`{path}`" in files[bundle.README] for path in files if path != bundle.README)


def test_a_render_of_an_ha_stack_matches_its_previews_files(tmp_path):
    settings = load_stack("prod").settings
    assert settings.gateway.high_availability
    files = rendered("prod", tmp_path / "render")
    done = subprocess.run([sys.executable, "-c", _PREVIEW_FILES, "prod"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert files == json.loads(done.stdout)

    # What the preview shows of the same program: both gateways, and the monitoring scraping both of them.
    preview = tmp_path / "preview.json"
    assert fleet("preview", "--stack", "prod", "--json", str(preview), "--no-tree").returncode in (0, 3)
    resources = json.loads(preview.read_text())["resources"]
    listen = {
        r["name"]: next(a.split("=", 1)[1] for a in r["inputs"]["command"] if a.startswith("--web.listen-address="))
        for r in resources
        if r["type"] == bundle.CONTAINER and r["name"].endswith("-node-exporter") and "gateway" in r["name"]
    }
    assert sorted(listen) == ["ollama-gateway-0-node-exporter", "ollama-gateway-1-node-exporter"]
    scrape = yaml.safe_load(next(text for path, text in files.items() if path.endswith("prometheus.yml")))
    jobs = {job["job_name"]: job["static_configs"] for job in scrape["scrape_configs"]}
    gateway_nodes = {g["labels"]["node"]: g["targets"] for g in jobs["node"] if g["labels"]["group"] == "gateway"}
    assert gateway_nodes == {"gateway-0": [listen["ollama-gateway-0-node-exporter"]],
                             "gateway-1": [listen["ollama-gateway-1-node-exporter"]]}
    for job in ("nginx", "gateway-log"):
        assert sum(len(g["targets"]) for g in jobs[job]) == 2, job
    for index in (0, 1):
        assert f"cloud-init/ollama-gateway-host-{index}-setup.sh" in files
        assert f"ollama-gateway-{index}-nginx/etc/nginx/nginx.conf" in files


def test_render_reports_a_bad_stack(tmp_path):
    done = fleet("render", "--stack", "no-such-stack", "--out", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr and "no-such-stack" in done.stderr
