"""Builders of the resources a stack registers, following CONTRACTS.md (labels, envs, images, uploads), from the
real stack files. Tests take a stack's list, change one thing, and run the real policies on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleet import capacity
from fleet.config import FleetSettings, NodeGroup
from fleet.resources import RegisteredResource
from fleet.stack_file import load_stack

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "ollama-fleet"

CONTAINER = "docker:index/container:Container"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
INSTANCE = "aws:ec2/instance:Instance"
EBS_VOLUME = "aws:ebs/volume:Volume"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SG_INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SG_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"

# A gateway config shaped like the rendered one: admin routes answer 403 unless the admin key from an admin CIDR.
CLOSED_NGINX = """
events {}
http {
    upstream fleet_chat { least_conn; server 10.0.1.10:11435 max_conns=12; }
    map "$fleet_client:$fleet_admin_network" $fleet_admin_allowed { default 0; "_admin:1" 1; }
    server {
        listen 443 ssl;
        location = /health { return 200 'ok'; }
        location = /api/chat { proxy_pass http://fleet_chat/api/chat; }
        location = /api/pull {
            if ($fleet_admin_allowed = 0) { return 403; }
            proxy_pass http://fleet_chat/api/pull;
        }
        location ~ ^/api/(push|create|copy|delete)$ {
            if ($fleet_admin_allowed = 0) { return 403; }
            proxy_pass http://fleet_chat;
        }
        location ^~ /api/blobs/ { deny all; }
        location / { return 404; }
    }
    server {
        listen 8081;
        location = /stub_status { stub_status; }
    }
}
"""


def urn(stack: str, type_: str, name: str) -> str:
    return f"urn:pulumi:{stack}::{PROJECT}::{type_}::{name}"


def resource(stack: str, type_: str, name: str, inputs: dict[str, Any], outputs: dict[str, Any] | None = None) -> RegisteredResource:
    return RegisteredResource(type=type_, name=name, urn=urn(stack, type_, name), custom=True, inputs=inputs, outputs=outputs or {})


def labels(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"label": f"ollama-fleet.{key}", "value": value} for key, value in values.items()]


def ollama_env(group: NodeGroup) -> dict[str, str]:
    knobs = group.ollama
    env = {
        "OLLAMA_HOST": "0.0.0.0:11434",
        "OLLAMA_MODELS": "/models",
        "OLLAMA_NUM_PARALLEL": str(knobs.num_parallel),
        "OLLAMA_MAX_QUEUE": str(knobs.max_queue),
        "OLLAMA_MAX_LOADED_MODELS": str(group.max_loaded_models),
        "OLLAMA_KEEP_ALIVE": knobs.keep_alive,
        "OLLAMA_FLASH_ATTENTION": "1" if knobs.flash_attention else "0",
        "OLLAMA_KV_CACHE_TYPE": knobs.kv_cache_type,
        "OLLAMA_GPU_OVERHEAD": str(knobs.gpu_overhead_bytes),
        "OLLAMA_SCHED_SPREAD": "1" if knobs.sched_spread else "0",
    }
    context = capacity.context_length_env(group)
    if context is not None:
        env["OLLAMA_CONTEXT_LENGTH"] = str(context)
    return env


def models_label(group: NodeGroup) -> str:
    return json.dumps(
        [
            {"name": m.name, "tag": m.tag, "quantization": m.quantization, "numCtx": m.num_ctx, "keepLoaded": m.keep_loaded, "gguf": m.gguf}
            for m in group.models
        ],
        sort_keys=True,
    )


def ollama_container(stack: str, settings: FleetSettings, group: NodeGroup, index: int = 0) -> RegisteredResource:
    env = ollama_env(group)
    return resource(
        stack,
        CONTAINER,
        f"ollama-{group.name}-{index}-ollama",
        {
            "name": f"ollama-{group.name}-{index}-ollama",
            "image": "sha256:" + "ab" * 32,  # the RemoteImage's image id, as the node component passes it
            "envs": [f"{k}={v}" for k, v in sorted(env.items())],
            "labels": labels(
                {
                    "role": "ollama",
                    "environment": settings.environment,
                    "node": f"{group.name}-{index}",
                    "node-group": group.name,
                    "instance-type": group.instance_type,
                    "models": models_label(group),
                    "vram-headroom": str(settings.policy.vram_headroom),
                }
            ),
        },
    )


def gateway_container(stack: str, settings: FleetSettings, index: int = 0, nginx_conf: str | None = CLOSED_NGINX) -> RegisteredResource:
    queue = settings.gateway.queue_per_node
    uploads = [{"file": "/etc/nginx/fleet/api-keys.conf", "content": "map $fleet_api_key $fleet_client { default \"\"; }"}]
    if nginx_conf is not None:
        uploads.insert(0, {"file": "/etc/nginx/nginx.conf", "content": nginx_conf})
    return resource(
        stack,
        CONTAINER,
        f"ollama-gateway-{index}-nginx",
        {
            "image": "sha256:" + "cd" * 32,
            "uploads": uploads,
            "labels": labels(
                {
                    "role": "gateway",
                    "environment": settings.environment,
                    "tls-mode": settings.gateway.tls.mode,
                    "upstream-max-conns": json.dumps({g.name: capacity.max_conns_per_node(g, queue) for g in settings.node_groups}),
                    "queue-per-node": str(queue),
                }
            ),
        },
    )


def remote_image(stack: str, name: str, reference: str) -> RegisteredResource:
    return resource(stack, REMOTE_IMAGE, name, {"name": reference, "keepLocally": True})


def instance(stack: str, name: str, instance_type: str, *, http_tokens: str | None = "required", root_encrypted: bool | None = True) -> RegisteredResource:
    inputs: dict[str, Any] = {"instanceType": instance_type, "ami": "ami-0123456789abcdef0"}
    if http_tokens is not None:
        inputs["metadataOptions"] = {"httpEndpoint": "enabled", "httpTokens": http_tokens, "httpPutResponseHopLimit": 2}
    if root_encrypted is not None:
        inputs["rootBlockDevice"] = {"volumeSize": 100, "volumeType": "gp3", "encrypted": root_encrypted}
    return resource(stack, INSTANCE, name, inputs)


def ebs_volume(stack: str, name: str, size: int, encrypted: bool = True) -> RegisteredResource:
    return resource(stack, EBS_VOLUME, name, {"size": size, "type": "gp3", "encrypted": encrypted, "availabilityZone": "us-east-1a"})


def ingress_rule(stack: str, name: str, port: int, *, cidr: str | None = None, cidr6: str | None = None,
                 source_group: str | None = None, protocol: str = "tcp", to_port: int | None = None) -> RegisteredResource:
    inputs: dict[str, Any] = {"securityGroupId": "sg-0123456789abcdef0", "ipProtocol": protocol, "fromPort": port, "toPort": to_port or port}
    if cidr:
        inputs["cidrIpv4"] = cidr
    if cidr6:
        inputs["cidrIpv6"] = cidr6
    if source_group:
        inputs["referencedSecurityGroupId"] = source_group
    return resource(stack, SG_INGRESS, name, inputs)


def fleet_resources(stack: str) -> list[RegisteredResource]:
    """What the program registers for `stack`, reduced to what the policies read."""
    settings = load_stack(stack, ROOT).settings
    images = settings.images
    out: list[RegisteredResource] = []
    for group in settings.node_groups:
        for index in range(group.count):
            out.append(ollama_container(stack, settings, group, index))
            out.append(remote_image(stack, f"ollama-{group.name}-{index}-ollama-image", images.ollama))
            if settings.target == "aws":
                out.append(instance(stack, f"ollama-{group.name}-host-{index}-instance", group.instance_type))
                out.append(ebs_volume(stack, f"ollama-{group.name}-host-{index}-models", group.model_volume_gb))
    gateways = 2 if settings.gateway.high_availability else 1
    for index in range(gateways):
        out.append(gateway_container(stack, settings, index))
        out.append(remote_image(stack, f"ollama-gateway-{index}-nginx-image", images.nginx))
        if settings.target == "aws":
            out.append(instance(stack, f"ollama-gateway-host-{index}-instance", settings.gateway.instance_type))
    out.append(remote_image(stack, "ollama-monitoring-prometheus-image", images.prometheus))
    if settings.target == "aws":
        gateway_sg = "sg-0aaaaaaaaaaaaaaaa"
        for port in (settings.gateway.https_port, settings.gateway.http_port):
            for cidr in settings.gateway.client_cidrs:
                out.append(ingress_rule(stack, f"gateway-ingress-{port}-{cidr}", port, cidr=cidr))
        for port in (3000, 9090):
            for cidr in settings.gateway.admin_cidrs:
                out.append(ingress_rule(stack, f"gateway-ingress-{port}-{cidr}", port, cidr=cidr))
        for port in (11435, 9778, 9100, 9400):
            out.append(ingress_rule(stack, f"node-ingress-{port}", port, source_group=gateway_sg))
    return out


def find(resources: list[RegisteredResource], type_: str, role: str | None = None) -> list[RegisteredResource]:
    found = [r for r in resources if r.type == type_]
    if role is not None:
        found = [r for r in found if r.label_map.get("ollama-fleet.role") == role]
    return found


def _both(res: RegisteredResource, key: str, change) -> None:
    """Apply `change` to an input and to the recorded output of the same name (the state a stack policy reads)."""
    res.inputs[key] = change(res.inputs[key])
    if key in (res.outputs or {}):
        res.outputs[key] = change(res.outputs[key])


def set_label(res: RegisteredResource, key: str, value: str) -> None:
    name = f"ollama-fleet.{key}"
    _both(res, "labels", lambda items: [i for i in items if i["label"] != name] + [{"label": name, "value": value}])


def set_env(res: RegisteredResource, key: str, value: str | None) -> None:
    def change(envs):
        kept = [e for e in envs if not e.startswith(f"{key}=")]
        return kept + ([f"{key}={value}"] if value is not None else [])

    _both(res, "envs", change)


def set_models(res: RegisteredResource, models: list[dict[str, Any]]) -> None:
    set_label(res, "models", json.dumps(models))


