"""Host bootstrap files checked by real tools: cloud-init's own schema validator, bash and shellcheck; the
readiness script run for real against a stand-in `ssh` that plays a booting host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from render_tools import require_tool

from fleet.render import cloud_init

CLOUD_INIT = shutil.which("cloud-init")
SHELLCHECK = shutil.which("shellcheck")
HOST_PRIVATE = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n"
HOST_PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyOfTheTestHost node-0"
DEPLOYER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDeployerKeyOfTheTests deployer"
VOLUME = "vol-0123456789abcdef0"

VARIANTS = {
    "gpu-node": dict(role="node", gpus=4, model_volume=cloud_init.ModelVolume(VOLUME)),
    "gateway": dict(role="gateway", gpus=0, model_volume=None),
}


def render(variant: str) -> str:
    return cloud_init.render_user_data(
        host_name=f"{variant}-0",
        ssh_user="ubuntu",
        authorized_keys=[DEPLOYER],
        host_key_private=HOST_PRIVATE,
        host_key_public=HOST_PUBLIC,
        models_path="/var/lib/ollama-fleet/models",
        config_path="/etc/ollama-fleet",
        **VARIANTS[variant],
    )


def setup_script(document: dict) -> str:
    (entry,) = [f for f in document["write_files"] if f["path"] == "/usr/local/sbin/ollama-fleet-setup"]
    return entry["content"]


@pytest.mark.tools
@pytest.mark.parametrize("variant", VARIANTS)
def test_user_data_is_valid_for_cloud_init(variant, tmp_path):
    tool = require_tool(CLOUD_INIT, "cloud-init")
    path = tmp_path / "user-data"
    path.write_text(render(variant))
    proc = subprocess.run([tool, "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Valid cloud-config" in proc.stdout


@pytest.mark.tools
def test_the_schema_check_does_refuse_a_broken_document(tmp_path):
    tool = require_tool(CLOUD_INIT, "cloud-init")
    document = yaml.safe_load(render("gpu-node"))
    document["write_files"][0]["permissions"] = 755  # must be a string such as '0755'
    path = tmp_path / "user-data"
    path.write_text("#cloud-config\n" + yaml.safe_dump(document))
    proc = subprocess.run([tool, "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "permissions" in proc.stdout + proc.stderr


def _schema_properties() -> set[str]:
    """Every top-level key cloud-init knows, read from the installed cloud-init's own JSON schema."""
    tool = require_tool(CLOUD_INIT, "cloud-init")
    python = Path(tool).read_text().splitlines()[0].removeprefix("#!").split()[0]
    code = (
        "import json, cloudinit.config.schema as s;"
        "print(json.dumps(sorted({k for d in s.get_schema()['$defs'].values() for k in d.get('properties', {})})))"
    )
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(proc.stdout))


@pytest.mark.tools
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_key_is_one_cloud_init_knows(variant):
    # Unknown top-level keys are ignored by cloud-init without an error: catch a misspelt module here.
    document = yaml.safe_load(render(variant))
    assert set(document) <= _schema_properties()


@pytest.mark.parametrize("variant", VARIANTS)
def test_document_shape(variant):
    text = render(variant)
    assert text.startswith("#cloud-config\n")
    document = yaml.safe_load(text)
    assert document["ssh_authorized_keys"] == [DEPLOYER]
    assert document["ssh_keys"] == {"ed25519_private": HOST_PRIVATE, "ed25519_public": HOST_PUBLIC}
    assert document["ssh_deletekeys"] is True and document["ssh_pwauth"] is False
    assert document["runcmd"] == [["/usr/local/sbin/ollama-fleet-setup"]]
    script = setup_script(document)
    gpu = VARIANTS[variant]["gpus"] > 0
    assert ("nvidia-ctk runtime configure --runtime=docker" in script) is gpu
    assert ("mount_model_volume\n" in script) is (VARIANTS[variant]["model_volume"] is not None)
    assert 'usermod -aG docker "$SSH_USER"' in script


@pytest.mark.parametrize("variant", VARIANTS)
def test_libyaml_writes_the_same_user_data_as_pyyaml(variant, monkeypatch):
    """The user data is rendered with libyaml's emitter (fast); a byte of difference from PyYAML's own emitter would
    replace every host on the next `pulumi up` of a machine without libyaml."""
    assert yaml.__with_libyaml__ and issubclass(cloud_init._Dumper, yaml.CSafeDumper)
    fast = render(variant)
    monkeypatch.setattr(cloud_init, "_Dumper", cloud_init._PyDumper)
    assert render(variant) == fast


def test_model_volume_is_found_by_its_ebs_id_and_mounted_with_nofail():
    script = setup_script(yaml.safe_load(render("gpu-node")))
    assert "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0" in script
    assert "/dev/xvdf" in script
    assert "defaults,nofail" in script
    # mkfs only runs in the branch where blkid found no signature at all (exit 2).
    blank_branch = script[script.index('if blkid -p "$device"') : script.index("local uuid fstype")]
    assert blank_branch.index("else") < blank_branch.index("mkfs.ext4")
    assert '"$status" -ne 2' in blank_branch


@pytest.mark.parametrize("variant", VARIANTS)
def test_setup_script_is_valid_bash(variant, tmp_path):
    path = tmp_path / "setup.sh"
    path.write_text(setup_script(yaml.safe_load(render(variant))))
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.tools
@pytest.mark.parametrize("variant", VARIANTS)
def test_scripts_pass_shellcheck(variant, tmp_path):
    tool = require_tool(SHELLCHECK, "shellcheck")
    setup = tmp_path / "setup.sh"
    setup.write_text(setup_script(yaml.safe_load(render(variant))))
    ready = tmp_path / "ready.sh"
    ready.write_text(readiness("i-0abc", gpus=VARIANTS[variant]["gpus"]))
    proc = subprocess.run([tool, "-s", "bash", str(setup), str(ready)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="not an EBS volume id"):
        cloud_init.render_setup_script(
            host_name="x", role="node", ssh_user="ubuntu", gpus=1, model_volume=cloud_init.ModelVolume("vol-x; rm -rf /"),
            models_path="/m", config_path="/c",
        )  # fmt: skip
    with pytest.raises(ValueError, match="not an OpenSSH public key"):
        cloud_init.render_user_data(
            host_name="x", role="node", ssh_user="ubuntu", authorized_keys=["hello"], host_key_private=HOST_PRIVATE,
            host_key_public=HOST_PUBLIC, gpus=0, model_volume=None, models_path="/m", config_path="/c",
        )  # fmt: skip


# --- SSH command lines -------------------------------------------------------------------------------------


def test_ssh_through_ssm_pins_the_host_key_and_needs_no_open_port():
    argv = cloud_init.ssh_argv(
        transport="ssm", instance_id="i-0abc", address=None, user="ubuntu", region="eu-west-1",
        key_file="/k", known_hosts_file="/kh",
    )  # fmt: skip
    assert argv[0] == "ssh" and argv[-1] == "ubuntu@i-0abc"
    options = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert "StrictHostKeyChecking=yes" in options and "UserKnownHostsFile=/kh" in options
    assert "HostKeyAlias=i-0abc" in options and "BatchMode=yes" in options
    assert (
        "ProxyCommand=aws ssm start-session --target i-0abc --document-name AWS-StartSSHSession "
        "--parameters portNumber=%p --region eu-west-1"
    ) in options
    direct = cloud_init.ssh_argv(
        transport="direct", instance_id="i-0abc", address="203.0.113.9", user="ubuntu", region="eu-west-1",
        key_file="/k", known_hosts_file="/kh",
    )  # fmt: skip
    assert direct[-1] == "ubuntu@203.0.113.9" and not [a for a in direct if a.startswith("ProxyCommand")]
    assert "HostKeyAlias=i-0abc" in direct
    assert cloud_init.known_hosts_line("i-0abc", HOST_PUBLIC) == "i-0abc ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyOfTheTestHost\n"


# --- the readiness script, run for real --------------------------------------------------------------------


def readiness(target: str, *, gpus: int = 1, timeout_s: int = 60, ssh: str = "ssh") -> str:
    argv = [ssh, "-o", "BatchMode=yes", f"ubuntu@{target}"]
    steps = cloud_init.readiness_steps(gpus=gpus, models_path="/var/lib/ollama-fleet/models" if gpus else None)
    return cloud_init.render_readiness_script(host_name="node-0", ssh_argv=argv, steps=steps, timeout_s=timeout_s, interval_s=0)


def fake_ssh(tmp_path: Path, behaviour: str) -> Path:
    """An `ssh` that logs each call and answers per `behaviour` (a bash snippet seeing $remote and $n)."""
    path = tmp_path / "ssh"
    path.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/bash
            remote="${{@: -1}}"
            log={tmp_path}/calls
            n=$(( $(wc -l < "$log" 2>/dev/null || echo 0) + 1 ))
            printf '%s\\n' "$remote" >> "$log"
            {behaviour}
            """
        )
    )
    path.chmod(0o755)
    return path


def run_readiness(tmp_path: Path, behaviour: str, **kwargs) -> tuple[subprocess.CompletedProcess, list[str], float]:
    ssh = fake_ssh(tmp_path, behaviour)
    script = readiness("i-0abc", ssh=str(ssh), **kwargs)
    started = time.monotonic()
    proc = subprocess.run(["/bin/bash", "-c", script], capture_output=True, text=True, timeout=60, env=dict(os.environ))
    calls_file = tmp_path / "calls"
    calls = calls_file.read_text().splitlines() if calls_file.exists() else []
    return proc, calls, time.monotonic() - started


def test_readiness_retries_while_the_host_is_unreachable_then_checks_every_step(tmp_path):
    # The first three connections fail as a booting host does (ssh exit 255); then everything answers.
    proc, calls, _ = run_readiness(tmp_path, 'if [ "$n" -le 3 ]; then echo "Connection refused" >&2; exit 255; fi; exit 0')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["ready: cloud-init", "ready: docker", "ready: model volume", "ready: gpu"]
    assert len(calls) == 3 + 4
    assert calls[0] == calls[3] and calls[3].startswith("cloud-init status --wait")
    assert calls[4].startswith("docker info") and calls[5].startswith("mountpoint -q")
    assert calls[6].startswith('test "$(nvidia-smi -L | grep -c "^GPU ")" -ge 1')


def test_readiness_stops_at_the_first_real_failure_with_the_hosts_message(tmp_path):
    behaviour = 'case "$remote" in docker*) echo "permission denied on docker.sock"; exit 1;; esac; exit 0'
    proc, calls, _ = run_readiness(tmp_path, behaviour)
    assert proc.returncode == 1
    assert "node-0: docker failed (exit 1)" in proc.stderr and "permission denied on docker.sock" in proc.stderr
    assert len(calls) == 2, "no retry after the host itself answered with an error"


def test_readiness_gives_up_at_its_deadline(tmp_path):
    proc, calls, _ = run_readiness(tmp_path, 'echo "TargetNotConnected" >&2; exit 255', timeout_s=0)
    assert proc.returncode == 1
    assert "timed out after 0s waiting for cloud-init" in proc.stderr and "TargetNotConnected" in proc.stderr
    assert len(calls) == 1


def test_the_gpu_step_really_counts_gpus(tmp_path):
    # Run the remote side of the gpu step locally against a stand-in nvidia-smi and docker.
    step = next(s for s in cloud_init.readiness_steps(gpus=4, models_path=None) if s.what == "gpu")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {
        "nvidia-smi": 'for i in $(seq 1 "$GPUS"); do echo "GPU $((i-1)): NVIDIA L40S (UUID: GPU-$i)"; done',
        "docker": 'echo " Runtimes: io.containerd.runc.v2 nvidia runc"',
    }.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    assert subprocess.run(["bash", "-c", step.remote], env=dict(env, GPUS="4"), capture_output=True).returncode == 0
    assert subprocess.run(["bash", "-c", step.remote], env=dict(env, GPUS="3"), capture_output=True).returncode != 0


# --- the setup script, run for real on a disk image ---------------------------------------------------------

STAND_INS = {
    # Host commands that would change this machine: logged, answered as a DLAMI host answers.
    "systemctl": 'echo "systemctl $*" >> "$LOG"',
    "usermod": 'echo "usermod $*" >> "$LOG"',
    "docker": 'echo "Docker version 27.5.1"',
    "apt-get": 'echo "apt-get $*" >> "$LOG"; exit 1',  # must not be needed: Docker and the toolkit are present
    "nvidia-smi": 'echo "GPU 0: NVIDIA L40S (UUID: GPU-1)"',
    "nvidia-ctk": 'echo "nvidia-ctk $*" >> "$LOG"',
    "mountpoint": 'grep -qx "$2" "$MOUNTED" 2>/dev/null',
    "mount": 'echo "mount $*" >> "$LOG"; echo "${@: -1}" >> "$MOUNTED"',
}


def run_setup(tmp_path: Path, disk: Path) -> subprocess.CompletedProcess:
    for tool in ("mkfs.ext4", "blkid"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            pytest.skip(f"{tool} is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in STAND_INS.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    script = cloud_init.render_setup_script(
        host_name="node-0", role="node", ssh_user="ubuntu", gpus=1,
        model_volume=cloud_init.ModelVolume(VOLUME, devices=(str(tmp_path / "absent"), str(disk))),
        models_path=str(tmp_path / "models"), config_path=str(tmp_path / "etc"), fstab=str(tmp_path / "fstab"),
    )  # fmt: skip
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:/usr/sbin:/sbin:{os.environ['PATH']}",
        LOG=str(tmp_path / "log"),
        MOUNTED=str(tmp_path / "mounted"),
    )
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, env=env)


def blkid_value(disk: Path, tag: str) -> str:
    blkid = shutil.which("blkid") or "/usr/sbin/blkid"
    return subprocess.run([blkid, "-p", "-s", tag, "-o", "value", str(disk)], capture_output=True, text=True).stdout.strip()


def test_setup_formats_a_blank_volume_once_and_mounts_it_by_uuid_with_nofail(tmp_path):
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as image:
        image.truncate(16 * 1024 * 1024)
    first = run_setup(tmp_path, disk)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "formatting blank model volume" in first.stdout
    uuid = blkid_value(disk, "UUID")
    assert uuid and blkid_value(disk, "TYPE") == "ext4" and blkid_value(disk, "LABEL") == "ollama-models"
    models = tmp_path / "models"
    assert (tmp_path / "fstab").read_text() == f"UUID={uuid} {models} ext4 defaults,nofail,x-systemd.device-timeout=30s 0 2\n"
    log = (tmp_path / "log").read_text()
    assert f"mount -T {tmp_path / 'fstab'} {models}" in log
    assert "usermod -aG docker ubuntu" in log and "nvidia-ctk runtime configure --runtime=docker" in log
    assert "apt-get" not in log, "nothing is installed where the image has it"
    assert (tmp_path / "etc").is_dir()

    # Run again (a re-run, or a replacement host getting the retained volume): the models stay.
    (tmp_path / "mounted").unlink()
    second = run_setup(tmp_path, disk)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already holds a filesystem; keeping it" in second.stdout and "formatting" not in second.stdout
    assert blkid_value(disk, "UUID") == uuid
    assert (tmp_path / "fstab").read_text().count(uuid) == 1


def test_setup_never_formats_a_volume_that_holds_anything(tmp_path):
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as image:
        image.truncate(16 * 1024 * 1024)
    mkfs = shutil.which("mkfs.xfs") or shutil.which("mkfs.ext2") or "/usr/sbin/mkfs.ext2"
    subprocess.run([mkfs, "-q", "-F", str(disk)] if "ext" in mkfs else [mkfs, "-q", str(disk)], check=True, capture_output=True)
    before = blkid_value(disk, "UUID")
    proc = run_setup(tmp_path, disk)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert blkid_value(disk, "UUID") == before, "an existing filesystem must never be reformatted"
    fstype = blkid_value(disk, "TYPE")
    assert f" {fstype} defaults,nofail" in (tmp_path / "fstab").read_text()
