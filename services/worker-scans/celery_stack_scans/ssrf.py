"""The SSRF guard: which addresses the scanner may connect to (DESIGN "Scans").

Only globally routable unicast addresses pass. IPv6 forms that carry an IPv4 address
(IPv4-mapped, IPv4-compatible, 6to4, Teredo, NAT64) are judged by the IPv4 address inside, so
`::ffff:127.0.0.1` or `64:ff9b::a9fe:a9fe` cannot smuggle a blocked target through. Cloud
metadata addresses are refused even when an allowlisted network contains them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.123",  # AWS time sync
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (classic)
        "fd00:ec2::254",  # AWS IPv6
        "fd00:ec2::23",
    )
)
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class Blocked(Exception):
    """The scanner refused a destination; `reason` is the address class."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(f"{host} resolves to {address} ({reason}): refused")
        self.host = host
        self.address = address
        self.reason = reason


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the transition forms."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's address
    if any(ip in net for net in NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def classify(ip: IPAddress) -> str | None:
    """The reason an address is refused, or None when it is public unicast."""
    if ip in METADATA:
        return "metadata"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            reason = classify(inner)
            return reason and f"{reason}_ipv6_embedded"
        if ip.scope_id:
            return "link_local"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT:
        return "cgnat"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "reserved"
    return None


@dataclass(frozen=True)
class Guard:
    allow: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str]) -> Guard:
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))

    def reason(self, ip: IPAddress) -> str | None:
        reason = classify(ip)
        if reason is None or reason.startswith("metadata"):
            return reason
        if any(ip.version == net.version and ip in net for net in self.allow):
            return None
        return reason

    def check(self, host: str, addresses: list[IPAddress]) -> IPAddress:
        """The address to connect to: refuse when ANY resolved address is blocked, since a
        name that mixes public and private answers is a rebinding trick, not a website."""
        if not addresses:
            raise Blocked(host, "-", "no_address")
        for ip in addresses:
            if (why := self.reason(ip)) is not None:
                raise Blocked(host, str(ip), why)
        return addresses[0]
