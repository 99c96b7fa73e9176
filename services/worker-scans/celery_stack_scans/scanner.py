"""The content-security scan of one domain (issue "The scanner").

    resolve + SSRF check -> TLS certificate -> GET https:// (and http://) with checked redirects
    -> landing-page header checks -> crawl same-origin pages up to a limit, checking each page

After every page the findings so far go to `checkpoint`, which stores them and answers whether
to go on (False: the scan was cancelled, deleted or taken over; stop here).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from celery_stack_core.config import Settings
from celery_stack_core.scan_spec import ScanConfig
from celery_stack_scans import checks
from celery_stack_scans.checks import Finding, finding
from celery_stack_scans.fetch import Fetcher, FetchError, FetchOptions, Page, ssl_context
from celery_stack_scans.ssrf import Blocked, Guard
from celery_stack_scans.tls import check_certificate

log = logging.getLogger(__name__)
Checkpoint = Callable[[list[Finding]], Awaitable[bool]]


class ScanFailed(Exception):
    """The site could not be scanned at all (does not resolve, refused, unreachable)."""


@dataclass(frozen=True)
class ScanOptions:
    fetch: FetchOptions
    max_pages: int
    cert_warn_days: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ScanOptions:
        return cls(
            fetch=FetchOptions(
                guard=Guard.from_cidrs(settings.scanner.allow_private_cidrs),
                resolve_overrides=settings.scanner.resolve,
                ca_bundle=settings.scanner.ca_bundle,
                max_redirects=settings.scanner.max_redirects,
                timeout=settings.scanner.timeout,
                max_bytes=settings.scanner.max_bytes,
                user_agent=settings.scanner.user_agent,
            ),
            max_pages=settings.scanner.max_pages,
            cert_warn_days=settings.scanner.cert_warn_days,
        )


@dataclass(frozen=True)
class ScanSummary:
    pages: int
    findings: int
    stopped: bool  # checkpoint said stop (cancelled / gone / taken over)


def _url(scheme: str, domain: str, port: int) -> str:
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{domain}/" if port == default else f"{scheme}://{domain}:{port}/"


async def _tls(fetcher: Fetcher, domain: str, port: int, opts: ScanOptions) -> list[Finding]:
    where = _url("https", domain, port).rstrip("/")
    ip = await fetcher.checked_address(httpx.URL(where))
    try:
        info = await check_certificate(
            domain, ip, port, ssl_context(opts.fetch.ca_bundle), opts.fetch.timeout
        )
    except (OSError, TimeoutError):
        return []  # no HTTPS listener: reported by the fetch below
    if not info.valid:
        return [
            finding(
                "tls_invalid",
                "high",
                "TLS certificate is not valid for this host",
                url=where,
                ident="cert",
                detail={"error": info.error},
            )
        ]
    days = round(info.days_left or 0.0, 1)
    out = [
        finding(
            "tls_certificate",
            "info",
            f"TLS certificate valid, {days:g} days to expiry",
            url=where,
            ident=f"cert|{info.not_after}",
            detail={"days_to_expiry": days, "not_after": info.not_after, "issuer": info.issuer},
        )
    ]
    if days < opts.cert_warn_days:
        out.append(
            finding(
                "tls_expiring",
                "high" if days < 7 else "medium",
                f"TLS certificate expires in {days:g} days",
                url=where,
                ident=f"expiry|{info.not_after}",
                detail={"days_to_expiry": days},
            )
        )
    return out


async def _landing(
    fetcher: Fetcher, url: str, found: list[Finding]
) -> tuple[Page | None, str | None]:
    try:
        return await fetcher.get(url), None
    except FetchError as exc:
        return None, f"{exc.kind}: {exc}"
    except Blocked as exc:
        # The domain itself passed the guard (_tls): a redirect led into a refused address.
        # Not followed; reported, and the scan goes on with what it has.
        found.append(
            finding(
                "redirect_blocked",
                "medium",
                "The landing page redirects to an address the scanner refuses",
                url=url,
                ident=f"{exc.host}|{exc.address}",
                detail={"host": exc.host, "address": exc.address, "reason": exc.reason},
            )
        )
        return None, f"blocked: {exc}"


async def scan(
    domain: str, config: ScanConfig, opts: ScanOptions, checkpoint: Checkpoint
) -> ScanSummary:
    """Raises ScanFailed when nothing could be fetched; Blocked is a ScanFailed reason too."""
    max_pages = min(config.max_pages or opts.max_pages, opts.max_pages)
    total = 0

    async def emit(found: list[Finding]) -> bool:
        nonlocal total
        total += len(found)
        return await checkpoint(found)

    async with Fetcher(opts.fetch) as fetcher:
        landing, found = await _landing_findings(fetcher, domain, config, opts, emit)
        if not await emit(found):
            return ScanSummary(1, total, stopped=True)
        pages, stopped = await _crawl(fetcher, landing, max_pages, config, emit)
    return ScanSummary(pages, total, stopped=stopped)


async def _landing_findings(
    fetcher: Fetcher, domain: str, config: ScanConfig, opts: ScanOptions, emit: Checkpoint
) -> tuple[Page, list[Finding]]:
    """TLS, the HTTPS and HTTP landing pages and what they show; ScanFailed if neither loads
    (what was found by then, e.g. redirect_blocked, is emitted first: a finding, not only
    words in the error text)."""
    try:
        found = list(await _tls(fetcher, domain, config.https_port, opts))
    except Blocked as exc:
        raise ScanFailed(str(exc)) from None
    except FetchError as exc:
        raise ScanFailed(f"{exc.kind}: {exc}") from None
    https_url = _url("https", domain, config.https_port)
    http_url = _url("http", domain, config.http_port)
    https_page, https_error = await _landing(fetcher, https_url, found)
    http_page: Page | None = None
    http_error: str | None = None
    if config.check_http or https_page is None:
        http_page, http_error = await _landing(fetcher, http_url, found)
    landing = https_page or http_page
    if landing is None:
        if found:
            await emit(found)
        raise ScanFailed(f"site unreachable (https: {https_error}; http: {http_error})")
    if https_page is None:
        found.append(
            finding(
                "https_unavailable",
                "high",
                "The site is not served over HTTPS",
                url=https_url,
                detail={"error": https_error},
            )
        )
    elif http_page is not None and not http_page.url.startswith("https:"):
        found.append(
            finding(
                "http_not_redirected",
                "medium",
                "Plain HTTP is served without a redirect to HTTPS",
                url=http_url,
            )
        )
    for page in (https_page, http_page):
        if page is not None:
            found += checks.header_findings(page) + checks.disclosure_findings(page)
    return landing, found + checks.page_findings(landing, config.content_rules)


async def _crawl(
    fetcher: Fetcher,
    landing: Page,
    max_pages: int,
    config: ScanConfig,
    emit: Checkpoint,
) -> tuple[int, bool]:
    """Crawl the landing origin breadth first, each page a checkpoint: (pages, stopped)."""
    pages = 1
    queue = deque(checks.same_origin_links(landing))  # pop(0) of a list was quadratic
    seen = {landing.url, *landing.redirects}
    while queue and pages < max_pages:
        url = queue.popleft()
        if url in seen:
            continue
        seen.add(url)
        try:
            page = await fetcher.get(url)
        except (FetchError, Blocked) as exc:
            log.info("page fetch failed", extra={"url": url, "error": str(exc)})
            continue
        pages += 1
        if checks.origin(page.url) != checks.origin(landing.url):
            continue  # redirected off-origin: fetched safely, but not ours to judge
        queue.extend(u for u in checks.same_origin_links(page) if u not in seen)
        if not await emit(checks.page_findings(page, config.content_rules)):
            return pages, True
    return pages, False
