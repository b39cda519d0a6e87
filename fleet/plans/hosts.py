"""One AWS host of a stack (an Ollama GPU node or a gateway/monitoring host), as components/gpu_host.py wires it:
its size and zone, its volumes, which AMI it boots, its tags, what its first-boot script and readiness check
need, and how the deployer reaches it over SSH (the command line, and where its SSH files live).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fleet import catalog
from fleet.config import PROJECT, FleetSettings
from fleet.render import cloud_init
from fleet.render.ssh_files import SshFiles
from fleet.stack_file import StackConfigError
from fleet.tags import NAME_KEY, fleet_tags

COMPONENT = "gpu-host"
ROLES = ("node", "gateway")
Role = Literal["node", "gateway"]
# Root volume size by role: the GPU AMI is large; the gateway/monitoring host is not.
DEFAULT_ROOT_GB: Mapping[str, int] = {"node": 100, "gateway": 40}
READY_TIMEOUT_S = 1800
# Where the deployer keeps the SSH key and pinned host keys the Docker provider's ssh reads.
SSH_DIR_ENV = "OLLAMA_FLEET_SSH_DIR"


@dataclass(frozen=True)
class AmiLookup:
    """The newest image of `owner` whose name matches `name` (x86_64, available)."""

    owner: str
    name: str


# AWS Deep Learning Base GPU AMI: NVIDIA driver, Docker and the NVIDIA container toolkit, SSM agent.
GPU_AMI = AmiLookup(owner="amazon", name="Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) *")
# Canonical's Ubuntu 24.04 for the gateway/monitoring host (no GPU; Docker comes from cloud-init).
UBUNTU_AMI = AmiLookup(owner="099720109477", name="ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*")


def ssh_folder(stack: str, environ: Mapping[str, str] | None = None) -> Path:
    """Folder (0700) of the deployer's SSH files for a stack: $OLLAMA_FLEET_SSH_DIR/<stack>, or a per-user folder in
    the temporary directory."""
    base = (os.environ if environ is None else environ).get(SSH_DIR_ENV)
    root = Path(base) if base else Path(tempfile.gettempdir()) / f"{PROJECT}-{os.getuid()}"
    return root / stack


def ssh_files_of(folder: Path, host_name: str) -> SshFiles:
    return SshFiles(
        folder=str(folder),
        key_file=str(folder / f"{host_name}.key"),
        known_hosts_file=str(folder / f"{host_name}.known_hosts"),
    )


@dataclass(frozen=True)
class HostPlan:
    """What GpuHost creates for one host."""

    name: str
    role: Role
    instance_type: str
    zone: str
    gpus: int
    root_volume_gb: int
    model_volume_gb: int | None  # None: no model volume (the gateway host)
    protect_models: bool  # prod: the model volume survives `pulumi destroy` and cannot be deleted by a config change
    # Created VPC: public subnets without NAT, so every host needs an address for outbound traffic; the security
    # groups keep inbound closed. Existing VPC: nodes follow the subnet's setting (None).
    associate_public_ip: bool | None
    pinned_ami: str | None  # aws.amiId, for nodes; None: the newest `ami_lookup`
    ami_lookup: AmiLookup
    ssh_user: str
    region: str
    transport: cloud_init.Transport  # "ssm" (no inbound port), or "direct" when the stack opens port 22
    ssh_files: SshFiles
    tags: Mapping[str, str]  # every resource's tags but its Name

    def tags_of(self, resource: str = "") -> dict[str, str]:
        """The tags of the host's `resource` (its instance when empty)."""
        return {**self.tags, NAME_KEY: f"{self.name}-{resource}" if resource else self.name}

    @property
    def has_model_volume(self) -> bool:
        return bool(self.model_volume_gb)

    @property
    def ignore_ami_changes(self) -> bool:
        """A looked-up AMI changes whenever AWS publishes one: new AMIs reach new hosts only (pin aws.amiId to roll
        hosts deliberately)."""
        return self.pinned_ami is None

    def setup_inputs(self) -> dict[str, object]:
        """What the host's first-boot script depends on (`cloud_init.render_setup_script`); the user data adds the
        SSH identities and the model volume around it."""
        return dict(
            host_name=self.name,
            role=self.role,
            ssh_user=self.ssh_user,
            gpus=self.gpus,
            models_path=cloud_init.MODELS_PATH,
            config_path=cloud_init.CONFIG_PATH,
        )

    def model_volume(self, volume_id: str) -> cloud_init.ModelVolume | None:
        return cloud_init.ModelVolume(volume_id) if volume_id else None

    def readiness_steps(self) -> list[cloud_init.ReadinessStep]:
        return cloud_init.readiness_steps(
            gpus=self.gpus, models_path=cloud_init.MODELS_PATH if self.has_model_volume else None
        )

    @staticmethod
    def direct_address(public_ip: str | None, private_ip: str | None) -> str:
        """What ssh connects to without SSM: the host's public address, or the private one where the subnet gives
        none (the deployer is inside). Through SSM it connects to the instance id."""
        return public_ip or private_ip or ""

    def ssh_argv(self, instance_id: str, address: str) -> list[str]:
        return cloud_init.ssh_argv(
            transport=self.transport,
            instance_id=instance_id,
            address=address,
            user=self.ssh_user,
            region=self.region,
            key_file=self.ssh_files.key_file,
            known_hosts_file=self.ssh_files.known_hosts_file,
        )

    def docker_ssh_opts(self, instance_id: str) -> list[str]:
        return cloud_init.docker_ssh_opts(
            transport=self.transport,
            instance_id=instance_id,
            region=self.region,
            key_file=self.ssh_files.key_file,
            known_hosts_file=self.ssh_files.known_hosts_file,
        )


def host_plan(
    settings: FleetSettings,
    stack: str,
    *,
    name: str,
    role: str,
    instance_type: str,
    zone: str,
    model_volume_gb: int | None = None,
    root_volume_gb: int | None = None,
) -> HostPlan:
    """The plan of host `name` of `stack`, in one of `aws.zones`; its GPUs come from the instance catalog."""
    aws = settings.aws
    if aws is None:
        raise StackConfigError(f"Pulumi.{stack}.yaml", ["aws: AWS hosts need an `aws` section (region, zones)"])
    if role not in ROLES:
        raise ValueError(f"host role must be 'node' or 'gateway', not {role!r}")
    if zone not in aws.zones:
        raise ValueError(f"zone {zone} is not one of aws.zones ({', '.join(aws.zones)})")
    instance = catalog.INSTANCES.get(instance_type)
    node = role == "node"
    return HostPlan(
        name=name,
        role=role,  # type: ignore[arg-type]  # checked above
        instance_type=instance_type,
        zone=zone,
        gpus=instance.gpus if instance is not None else 0,
        root_volume_gb=root_volume_gb or DEFAULT_ROOT_GB[role],
        model_volume_gb=model_volume_gb or None,
        protect_models=settings.environment == "prod",
        associate_public_ip=True if (role == "gateway" or not aws.vpc_id) else None,
        pinned_ami=aws.ami_id if node else None,
        ami_lookup=GPU_AMI if node else UBUNTU_AMI,
        ssh_user=aws.ssh_user,
        region=aws.region,
        transport="direct" if aws.ssh_cidrs else "ssm",
        ssh_files=ssh_files_of(ssh_folder(stack), name),
        tags=fleet_tags(settings, stack, COMPONENT),
    )
