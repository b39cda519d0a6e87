"""One Ollama node: the Ollama server, the metering pass-through in front of it, the host exporters, and the
steps that pull, name and warm its models.

The gateway never talks to Ollama directly: its upstream is the metering exporter (`ports.METER`), which
forwards to Ollama on the node's Docker network. Ollama's own port is published nowhere.

Everything a node runs is planned in the core (`fleet.plans.node`): this component wires that plan onto its host.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import pulumi
import pulumi_docker as docker
from pulumi_command import local, remote

from components import containers
from components.containers import Placement, healthcheck, label_args, metrics_healthcheck
from components.host import Host
from components.images import exporter_image_on, pinned_image
from components.node_exporter import node_exporter
from fleet import ports
from fleet.config import PROJECT
from fleet.node_runtime import MODELS_DIR, model_digests
from fleet.plans.node import DCGM_EXPORTER, METER, OLLAMA, NodePlan

TOKEN = f"{PROJECT}:index:OllamaNode"


@dataclass
class OllamaNodeArgs:
    """A node as planned in the core (`fleet.plans.node.node_plan`) and the host it runs on."""

    plan: NodePlan
    host: Host


# ---- the component ---------------------------------------------------------------------------------------


class OllamaNode(pulumi.ComponentResource):
    upstream_address: pulumi.Output[str]
    metrics_address: pulumi.Output[str]
    container: docker.Container

    def __init__(self, name: str, args: OllamaNodeArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TOKEN, name, None, opts)
        plan, host = args.plan, args.host
        if name != plan.component:
            raise ValueError(f"the node planned as {plan.component!r} is wired as {name!r}")
        gpu = host.gpus > 0
        place = Placement(name, plan.placement, host, self)

        ollama_image = pinned_image(f"{name}-ollama-image", plan.images.ollama, place, self)
        ollama_name = plan.container(OLLAMA)
        models_mount = (
            docker.ContainerVolumeArgs(host_path=host.models_path, container_path=MODELS_DIR)
            if host.models_path.startswith("/")
            else docker.ContainerVolumeArgs(volume_name=host.models_path, container_path=MODELS_DIR)
        )
        self.container = docker.Container(
            f"{name}-ollama",
            name=ollama_name,
            image=ollama_image.image_id,
            envs=[f"{key}={value}" for key, value in sorted(plan.runtime.container_environment().items())],
            volumes=[models_mount],
            # All GPUs of the host; none on a CPU host (the dev stack).
            device_requests=[_gpu_request()] if gpu else None,
            networks_advanced=place.networks(ollama_name),
            # No ports: Ollama is reached only by the metering exporter on the node's Docker network.
            **containers.RUNTIME,
            # The image has no curl; `ollama list` asks the local server.
            healthcheck=healthcheck(["CMD", "ollama", "list"], start_period="60s"),
            wait=True,
            wait_timeout=300,
            labels=label_args(plan.labels[OLLAMA]),
            opts=place.resource_options(self),
        )

        meter_name = plan.container(METER)
        meter_image = exporter_image_on(f"{name}-meter-image", plan.images.python, place, self)
        self.meter = docker.Container(
            f"{name}-meter",
            name=meter_name,
            image=meter_image.repo_digest,
            command=plan.runtime.meter.argv(),
            networks_advanced=place.networks(meter_name),
            ports=place.private_ports(ports.METER, ports.METER_METRICS),
            **containers.RUNTIME,
            healthcheck=metrics_healthcheck(ports.METER_METRICS),
            wait=True,
            wait_timeout=120,
            labels=label_args(plan.labels[METER]),
            opts=place.resource_options(self, depends_on=[self.container]),
        )

        self.node_exporter = node_exporter(plan.node_exporter(), place, self, beside=self.meter)
        # Every exporter of a node answers on the node's one address, each on its own port (fleet.plans.scrape):
        # the meter's container name on the shared network, the host's private address on AWS.
        self.metrics_address = place.peer_host(meter_name)
        self.dcgm_exporter = None
        if gpu:
            self.dcgm_exporter = self._dcgm_exporter(name, plan, place)

        self.pull, self.warm = self._model_steps(name, plan, host)
        # The digests of what this node pulled, as Ollama lists them (the pull step reports them).
        self.model_digests = self.pull.stdout.apply(model_digests)
        # nginx resolves its upstreams' names when it starts: the gateway waits for this meter (shared network).
        self.upstream_address = place.peer_address(meter_name, ports.METER, after=self.meter)
        self.register_outputs(
            {
                "upstreamAddress": self.upstream_address,
                "metricsAddress": self.metrics_address,
                "models": plan.models,
            }
        )

    def _dcgm_exporter(self, name: str, plan: NodePlan, place: Placement) -> docker.Container:
        exporter_name = plan.container(DCGM_EXPORTER)
        image = pinned_image(f"{name}-dcgm-exporter-image", plan.images.dcgm_exporter, place, self)
        return docker.Container(
            f"{name}-dcgm-exporter",
            name=exporter_name,
            image=image.image_id,
            device_requests=[_gpu_request()],
            # DCGM's profiling metrics need it (NVIDIA's documented `docker run` line).
            capabilities=docker.ContainerCapabilitiesArgs(adds=["SYS_ADMIN"]),
            networks_advanced=place.networks(exporter_name),
            ports=place.private_ports(ports.DCGM_EXPORTER),
            **containers.RUNTIME,
            # Ubuntu-based image without curl or wget: bash's /dev/tcp checks the port answers.
            healthcheck=healthcheck(
                ["CMD", "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{ports.DCGM_EXPORTER}"], start_period="30s"
            ),
            labels=label_args(plan.labels[DCGM_EXPORTER]),
            opts=place.resource_options(self),
        )

    def _model_steps(
        self, name: str, plan: NodePlan, host: Host
    ) -> tuple[pulumi.CustomResource, pulumi.CustomResource | None]:
        """Pull/create, then warm, as commands run against the node's Docker daemon. They re-run when the model
        list changes; the warm-up also when the Ollama container is replaced (it starts with nothing loaded)."""
        after_container = pulumi.ResourceOptions(parent=self, depends_on=[self.container])
        staging: list[pulumi.Resource] = []
        remote_host = host.connection is not None or host.ssh_command is not None
        # GGUF files live on the deployer: on a remote host, copy them there first.
        for step in plan.staging if remote_host else ():
            if host.connection is not None:
                staging.append(
                    remote.CopyToRemote(
                        step.resource,
                        connection=host.connection,
                        source=pulumi.FileAsset(step.source),
                        remote_path=step.path,
                        triggers=[plan.models],
                        opts=after_container,
                    )
                )
            else:
                staging.append(
                    local.Command(
                        step.resource,
                        create=pulumi.Output.concat(host.ssh_command, " ", step.receive, " < ", shlex.quote(step.source)),
                        triggers=[plan.models],
                        opts=after_container,
                    )
                )

        pull = self._command(
            f"{name}-models",
            plan,
            host,
            plan.pull_script(remote_host),
            [plan.models],
            pulumi.ResourceOptions(parent=self, depends_on=[self.container, *staging]),
        )
        warm = None
        if plan.warm is not None:
            warm = self._command(
                f"{name}-warm",
                plan,
                host,
                plan.warm,
                [plan.models, self.container.id],
                pulumi.ResourceOptions(parent=self, depends_on=[self.container, pull]),
            )
        return pull, warm

    @staticmethod
    def _command(
        name: str, plan: NodePlan, host: Host, script: str, triggers: list, opts: pulumi.ResourceOptions
    ) -> pulumi.CustomResource:
        if host.connection is not None:
            # On the host, through pulumi-command's SSH client; the login user is in the docker group.
            return remote.Command(name, connection=host.connection, create=script, triggers=triggers, opts=opts)
        if host.ssh_command is not None:
            # On the host, through the deployer's ssh (SSM Session Manager); the script comes on stdin.
            return local.Command(
                name, create=pulumi.Output.concat(host.ssh_command, " sh -s"), stdin=script, triggers=triggers, opts=opts
            )
        # The local Docker host: the deployer's docker CLI talks to the same daemon as the provider.
        return local.Command(
            name,
            create=script,
            environment={"DOCKER_HOST": plan.docker_host},
            triggers=triggers,
            opts=opts,
        )


def _gpu_request() -> docker.ContainerDeviceRequestArgs:
    # pulumi-docker v5 takes capabilities as a flat list (the provider wraps it into Docker's [["gpu"]]).
    return docker.ContainerDeviceRequestArgs(driver="nvidia", count=-1, capabilities=["gpu"])
