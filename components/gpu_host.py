"""One AWS host (an Ollama GPU node or the gateway/monitoring host), ready for containers.

Wires: the AMI (AWS Deep Learning Base GPU AMI for nodes, Ubuntu 24.04 for the gateway, or `aws.amiId`), an
IAM role with SSM, an instance with IMDSv2 and an encrypted root volume, a separate encrypted EBS volume for
models (retained and protected in prod) attached as /dev/sdf, cloud-init from `fleet.render.cloud_init`, a
readiness command on the deployer that waits over SSH until cloud-init, Docker, the model mount and the GPUs
answer, and a Docker provider that is configured only after that.

SSH goes through SSM Session Manager (`aws ssm start-session` as the ProxyCommand), so no port is open. The
Docker provider and the readiness step run the `ssh` client with that ProxyCommand; pulumi-command's
`remote.Command` has its own SSH client without ProxyCommand support, so `Host.connection` is set only when
the stack opens port 22 (`aws.sshCidrs`) and `Host.ssh_command` serves `local.Command` steps otherwise.
The host key is generated here and pinned (known_hosts), never accepted on first use.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pulumi
import pulumi_aws as aws
import pulumi_docker as docker
import pulumi_tls as tls
from pulumi_command import local, remote

from components.host import Host
from fleet.config import PROJECT, FleetSettings
from fleet.render import cloud_init, ssh_files
from fleet.stack_file import StackConfigError
from fleet.tags import fleet_tags

TOKEN = f"{PROJECT}:index:GpuHost"
COMPONENT = "gpu-host"
# AWS Deep Learning Base GPU AMI: NVIDIA driver, Docker and the NVIDIA container toolkit, SSM agent.
GPU_AMI_OWNER = "amazon"
GPU_AMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) *"
# Canonical's Ubuntu 24.04 for the gateway/monitoring host (no GPU; Docker comes from cloud-init).
UBUNTU_AMI_OWNER = "099720109477"
UBUNTU_AMI_NAME = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
SSM_POLICY = "AmazonSSMManagedInstanceCore"
DEFAULT_ROOT_GB = {"node": 100, "gateway": 40}
READY_TIMEOUT_S = 1800
# Where the deployer keeps the SSH key and pinned host keys the Docker provider's ssh reads.
SSH_DIR_ENV = "OLLAMA_FLEET_SSH_DIR"

Role = Literal["node", "gateway"]


@dataclass
class GpuHostArgs:
    settings: FleetSettings
    stack: str
    role: Role
    instance_type: str
    zone: str
    subnet_id: pulumi.Output[str]
    security_group_ids: list[pulumi.Output[str]]
    ssh_public_key: pulumi.Output[str]
    ssh_private_key: pulumi.Output[str]  # secret
    model_volume_gb: int | None
    gpus: int
    # Root volume size; None means 100 GB for nodes (the GPU AMI is large) and 40 GB for the gateway.
    root_volume_gb: int | None = None
    # The node AMI, resolved once per stack (`node_ami`), so every node of a stack boots the same image.
    ami: pulumi.Input[str] | None = None


def ssh_dir(stack: str) -> Path:
    """Folder (0700) of the deployer's SSH material for a stack: $OLLAMA_FLEET_SSH_DIR or a private temp dir."""
    base = os.environ.get(SSH_DIR_ENV)
    root = Path(base) if base else Path(tempfile.gettempdir()) / f"{PROJECT}-{os.getuid()}"
    return root / stack


def check_private_folder(folder: Path) -> None:
    """Refuse a key folder that someone else owns or can read."""
    if folder.exists():
        info = folder.stat()
        if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
            raise PermissionError(f"{folder} must belong to you with mode 0700 (it holds an SSH key)")


class GpuHost(pulumi.ComponentResource):
    host: Host
    instance: aws.ec2.Instance
    private_ip: pulumi.Output[str]
    public_ip: pulumi.Output[str]
    model_volume: aws.ebs.Volume | None
    readiness: local.Command
    docker_provider: docker.Provider

    def __init__(self, name: str, args: GpuHostArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TOKEN, name, None, opts)
        settings = args.settings
        aws_settings = settings.aws
        if aws_settings is None:
            raise StackConfigError(f"Pulumi.{args.stack}.yaml", ["aws: AWS hosts need an `aws` section (region, zones)"])
        if args.role not in ("node", "gateway"):
            raise ValueError(f"GpuHost role must be 'node' or 'gateway', not {args.role!r}")
        if args.zone not in aws_settings.zones:
            raise ValueError(f"zone {args.zone} is not one of aws.zones ({', '.join(aws_settings.zones)})")
        # Before anything is registered: a clear error, not a failed update half way through.
        check_private_folder(ssh_dir(args.stack))
        prod = settings.environment == "prod"
        child = pulumi.ResourceOptions(parent=self)

        def tags(resource: str) -> dict[str, str]:
            return fleet_tags(settings, args.stack, COMPONENT, f"{name}-{resource}" if resource else name)

        # Instance role: SSM Session Manager only (the deployer's SSH and port forwarding ride on it).
        role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
                    ],
                }
            ),
            tags=tags("role"),
            opts=child,
        )
        partition = aws.get_partition_output(opts=pulumi.InvokeOutputOptions(parent=self)).partition
        ssm = aws.iam.RolePolicyAttachment(
            f"{name}-ssm",
            role=role.name,
            policy_arn=partition.apply(lambda p: f"arn:{p}:iam::aws:policy/{SSM_POLICY}"),
            opts=child,
        )
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name, tags=tags("profile"), opts=child)

        # The host's SSH identity, chosen here so the deployer can pin it.
        host_key = tls.PrivateKey(f"{name}-host-key", algorithm="ED25519", opts=child)

        self.model_volume = None
        if args.model_volume_gb:
            # Models outlive the instance: replacing the host re-attaches this volume. In prod it also
            # survives `pulumi destroy` and cannot be deleted by a config change without unprotecting it.
            self.model_volume = aws.ebs.Volume(
                f"{name}-models",
                availability_zone=args.zone,
                size=args.model_volume_gb,
                type="gp3",
                encrypted=True,
                tags=tags("models"),
                opts=pulumi.ResourceOptions(parent=self, protect=prod, retain_on_delete=prod),
            )

        volume_id = self.model_volume.id if self.model_volume else pulumi.Output.from_input("")
        # What the host's first-boot script depends on; the user data adds the SSH identities around it.
        bootstrap = dict(
            host_name=name,
            role=args.role,
            ssh_user=aws_settings.ssh_user,
            gpus=args.gpus,
            models_path=Host.models_path,
            config_path=Host.config_path,
        )
        user_data = pulumi.Output.all(
            host_key.private_key_openssh, host_key.public_key_openssh, args.ssh_public_key, volume_id
        ).apply(
            lambda v: cloud_init.render_user_data(
                **bootstrap,
                authorized_keys=[v[2]],
                host_key_private=v[0],
                host_key_public=v[1],
                model_volume=cloud_init.ModelVolume(v[3]) if v[3] else None,
            )
        )
        # The same script on its own, without the keys: an output `fleet render` writes for review.
        self.setup_script = volume_id.apply(
            lambda v: cloud_init.render_setup_script(**bootstrap, model_volume=cloud_init.ModelVolume(v) if v else None)
        )

        ami_pinned = args.role == "node" and aws_settings.ami_id is not None
        root_gb = args.root_volume_gb or DEFAULT_ROOT_GB[args.role]
        self.instance = aws.ec2.Instance(
            f"{name}-instance",
            ami=self._ami(args),
            instance_type=args.instance_type,
            availability_zone=args.zone,
            subnet_id=args.subnet_id,
            vpc_security_group_ids=args.security_group_ids,
            iam_instance_profile=profile.name,
            # Created VPC: public subnets without NAT, so every host needs an address for outbound traffic;
            # the security groups keep inbound closed. Existing VPC: nodes follow the subnet's setting.
            associate_public_ip_address=True if (args.role == "gateway" or not aws_settings.vpc_id) else None,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",  # IMDSv2 only
                http_put_response_hop_limit=2,  # containers sit one hop further away than the host
                instance_metadata_tags="disabled",
            ),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_size=root_gb,
                volume_type="gp3",
                encrypted=True,
                delete_on_termination=True,
                tags=tags("root"),
            ),
            # Holds the host's private key: secret in state and in previews.
            user_data=pulumi.Output.secret(user_data),
            # cloud-init runs once; a changed bootstrap means a new host (the model volume moves over).
            user_data_replace_on_change=True,
            tags=tags(""),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[ssm],
                # A looked-up AMI changes whenever AWS publishes one; new AMIs reach new hosts only.
                # Pin aws.amiId to roll hosts deliberately.
                ignore_changes=None if ami_pinned else ["ami"],
            ),
        )
        self.private_ip = self.instance.private_ip

        ready_after: list[pulumi.Resource] = []
        self.attachment = None
        if self.model_volume is not None:
            self.attachment = aws.ec2.VolumeAttachment(
                f"{name}-models-attachment",
                device_name=cloud_init.MODEL_DEVICE_NAME,
                volume_id=self.model_volume.id,
                instance_id=self.instance.id,
                # The old host is stopped before the volume leaves it: its filesystem is unmounted cleanly.
                stop_instance_before_detaching=True,
                # A volume attaches to one instance at a time: detach from the old host before the new one.
                opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
            )
            ready_after.append(self.attachment)

        self.eip = None
        if args.role == "gateway":
            # A stable address for DNS and clients across host replacement.
            self.eip = aws.ec2.Eip(f"{name}-eip", domain="vpc", instance=self.instance.id, tags=tags("eip"), opts=child)
            self.public_ip = self.eip.public_ip
            ready_after.append(self.eip)
        else:
            self.public_ip = self.instance.public_ip

        # Deployer side: the SSH key and the pinned host key as files for the ssh client. The engine writes them on
        # every preview and deployment (a fresh runner has none), through pulumi-command's `local.run`, never the
        # program itself; the `ssh-files` command takes them away with the host.
        transport: cloud_init.Transport = "direct" if aws_settings.ssh_cidrs else "ssm"
        folder = ssh_dir(args.stack)
        files = ssh_files.SshFiles(
            folder=str(folder), key_file=str(folder / f"{name}.key"), known_hosts_file=str(folder / f"{name}.known_hosts")
        )
        self.ssh_files = local.Command(
            f"{name}-ssh-files",
            delete=ssh_files.remove_script(name, files),
            interpreter=ssh_files.INTERPRETER,
            opts=child,
        )
        written = local.run_output(
            command=ssh_files.write_script(name, files),
            interpreter=ssh_files.INTERPRETER,
            environment={
                ssh_files.KEY_VAR: args.ssh_private_key,
                ssh_files.KNOWN_HOSTS_VAR: pulumi.Output.all(self.instance.id, host_key.public_key_openssh).apply(
                    lambda v: cloud_init.known_hosts_line(v[0], v[1])
                ),
            },
            opts=pulumi.InvokeOutputOptions(parent=self),
        )
        # The paths, once the files are there: every ssh command line below waits for them.
        key_file = pulumi.Output.unsecret(written.apply(lambda _: files.key_file))
        known_hosts = pulumi.Output.unsecret(written.apply(lambda _: files.known_hosts_file))
        if transport == "direct":
            # Its public address, or the private one where the subnet gives none (the deployer is inside).
            address = pulumi.Output.all(self.public_ip, self.private_ip).apply(lambda v: v[0] or v[1])
        else:
            address = self.instance.id
        argv = pulumi.Output.all(self.instance.id, address, key_file, known_hosts).apply(
            lambda v: cloud_init.ssh_argv(
                transport=transport,
                instance_id=v[0],
                address=v[1],
                user=aws_settings.ssh_user,
                region=aws_settings.region,
                key_file=v[2],
                known_hosts_file=v[3],
            )
        )
        steps = cloud_init.readiness_steps(
            gpus=args.gpus, models_path=Host.models_path if self.model_volume is not None else None
        )
        self.readiness = local.Command(
            f"{name}-ready",
            create=argv.apply(
                lambda a: cloud_init.render_readiness_script(
                    host_name=name, ssh_argv=a, steps=steps, timeout_s=READY_TIMEOUT_S
                )
            ),
            interpreter=["/bin/bash", "-c"],
            # A replaced instance is a new host: wait for it again.
            triggers=[self.instance.id],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.ssh_files, *ready_after]),
        )

        ssh_opts = pulumi.Output.all(self.instance.id, key_file, known_hosts).apply(
            lambda v: cloud_init.docker_ssh_opts(
                transport=transport, instance_id=v[0], region=aws_settings.region, key_file=v[1], known_hosts_file=v[2]
            )
        )
        self.docker_provider = docker.Provider(
            f"{name}-docker",
            host=pulumi.Output.concat("ssh://", aws_settings.ssh_user, "@", address),
            ssh_opts=ssh_opts,
            # A fresh host refuses connections for minutes: the provider waits for the readiness step.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.ssh_files, self.readiness]),
        )

        connection = None
        if transport == "direct":
            connection = remote.ConnectionArgs(
                host=address,
                user=aws_settings.ssh_user,
                private_key=args.ssh_private_key,
                host_key=host_key.public_key_openssh.apply(lambda k: k.strip() if k else k),
                dial_error_limit=30,
                per_dial_timeout=20,
            )

        self.host = Host(
            name=name,
            docker_provider=self.docker_provider,
            private_address=self.private_ip,
            public_address=self.public_ip if args.role == "gateway" else None,
            ready=[self.readiness, *ready_after],
            gpus=args.gpus,
            connection=connection,
            zone=args.zone,
            models_path=Host.models_path,
            config_path=Host.config_path,
            ssh_command=argv.apply(shlex.join),
        )
        self.register_outputs(
            {
                "instanceId": self.instance.id,
                "privateIp": self.private_ip,
                "publicIp": self.public_ip,
                "modelVolumeId": self.model_volume.id if self.model_volume else None,
                "setupScript": self.setup_script,
            }
        )

    def _ami(self, args: GpuHostArgs) -> pulumi.Input[str]:
        aws_settings = args.settings.aws
        assert aws_settings is not None
        if args.role == "node" and args.ami is not None:
            return args.ami
        if args.role == "node" and aws_settings.ami_id:
            return aws_settings.ami_id
        owner, pattern = (GPU_AMI_OWNER, GPU_AMI_NAME) if args.role == "node" else (UBUNTU_AMI_OWNER, UBUNTU_AMI_NAME)
        return _newest_ami(owner, pattern, self)


def node_ami(settings: FleetSettings, parent: pulumi.Resource) -> pulumi.Input[str]:
    """The AMI of a stack's GPU nodes: `aws.amiId` when pinned, else one lookup of the newest GPU AMI for the whole
    stack (exported in the deployment record, and pinned into the next stack by `fleet promote`)."""
    assert settings.aws is not None
    return settings.aws.ami_id or _newest_ami(GPU_AMI_OWNER, GPU_AMI_NAME, parent)


def _newest_ami(owner: str, pattern: str, parent: pulumi.Resource) -> pulumi.Output[str]:
    return aws.ec2.get_ami_output(
            most_recent=True,
            owners=[owner],
            filters=[
                aws.ec2.GetAmiFilterArgs(name="name", values=[pattern]),
                aws.ec2.GetAmiFilterArgs(name="architecture", values=["x86_64"]),
                aws.ec2.GetAmiFilterArgs(name="state", values=["available"]),
            ],
            opts=pulumi.InvokeOutputOptions(parent=parent),
        ).id
