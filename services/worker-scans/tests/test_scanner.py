"""The scanner against real local HTTP and HTTPS servers (our own CA, certificate for site.test)."""

import httpx
import pytest

from celery_stack_core.scan_spec import ContentRule, ScanConfig
from celery_stack_scans import checks
from celery_stack_scans.demo_site import DemoSite, SiteOptions
from celery_stack_scans.fetch import Page
from celery_stack_scans.scanner import ScanFailed, scan


def config(site, **kw):
    return ScanConfig(https_port=site.https_port, http_port=site.http_port, **kw)


async def run(domain, cfg, opts):
    batches = []

    async def checkpoint(found):
        batches.append(found)
        return True

    summary = await scan(domain, cfg, opts, checkpoint)
    return summary, [f for b in batches for f in b]


async def test_full_scan_reports_every_check(site, scan_options):
    rules = [
        ContentRule(name="gambling", keyword="CASINO", severity="high"),
        ContentRule(name="page-two", regex=r"page\s+2"),
    ]
    summary, found = await run("site.test", config(site, content_rules=rules), scan_options())
    kinds = {f.kind for f in found}
    assert {
        "tls_certificate",
        "missing_header",
        "version_disclosure",
        "cookie_flag",
        "mixed_content",
        "content_rule",
        "http_not_redirected",
    } <= kinds
    missing = {f.detail["header"] for f in found if f.kind == "missing_header"}
    assert {
        "strict-transport-security",
        "content-security-policy",
        "x-content-type-options",
        "referrer-policy",
        "x-frame-options",
    } <= missing
    cert = next(f for f in found if f.kind == "tls_certificate")
    assert 89 <= cert.detail["days_to_expiry"] <= 90
    assert {f.detail["flag"] for f in found if f.kind == "cookie_flag"} == {
        "Secure",
        "HttpOnly",
        "SameSite",
    }
    mixed = {f.detail["tag"]: f.severity for f in found if f.kind == "mixed_content"}
    assert mixed == {"script": "high", "img": "medium"}
    assert {f.detail["rule"] for f in found if f.kind == "content_rule"} == {"gambling", "page-two"}
    # crawled same-origin pages only, up to the limit; keys are unique
    assert 3 <= summary.pages <= 10
    assert not any("elsewhere.example.org" in (f.url or "") for f in found)
    assert len({f.key for f in found}) == len(found)


async def test_same_scan_twice_gives_the_same_keys(site, scan_options):
    """Finding keys are a pure function of what was found: a redelivery cannot duplicate."""
    _, a = await run("site.test", config(site), scan_options())
    _, b = await run("site.test", config(site), scan_options())
    assert {f.key for f in a} == {f.key for f in b}


async def test_page_limit(site, scan_options):
    summary, _ = await run("site.test", config(site, max_pages=2), scan_options())
    assert summary.pages == 2
    summary, _ = await run("site.test", config(site), scan_options(max_pages=1))
    assert summary.pages == 1


async def test_certificate_for_another_name_is_invalid(site, scan_options):
    _, found = await run("wrong.test", config(site), scan_options())
    bad = [f for f in found if f.kind == "tls_invalid"]
    assert bad and "mismatch" in bad[0].detail["error"].lower()
    assert "tls_certificate" not in {f.kind for f in found}


async def test_untrusted_certificate_is_invalid(site, scan_options):
    _, found = await run("site.test", config(site), scan_options(ca_bundle=""))
    assert any(f.kind == "tls_invalid" for f in found)
    assert any(f.kind == "https_unavailable" for f in found)  # the fetch refuses it too


async def test_http_only_site(site, scan_options, free_tcp_port):
    _, found = await run(
        "site.test", config(site).model_copy(update={"https_port": free_tcp_port}), scan_options()
    )
    kinds = {f.kind for f in found}
    assert "https_unavailable" in kinds and "tls_certificate" not in kinds


async def test_checkpoint_false_stops_the_scan(site, scan_options):
    calls = []

    async def checkpoint(found):
        calls.append(found)
        return False

    summary = await scan("site.test", config(site), scan_options(), checkpoint)
    assert summary.stopped and summary.pages == 1 and len(calls) == 1


@pytest.mark.parametrize(
    "resolve", [{"site.test": ["10.0.0.1"]}, {"site.test": ["169.254.169.254"]}]
)
async def test_blocked_domain_fails_the_scan(site, scan_options, resolve):
    with pytest.raises(ScanFailed, match="refused"):
        await run("site.test", config(site), scan_options(resolve=resolve))


async def test_unresolvable_and_unreachable(site, scan_options, free_tcp_port):
    with pytest.raises(ScanFailed, match="dns"):
        await run("nonexistent.invalid", config(site), scan_options())
    cfg = ScanConfig(https_port=free_tcp_port, http_port=free_tcp_port)
    with pytest.raises(ScanFailed, match="unreachable"):
        await run("site.test", cfg, scan_options())


@pytest.fixture
def odd_site(certs):
    """A site whose pages carry what a hostile or broken site may send."""
    sites = []

    def make(**opts):
        s = DemoSite(
            https_port=0, cert=certs["cert"], key=certs["key"], opts=SiteOptions(slow=0, **opts)
        )
        sites.append(s)
        return s

    yield make
    for s in sites:
        s.close()


async def test_malformed_links_are_skipped_not_fatal(odd_site, scan_options):
    s = odd_site(index_extra='<a href="http://[oops/">bad</a> <a href="http://[::1/x">bad</a>')
    summary, found = await run("site.test", config(s, max_pages=3), scan_options())
    assert summary.pages == 3 and any(f.kind == "tls_certificate" for f in found)


async def test_malformed_landing_redirect_falls_back_to_http(odd_site, scan_options):
    s = odd_site(https_root_redirect="http://[oops/")
    _, found = await run("site.test", config(s, max_pages=1), scan_options())
    unavailable = [f for f in found if f.kind == "https_unavailable"]
    assert unavailable and unavailable[0].detail["error"].startswith("protocol")
    assert any(f.kind == "missing_header" for f in found)  # the HTTP landing page was checked


async def test_landing_redirect_into_a_blocked_address_is_a_finding(odd_site, scan_options):
    """Refused (never followed), reported, and the scan goes on over HTTP with its TLS checks."""
    s = odd_site(https_root_redirect="http://10.0.0.1/admin")
    _, found = await run("site.test", config(s, max_pages=1), scan_options())
    kinds = {f.kind for f in found}
    assert {"redirect_blocked", "tls_certificate", "https_unavailable", "missing_header"} <= kinds
    blocked = next(f for f in found if f.kind == "redirect_blocked")
    assert blocked.detail["address"] == "10.0.0.1" and blocked.detail["reason"] == "private"


def _page(body, url="https://site.test/"):
    return Page(
        url, 200, httpx.Headers({"content-type": "text/html"}), body.encode(), False, [], ""
    )


def test_links_are_deduplicated_and_capped_per_page():
    body = "".join(f'<a href="/p{i % 3}">x</a>' for i in range(30))
    assert checks.same_origin_links(_page(body)) == [
        "https://site.test/p0",
        "https://site.test/p1",
        "https://site.test/p2",
    ]
    many = "".join(f'<a href="/q{i}">x</a>' for i in range(checks.MAX_LINKS_PER_PAGE * 3))
    links = checks.same_origin_links(_page(many))
    assert len(links) == checks.MAX_LINKS_PER_PAGE and links[0] == "https://site.test/q0"


def test_a_catastrophic_regex_times_out_as_a_finding():
    """Exponential backtracking on site-controlled text is cut off, not left to block the loop
    (and the scan's heartbeat) for hours; other rules still run."""
    rules = [
        ContentRule(name="redos", regex=r"(a|aa)+$"),
        ContentRule(name="plain", keyword="aaa"),
    ]
    found = checks.content_findings(_page("a" * 40 + "!"), rules)
    by_rule = {f.detail["rule"]: f for f in found}
    assert by_rule["redos"].kind == "content_rule_error"
    assert by_rule["plain"].kind == "content_rule"
    # many such rules on one page: the page's budget ends them all, each reported
    many = [ContentRule(name=f"r{i}", regex=r"(a|aa)+$") for i in range(20)]
    found = checks.content_findings(_page("a" * 40 + "!"), many)
    assert sorted(f.detail["rule"] for f in found) == sorted(r.name for r in many)
    assert {f.kind for f in found} == {"content_rule_error"}


async def test_blocked_redirect_is_kept_as_a_finding_when_both_landing_pages_fail(
    odd_site, scan_options, free_tcp_port
):
    """HTTPS redirects into a refused address and HTTP is closed: the scan fails, and the
    redirect_blocked finding is recorded (it survived only in the error text)."""
    s = odd_site(https_root_redirect="http://10.0.0.1/admin")
    cfg = ScanConfig(https_port=s.https_port, http_port=free_tcp_port)  # nothing listens there
    batches = []

    async def checkpoint(found):
        batches.append(found)
        return True

    with pytest.raises(ScanFailed, match="unreachable"):
        await scan("site.test", cfg, scan_options(), checkpoint)
    kinds = {f.kind for b in batches for f in b}
    assert "redirect_blocked" in kinds
