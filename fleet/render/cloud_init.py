"""Host bootstrap for AWS hosts: the cloud-init user data, and how the deployer reaches a host over SSH.

Pure functions (no Pulumi). `render_user_data` writes a `#cloud-config` document that pins the host's SSH host
key, authorizes the deployer's key, and runs a setup script (Docker, the NVIDIA container toolkit on GPU hosts,
the retained model volume). `ssh_argv` is the one definition of the SSH command line — through SSM Session
Manager unless the stack opens port 22 — used by the readiness check, the Docker provider and remote steps.
`render_readiness_script` is the check that gates every container on the host.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import jinja2
import yaml

from fleet.render.jinja import environment

# NVIDIA container toolkit installed where the image has none (the Deep Learning AMI ships it).
NVIDIA_CONTAINER_TOOLKIT_VERSION = "1.17.8-1"
# Device name the model volume is attached as; Nitro instances expose it as NVMe, found by volume id.
MODEL_DEVICE_NAME = "/dev/sdf"
MODEL_FS_LABEL = "ollama-models"
# How long the setup script waits for the model volume to show up (a replaced host waits for the old one
# to be stopped and the volume detached).
ATTACH_WAIT_S = 1800
# Host paths (the defaults of components.host.Host): the mounted model volume and the rendered configs.
MODELS_PATH = "/var/lib/ollama-fleet/models"
CONFIG_PATH = "/etc/ollama-fleet"
# SSH through SSM: no inbound port; the deployer needs the AWS CLI and its session-manager-plugin.
SSM_PROXY_COMMAND = "aws ssm start-session --target {target} --document-name AWS-StartSSHSession --parameters portNumber=%p --region {region}"

Transport = Literal["ssm", "direct"]

_VOLUME_ID = re.compile(r"^vol-[0-9a-f]{8,17}$")
_OPENSSH_PUBLIC = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp256|ssh-rsa) [A-Za-z0-9+/=]+( .*)?$")


@dataclass(frozen=True)
class ModelVolume:
    volume_id: str
    label: str = MODEL_FS_LABEL
    device_name: str = MODEL_DEVICE_NAME
    # Explicit device paths instead of the EBS ones (a disk that is not EBS; the setup script's tests).
    devices: tuple[str, ...] | None = None

    def device_paths(self) -> list[str]:
        """Where the volume appears: NVMe by EBS serial (the volume id without its dash), then the Xen name."""
        if self.devices:
            return list(self.devices)
        serial = self.volume_id.replace("-", "")
        xen = "/dev/xvd" + self.device_name.removeprefix("/dev/sd")
        return [f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{serial}", xen, self.device_name]


@dataclass(frozen=True)
class ReadinessStep:
    what: str
    remote: str  # shell command run on the host as the SSH user


class _Block(str):
    """A multi-line string written as a YAML literal block (`|`), so the user data reads like the script."""


def _block(dumper: yaml.SafeDumper, value: _Block) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style="|")


class _PyDumper(yaml.SafeDumper):
    pass


# libyaml's emitter writes the same bytes as PyYAML's own for these documents, ten times faster (a large preview
# renders one per host); tests/render/test_cloud_init.py compares the two.
class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    pass


for _dumper in (_PyDumper, _Dumper):
    _dumper.add_representer(_Block, _block)


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = environment().overlay()
    env.filters["shquote"] = lambda value: shlex.quote(str(value))
    return env


def _one_line(value: str, what: str) -> str:
    value = value.strip()
    if not value or "\n" in value:
        raise ValueError(f"{what} must be a single non-empty line")
    return value


def render_setup_script(
    *,
    host_name: str,
    role: str,
    ssh_user: str,
    gpus: int,
    model_volume: ModelVolume | None,
    models_path: str,
    config_path: str,
    fstab: str = "/etc/fstab",
) -> str:
    """The bash script cloud-init runs once at first boot (idempotent)."""
    if model_volume is not None and not _VOLUME_ID.fullmatch(model_volume.volume_id):
        raise ValueError(f"not an EBS volume id: {model_volume.volume_id!r}")
    return _env().get_template("cloud-init/setup.sh.j2").render(
        host_name=host_name,
        role=role,
        ssh_user=ssh_user,
        gpus=gpus,
        model_volume=model_volume,
        device_paths=model_volume.device_paths() if model_volume else [],
        attach_wait_s=ATTACH_WAIT_S,
        models_path=models_path,
        config_path=config_path,
        fstab=fstab,
        toolkit_version=NVIDIA_CONTAINER_TOOLKIT_VERSION,
    )


def render_user_data(
    *,
    host_name: str,
    role: str,
    ssh_user: str,
    authorized_keys: list[str],
    host_key_private: str,
    host_key_public: str,
    gpus: int,
    model_volume: ModelVolume | None,
    models_path: str,
    config_path: str,
) -> str:
    """The `#cloud-config` user data of one host. It carries the host's private SSH host key: keep it secret."""
    keys = [_one_line(k, "an authorized SSH key") for k in authorized_keys]
    for key in keys:
        if not _OPENSSH_PUBLIC.fullmatch(key):
            raise ValueError(f"not an OpenSSH public key: {key[:40]!r}")
    public = _one_line(host_key_public, "the host public key")
    if not public.startswith("ssh-ed25519 "):
        raise ValueError("the host key must be an ed25519 key (cloud-init `ssh_keys.ed25519_*`)")
    if "OPENSSH PRIVATE KEY" not in host_key_private:
        raise ValueError("the host private key must be in OpenSSH format")
    script = render_setup_script(
        host_name=host_name,
        role=role,
        ssh_user=ssh_user,
        gpus=gpus,
        model_volume=model_volume,
        models_path=models_path,
        config_path=config_path,
    )
    document = {
        # A host key chosen by the program, so the deployer pins it (known_hosts) instead of trusting on first use.
        "ssh_deletekeys": True,
        # Generate nothing else: the pinned ed25519 key is the host's only identity (it already exists, so
        # listing its type here creates nothing; the schema wants at least one entry).
        "ssh_genkeytypes": ["ed25519"],
        "ssh_keys": {
            "ed25519_private": _Block(host_key_private.strip() + "\n"),
            "ed25519_public": public,
        },
        "ssh_authorized_keys": keys,
        # Key-only SSH; nobody logs in with a password.
        "ssh_pwauth": False,
        "disable_root": True,
        "write_files": [
            {
                "path": "/usr/local/sbin/ollama-fleet-setup",
                "owner": "root:root",
                "permissions": "0755",
                "content": _Block(script),
            }
        ],
        "runcmd": [["/usr/local/sbin/ollama-fleet-setup"]],
    }
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)
    return f"#cloud-config\n# {host_name} ({role}), rendered by ollama-fleet\n{body}"


def known_hosts_line(alias: str, host_key_public: str) -> str:
    """The known_hosts entry that pins a host's key under `alias` (its instance id)."""
    key = _one_line(host_key_public, "the host public key").split()
    return f"{alias} {key[0]} {key[1]}\n"


def ssh_argv(
    *,
    transport: Transport,
    instance_id: str,
    address: str | None,
    user: str,
    region: str,
    key_file: str,
    known_hosts_file: str,
) -> list[str]:
    """The ssh command line (without the remote command) to reach a host.

    `ssm`: to the instance id through `aws ssm start-session` (no inbound port). `direct`: to `address` on
    port 22 (stacks that set aws.sshCidrs). Either way the host key is checked against the pinned entry
    stored under the instance id (HostKeyAlias), never accepted blindly.
    """
    if transport == "ssm":
        target = instance_id
        proxy = ["-o", "ProxyCommand=" + SSM_PROXY_COMMAND.format(target=instance_id, region=region)]
    elif transport == "direct":
        if not address:
            raise ValueError("direct SSH needs the host's address")
        target, proxy = address, []
    else:
        raise ValueError(f"unknown SSH transport {transport!r}; allowed: ssm, direct")
    return ["ssh", *ssh_options(instance_id=instance_id, key_file=key_file, known_hosts_file=known_hosts_file), *proxy, f"{user}@{target}"]


def ssh_options(*, instance_id: str, key_file: str, known_hosts_file: str) -> list[str]:
    """Options shared by every SSH connection to a host (identity, pinned host key, no prompts)."""
    return [
        "-i", key_file,
        "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts_file}",
        "-o", f"HostKeyAlias={instance_id}",
        "-o", "ConnectTimeout=20",
        "-o", "ServerAliveInterval=30",
    ]  # fmt: skip


def docker_ssh_opts(
    *, transport: Transport, instance_id: str, region: str, key_file: str, known_hosts_file: str
) -> list[str]:
    """`ssh_opts` of the Docker provider (`ssh://user@host` names the target; these add the rest)."""
    options = ssh_options(instance_id=instance_id, key_file=key_file, known_hosts_file=known_hosts_file)
    if transport == "ssm":
        options += ["-o", "ProxyCommand=" + SSM_PROXY_COMMAND.format(target=instance_id, region=region)]
    return options


def readiness_steps(*, gpus: int, models_path: str | None) -> list[ReadinessStep]:
    """What must answer on a host before containers go on it, in order."""
    steps = [
        # Exit 2 is "done with recoverable errors" (deprecated keys and the like): the host still works.
        ReadinessStep(
            "cloud-init",
            'cloud-init status --wait >/dev/null 2>&1; s=$?; '
            'if [ "$s" -ne 0 ] && [ "$s" -ne 2 ]; then cloud-init status --long; exit 1; fi',
        ),
        # A new SSH session: the docker group membership that cloud-init added applies from here on.
        ReadinessStep("docker", "docker info >/dev/null && docker version --format 'docker {{.Server.Version}}'"),
    ]
    if models_path:
        steps.append(ReadinessStep("model volume", f"mountpoint -q {shlex.quote(models_path)}"))
    if gpus > 0:
        steps.append(
            ReadinessStep(
                "gpu",
                f'test "$(nvidia-smi -L | grep -c "^GPU ")" -ge {int(gpus)} && nvidia-smi -L '
                "&& docker info 2>/dev/null | grep -qi 'runtimes:.*nvidia'",
            )
        )
    return steps


def render_readiness_script(
    *,
    host_name: str,
    ssh_argv: list[str],
    steps: list[ReadinessStep],
    timeout_s: int = 1800,
    interval_s: int = 10,
) -> str:
    """A bash script, run on the deployer, that waits for every step to answer on the host over SSH."""
    if not steps or steps[0].what != "cloud-init":
        raise ValueError("readiness starts by waiting for cloud-init")
    return _env().get_template("cloud-init/wait-ready.sh.j2").render(
        host_name=host_name, ssh_argv=ssh_argv, steps=steps, timeout_s=int(timeout_s), interval_s=interval_s
    )
