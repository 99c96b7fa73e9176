"""SSRF matrix: every blocked class of address, IPv6 forms, names resolving to them, redirects
into them. All refused; public addresses pass. Fetches go to real local servers."""

import ipaddress

import pytest

from celery_stack_scans.fetch import Fetcher, FetchError, FetchOptions
from celery_stack_scans.ssrf import Blocked, Guard, classify

BLOCKED = {
    "127.0.0.1": "loopback",
    "127.255.0.7": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "169.254.10.10": "link_local",
    "169.254.169.254": "metadata",
    "169.254.170.2": "metadata",
    "100.100.100.200": "metadata",
    "100.64.0.1": "cgnat",
    "100.127.255.254": "cgnat",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "0.0.0.0": "unspecified",
    "240.0.0.1": "reserved",
    "255.255.255.255": "broadcast",
    "198.18.0.1": "benchmarking",
    "192.0.2.1": "documentation",
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link_local",
    "fc00::1": "private",
    "fd12:3456::1": "private",
    "ff02::1": "multicast",
    "fd00:ec2::254": "metadata",
    "2001:db8::1": "documentation",
    # IPv6 forms that carry an IPv4 address are judged by it
    "::ffff:127.0.0.1": "loopback_ipv6_embedded",
    "::ffff:10.0.0.1": "private_ipv6_embedded",
    "::ffff:169.254.169.254": "metadata_ipv6_embedded",
    "::127.0.0.1": "loopback_ipv6_embedded",
    "2002:7f00:1::1": "loopback_ipv6_embedded",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1": "metadata_ipv6_embedded",  # 6to4 of 169.254.169.254
    "64:ff9b::7f00:1": "loopback_ipv6_embedded",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe": "metadata_ipv6_embedded",  # NAT64 of the metadata address
    "64:ff9b::a00:1": "private_ipv6_embedded",
    "2001:0:808:808:0:0:80ff:fffe": "loopback_ipv6_embedded",  # Teredo, client 127.0.0.1
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2001:4860:4860::8888"]


@pytest.mark.parametrize(("address", "reason"), sorted(BLOCKED.items()))
def test_blocked_classes(address, reason):
    ip = ipaddress.ip_address(address)
    got = classify(ip)
    assert got is not None, address
    assert got == reason, (address, got)
    with pytest.raises(Blocked):
        Guard().check("x.example", [ip])


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    ip = ipaddress.ip_address(address)
    assert classify(ip) is None
    assert Guard().check("x.example", [ip]) == ip


def test_allowlist_opens_only_what_it_names_and_never_metadata():
    guard = Guard.from_cidrs(["127.0.0.1/32", "169.254.0.0/16", "10.0.0.0/8"])
    assert guard.reason(ipaddress.ip_address("127.0.0.1")) is None
    assert guard.reason(ipaddress.ip_address("127.0.0.2")) == "loopback"
    assert guard.reason(ipaddress.ip_address("10.9.9.9")) is None
    assert guard.reason(ipaddress.ip_address("169.254.169.254")) == "metadata"
    # the IPv4-mapped form of an allowlisted IPv4 address is not allowlisted
    assert guard.reason(ipaddress.ip_address("::ffff:127.0.0.1")) is not None


def test_a_name_with_any_blocked_answer_is_refused():
    answers = [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.1")]
    with pytest.raises(Blocked) as err:
        Guard().check("rebind.example", answers)
    assert err.value.address == "10.0.0.1"


def _fetcher(**kw):
    return Fetcher(
        FetchOptions(
            guard=Guard.from_cidrs(kw.pop("allow", ["127.0.0.1/32"])),
            resolve_overrides=kw.pop("resolve", {"site.test": ["127.0.0.1"]}),
            timeout=5.0,
            **kw,
        )
    )


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "10.0.0.1",
        "100.64.0.1",
        "::1",
        "::ffff:127.0.0.1",
        "fe80::1",
        "224.0.0.1",
        "0.0.0.0",
    ],
)
async def test_names_resolving_to_blocked_addresses_are_refused(site, address):
    async with _fetcher(resolve={"evil.test": [address]}) as f:
        with pytest.raises(Blocked):
            await f.get(f"http://evil.test:{site.http_port}/")


async def test_real_dns_name_resolving_to_loopback_is_refused(site):
    # `localhost` resolves for real (127.0.0.1 and/or ::1); 127.0.0.1 alone is allowlisted here,
    # so only a name whose every answer is allowlisted could pass: refuse unless that holds.
    async with _fetcher(allow=[]) as f:
        with pytest.raises(Blocked):
            await f.get(f"http://localhost:{site.http_port}/")


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.2:{port}/",  # loopback, answers on Linux, but not allowlisted
        "http://[::1]:{port}/",
        "http://[::ffff:127.0.0.2]:{port}/",
        "http://10.0.0.1/",
        "http://internal.test/",  # a name resolving to a private address
        "http://0x7f000002:{port}/",  # hex IPv4 spelling of 127.0.0.2
    ],
)
async def test_redirects_into_blocked_addresses_are_refused(site, target):
    to = target.format(port=site.http_port)
    async with _fetcher(resolve={"site.test": ["127.0.0.1"], "internal.test": ["10.0.0.5"]}) as f:
        # Blocked, not any FetchError: a "dns" failure would pass without the guard having run.
        with pytest.raises(Blocked):
            await f.get(f"http://site.test:{site.http_port}/redirect?to={to}")


@pytest.mark.parametrize("target", ["file:///etc/passwd", "gopher://site.test/", "ftp://x.test/"])
async def test_redirects_to_other_schemes_are_refused(site, target):
    async with _fetcher() as f:
        with pytest.raises(FetchError) as err:
            await f.get(f"http://site.test:{site.http_port}/redirect?to={target}")
    assert err.value.kind == "protocol"


async def test_connection_is_pinned_to_the_checked_address(site):
    """`site.test` exists in no DNS: the fetch can only have gone to the address we checked,
    with the name in the Host header (and SNI for HTTPS)."""
    async with _fetcher() as f:
        page = await f.get(f"http://site.test:{site.http_port}/redirect?to=/about")
    assert page.status == 200 and page.address == "127.0.0.1"
    assert page.url == f"http://site.test:{site.http_port}/about"
    assert page.redirects == [f"http://site.test:{site.http_port}/redirect?to=/about"]


async def test_redirect_limit_and_size_limit(site):
    async with _fetcher(max_redirects=0) as f:
        with pytest.raises(FetchError) as err:
            await f.get(f"http://site.test:{site.http_port}/redirect?to=/")
    assert err.value.kind == "redirects"
    async with _fetcher(max_bytes=10_000) as f:
        page = await f.get(f"http://site.test:{site.http_port}/big")
    assert page.truncated and len(page.body) == 10_000


async def test_fetch_errors_are_counted_by_class(site):
    from celery_stack_core import metrics

    def count(kind):
        return metrics.SCANNER_FETCH_ERRORS.labels(kind)._value.get()

    before = {k: count(k) for k in ("blocked", "redirects", "dns", "connect")}
    async with _fetcher(resolve={"site.test": ["127.0.0.1"], "evil.test": ["10.0.0.1"]}) as f:
        for url in (
            "http://evil.test/",
            "http://nonexistent.invalid/",
            "http://site.test:1/",
        ):
            with pytest.raises((Blocked, FetchError)):
                await f.get(url)
    async with _fetcher(max_redirects=0) as f:
        with pytest.raises(FetchError):
            await f.get(f"http://site.test:{site.http_port}/redirect?to=/")
    assert {k: count(k) - v for k, v in before.items()} == {
        "blocked": 1,
        "redirects": 1,
        "dns": 1,
        "connect": 1,
    }
    assert metrics.SCANNER_BLOCKED.labels("private")._value.get() >= 1


@pytest.mark.parametrize(
    "location",
    ["http://[oops/", "http://xn--zz.test/", "http://site.test:abc/", "http://[::1/"],
)
async def test_malformed_redirect_locations_are_protocol_errors(site, location):
    """A bad Location header is the site's fault: a FetchError, not a crash of the scan."""
    from urllib.parse import quote

    async with _fetcher() as f:
        with pytest.raises(FetchError) as err:
            await f.get(f"http://site.test:{site.http_port}/redirect?to={quote(location)}")
    assert err.value.kind == "protocol"


async def test_a_connection_verified_for_one_name_is_not_reused_for_another(certs):
    """Two names on one address: the certificate is valid for site.test only. A pool keyed by
    the pinned address would send wrong.test's request over site.test's verified connection."""
    from celery_stack_scans.demo_site import DemoSite, SiteOptions

    alive = DemoSite(
        https_port=0, cert=certs["cert"], key=certs["key"], opts=SiteOptions(keep_alive=True)
    )
    resolve = {"site.test": ["127.0.0.1"], "wrong.test": ["127.0.0.1"]}
    try:
        async with _fetcher(resolve=resolve, ca_bundle=certs["ca"]) as f:
            page = await f.get(f"https://site.test:{alive.https_port}/about")
            assert page.status == 200
            with pytest.raises(FetchError) as err:
                await f.get(f"https://wrong.test:{alive.https_port}/about")
        assert err.value.kind == "tls"
    finally:
        alive.close()


# The IANA special-purpose address registries, every entry, as published
# (https://www.iana.org/assignments/iana-ipv4-special-registry and
# .../iana-ipv6-special-registry, RFC 6890 and updates, as of 2025), plus the deprecated
# site-local fec0::/10 (RFC 3879). Each entry's first, last and a middle address are refused.
# The transition prefixes are judged by the IPv4 inside: tested with a blocked and a public one.
IANA_IPV4_SPECIAL = [
    "0.0.0.0/8", "0.0.0.0/32", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.0.0/29", "192.0.0.8/32", "192.0.0.9/32",
    "192.0.0.10/32", "192.0.0.170/32", "192.0.0.171/32", "192.0.2.0/24", "192.31.196.0/24",
    "192.52.193.0/24", "192.88.99.0/24", "192.168.0.0/16", "192.175.48.0/24", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4", "255.255.255.255/32",
]  # fmt: skip
IANA_IPV6_SPECIAL = [
    "::1/128", "::/128", "64:ff9b:1::/48", "100::/64", "100:0:0:1::/64", "2001::/23",
    "2001:1::1/128", "2001:1::2/128", "2001:1::3/128", "2001:2::/48", "2001:3::/32",
    "2001:4:112::/48", "2001:10::/28", "2001:20::/28", "2001:30::/28", "2001:db8::/32",
    "2620:4f:8000::/48", "3fff::/20", "5f00::/16", "fc00::/7", "fe80::/10",
    "fec0::/10",  # not in the registry: deprecated site-local (RFC 3879); it used to connect
]  # fmt: skip
IANA_TRANSITION = ["::ffff:0:0/96", "64:ff9b::/96", "2001::/32", "2002::/16"]


def _samples(cidr):
    net = ipaddress.ip_network(cidr)
    return {net[0], net[-1], net[net.num_addresses // 2]}


@pytest.mark.parametrize("cidr", IANA_IPV4_SPECIAL + IANA_IPV6_SPECIAL)
def test_every_special_purpose_registry_entry_is_refused(cidr):
    for ip in _samples(cidr):
        assert classify(ip) is not None, (cidr, ip)
        with pytest.raises(Blocked):
            Guard().check("x.example", [ip])


@pytest.mark.parametrize(
    ("address", "inner_blocked"),
    [
        ("::ffff:10.0.0.1", True), ("::ffff:8.8.8.8", False),
        ("64:ff9b::a00:1", True), ("64:ff9b::808:808", False),
        ("2001:0:808:808:0:0:f5ff:fffe", True), ("2001:0:808:808:0:0:f7f7:f7f7", False),
        ("2002:a00:1::1", True), ("2002:808:808::1", False),
    ],
)  # fmt: skip
def test_transition_prefixes_are_judged_by_the_ipv4_inside(address, inner_blocked):
    assert any(ipaddress.ip_address(address) in ipaddress.ip_network(n) for n in IANA_TRANSITION)
    assert (classify(ipaddress.ip_address(address)) is not None) is inner_blocked


@pytest.mark.parametrize(
    "address",
    ["168.63.129.16", "169.254.169.254", "169.254.0.23", "169.254.169.253", "100.100.100.200",
     "192.0.0.192", "161.26.0.10", "fd00:ec2::254", "fd00:ec2::23", "fd20:ce::254"],
)  # fmt: skip
def test_cloud_metadata_services_are_refused_even_public_or_allowlisted(address):
    """Azure's WireServer 168.63.129.16 is a public address and used to pass."""
    ip = ipaddress.ip_address(address)
    assert classify(ip) == "metadata"
    guard = Guard.from_cidrs(["0.0.0.0/0", "::/0"])
    assert guard.reason(ip) == "metadata"


def test_site_local_is_refused():
    assert classify(ipaddress.ip_address("fec0::1")) == "site_local"
    assert classify(ipaddress.ip_address("feff:ffff::1")) == "site_local"
