"""How much of the internet a list of CIDR ranges admits.

"Open to the world" is not only `0.0.0.0/0`: `0.0.0.0/1` + `128.0.0.0/1`, or 256 `/8`s, admit the same
clients. A list counts as the world when the public addresses it holds together — private, shared,
loopback, link-local, documentation, multicast and reserved blocks do not count — exceed those of one `/8`
of its address family (16,777,216 IPv4 addresses, 2^120 IPv6 addresses), however the list is split.
Overlapping ranges count once.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# IPv4 blocks that are not globally reachable (IANA IPv4 Special-Purpose Address Registry, RFC 6890 and its
# updates), disjoint from each other.
IPV4_NOT_PUBLIC = tuple(
    ipaddress.IPv4Network(block)
    for block in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation (TEST-NET-1)
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation (TEST-NET-2)
        "203.0.113.0/24",  # documentation (TEST-NET-3)
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the limited broadcast address
    )
)
# Global unicast IPv6 is 2000::/3 (RFC 4291); inside it these blocks are not public, disjoint from each other.
IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
IPV6_NOT_PUBLIC = tuple(
    ipaddress.IPv6Network(block)
    for block in (
        "2001::/23",  # IETF protocol assignments
        "2001:db8::/32",  # documentation (outside 2001::/23, which ends at 2001:1ff:…)
        "3fff::/20",  # documentation (RFC 9637)
    )
)

# IPv6 blocks that carry an IPv4 address in their bits, and where: (block, first bit of the IPv4 address). A
# range inside one of them admits the IPv4 clients it embeds (`::ffff:0.0.0.0/96` is `0.0.0.0/0` written as
# IPv6), so they count as those IPv4 addresses, not as IPv6 ones.
IPV6_EMBEDDING_IPV4 = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), 96),  # IPv4-mapped (RFC 4291), what dual-stack sockets see
    (ipaddress.IPv6Network("::/96"), 96),  # IPv4-compatible (deprecated, RFC 4291)
    (ipaddress.IPv6Network("64:ff9b::/96"), 96),  # NAT64 well-known prefix (RFC 6052)
    (ipaddress.IPv6Network("64:ff9b:1::/48"), 48),  # NAT64 local-use prefix (RFC 8215)
    (ipaddress.IPv6Network("2002::/16"), 16),  # 6to4 (RFC 3056)
)

# A list admits "the world" beyond this many public addresses: one /8 of the family.
WORLD_PREFIX = 8


def world_threshold(version: int) -> int:
    bits = 32 if version == 4 else 128
    return 1 << (bits - WORLD_PREFIX)


def _overlap(a: Network, b: Network) -> int:
    """Addresses `a` and `b` share (CIDR blocks either nest or are disjoint)."""
    if a.version != b.version:
        return 0
    if a.subnet_of(b):  # type: ignore[arg-type]
        return a.num_addresses
    if b.subnet_of(a):  # type: ignore[arg-type]
        return b.num_addresses
    return 0


def public_addresses_in(network: Network) -> int:
    """How many globally reachable addresses one block holds."""
    if network.version == 4:
        return network.num_addresses - sum(_overlap(network, block) for block in IPV4_NOT_PUBLIC)
    return _overlap(network, IPV6_GLOBAL_UNICAST) - sum(_overlap(network, block) for block in IPV6_NOT_PUBLIC)


@dataclass(frozen=True)
class Exposure:
    """The public addresses a list of ranges admits, per address family."""

    ipv4: int
    ipv6: int

    @property
    def is_world(self) -> bool:
        return self.ipv4 > world_threshold(4) or self.ipv6 > world_threshold(6)

    def describe(self) -> str:
        parts = []
        if self.ipv4:
            parts.append(f"{self.ipv4:,} public IPv4 addresses ({self.ipv4 / world_threshold(4):.4g} × a /8)")
        if self.ipv6:
            parts.append(f"{self.ipv6:.3e} public IPv6 addresses ({self.ipv6 / world_threshold(6):.4g} × a /8)")
        return " and ".join(parts) or "no public address"


def embedded_ipv4(network: ipaddress.IPv6Network) -> list[ipaddress.IPv4Network]:
    """The IPv4 ranges an IPv6 range embeds (IPv4-mapped, IPv4-compatible, NAT64, 6to4): a range holding a
    whole embedding block embeds all of IPv4."""
    found = []
    for block, first_bit in IPV6_EMBEDDING_IPV4:
        if block.subnet_of(network):
            found.append(ipaddress.IPv4Network("0.0.0.0/0"))
        elif network.subnet_of(block):
            bits = min(network.prefixlen - first_bit, 32)
            value = (int(network.network_address) >> (128 - first_bit - 32)) & 0xFFFFFFFF
            found.append(ipaddress.IPv4Network((value >> (32 - bits) << (32 - bits), bits)))
    return found


def _outside_embedding(network: ipaddress.IPv6Network) -> list[ipaddress.IPv6Network]:
    """`network` less the IPv4-embedding blocks it holds or sits in (those count as IPv4)."""
    parts = [network]
    for block, _ in IPV6_EMBEDDING_IPV4:
        kept: list[ipaddress.IPv6Network] = []
        for part in parts:
            if part.subnet_of(block):
                continue
            kept.extend(part.address_exclude(block) if block.subnet_of(part) else [part])
        parts = kept
    return parts


def exposure(cidrs: Iterable[str | Network]) -> Exposure:
    """Public addresses admitted by `cidrs` together (overlaps counted once); IPv6 ranges that embed IPv4
    addresses count as those. Raises ValueError on a non-CIDR."""
    networks = [c if isinstance(c, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else ipaddress.ip_network(str(c).strip(), strict=False) for c in cidrs]
    ipv4: list[ipaddress.IPv4Network] = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    ipv6: list[ipaddress.IPv6Network] = []
    for network in networks:
        if isinstance(network, ipaddress.IPv6Network):
            ipv4 += embedded_ipv4(network)
            ipv6 += _outside_embedding(network)
    counts = {
        4: sum(public_addresses_in(n) for n in ipaddress.collapse_addresses(ipv4)),
        6: sum(public_addresses_in(n) for n in ipaddress.collapse_addresses(ipv6)),
    }
    return Exposure(ipv4=counts[4], ipv6=counts[6])


def is_world(cidrs: Iterable[str | Network]) -> bool:
    return exposure(cidrs).is_world


WORLD_RULE = (
    "at most one /8's worth of public addresses in all (16,777,216 IPv4 or 2^120 IPv6 addresses; private and "
    "reserved ranges do not count), e.g. an office or VPN range such as 203.0.113.0/24"
)
