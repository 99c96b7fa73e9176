"""The scanner against real local HTTP and HTTPS servers (our own CA, certificate for site.test)."""

import pytest

from celery_stack_core.scan_spec import ContentRule, ScanConfig
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
