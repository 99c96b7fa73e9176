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

# Cloud metadata, DNS and time services: refused even where an allowlist opens their network,
# and even on public addresses (Azure's WireServer is 168.63.129.16).
METADATA: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(a)
    for a in (
        "169.254.169.254/32",  # AWS, GCP, Azure IMDS, OpenStack, DigitalOcean, Oracle, Hetzner
        "169.254.170.2/32",  # AWS ECS task metadata
        "169.254.169.123/32",  # AWS time sync
        "169.254.169.253/32",  # AWS VPC DNS
        "169.254.0.23/32",  # Tencent Cloud metadata
        "168.63.129.16/32",  # Azure WireServer / DNS / health probes (a public address)
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "192.0.0.192/32",  # Oracle Cloud (classic) metadata
        "161.26.0.0/16",  # IBM Cloud service network: DNS, NTP, metadata (public addresses)
        "fd00:ec2::/32",  # AWS IPv6 IMDS (::254), DNS (::253), time (::123)
        "fd20:ce::254/128",  # GCP IPv6 metadata
    )
)

# The deny list: every entry of the IANA IPv4 and IPv6 Special-Purpose Address Registries
# (iana-ipv4-special-registry, iana-ipv6-special-registry; RFC 6890 and its updates), plus
# multicast and the deprecated site-local fec0::/10 (RFC 3879, in the IPv6 Address Space
# registry). Even the "globally reachable" entries (anycast PCP/TURN, AS112, AMT) are refused:
# none is a website. The IPv6 transition prefixes (::ffff:0:0/96, 64:ff9b::/96, 2001::/32
# Teredo, 2002::/16 6to4) are judged by the IPv4 address inside (embedded_ipv4) first.
SPECIAL_PURPOSE: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified"),  # "this network" (0.0.0.0/32: this host)
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "cgnat"),  # shared address space
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link_local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),  # IETF protocol assignments (192.0.0.0/29, .8, .9, .10, .170)
    ("192.0.2.0/24", "documentation"),
    ("192.31.196.0/24", "reserved"),  # AS112-v4
    ("192.52.193.0/24", "reserved"),  # AMT
    ("192.88.99.0/24", "reserved"),  # deprecated 6to4 relay anycast
    ("192.168.0.0/16", "private"),
    ("192.175.48.0/24", "reserved"),  # AS112 direct delegation
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "broadcast"),
    ("224.0.0.0/4", "multicast"),  # the IPv4 multicast registry
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "reserved"),  # local-use IPv4/IPv6 translation
    ("100::/64", "reserved"),  # discard-only
    ("100:0:0:1::/64", "reserved"),  # dummy prefix
    ("2001::/23", "reserved"),  # IETF protocol assignments (PCP, TURN, AMT, AS112, ORCHID...)
    ("2001:db8::/32", "documentation"),
    ("2620:4f:8000::/48", "reserved"),  # AS112 direct delegation
    ("3fff::/20", "documentation"),
    ("5f00::/16", "reserved"),  # SRv6 SIDs
    ("fc00::/7", "private"),  # unique local
    ("fe80::/10", "link_local"),
    ("fec0::/10", "site_local"),  # deprecated, RFC 3879
    ("ff00::/8", "multicast"),  # the IPv6 multicast registry
)
_DENY: tuple[tuple[IPNetwork, str], ...] = tuple(
    sorted(
        ((ipaddress.ip_network(c), r) for c, r in SPECIAL_PURPOSE),
        key=lambda nr: -nr[0].prefixlen,  # most specific first
    )
)
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
    if any(ip.version == net.version and ip in net for net in METADATA):
        return "metadata"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            reason = classify(inner)
            return reason and f"{reason}_ipv6_embedded"
        if ip.scope_id:
            return "link_local"
    for net, reason in _DENY:
        if ip.version == net.version and ip in net:
            return reason
    if not ip.is_global:
        return "reserved"  # anything the stdlib knows that the registries above miss
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
