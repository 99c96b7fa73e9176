"""Fetching with the SSRF guard applied to every hop, and the connection pinned to the checked
address: the name is resolved once per hop, the address checked, and httpx connects to that
address while the Host header and TLS SNI/certificate check use the name. A DNS answer that
changes between the check and the connect (rebinding) therefore changes nothing.

Redirects are followed here, never by httpx, so each Location gets the same treatment.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from dataclasses import dataclass, field
from urllib.parse import urljoin

import httpx

from celery_stack_core import metrics
from celery_stack_scans.ssrf import Blocked, Guard, IPAddress

REDIRECTS = (301, 302, 303, 307, 308)


class FetchError(Exception):
    """A fetch that failed; `kind` is the metrics class (dns, blocked, connect, ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class FetchOptions:
    guard: Guard
    resolve_overrides: dict[str, list[str]] = field(default_factory=dict)
    ca_bundle: str = ""
    max_redirects: int = 5
    timeout: float = 10.0
    max_bytes: int = 1_000_000
    user_agent: str = "celery-stack-scanner"


@dataclass(frozen=True)
class Page:
    url: str  # final URL (after redirects), with the host name, not the pinned address
    status: int
    headers: httpx.Headers
    body: bytes
    truncated: bool
    redirects: list[str]
    address: str

    @property
    def is_html(self) -> bool:
        return "html" in self.headers.get("content-type", "text/html").lower()

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


@functools.cache
def ssl_context(ca_bundle: str) -> ssl.SSLContext:
    """One per process and bundle: loading the system trust store costs ~50 ms, and a context
    is safe to share between connections."""
    ctx = ssl.create_default_context()
    if ca_bundle:
        ctx.load_verify_locations(cafile=ca_bundle)
    return ctx


async def resolve(host: str, port: int, overrides: dict[str, list[str]]) -> list[IPAddress]:
    if host in overrides:
        return [ipaddress.ip_address(a) for a in overrides[host]]
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return [ip]  # a redirect to an IP literal: still checked by the guard
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError("dns", f"{host} does not resolve: {exc}") from None
    out: list[IPAddress] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    return out


def _pin(url: httpx.URL, ip: IPAddress) -> httpx.URL:
    return url.copy_with(host=str(ip))


def _host_header(url: httpx.URL) -> str:
    default = 443 if url.scheme == "https" else 80
    host = url.host if ":" not in url.host else f"[{url.host}]"
    return host if url.port in (None, default) else f"{host}:{url.port}"


class Fetcher:
    """One per scan: a client that never follows redirects itself and ignores proxy env vars."""

    def __init__(self, opts: FetchOptions) -> None:
        self.opts = opts
        # One client (connection pool) per host name: requests go to the pinned address, so
        # a shared pool is keyed by the address and would reuse a TLS connection verified for
        # one name for another name on the same address.
        self.clients: dict[str, httpx.AsyncClient] = {}

    def client(self, host: str) -> httpx.AsyncClient:
        if host not in self.clients:
            self.clients[host] = httpx.AsyncClient(
                verify=ssl_context(self.opts.ca_bundle),
                follow_redirects=False,
                trust_env=False,
                timeout=httpx.Timeout(self.opts.timeout),
                headers={"User-Agent": self.opts.user_agent, "Accept": "text/html,*/*;q=0.5"},
            )
        return self.clients[host]

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *_: object) -> None:
        for client in self.clients.values():
            await client.aclose()

    async def checked_address(self, url: httpx.URL) -> IPAddress:
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            return self.opts.guard.check(
                url.host, await resolve(url.host, port, self.opts.resolve_overrides)
            )
        except Blocked as exc:
            metrics.SCANNER_BLOCKED.labels(exc.reason).inc()
            raise

    async def get(self, url: str) -> Page:
        """GET with redirects followed by hand; every hop is resolved, checked and pinned."""
        try:
            return await asyncio.wait_for(self._get(url), self.opts.timeout * 2)
        except FetchError as exc:
            metrics.SCANNER_FETCH_ERRORS.labels(exc.kind).inc()
            raise
        except Blocked:
            metrics.SCANNER_FETCH_ERRORS.labels("blocked").inc()
            raise
        except TimeoutError:
            metrics.SCANNER_FETCH_ERRORS.labels("timeout").inc()
            raise FetchError("timeout", f"{url}: timed out") from None
        except (ValueError, httpx.InvalidURL) as exc:
            # A malformed URL or Location header (bad IPv6 literal, IDNA label, port) is the
            # site's fault: a failed fetch, not a crash of the scan. UnicodeError is a ValueError.
            metrics.SCANNER_FETCH_ERRORS.labels("protocol").inc()
            raise FetchError("protocol", f"{url}: invalid URL: {exc!r}"[:500]) from None

    async def _get(self, url: str) -> Page:
        chain: list[str] = []
        current = httpx.URL(url)
        for _ in range(self.opts.max_redirects + 1):
            if current.scheme not in ("http", "https"):
                raise FetchError("protocol", f"refusing scheme {current.scheme!r} ({current})")
            ip = await self.checked_address(current)
            extensions = {"sni_hostname": current.host} if current.scheme == "https" else {}
            client = self.client(current.host)
            request = client.build_request(
                "GET",
                _pin(current, ip),
                headers={"Host": _host_header(current)},
                extensions=extensions,
            )
            try:
                resp = await client.send(request, stream=True)
            except httpx.TimeoutException:
                raise FetchError("timeout", f"{current}: timed out") from None
            except httpx.ConnectError as exc:
                kind = "tls" if _is_tls(exc) else "connect"
                raise FetchError(kind, f"{current}: {exc}") from None
            except httpx.HTTPError as exc:
                raise FetchError("protocol", f"{current}: {exc!r}") from None
            try:
                location = resp.headers.get("location")
                if resp.status_code in REDIRECTS and location:
                    chain.append(str(current))
                    current = httpx.URL(urljoin(str(current), location))
                    continue
                body, truncated = await self._read(resp)
            finally:
                await resp.aclose()
            return Page(
                str(current), resp.status_code, resp.headers, body, truncated, chain, str(ip)
            )
        raise FetchError("redirects", f"{url}: more than {self.opts.max_redirects} redirects")

    async def _read(self, resp: httpx.Response) -> tuple[bytes, bool]:
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in resp.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size >= self.opts.max_bytes:
                    return b"".join(chunks)[: self.opts.max_bytes], True
        except httpx.TimeoutException:
            raise FetchError("timeout", f"{resp.request.url}: body timed out") from None
        except httpx.HTTPError as exc:
            raise FetchError("protocol", f"{resp.request.url}: {exc!r}") from None
        return b"".join(chunks), False


def _is_tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "SSL" in str(exc) or "certificate" in str(exc).lower()
