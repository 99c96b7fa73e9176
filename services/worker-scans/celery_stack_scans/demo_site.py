"""A small, deliberately flawed website to scan locally (`make run` demo and the tests).

`celery-stack-demo-site --port 8081 [--https-port 8443 --cert c.pem --key k.pem]`

Pages: `/` (links to the others, a cookie without flags, a version-disclosing Server header,
mixed content over HTTPS, the word "casino" for content rules), `/about`, `/slow` (sleeps
`--slow` seconds: scans that take a while), `/redirect?to=URL` (a redirect anywhere: the SSRF
tests), `/big` (a body larger than the scanner's limit).
"""

from __future__ import annotations

import argparse
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

INDEX = b"""<!doctype html><html><head><title>Demo shop</title>
<script src="http://cdn.example.com/lib.js"></script></head>
<body><h1>Demo shop</h1><p>Best casino deals in town.</p>
<img src="http://images.example.com/logo.png">
<a href="/about">About</a> <a href="/slow">Slow page</a> <a href="/page/1">Page 1</a>
<a href="https://elsewhere.example.org/">Elsewhere</a></body></html>"""
ABOUT = b"<html><body><h1>About</h1><a href='/'>home</a> <a href='/page/2'>2</a></body></html>"


@dataclass
class SiteOptions:
    slow: float = 2.0
    pages: int = 5
    headers: dict[str, str] = field(default_factory=lambda: {"Server": "DemoServer/1.2.3"})
    index_extra: str = ""  # HTML appended to `/` (tests: odd links)
    https_root_redirect: str = ""  # `/` over HTTPS redirects here (tests: a refused target)
    keep_alive: bool = False  # HTTP/1.1 persistent connections (tests: connection reuse)


def handler_for(opts: SiteOptions) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "DemoServer/1.2.3"
        sys_version = ""
        protocol_version = "HTTP/1.1" if opts.keep_alive else "HTTP/1.0"

        def log_message(self, format: str, *args: object) -> None:
            return  # quiet

        def _send(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if (
                url.path == "/"
                and opts.https_root_redirect
                and isinstance(self.connection, ssl.SSLSocket)
            ):
                self._send(302, b"", {"Location": opts.https_root_redirect})
            elif url.path == "/":
                body = INDEX + opts.index_extra.encode()
                self._send(200, body, {"Set-Cookie": "session=abc123; Path=/"})
            elif url.path == "/about":
                self._send(200, ABOUT)
            elif url.path == "/slow":
                time.sleep(opts.slow)
                self._send(200, b"<html><body>slow <a href='/about'>about</a></body></html>")
            elif url.path.startswith("/page/"):
                n = int(url.path.rsplit("/", 1)[1] or 0)
                nxt = f"<a href='/page/{n + 1}'>next</a>" if n < opts.pages else ""
                self._send(200, f"<html><body>page {n} {nxt}</body></html>".encode())
            elif url.path == "/redirect":
                to = parse_qs(url.query).get("to", ["/"])[0]
                self._send(302, b"", {"Location": to})
            elif url.path == "/big":
                self._send(200, b"x" * 5_000_000)
            else:
                self._send(404, b"not found")

    return Handler


class DemoSite:
    """HTTP (and optionally HTTPS) servers in daemon threads of this process."""

    def __init__(  # noqa: PLR0913 - a demo server's options, keyword-only with defaults
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        https_port: int | None = None,
        cert: str | None = None,
        key: str | None = None,
        opts: SiteOptions | None = None,
    ) -> None:
        handler = handler_for(opts or SiteOptions())
        self.http = ThreadingHTTPServer((host, port), handler)
        self.https: ThreadingHTTPServer | None = None
        if https_port is not None and cert and key:
            self.https = ThreadingHTTPServer((host, https_port), handler)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self.https.socket = ctx.wrap_socket(self.https.socket, server_side=True)
        for server in (self.http, self.https):
            if server is not None:
                server.daemon_threads = True
                threading.Thread(target=server.serve_forever, daemon=True).start()

    @property
    def http_port(self) -> int:
        return int(self.http.server_address[1])

    @property
    def https_port(self) -> int | None:
        return int(self.https.server_address[1]) if self.https else None

    def close(self) -> None:
        for server in (self.http, self.https):
            if server is not None:
                server.shutdown()
                server.server_close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="celery-stack-demo-site", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--https-port", type=int, default=None)
    parser.add_argument("--cert", default=None)
    parser.add_argument("--key", default=None)
    parser.add_argument("--slow", type=float, default=2.0, help="seconds /slow takes")
    args = parser.parse_args(argv)
    site = DemoSite(
        host=args.host,
        port=args.port,
        https_port=args.https_port,
        cert=args.cert,
        key=args.key,
        opts=SiteOptions(slow=args.slow),
    )
    print(f"demo site on http://{args.host}:{site.http_port}/", flush=True)
    if site.https_port:
        print(f"demo site on https://{args.host}:{site.https_port}/", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        site.close()


def make_certs(directory: str, names: list[str], *, days: int = 90) -> dict[str, str]:
    """A throwaway CA and a server certificate for `names` (DNS names or IP addresses), as PEM
    files in `directory`: {"ca", "cert", "key"}. For the HTTPS demo and the tests only."""
    import datetime as dt
    import ipaddress
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "celery-stack demo CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days + 1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"ca": out / "ca.pem", "cert": out / "cert.pem", "key": out / "key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return {k: str(v) for k, v in paths.items()}
