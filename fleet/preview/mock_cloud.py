"""A stand-in cloud for running the program without credentials: Pulumi mocks that record every registration.

Used by the offline preview and by the unit tests. Outputs are deterministic, plausible values for the
attributes the program reads (ids, addresses, generated secrets); inputs pass through unchanged so the
policy pack sees exactly what the program asked for.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks

from fleet.resources import RegisteredResource


SPACE = 250 * 250 * 250


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def _address(prefix: str, seed: str, taken: set[str] | None = None) -> str:
    """A deterministic address for `seed` in the /8 `prefix`; with `taken`, the next free one (a real VPC never
    repeats one). Which of two colliding hosts gets the next address depends on registration order, which is not
    deterministic, so the space is wide (15.6 M addresses: one stack of 100 hosts in about 1,500 has such a pair)."""
    value = int(_digest(seed)[:8], 16) % SPACE
    while True:
        address = f"{prefix}.{value // 62_500 + 1}.{value // 250 % 250 + 1}.{value % 250 + 2}"
        if taken is None or address not in taken:
            break
        value = (value + 1) % SPACE
    if taken is not None:
        taken.add(address)
    return address


def fake_outputs(
    type_: str, name: str, inputs: dict[str, Any], taken: set[str] | None = None
) -> tuple[str, dict[str, Any]]:
    """The id and output state a real provider would return, as far as the program reads them.

    `taken` collects the addresses handed out so far, so that no two hosts of one run share one."""
    short = _digest(type_, name)[:17]
    outputs: dict[str, Any] = dict(inputs)
    resource_id = f"{name}-{short[:8]}"
    if type_.startswith("aws:"):
        kind = type_.split(":")[-1].lower()
        outputs.setdefault("arn", f"arn:aws:mock:us-east-1:123456789012:{kind}/{name}")
        outputs.setdefault("tagsAll", inputs.get("tags", {}))
    if type_ == "aws:ec2/instance:Instance":
        resource_id = f"i-{short}"
        outputs.setdefault("availabilityZone", inputs.get("availabilityZone"))
        outputs.update(
            privateIp=_address("10", name, taken),
            publicIp=_address("54", name, taken),
            privateDns=f"ip-{short}.ec2.internal",
        )
    elif type_ == "aws:ec2/vpc:Vpc":
        resource_id = f"vpc-{short}"
    elif type_ == "aws:ec2/subnet:Subnet":
        resource_id = f"subnet-{short}"
    elif type_ == "aws:ec2/securityGroup:SecurityGroup":
        resource_id = f"sg-{short}"
    elif type_ == "aws:ebs/volume:Volume":
        resource_id = f"vol-{short}"
    elif type_ == "aws:ec2/eip:Eip":
        outputs.update(publicIp=_address("54", name, taken), allocationId=f"eipalloc-{short}")
    elif type_ in ("aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile"):
        # Auto-named by the provider: the name is an output others refer to.
        outputs.setdefault("name", f"{name}-{short[:7]}")
    elif type_ == "acme:index/certificate:Certificate":
        outputs.update(
            certificatePem=f"-----BEGIN CERTIFICATE-----\nleaf-{short}\n-----END CERTIFICATE-----\n",
            issuerPem=f"-----BEGIN CERTIFICATE-----\nissuer-{short}\n-----END CERTIFICATE-----\n",
            privateKeyPem=f"-----BEGIN EC PRIVATE KEY-----\nacme-{short}\n-----END EC PRIVATE KEY-----\n",
        )
    elif type_ == "acme:index/registration:Registration":
        outputs.setdefault("registrationUrl", f"https://acme.invalid/acct/{short}")
    elif type_ == "aws:route53/healthCheck:HealthCheck":
        resource_id = f"hc-{short}"
    elif type_ == "random:index/randomId:RandomId":
        outputs["hex"] = _digest("random-id", name)[: 2 * int(inputs.get("byteLength", 16))]
    elif type_ == "random:index/randomPassword:RandomPassword":
        outputs["result"] = "mock" + _digest("secret", name)[: max(int(inputs.get("length", 32)) - 4, 8)]
    elif type_ == "tls:index/privateKey:PrivateKey":
        outputs.update(
            privateKeyPem=f"-----BEGIN PRIVATE KEY-----\nmock-{short}\n-----END PRIVATE KEY-----\n",
            privateKeyOpenssh=f"-----BEGIN OPENSSH PRIVATE KEY-----\nmock-{short}\n-----END OPENSSH PRIVATE KEY-----\n",
            publicKeyOpenssh=f"ssh-ed25519 AAAAmock{short} {name}\n",
            publicKeyPem=f"-----BEGIN PUBLIC KEY-----\nmock-{short}\n-----END PUBLIC KEY-----\n",
        )
    elif type_ == "tls:index/selfSignedCert:SelfSignedCert":
        outputs["certPem"] = f"-----BEGIN CERTIFICATE-----\nmock-{short}\n-----END CERTIFICATE-----\n"
    elif type_ == "tls:index/locallySignedCert:LocallySignedCert":
        outputs["certPem"] = f"-----BEGIN CERTIFICATE-----\nmock-{short}\n-----END CERTIFICATE-----\n"
    elif type_.startswith("docker:index/"):
        outputs.setdefault("repoDigest", f"sha256:{_digest(name)}")
        outputs.setdefault("imageId", f"sha256:{_digest('image', name)}")
    elif type_.startswith("command:"):
        outputs.setdefault("stdout", "")
        outputs.setdefault("stderr", "")
    return resource_id, outputs


def fake_invoke(token: str, args: dict[str, Any]) -> dict[str, Any]:
    """Results of the data-source invokes the program uses."""
    if token == "aws:ec2/getAmi:getAmi":
        image = "ami-0" + _digest(token, str(args.get("filters")))[:16]
        return {"id": image, "imageId": image, "name": "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) mock", "architecture": "x86_64"}
    if token == "aws:route53/getZone:getZone":
        zone = args.get("name") or "example.com"
        return {"id": "Z0MOCK" + _digest(zone)[:12].upper(), "zoneId": "Z0MOCK" + _digest(zone)[:12].upper(), "name": zone}
    if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
        return {"names": ["us-east-1a", "us-east-1b", "us-east-1c"], "zoneIds": ["use1-az1", "use1-az2", "use1-az4"]}
    if token == "aws:index/getCallerIdentity:getCallerIdentity":
        return {"accountId": "123456789012", "arn": "arn:aws:iam::123456789012:user/mock", "userId": "MOCK"}
    if token == "aws:index/getRegion:getRegion":
        return {"name": "us-east-1", "region": "us-east-1", "id": "us-east-1"}
    if token == "aws:index/getPartition:getPartition":
        return {"partition": "aws", "dnsSuffix": "amazonaws.com"}
    if token == "aws:ec2/getManagedPrefixList:getManagedPrefixList":
        return {"id": "pl-0" + _digest(token, str(args.get("name")))[:16], "name": args.get("name"), "addressFamily": "IPv4"}
    if token == "aws:iam/getPolicyDocument:getPolicyDocument":
        return {"json": '{"Version":"2012-10-17","Statement":[]}'}
    return {}


class FleetMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        super().__init__()
        self.addresses: set[str] = set()

    def new_resource(self, args: pulumi_mocks.MockResourceArgs):
        if not args.custom:
            return ["", {}]
        return list(fake_outputs(args.typ, args.name, args.inputs, self.addresses))

    def call(self, args: pulumi_mocks.MockCallArgs):
        return fake_invoke(args.token, dict(args.args))


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The mock monitor, keeping every registration (components too) with its options and parent."""

    def __init__(self, mocks: pulumi.runtime.Mocks):
        super().__init__(mocks)
        self.registered: list[RegisteredResource] = []

    def RegisterResource(self, request):  # noqa: N802 (gRPC method name)
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        from pulumi.runtime import rpc

        state = self.resources.get(response.urn)
        inputs = rpc.deserialize_properties(request.object, keep_unknowns=True)
        self.registered.append(
            RegisteredResource(
                type=request.type,
                name=request.name,
                urn=response.urn,
                custom=bool(request.custom),
                inputs=inputs,
                outputs=dict(state.state) if state else {},
                parent_urn=request.parent or None,
                protect=bool(request.protect),
                retain_on_delete=bool(request.retainOnDelete),
                depends_on=sorted(request.dependencies),  # a set to the engine; sorted so previews diff cleanly
                provider=request.provider or None,
                property_dependencies={
                    key: sorted(value.urns) for key, value in request.propertyDependencies.items() if value.urns
                },
            )
        )
        return response

    def RegisterResourceOutputs(self, request):  # noqa: N802 (gRPC method name)
        """A component's registered outputs (e.g. a host's setup script) join its record."""
        from pulumi.runtime import rpc

        outputs = rpc.deserialize_properties(request.outputs, keep_unknowns=True)
        for record in self.registered:
            if record.urn == request.urn:
                record.outputs.update(outputs)
        return super().RegisterResourceOutputs(request)
