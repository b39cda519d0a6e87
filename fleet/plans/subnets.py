"""The subnets of a created VPC: one per zone, carved from the VPC's CIDR (the config checks that they fit)."""

from __future__ import annotations

import ipaddress

# AWS's limits on a VPC's IPv4 block.
VPC_PREFIX_MIN, VPC_PREFIX_MAX = 16, 28


def plan_subnets(vpc_cidr: str, zone_count: int) -> list[str]:
    """One subnet CIDR per zone, carved from the VPC CIDR in 16 equal blocks (index-aligned with the zones)."""
    network = ipaddress.ip_network(vpc_cidr, strict=True)
    if network.version != 4 or not VPC_PREFIX_MIN <= network.prefixlen <= VPC_PREFIX_MAX:
        raise ValueError(f"must be an IPv4 CIDR from /{VPC_PREFIX_MIN} to /{VPC_PREFIX_MAX} (AWS's limits for a VPC)")
    new_prefix = min(network.prefixlen + 4, VPC_PREFIX_MAX)
    blocks = list(network.subnets(new_prefix=new_prefix))
    if zone_count > len(blocks):
        raise ValueError(f"{vpc_cidr} holds only {len(blocks)} subnets of /{new_prefix}; {zone_count} zones asked for")
    return [str(block) for block in blocks[:zone_count]]
