"""One AWS host (an Ollama GPU node or the gateway/monitoring host), ready for containers.

Wires `fleet.plans.hosts.HostPlan`: the AMI (AWS Deep Learning Base GPU AMI for nodes, Ubuntu 24.04 for the gateway,
or `aws.amiId`), an IAM role with SSM, an instance with IMDSv2 and an encrypted root volume, a separate encrypted EBS
volume for models (retained and protected in prod) attached as /dev/sdf, cloud-init from `fleet.render.cloud_init`,
the deployer's SSH files, a readiness command on the deployer that waits over SSH until cloud-init, Docker, the model
mount and the GPUs answer, and a Docker provider that is configured only after that.

SSH goes through SSM Session Manager (`aws ssm start-session` as the ProxyCommand), so no port is open. The
Docker provider and the readiness step run the `ssh` client with that ProxyCommand; pulumi-command's
`remote.Command` has its own SSH client without ProxyCommand support, so `Host.connection` is set only when
the stack opens port 22 (`aws.sshCidrs`) and `Host.ssh_command` serves `local.Command` steps otherwise.
The host key is generated here and pinned (known_hosts), never accepted on first use.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_docker as docker
import pulumi_tls as tls
from pulumi_command import local, remote

from components.host import Host
from fleet.config import PROJECT, FleetSettings
from fleet.plans.hosts import GPU_AMI, READY_TIMEOUT_S, AmiLookup, HostPlan
from fleet.render import cloud_init, ssh_files

TOKEN = f"{PROJECT}:index:GpuHost"
SSM_POLICY = "AmazonSSMManagedInstanceCore"
ASSUME_ROLE_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }
)


@dataclass
class GpuHostArgs:
    plan: HostPlan  # fleet.plans.hosts.host_plan(settings, stack, ...)
    subnet_id: pulumi.Input[str]
    security_group_ids: pulumi.Input[Sequence[pulumi.Input[str]]]
    ssh_public_key: pulumi.Input[str]  # the deployer's, authorized on the host
    ssh_private_key: pulumi.Input[str]  # the deployer's (secret)
    # The stack's node AMI (`node_ami`), so every node of a stack boots the same image; nodes only.
    ami: pulumi.Input[str] | None = None


class GpuHost(pulumi.ComponentResource):
    host: Host
    instance: aws.ec2.Instance
    private_ip: pulumi.Output[str]
    public_ip: pulumi.Output[str]
    model_volume: aws.ebs.Volume | None
    attachment: aws.ec2.VolumeAttachment | None
    eip: aws.ec2.Eip | None
    setup_script: pulumi.Output[str]
    ssh_files: local.Command
    readiness: local.Command
    docker_provider: docker.Provider

    def __init__(self, name: str, args: GpuHostArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TOKEN, name, None, opts)
        plan = self._plan = args.plan
        if plan.name != name:
            raise ValueError(f"GpuHost {name!r} was given the plan of host {plan.name!r}")
        # Before anything is registered: a clear error, not a failed update half way through.
        ssh_files.check_folder(plan.ssh_files.folder)
        profile, ssm = self._instance_profile()
        host_key = tls.PrivateKey(f"{plan.name}-host-key", algorithm="ED25519", opts=self._child())
        self.model_volume = self._model_volume()
        self.instance = self._instance(args, profile, ssm, host_key)
        self.private_ip = self.instance.private_ip
        ready_after = self._attach_and_address()
        argv, ssh_opts = self._ssh(args, host_key)
        self.readiness = self._readiness(argv, ready_after)
        self.docker_provider = docker.Provider(
            f"{plan.name}-docker",
            host=pulumi.Output.concat("ssh://", plan.ssh_user, "@", self._address),
            ssh_opts=ssh_opts,
            # A fresh host refuses connections for minutes: the provider waits for the readiness step.
            opts=self._child(depends_on=[self.ssh_files, self.readiness]),
        )
        self.host = Host(
            name=plan.name,
            docker_provider=self.docker_provider,
            private_address=self.private_ip,
            public_address=self.public_ip if plan.role == "gateway" else None,
            ready=[self.readiness, *ready_after],
            gpus=plan.gpus,
            connection=self._connection(args, host_key),
            zone=plan.zone,
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

    def _child(self, **options) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, **options)

    def _instance_profile(self) -> tuple[aws.iam.InstanceProfile, aws.iam.RolePolicyAttachment]:
        """Instance role: SSM Session Manager only (the deployer's SSH and port forwarding ride on it)."""
        plan = self._plan
        role = aws.iam.Role(
            f"{plan.name}-role", assume_role_policy=ASSUME_ROLE_POLICY, tags=plan.tags_of("role"), opts=self._child()
        )
        partition = aws.get_partition_output(opts=pulumi.InvokeOutputOptions(parent=self)).partition
        ssm = aws.iam.RolePolicyAttachment(
            f"{plan.name}-ssm",
            role=role.name,
            policy_arn=partition.apply(lambda p: f"arn:{p}:iam::aws:policy/{SSM_POLICY}"),
            opts=self._child(),
        )
        profile = aws.iam.InstanceProfile(
            f"{plan.name}-profile", role=role.name, tags=plan.tags_of("profile"), opts=self._child()
        )
        return profile, ssm

    def _model_volume(self) -> aws.ebs.Volume | None:
        """Models outlive the instance: replacing the host re-attaches this volume. In prod it also survives
        `pulumi destroy` and cannot be deleted by a config change without unprotecting it."""
        plan = self._plan
        if not plan.has_model_volume:
            return None
        return aws.ebs.Volume(
            f"{plan.name}-models",
            availability_zone=plan.zone,
            size=plan.model_volume_gb,
            type="gp3",
            encrypted=True,
            tags=plan.tags_of("models"),
            opts=self._child(protect=plan.protect_models, retain_on_delete=plan.protect_models),
        )

    def _user_data(self, args: GpuHostArgs, host_key: tls.PrivateKey) -> pulumi.Output[str]:
        """The cloud-init document (it holds the host's private key), and `setup_script`: the same first-boot
        script on its own, without the keys, an output `fleet render` writes for review."""
        plan = self._plan
        setup = plan.setup_inputs()
        volume_id = self.model_volume.id if self.model_volume else pulumi.Output.from_input("")
        self.setup_script = volume_id.apply(
            lambda v: cloud_init.render_setup_script(**setup, model_volume=plan.model_volume(v))  # type: ignore[arg-type]
        )
        return pulumi.Output.all(
            host_key.private_key_openssh, host_key.public_key_openssh, args.ssh_public_key, volume_id
        ).apply(
            lambda v: cloud_init.render_user_data(
                **setup,  # type: ignore[arg-type]
                authorized_keys=[v[2]],
                host_key_private=v[0],
                host_key_public=v[1],
                model_volume=plan.model_volume(v[3]),
            )
        )

    def _instance(
        self,
        args: GpuHostArgs,
        profile: aws.iam.InstanceProfile,
        ssm: aws.iam.RolePolicyAttachment,
        host_key: tls.PrivateKey,
    ) -> aws.ec2.Instance:
        plan = self._plan
        return aws.ec2.Instance(
            f"{plan.name}-instance",
            ami=self._ami(args),
            instance_type=plan.instance_type,
            availability_zone=plan.zone,
            subnet_id=args.subnet_id,
            vpc_security_group_ids=args.security_group_ids,
            iam_instance_profile=profile.name,
            associate_public_ip_address=plan.associate_public_ip,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",  # IMDSv2 only
                http_put_response_hop_limit=2,  # containers sit one hop further away than the host
                instance_metadata_tags="disabled",
            ),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_size=plan.root_volume_gb,
                volume_type="gp3",
                encrypted=True,
                delete_on_termination=True,
                tags=plan.tags_of("root"),
            ),
            # Holds the host's private key: secret in state and in previews.
            user_data=pulumi.Output.secret(self._user_data(args, host_key)),
            # cloud-init runs once; a changed bootstrap means a new host (the model volume moves over).
            user_data_replace_on_change=True,
            tags=plan.tags_of(),
            opts=self._child(depends_on=[ssm], ignore_changes=["ami"] if plan.ignore_ami_changes else None),
        )

    def _ami(self, args: GpuHostArgs) -> pulumi.Input[str]:
        plan = self._plan
        if plan.role == "node" and args.ami is not None:
            return args.ami
        return plan.pinned_ami or _newest_ami(plan.ami_lookup, self)

    def _attach_and_address(self) -> list[pulumi.Resource]:
        """The model volume's attachment and the gateway's Elastic IP: what the readiness step waits for."""
        plan = self._plan
        ready_after: list[pulumi.Resource] = []
        self.attachment = None
        if self.model_volume is not None:
            self.attachment = aws.ec2.VolumeAttachment(
                f"{plan.name}-models-attachment",
                device_name=cloud_init.MODEL_DEVICE_NAME,
                volume_id=self.model_volume.id,
                instance_id=self.instance.id,
                # The old host is stopped before the volume leaves it: its filesystem is unmounted cleanly.
                stop_instance_before_detaching=True,
                # A volume attaches to one instance at a time: detach from the old host before the new one.
                opts=self._child(delete_before_replace=True),
            )
            ready_after.append(self.attachment)
        self.eip = None
        if plan.role == "gateway":
            # A stable address for DNS and clients across host replacement.
            self.eip = aws.ec2.Eip(
                f"{plan.name}-eip", domain="vpc", instance=self.instance.id, tags=plan.tags_of("eip"), opts=self._child()
            )
            self.public_ip = self.eip.public_ip
            ready_after.append(self.eip)
        else:
            self.public_ip = self.instance.public_ip
        return ready_after

    def _ssh(self, args: GpuHostArgs, host_key: tls.PrivateKey) -> tuple[pulumi.Output[list[str]], pulumi.Output[list[str]]]:
        """The deployer's SSH files, and the ssh command line and Docker provider options that read them.

        The engine writes the files on every preview and deployment (a fresh runner has none), through
        pulumi-command's `local.run`, never the program itself; the `ssh-files` command takes them away with the
        host, after everything that depends on it."""
        plan = self._plan
        files = plan.ssh_files
        self.ssh_files = local.Command(
            f"{plan.name}-ssh-files",
            delete=ssh_files.remove_script(plan.name, files),
            interpreter=ssh_files.INTERPRETER,
            opts=self._child(),
        )
        known_hosts_line = pulumi.Output.all(self.instance.id, host_key.public_key_openssh).apply(
            lambda v: cloud_init.known_hosts_line(v[0], v[1])
        )
        written = local.run_output(
            command=ssh_files.write_script(plan.name, files),
            interpreter=ssh_files.INTERPRETER,
            environment={ssh_files.KEY_VAR: args.ssh_private_key, ssh_files.KNOWN_HOSTS_VAR: known_hosts_line},
            opts=pulumi.InvokeOutputOptions(parent=self),
        )
        # The instance id once the files are there: every ssh command line below waits for them.
        instance_id = pulumi.Output.unsecret(pulumi.Output.all(self.instance.id, written).apply(lambda v: v[0]))
        if plan.transport == "ssm":
            self._address = self.instance.id
        else:
            self._address = pulumi.Output.all(self.public_ip, self.private_ip).apply(
                lambda v: plan.direct_address(v[0], v[1])
            )
        argv = pulumi.Output.all(instance_id, self._address).apply(lambda v: plan.ssh_argv(v[0], v[1]))
        return argv, instance_id.apply(plan.docker_ssh_opts)

    def _readiness(self, argv: pulumi.Output[list[str]], ready_after: list[pulumi.Resource]) -> local.Command:
        """Waits on the deployer, over SSH, until the host answers every readiness step."""
        plan = self._plan
        steps = plan.readiness_steps()
        return local.Command(
            f"{plan.name}-ready",
            create=argv.apply(
                lambda a: cloud_init.render_readiness_script(
                    host_name=plan.name, ssh_argv=a, steps=steps, timeout_s=READY_TIMEOUT_S
                )
            ),
            interpreter=["/bin/bash", "-c"],
            # A replaced instance is a new host: wait for it again.
            triggers=[self.instance.id],
            opts=self._child(depends_on=[self.ssh_files, *ready_after]),
        )

    def _connection(self, args: GpuHostArgs, host_key: tls.PrivateKey) -> remote.ConnectionArgs | None:
        """pulumi-command's own SSH client, for stacks that open port 22 (it cannot ride SSM)."""
        plan = self._plan
        if plan.transport != "direct":
            return None
        return remote.ConnectionArgs(
            host=self._address,
            user=plan.ssh_user,
            private_key=args.ssh_private_key,
            host_key=host_key.public_key_openssh.apply(lambda k: k.strip() if k else k),
            dial_error_limit=30,
            per_dial_timeout=20,
        )


def node_ami(settings: FleetSettings, parent: pulumi.Resource) -> pulumi.Input[str]:
    """The AMI of a stack's GPU nodes: `aws.amiId` when pinned, else one lookup of the newest GPU AMI for the whole
    stack (exported in the deployment record, and pinned into the next stack by `fleet promote`)."""
    assert settings.aws is not None
    return settings.aws.ami_id or _newest_ami(GPU_AMI, parent)


def _newest_ami(lookup: AmiLookup, parent: pulumi.Resource) -> pulumi.Output[str]:
    return aws.ec2.get_ami_output(
        most_recent=True,
        owners=[lookup.owner],
        filters=[
            aws.ec2.GetAmiFilterArgs(name="name", values=[lookup.name]),
            aws.ec2.GetAmiFilterArgs(name="architecture", values=["x86_64"]),
            aws.ec2.GetAmiFilterArgs(name="state", values=["available"]),
        ],
        opts=pulumi.InvokeOutputOptions(parent=parent),
    ).id
