"""The TLS certificate of a host: valid for its name, and days until it expires.

The handshake goes to the address the SSRF guard checked, with the name as SNI and for the
certificate's hostname check, like every other connection of the scanner.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass

from celery_stack_scans.ssrf import IPAddress


@dataclass(frozen=True)
class CertInfo:
    valid: bool
    error: str | None = None
    days_left: float | None = None
    not_after: str | None = None
    issuer: str | None = None


def _issuer(cert: dict[str, object]) -> str:
    parts = []
    for rdn in cert.get("issuer", ()):  # type: ignore[attr-defined]
        for key, value in rdn:
            if key in ("organizationName", "commonName"):
                parts.append(f"{key}={value}")
    return ", ".join(parts)


async def check_certificate(
    host: str, ip: IPAddress, port: int, ctx: ssl.SSLContext, timeout: float
) -> CertInfo:
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(str(ip), port, ssl=ctx, server_hostname=host), timeout
        )
    except ssl.SSLCertVerificationError as exc:
        return CertInfo(valid=False, error=exc.verify_message or str(exc))
    except ssl.SSLError as exc:
        return CertInfo(valid=False, error=f"TLS handshake failed: {exc.reason or exc}")
    try:
        cert = writer.get_extra_info("peercert") or {}
        not_after = str(cert.get("notAfter", ""))
        days = (ssl.cert_time_to_seconds(not_after) - time.time()) / 86400 if not_after else None
        return CertInfo(valid=True, days_left=days, not_after=not_after, issuer=_issuer(cert))
    finally:
        writer.close()
        # The certificate is read; a peer that resets or botches the TLS close (ssl.SSLError,
        # ConnectionResetError: both OSError) changes nothing about it.
        with contextlib.suppress(OSError):
            await writer.wait_closed()
