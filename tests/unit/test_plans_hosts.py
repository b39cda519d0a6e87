"""The plan of one AWS host (fleet/plans/hosts.py): pure, from a stack's settings, no Pulumi."""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path

import pytest
from aws_mocks import stack_settings

from fleet.plans import hosts
from fleet.plans.hosts import host_plan
from fleet.render import cloud_init, ssh_files
from fleet.stack_file import StackConfigError


def plan(stack="prod", changes=None, **overrides):
    settings = stack_settings(stack, changes)
    arguments = dict(name="h-0", role="node", instance_type="g6e.xlarge", zone=settings.aws.zones[0], model_volume_gb=200)
    arguments.update(overrides)
    return host_plan(settings, stack, **arguments)


def test_a_node_has_its_catalog_gpus_a_model_volume_and_the_gpu_ami(monkeypatch):
    monkeypatch.setenv(hosts.SSH_DIR_ENV, "/srv/fleet ssh")
    node = plan()
    assert (node.role, node.instance_type, node.zone, node.gpus) == ("node", "g6e.xlarge", "us-east-1a", 1)
    assert node.root_volume_gb == 100 and node.model_volume_gb == 200 and node.has_model_volume
    assert node.protect_models, "prod keeps its model volumes"
    assert node.ami_lookup == hosts.GPU_AMI and node.pinned_ami is None and node.ignore_ami_changes
    assert node.associate_public_ip is True, "created VPC: public subnets without NAT"
    assert node.transport == "ssm" and node.ssh_user == "ubuntu" and node.region == "us-east-1"
    assert node.ssh_files == ssh_files.SshFiles(
        folder="/srv/fleet ssh/prod", key_file="/srv/fleet ssh/prod/h-0.key", known_hosts_file="/srv/fleet ssh/prod/h-0.known_hosts"
    )
    assert [s.what for s in node.readiness_steps()] == ["cloud-init", "docker", "model volume", "gpu"]
    assert node.setup_inputs() == {
        "host_name": "h-0", "role": "node", "ssh_user": "ubuntu", "gpus": 1,
        "models_path": cloud_init.MODELS_PATH, "config_path": cloud_init.CONFIG_PATH,
    }  # fmt: skip
    assert node.model_volume("vol-0123456789abcdef0") == cloud_init.ModelVolume("vol-0123456789abcdef0")
    assert node.model_volume("") is None


def test_the_gateway_host_is_ubuntu_without_gpu_steps_and_always_has_an_address():
    gateway = plan(role="gateway", instance_type="t3.medium", model_volume_gb=None)
    assert gateway.gpus == 0 and gateway.root_volume_gb == 40 and not gateway.has_model_volume
    assert gateway.ami_lookup == hosts.UBUNTU_AMI and gateway.ignore_ami_changes
    assert [s.what for s in gateway.readiness_steps()] == ["cloud-init", "docker"]
    existing_vpc = {
        "aws.vpcId": "vpc-0123456789abcdef0",
        "aws.subnetIds": ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"],
    }
    assert plan(changes=existing_vpc, role="gateway", instance_type="t3.medium").associate_public_ip is True
    assert plan(changes=existing_vpc).associate_public_ip is None, "nodes follow an existing subnet's setting"


def test_a_pinned_ami_pins_the_nodes_only_and_keeps_them_on_it():
    pinned = {"aws.amiId": "ami-0123456789abcdef0"}
    node = plan(changes=pinned)
    assert node.pinned_ami == "ami-0123456789abcdef0" and not node.ignore_ami_changes
    gateway = plan(changes=pinned, role="gateway", instance_type="t3.medium")
    assert gateway.pinned_ami is None and gateway.ignore_ami_changes


def test_sizes_protection_and_unknown_instances():
    assert plan(root_volume_gb=300).root_volume_gb == 300
    staging = plan("staging")
    assert not staging.protect_models
    assert plan(instance_type="m7i.large").gpus == 0, "an instance outside the catalog has no GPU"
    assert plan(model_volume_gb=0).model_volume_gb is None


def test_tags_name_each_resource_of_the_host_and_keep_the_fleet_keys():
    node = plan()
    assert node.tags_of()["Name"] == "h-0" and node.tags_of("models")["Name"] == "h-0-models"
    for tags in (node.tags_of(), node.tags_of("root")):
        assert tags["project"] == "ollama-fleet" and tags["stack"] == "prod" and tags["component"] == "gpu-host"
        assert tags["environment"] == "prod" and tags["cost-center"] == "ml-platform"
    assert list(node.tags_of("root"))[-1] == "Name"


def test_ssh_command_lines_read_the_planned_files():
    node = plan()
    argv = node.ssh_argv("i-0abc", "i-0abc")
    assert argv[argv.index("-i") + 1] == node.ssh_files.key_file
    assert f"UserKnownHostsFile={node.ssh_files.known_hosts_file}" in argv and argv[-1] == "ubuntu@i-0abc"
    assert "aws ssm start-session --target i-0abc" in shlex.join(argv)
    opts = node.docker_ssh_opts("i-0abc")
    assert opts[opts.index("-i") + 1] == node.ssh_files.key_file and any("ProxyCommand=" in o for o in opts)

    direct = plan(changes={"aws.sshCidrs": ["198.51.100.7/32"]})
    assert direct.transport == "direct"
    assert direct.direct_address("203.0.113.9", "10.0.1.5") == "203.0.113.9"
    assert direct.direct_address(None, "10.0.1.5") == "10.0.1.5", "no public address: the deployer is inside"
    assert direct.ssh_argv("i-0abc", "203.0.113.9")[-1] == "ubuntu@203.0.113.9"
    assert not any("ProxyCommand" in o for o in direct.docker_ssh_opts("i-0abc"))


def test_the_ssh_folder_defaults_to_a_per_user_folder_in_the_temporary_directory():
    assert hosts.ssh_folder("prod", {}) == Path(tempfile.gettempdir()) / f"ollama-fleet-{os.getuid()}" / "prod"
    assert hosts.ssh_folder("prod", {hosts.SSH_DIR_ENV: "/k"}) == Path("/k/prod")


def test_bad_hosts_are_refused_with_what_is_allowed():
    with pytest.raises(ValueError, match="role must be 'node' or 'gateway', not 'db'"):
        plan(role="db")
    with pytest.raises(ValueError, match=r"zone eu-west-1a is not one of aws.zones \(us-east-1a, us-east-1b\)"):
        plan(zone="eu-west-1a")
    with pytest.raises(StackConfigError, match=r"(?s)Pulumi.dev.yaml.*aws: AWS hosts need an `aws` section"):
        host_plan(stack_settings("dev"), "dev", name="h-0", role="node", instance_type="g6e.xlarge", zone="us-east-1a")


def test_check_folder_refuses_a_folder_others_can_read(tmp_path):
    ssh_files.check_folder(tmp_path / "missing")  # created private when the files are written
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o700)
    ssh_files.check_folder(folder)
    os.chmod(folder, 0o740)
    with pytest.raises(PermissionError, match="must belong to you with mode 0700"):
        ssh_files.check_folder(folder)
