"""The local Docker host of the dev stack: one daemon runs every container, CPU only.

Containers join one user-defined network (`Host.shared_network`) and reach each other by container name,
so the nodes, exporters and stub_status are never published; only the gateway and the Prometheus/Grafana
UIs are published, on `local.bindAddress` (loopback by default). Models live in a named Docker volume that
outlives the stack, so `pulumi destroy` followed by `pulumi up` does not download them again.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from components.host import Host
from fleet.config import PROJECT
from fleet.plans.placement import LocalHostPlan

TOKEN = f"{PROJECT}:index:LocalHost"


@dataclass
class LocalHostArgs:
    """The local host as planned in the core (`fleet.plans.placement.LocalHostPlan.of`)."""

    plan: LocalHostPlan


class LocalHost(pulumi.ComponentResource):
    host: Host

    def __init__(self, name: str, args: LocalHostArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TOKEN, name, None, opts)
        plan = args.plan
        if name != plan.name:
            raise ValueError(f"the local host planned as {plan.name!r} is wired as {name!r}")
        self.provider = docker.Provider(f"{name}-docker", host=plan.docker_host, opts=pulumi.ResourceOptions(parent=self))
        on_host = pulumi.ResourceOptions(parent=self, provider=self.provider)

        self.network = docker.Network(
            plan.network,
            name=plan.network,
            driver="bridge",
            labels=[docker.NetworkLabelArgs(label=k, value=v) for k, v in plan.labels.items()],
            opts=on_host,
        )
        self.models = docker.Volume(
            plan.models_volume,
            name=plan.models_volume,
            labels=[docker.VolumeLabelArgs(label=k, value=v) for k, v in plan.labels.items()],
            # Models are gigabytes: keep them when the stack is destroyed.
            opts=pulumi.ResourceOptions.merge(on_host, pulumi.ResourceOptions(retain_on_delete=True)),
        )

        bind_address = pulumi.Output.from_input(plan.bind_address)
        self.host = Host(
            name="local",
            docker_provider=self.provider,
            # Peers use container names on the shared network; the address is where published ports listen.
            private_address=bind_address,
            public_address=bind_address,
            ready=[self.network, self.models],
            gpus=0,
            connection=None,
            models_path=plan.models_volume,
            shared_network=self.network,
        )
        self.register_outputs({"dockerHost": plan.docker_host, "network": self.network.name})
