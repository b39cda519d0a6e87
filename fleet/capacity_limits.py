"""The inverse questions of the capacity model for one node group, answered whether or not it fits today:
the largest numParallel, the largest numCtx of each model, the quantizations that fit, and the smallest
instance type that holds the node, with on-demand prices to compare.

Every answer comes from fleet.capacity's own search functions, so `fleet plan`, `fleet fit`, the policy pack
and the gateway's max_conns never disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from fleet import capacity, catalog
from fleet.config import NodeGroup


@dataclass(frozen=True)
class ModelLimits:
    ref: str
    num_ctx: int  # what the node runs with now (configured or Ollama's default)
    max_num_ctx: int | None  # None: no context fits with the rest as configured
    quantization: str
    fitting_quantizations: tuple[str, ...]  # smallest weights first


@dataclass(frozen=True)
class GroupLimits:
    group: str
    instance_type: str
    usd_per_hour: float | None
    num_parallel: int
    max_num_parallel: int | None
    models: tuple[ModelLimits, ...]
    smallest_instance: str | None
    smallest_instance_usd_per_hour: float | None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["models"] = [asdict(m) for m in self.models]
        data["priceSource"] = catalog.ON_DEMAND_PRICE_SOURCE
        return data


def group_limits(
    group: NodeGroup, headroom: float, root: Path | None = None, ollama_version: str | None = None
) -> GroupLimits | None:
    """The limits of a GPU group under the memory rules of `ollama_version` (default: the default image's
    release); None for a CPU group, which the capacity model gives no VRAM verdict."""
    estimate = capacity.estimate_node(group, headroom, root, ollama_version, suggest=False)
    if not estimate.has_verdict:
        return None
    models = tuple(
        ModelLimits(
            ref=m.ref,
            num_ctx=m.num_ctx,
            max_num_ctx=capacity.max_num_ctx(group, m.ref, headroom, root, ollama_version=ollama_version),
            quantization=m.quantization,
            fitting_quantizations=tuple(capacity.fitting_quantizations(group, m.ref, headroom, root, ollama_version)),
        )
        for m in estimate.models
    )
    smallest = capacity.smallest_fitting_instance(group, headroom, root, ollama_version)
    return GroupLimits(
        group=group.name,
        instance_type=group.instance_type,
        usd_per_hour=price(group.instance_type),
        num_parallel=group.ollama.num_parallel,
        max_num_parallel=capacity.max_num_parallel(group, headroom, root, ollama_version=ollama_version),
        models=models,
        smallest_instance=smallest,
        smallest_instance_usd_per_hour=price(smallest) if smallest else None,
    )


def price(instance_type: str) -> float | None:
    found = catalog.find_instance(instance_type)
    return found.on_demand_usd_per_hour if found else None


def usd(value: float | None) -> str:
    return "no list price" if value is None else f"${value:,.3f}/h on demand"


def describe(limits: GroupLimits) -> list[str]:
    """One line per answer, each with what is configured now."""
    lines = [f"limits on {limits.instance_type} ({usd(limits.usd_per_hour)}), the rest as configured:"]
    if limits.max_num_parallel is None:
        lines.append(f"  numParallel: none fits (now {limits.num_parallel})")
    else:
        lines.append(f"  largest numParallel: {limits.max_num_parallel} (now {limits.num_parallel})")
    for model in limits.models:
        ctx = "none fits" if model.max_num_ctx is None else f"{model.max_num_ctx}"
        quants = ", ".join(model.fitting_quantizations) or "none"
        lines.append(
            f"  {model.ref}: largest numCtx {ctx} (now {model.num_ctx}); quantizations that fit: {quants} "
            f"(now {model.quantization})"
        )
    if limits.smallest_instance is None:
        lines.append("  smallest instance type that fits: none in the catalog")
    else:
        lines.append(
            f"  smallest instance type that fits: {limits.smallest_instance} ({usd(limits.smallest_instance_usd_per_hour)})"
        )
    return lines
