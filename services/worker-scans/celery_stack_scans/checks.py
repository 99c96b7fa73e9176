"""What the scanner looks for in a page: security headers, cookie flags, mixed content,
server/version disclosure and the scan's content rules. Plain functions over a fetched Page.

Every finding has a key that is a pure function of what was found, so a redelivered scan
produces the same keys and its inserts are no-ops (unique scan + key).
"""

from __future__ import annotations

import hashlib
import html
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import regex

from celery_stack_core.scan_spec import ContentRule
from celery_stack_scans.fetch import Page


@dataclass(frozen=True)
class Finding:
    key: str
    kind: str
    severity: str  # info | low | medium | high
    title: str
    url: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def finding(  # noqa: PLR0913 - builds a Finding: its fields, the optional ones keyword-only
    kind: str,
    severity: str,
    title: str,
    *,
    url: str | None,
    ident: str = "",
    detail: dict[str, Any] | None = None,
) -> Finding:
    digest = hashlib.sha256(f"{url}|{ident}".encode()).hexdigest()[:20]
    return Finding(f"{kind}:{digest}", kind, severity, title, url, detail or {})


def origin(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


SECURITY_HEADERS = (
    # header, severity, what is missing
    ("strict-transport-security", "medium", "HSTS (Strict-Transport-Security)"),
    ("content-security-policy", "medium", "Content-Security-Policy"),
    ("x-content-type-options", "low", "X-Content-Type-Options: nosniff"),
    ("referrer-policy", "low", "Referrer-Policy"),
)


def header_findings(page: Page) -> list[Finding]:
    """Checked once per origin, on its landing page."""
    out: list[Finding] = []
    where = origin(page.url)
    https = page.url.startswith("https:")
    for name, severity, what in SECURITY_HEADERS:
        if name == "strict-transport-security" and not https:
            continue  # HSTS means nothing over plain HTTP
        if name not in page.headers:
            out.append(
                finding(
                    "missing_header",
                    severity,
                    f"Missing {what}",
                    url=where,
                    ident=name,
                    detail={"header": name},
                )
            )
    if page.headers.get("x-content-type-options", "nosniff").lower() != "nosniff":
        out.append(
            finding(
                "weak_header",
                "low",
                "X-Content-Type-Options is not 'nosniff'",
                url=where,
                ident="x-content-type-options",
            )
        )
    csp = page.headers.get("content-security-policy", "")
    if "x-frame-options" not in page.headers and "frame-ancestors" not in csp:
        out.append(
            finding(
                "missing_header",
                "medium",
                "Missing frame protection (X-Frame-Options or CSP frame-ancestors)",
                url=where,
                ident="x-frame-options",
                detail={"header": "x-frame-options"},
            )
        )
    return out


_VERSION = re.compile(r"\d+(\.\d+)+|/\s*\d")
DISCLOSING = ("x-powered-by", "x-aspnet-version", "x-aspnetmvc-version", "x-generator")


def disclosure_findings(page: Page) -> list[Finding]:
    out: list[Finding] = []
    where = origin(page.url)
    server = page.headers.get("server")
    if server and _VERSION.search(server):
        out.append(
            finding(
                "version_disclosure",
                "low",
                "Server header discloses software version",
                url=where,
                ident="server",
                detail={"header": "server", "value": server[:200]},
            )
        )
    for name in DISCLOSING:
        if value := page.headers.get(name):
            out.append(
                finding(
                    "version_disclosure",
                    "low",
                    f"{name} header discloses the technology stack",
                    url=where,
                    ident=name,
                    detail={"header": name, "value": value[:200]},
                )
            )
    return out


def cookie_findings(page: Page) -> list[Finding]:
    out: list[Finding] = []
    https = page.url.startswith("https:")
    for raw in page.headers.get_list("set-cookie"):
        name = raw.split("=", 1)[0].strip()
        attrs = {a.strip().split("=", 1)[0].lower() for a in raw.split(";")[1:]}
        missing = []
        if https and "secure" not in attrs:
            missing.append("Secure")
        if "httponly" not in attrs:
            missing.append("HttpOnly")
        if "samesite" not in attrs:
            missing.append("SameSite")
        for flag in missing:
            out.append(
                finding(
                    "cookie_flag",
                    "medium" if flag == "Secure" else "low",
                    f"Cookie {name!r} lacks the {flag} flag",
                    url=origin(page.url),
                    ident=f"{name}|{flag}",
                    detail={"cookie": name[:100], "flag": flag},
                )
            )
    return out


_MIXED = re.compile(
    r"<(script|img|iframe|link|audio|video|source|embed|object|form)\b[^>]*?"
    r"\b(?:src|href|action|data)\s*=\s*[\"']?(http://[^\"'\s>]+)",
    re.IGNORECASE,
)


def mixed_content_findings(page: Page) -> list[Finding]:
    if not page.url.startswith("https:") or not page.is_html:
        return []
    out: list[Finding] = []
    for match in _MIXED.finditer(page.text):
        tag, resource = match.group(1).lower(), match.group(2)
        active = tag in ("script", "iframe", "link", "object", "embed", "form")
        out.append(
            finding(
                "mixed_content",
                "high" if active else "medium",
                f"HTTPS page loads {tag} over plain HTTP",
                url=page.url,
                ident=resource,
                detail={"tag": tag, "resource": resource[:500]},
            )
        )
    return out


_SCRIPT_STYLE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]+>")


def page_text(page: Page) -> str:
    if not page.is_html:
        return page.text
    return html.unescape(_TAG.sub(" ", _SCRIPT_STYLE.sub(" ", page.text)))


# Seconds one user regex may search one page, and all of a page's regexes together. The scan
# runs in the event loop, so a backtracking pattern over site-controlled text would otherwise
# stall it (and the heartbeat) for hours: the `regex` package can stop a search, the standard
# `re` cannot. Its timeout is checked coarsely (overshoots seen up to ~4x): hence the budget.
REGEX_TIMEOUT = 0.25
PAGE_REGEX_BUDGET = 2.0


def _rule_error(page: Page, rule: ContentRule, exc: Exception) -> Finding:
    what = "timed out" if isinstance(exc, TimeoutError) else f"failed: {exc}"
    return finding(
        "content_rule_error",
        "info",
        f"Content rule {rule.name!r} could not be evaluated",
        url=page.url,
        ident=rule.name,
        detail={"rule": rule.name, "error": what[:200]},
    )


def content_findings(page: Page, rules: list[ContentRule]) -> list[Finding]:
    if not rules:
        return []
    text = page_text(page)
    lowered = text.lower()
    out: list[Finding] = []
    budget_ends = time.monotonic() + PAGE_REGEX_BUDGET
    for rule in rules:
        if rule.keyword is not None:
            at = lowered.find(rule.keyword.lower())
            hit = (at, at + len(rule.keyword)) if at >= 0 else None
        else:
            left = budget_ends - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError("page regex budget spent")
                m = regex.search(rule.regex or "", text, timeout=min(REGEX_TIMEOUT, left))
            except (TimeoutError, regex.error) as exc:
                out.append(_rule_error(page, rule, exc))
                continue
            hit = m.span() if m else None
        if hit is None:
            continue
        start, end = hit
        out.append(
            finding(
                "content_rule",
                rule.severity,
                f"Content rule {rule.name!r} matched",
                url=page.url,
                ident=rule.name,
                detail={"rule": rule.name, "excerpt": text[max(0, start - 40) : end + 40][:200]},
            )
        )
    return out


def page_findings(page: Page, rules: list[ContentRule]) -> list[Finding]:
    return [*cookie_findings(page), *mixed_content_findings(page), *content_findings(page, rules)]


_HREF = re.compile(r"<a\b[^>]*?\bhref\s*=\s*[\"']?([^\"'\s>]+)", re.IGNORECASE)


# A crawl visits at most SCANNER_MAX_PAGES (<= 200) pages: more links per page are never used.
MAX_LINKS_PER_PAGE = 500


def same_origin_links(page: Page) -> list[str]:
    """Distinct same-origin links in page order, at most MAX_LINKS_PER_PAGE; malformed ones
    (a bad IPv6 literal, say) are the site's problem and skipped."""
    if not page.is_html:
        return []
    base = origin(page.url)
    out: dict[str, None] = {}  # insertion-ordered set: a list made this quadratic
    for match in _HREF.finditer(page.text):
        try:
            link = urljoin(page.url, html.unescape(match.group(1)))
            parts = urlsplit(link)
            link = urlunsplit((parts.scheme, parts.netloc, parts.path or "/", parts.query, ""))
            same = origin(link) == base
        except ValueError:
            continue
        if same:
            out[link] = None
            if len(out) >= MAX_LINKS_PER_PAGE:
                break
    return list(out)
