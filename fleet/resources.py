"""A resource as the program registered it, independent of where it was recorded (mocks, a preview)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RegisteredResource:
    type: str  # e.g. "aws:ec2/instance:Instance", "ollama-fleet:index:GpuHost"
    name: str
    urn: str
    custom: bool  # False for component resources
    inputs: dict[str, Any]  # camelCase, as the provider receives them
    outputs: dict[str, Any] = field(default_factory=dict)
    parent_urn: str | None = None
    protect: bool = False
    retain_on_delete: bool = False
    depends_on: list[str] = field(default_factory=list)
    provider: str | None = None
    # Input property -> URNs of the resources whose outputs it was computed from (the engine's property
    # dependencies: how a policy knows which security group an unknown-until-created id names).
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)

    @property
    def label_map(self) -> dict[str, str]:
        """Docker container labels as a dict (empty for other types)."""
        return {
            item.get("label"): item.get("value")
            for item in self.inputs.get("labels") or []
            if isinstance(item, dict)
        }

    @property
    def env_map(self) -> dict[str, str]:
        """Docker container environment (`KEY=value` entries) as a dict."""
        result: dict[str, str] = {}
        for entry in self.inputs.get("envs") or []:
            if isinstance(entry, str) and "=" in entry:
                key, value = entry.split("=", 1)
                result[key] = value
        return result
