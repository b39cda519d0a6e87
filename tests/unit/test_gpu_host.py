"""GpuHost under mocks: IMDSv2, encryption, the retained model volume, SSM, cloud-init, the readiness gate in
front of the Docker provider, SSH through SSM with a pinned host key, tags."""

from __future__ import annotations

import os
import stat
import subprocess

import pulumi
import pytest
import yaml
from aws_mocks import GPU_AMI, UBUNTU_AMI, deploy, is_secret_input, plain, stack_settings

from components.gpu_host import GpuHost, GpuHostArgs
from components.host import Host
from fleet.plans import hosts
from fleet.plans.hosts import host_plan
from fleet.render import ssh_files

GPU_AMI_NAME, UBUNTU_AMI_NAME = hosts.GPU_AMI.name, hosts.UBUNTU_AMI.name

INSTANCE = "aws:ec2/instance:Instance"
VOLUME = "aws:ebs/volume:Volume"
ATTACHMENT = "aws:ec2/volumeAttachment:VolumeAttachment"
COMMAND = "command:local:Command"
RUN = "command:local:run"
PROVIDER = "pulumi:providers:docker"
DEPLOYER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDeployerKeyForTests deployer"
DEPLOYER_PRIVATE = "-----BEGIN OPENSSH PRIVATE KEY-----\ndeployer-private-for-tests\n-----END OPENSSH PRIVATE KEY-----\n"


@pytest.fixture(autouse=True)
def ssh_dir(tmp_path, monkeypatch):
    folder = tmp_path / "ssh"
    monkeypatch.setenv("OLLAMA_FLEET_SSH_DIR", str(folder))
    return folder


def build_host(settings, *, stack="prod", role="node", volume_gb=200, instance_type="g6e.xlarge"):
    box: dict = {}
    plan = host_plan(
        settings, stack, name=f"{role}-0", role=role, instance_type=instance_type, zone=settings.aws.zones[0],
        model_volume_gb=volume_gb,
    )  # fmt: skip

    def build():
        host = GpuHost(
            f"{role}-0",
            GpuHostArgs(
                plan=plan,
                # Plain values: the args take Inputs, not only Outputs.
                subnet_id="subnet-0aaaaaaaaaaaaaaa1",
                security_group_ids=["sg-0aaaaaaaaaaaaaaa1"],
                ssh_public_key=DEPLOYER_KEY,
                ssh_private_key=pulumi.Output.secret(DEPLOYER_PRIVATE),
            ),
        )
        box["host"] = host
        values = {
            "instance_id": host.instance.id,
            "private_ip": host.private_ip,
            "public_ip": host.public_ip,
            "ssh_command": host.host.ssh_command,
            "provider_host": host.docker_provider.urn,
        }
        connection = host.host.connection
        if connection is not None:
            values.update(
                connection_host=connection.host,
                connection_user=connection.user,
                connection_host_key=connection.host_key,
                connection_key=connection.private_key,
            )
        return values

    result = deploy(build, stack=stack)
    return result, box["host"]


def user_data(result) -> dict:
    instance = result.one(INSTANCE)
    text = plain(instance.inputs)["userData"]
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def test_instance_requires_imdsv2_and_encrypts_its_root_volume():
    result, _ = build_host(stack_settings("prod"))
    inputs = plain(result.one(INSTANCE).inputs)
    assert inputs["metadataOptions"]["httpTokens"] == "required"
    assert inputs["metadataOptions"]["httpPutResponseHopLimit"] == 2
    root = inputs["rootBlockDevice"]
    assert root["encrypted"] is True and root["volumeType"] == "gp3" and root["volumeSize"] == 100
    assert inputs["instanceType"] == "g6e.xlarge" and inputs["availabilityZone"] == "us-east-1a"
    assert inputs["vpcSecurityGroupIds"] == ["sg-0aaaaaaaaaaaaaaa1"]


def test_user_data_is_secret_and_pins_the_host_key_and_the_model_volume():
    result, _ = build_host(stack_settings("prod"))
    instance = result.one(INSTANCE)
    assert is_secret_input(instance.inputs["userData"]), "user data carries the host's private key"
    assert plain(instance.inputs)["userDataReplaceOnChange"] is True
    document = user_data(result)
    assert document["ssh_authorized_keys"] == [DEPLOYER_KEY]
    host_key = result.one("tls:index/privateKey:PrivateKey", "host-key")
    assert document["ssh_keys"]["ed25519_public"] == host_key.outputs["publicKeyOpenssh"].strip()
    assert "OPENSSH PRIVATE KEY" in document["ssh_keys"]["ed25519_private"]
    volume_id = plain(result.one(ATTACHMENT).inputs)["volumeId"]
    script = document["write_files"][0]["content"]
    assert "nvme-Amazon_Elastic_Block_Store_" + volume_id.replace("-", "") in script
    assert "nvidia-ctk runtime configure --runtime=docker" in script


@pytest.mark.parametrize("stack,guarded", [("prod", True), ("staging", False)])
def test_model_volume_is_encrypted_and_retained_and_protected_in_prod(stack, guarded):
    result, _ = build_host(stack_settings(stack), stack=stack)
    volume = result.one(VOLUME)
    inputs = plain(volume.inputs)
    assert inputs["encrypted"] is True and inputs["size"] == 200 and inputs["type"] == "gp3"
    assert inputs["availabilityZone"] == "us-east-1a"
    assert volume.protect is guarded and volume.retain_on_delete is guarded
    attachment = plain(result.one(ATTACHMENT).inputs)
    assert attachment["deviceName"] == "/dev/sdf"
    assert attachment["instanceId"] == result.values["instance_id"]
    assert attachment["stopInstanceBeforeDetaching"] is True


def test_instance_profile_grants_ssm_only():
    result, _ = build_host(stack_settings("prod"))
    policies = [plain(r.inputs)["policyArn"] for r in result.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")]
    assert policies == ["arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"]
    assert '"ec2.amazonaws.com"' in plain(result.one("aws:iam/role:Role").inputs)["assumeRolePolicy"]
    profile = result.one("aws:iam/instanceProfile:InstanceProfile")
    assert plain(profile.inputs)["role"] == result.one("aws:iam/role:Role").outputs["name"]
    assert plain(result.one(INSTANCE).inputs)["iamInstanceProfile"] == profile.outputs["name"]


def test_docker_provider_waits_for_the_readiness_step_which_waits_for_the_volume():
    result, component = build_host(stack_settings("prod"))
    command = result.one(COMMAND, "-ready")
    files = result.one(COMMAND, "-ssh-files")
    provider = result.one(PROVIDER)
    attachment = result.one(ATTACHMENT)
    gpu_host = result.one("ollama-fleet:index:GpuHost")
    assert command.urn in provider.depends_on
    assert attachment.urn in command.depends_on
    # Removed only after everything that reaches the host over SSH (the provider's containers, the readiness step).
    assert files.urn in command.depends_on and files.urn in provider.depends_on
    assert provider.parent_urn == gpu_host.urn and command.parent_urn == gpu_host.urn
    assert files.parent_urn == gpu_host.urn
    assert component.host.ready == [component.readiness, component.attachment]
    assert component.host.docker_provider is component.docker_provider
    script = plain(command.inputs)["create"]
    assert plain(command.inputs)["interpreter"] == ["/bin/bash", "-c"]
    assert plain(command.inputs)["triggers"] == [result.values["instance_id"]]
    for step in ("step cloud-init", "step docker", "step 'model volume'", "step gpu"):
        assert step in script
    assert "nvidia-smi -L" in script and "mountpoint -q /var/lib/ollama-fleet/models" in script


def run_script(script: str, environment: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], **(environment or {})}
    return subprocess.run([*ssh_files.INTERPRETER, script], env=env, capture_output=True, text=True, timeout=30)


def test_ssh_goes_through_ssm_with_a_pinned_host_key_by_default(ssh_dir):
    result, component = build_host(stack_settings("prod"))
    instance_id = result.values["instance_id"]
    assert component.host.connection is None, "pulumi-command's SSH client cannot ride SSM"
    provider = plain(result.one(PROVIDER).inputs)
    assert provider["host"] == f"ssh://ubuntu@{instance_id}"
    opts = yaml.safe_load(provider["sshOpts"]) if isinstance(provider["sshOpts"], str) else provider["sshOpts"]
    assert "StrictHostKeyChecking=yes" in opts and "BatchMode=yes" in opts
    assert f"HostKeyAlias={instance_id}" in opts
    proxy = next(o for o in opts if o.startswith("ProxyCommand="))
    assert f"aws ssm start-session --target {instance_id} --document-name AWS-StartSSHSession" in proxy
    assert "--region us-east-1" in proxy

    key_file = ssh_dir / "prod" / "node-0.key"
    known_hosts = ssh_dir / "prod" / "node-0.known_hosts"
    assert not ssh_dir.exists(), "the program itself writes nothing: the files are the ssh-files command's job"
    assert opts[opts.index("-i") + 1] == str(key_file)
    assert f"UserKnownHostsFile={known_hosts}" in opts
    assert result.values["ssh_command"].startswith("ssh -i ")
    assert result.values["ssh_command"].endswith(f"ubuntu@{instance_id}")
    assert not result.secret["ssh_command"]

    # The engine writes the files (pulumi-command's `local.run`, on every preview and deployment): the key travels
    # in the command's environment, never in its script.
    (run,) = result.invoked(RUN)
    host_public = result.one("tls:index/privateKey:PrivateKey", "host-key").outputs["publicKeyOpenssh"].split()
    assert run["environment"][ssh_files.KEY_VAR] == DEPLOYER_PRIVATE
    assert run["environment"][ssh_files.KNOWN_HOSTS_VAR] == f"{instance_id} {host_public[0]} {host_public[1]}\n"
    assert run["interpreter"] == ssh_files.INTERPRETER
    files = plain(result.one(COMMAND, "-ssh-files").inputs)
    assert set(files) >= {"delete", "interpreter"} and "create" not in files and "environment" not in files
    for script in (run["command"], files["delete"]):
        assert "PRIVATE KEY" not in script and str(key_file) in script and str(known_hosts) in script

    # Running it writes both files owner-only in a private folder; the command's delete takes them away again.
    ran = run_script(run["command"], run["environment"])
    assert ran.returncode == 0, ran.stderr
    assert DEPLOYER_PRIVATE not in ran.stdout + ran.stderr
    assert key_file.read_text() == DEPLOYER_PRIVATE
    assert known_hosts.read_text() == f"{instance_id} {host_public[0]} {host_public[1]}\n"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and stat.S_IMODE(known_hosts.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in key_file.parent.iterdir()) == ["node-0.key", "node-0.known_hosts"]
    assert run_script(run["command"], run["environment"]).returncode == 0, "writing again is harmless"
    assert sorted(p.name for p in key_file.parent.iterdir()) == ["node-0.key", "node-0.known_hosts"]
    ran = run_script(files["delete"])
    assert ran.returncode == 0, ran.stderr
    assert not key_file.exists() and not known_hosts.exists() and not key_file.parent.exists()


def test_with_ssh_cidrs_hosts_are_reached_directly_and_remote_commands_get_a_connection():
    settings = stack_settings("prod", {"aws.sshCidrs": ["198.51.100.7/32"]})
    result, _ = build_host(settings)
    public_ip = result.values["public_ip"]
    provider = plain(result.one(PROVIDER).inputs)
    assert provider["host"] == f"ssh://ubuntu@{public_ip}"
    assert "ProxyCommand" not in str(provider["sshOpts"])
    assert result.values["connection_host"] == public_ip and result.values["connection_user"] == "ubuntu"
    host_public = result.one("tls:index/privateKey:PrivateKey", "host-key").outputs["publicKeyOpenssh"]
    assert result.values["connection_host_key"] == host_public.strip()
    assert result.values["connection_key"] == DEPLOYER_PRIVATE and result.secret["connection_key"]
    assert f"ubuntu@{public_ip}" in plain(result.one(COMMAND, "-ready").inputs)["create"]


def test_node_ami_is_the_deep_learning_gpu_ami_unless_pinned():
    result, _ = build_host(stack_settings("prod"))
    (lookup,) = result.invoked("aws:ec2/getAmi:getAmi")
    assert lookup["owners"] == ["amazon"] and lookup["mostRecent"] is True
    filters = {f["name"]: f["values"] for f in lookup["filters"]}
    assert filters["name"] == [GPU_AMI_NAME] and filters["architecture"] == ["x86_64"]
    assert plain(result.one(INSTANCE).inputs)["ami"] == GPU_AMI

    pinned = stack_settings("prod", {"aws.amiId": "ami-0123456789abcdef0"})
    result, _ = build_host(pinned)
    assert not result.invoked("aws:ec2/getAmi:getAmi")
    assert plain(result.one(INSTANCE).inputs)["ami"] == "ami-0123456789abcdef0"


def test_gateway_host_has_a_stable_address_ubuntu_and_no_gpu_steps():
    result, component = build_host(stack_settings("prod"), role="gateway", volume_gb=None, instance_type="t3.medium")
    (lookup,) = result.invoked("aws:ec2/getAmi:getAmi")
    assert lookup["owners"] == ["099720109477"]
    assert {f["name"]: f["values"] for f in lookup["filters"]}["name"] == [UBUNTU_AMI_NAME]
    assert plain(result.one(INSTANCE).inputs)["ami"] == UBUNTU_AMI
    eip = result.one("aws:ec2/eip:Eip")
    assert plain(eip.inputs)["instance"] == result.values["instance_id"]
    assert result.values["public_ip"] == eip.outputs["publicIp"]
    assert not result.of_type(VOLUME) and not result.of_type(ATTACHMENT)
    script = plain(result.one(COMMAND, "-ready").inputs)["create"]
    assert "step gpu" not in script and "model volume" not in script
    assert eip.urn in result.one(COMMAND, "-ready").depends_on
    assert component.host.public_address is component.public_ip
    assert plain(result.one(INSTANCE).inputs)["rootBlockDevice"]["volumeSize"] == 40
    document = user_data(result)
    assert "nvidia" not in document["write_files"][0]["content"]


def test_every_taggable_resource_carries_the_fleet_tags():
    result, _ = build_host(stack_settings("prod"))
    untaggable = {
        "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
        "aws:ec2/volumeAttachment:VolumeAttachment",
    }
    aws_resources = [r for r in result.resources if r.type.startswith("aws:") and r.type not in untaggable]
    assert {r.type for r in aws_resources} >= {INSTANCE, VOLUME, "aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile"}
    for resource in aws_resources:
        tags = plain(resource.inputs)["tags"]
        assert tags["project"] == "ollama-fleet" and tags["stack"] == "prod" and tags["component"] == "gpu-host"
        assert tags["environment"] == "prod" and tags["cost-center"] == "ml-platform"
    root_tags = plain(result.one(INSTANCE).inputs)["rootBlockDevice"]["tags"]
    assert root_tags["stack"] == "prod"


def test_host_seam_matches_the_contract():
    _, component = build_host(stack_settings("prod"))
    host = component.host
    assert isinstance(host, Host)
    assert host.gpus == 1 and host.zone == "us-east-1a"
    assert host.models_path == "/var/lib/ollama-fleet/models" and host.config_path == "/etc/ollama-fleet"
    assert host.public_address is None, "nodes are not addressed by clients"
    # `fleet render` shows the setup scripts with the same paths the hosts get.
    from fleet.render import cloud_init

    assert (cloud_init.MODELS_PATH, cloud_init.CONFIG_PATH) == (Host.models_path, Host.config_path)


def test_a_key_folder_someone_else_can_read_is_refused(ssh_dir):
    folder = ssh_dir / "prod"
    folder.mkdir(parents=True)
    os.chmod(folder, 0o755)
    with pytest.raises(Exception, match="must belong to you with mode 0700"):
        build_host(stack_settings("prod"))


def test_the_ssh_files_command_refuses_a_folder_that_is_not_private(ssh_dir):
    """The same check where the files are written: the folder may have changed since the program ran."""
    result, _ = build_host(stack_settings("prod"))
    (inputs,) = result.invoked(RUN)
    inputs = {"create": inputs["command"], "environment": inputs["environment"]}
    folder = ssh_dir / "prod"
    folder.mkdir(parents=True)
    os.chmod(folder, 0o750)
    ran = run_script(inputs["create"], inputs["environment"])
    assert ran.returncode != 0 and "must belong to you with mode 0700" in ran.stderr
    assert not list(folder.iterdir()), "nothing is written into a folder others can read"
    os.chmod(folder, 0o700)
    if os.getuid() == 0:  # only root can hand the folder to someone else
        os.chown(folder, 65534, -1)
        ran = run_script(inputs["create"], inputs["environment"])
        assert ran.returncode != 0 and "must belong to you with mode 0700" in ran.stderr
        assert not list(folder.iterdir())
    # Without its secret the command fails instead of writing an empty key.
    os.chmod(folder, 0o700)
    if os.getuid() == 0:
        os.chown(folder, 0, -1)
    ran = run_script(inputs["create"], {ssh_files.KNOWN_HOSTS_VAR: "x"})
    assert ran.returncode != 0 and "deployer key is missing" in ran.stderr


# --- the policy pack on these resources -----------------------------------------------------------------


def _aws_site(settings, stack):
    """Network, a GPU node and the gateway host wired as the Fleet wires them (no containers)."""
    from components.network import Network, NetworkArgs
    from fleet.plans.network import network_plan

    def build():
        network = Network("net", NetworkArgs(plan=network_plan(settings, stack)))
        for role, instance_type, volume, group in (
            ("node", "g6e.xlarge", 200, network.node_sg_id),
            ("gateway", "t3.medium", None, network.gateway_sg_id),
        ):
            plan = host_plan(
                settings, stack, name=f"{role}-0", role=role, instance_type=instance_type, zone=settings.aws.zones[0],
                model_volume_gb=volume,
            )
            GpuHost(
                f"{role}-0",
                GpuHostArgs(
                    plan=plan, subnet_id=network.subnet_ids[0], security_group_ids=[group],
                    ssh_public_key=DEPLOYER_KEY, ssh_private_key=pulumi.Output.secret(DEPLOYER_PRIVATE),
                ),
            )  # fmt: skip

    return deploy(build, stack=stack)


def _broken(result, type_, change):
    import copy
    import dataclasses

    resources = []
    for resource in result.resources:
        if resource.type == type_:
            inputs = copy.deepcopy(plain(resource.inputs))
            change(inputs)
            resource = dataclasses.replace(resource, inputs=inputs)
        resources.append(resource)
    return resources


def test_policy_pack_passes_on_these_resources_and_catches_broken_variants():
    from fleet.preview.policy_runner import evaluate

    result = _aws_site(stack_settings("prod"), "prod")
    report = evaluate(result.resources, "prod")
    assert not report.violations, [v.message for v in report.violations]
    assert {"no-public-inference-ports", "imdsv2-required", "encrypted-volumes"} <= set(report.passed())

    def optional_tokens(inputs):
        inputs["metadataOptions"]["httpTokens"] = "optional"

    def unencrypted(inputs):
        inputs["encrypted"] = False

    def world_open(inputs):
        if inputs.get("referencedSecurityGroupId") and inputs["fromPort"] == 11435:
            inputs.pop("referencedSecurityGroupId")
            inputs["cidrIpv4"] = "0.0.0.0/0"

    for type_, change, policy in (
        (INSTANCE, optional_tokens, "imdsv2-required"),
        (VOLUME, unencrypted, "encrypted-volumes"),
        ("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", world_open, "no-public-inference-ports"),
    ):
        broken = evaluate(_broken(result, type_, change), "prod")
        # Ports arrive as floats (protobuf numbers), as they do from the Pulumi engine.
        assert broken.by_policy(policy) and broken.mandatory_failed, f"{policy} let a broken {type_} through"
