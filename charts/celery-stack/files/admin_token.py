"""Admin-token bootstrap: creates the release's admin token Secret in the cluster, once.

A token generated at render time changes on every `helm template` (Argo CD renders that way and
`lookup` returns nothing there), rotating the credential and restarting every pod on each sync.
This Job, a pre-install/pre-upgrade hook (Argo CD runs it as PreSync), generates the token in the
cluster instead: it creates the Secret only when it does not exist, so the token, and every
pod's checksum, stay stable. Stdlib only; talks to the API server with the pod's own token.
Usage: python admin_token.py SECRET_NAME   (env KUBE_API, KUBE_TOKEN_FILE, KUBE_CA_FILE,
KUBE_NAMESPACE override the in-cluster defaults, for tests)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

SA = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def _request(method: str, url: str, body: dict[str, object] | None = None) -> int:
    token = Path(os.environ.get("KUBE_TOKEN_FILE") or SA / "token").read_text().strip()
    ca = os.environ.get("KUBE_CA_FILE", str(SA / "ca.crt"))
    ctx = ssl.create_default_context(cafile=ca) if url.startswith("https") else None
    req = urllib.request.Request(  # noqa: S310 - the API server URL, https in-cluster
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def secret_body(name: str, token: str) -> dict[str, object]:
    spec = [{"name": "admin", "sha256": hashlib.sha256(token.encode()).hexdigest(),
             "scopes": ["user", "admin"]}]  # fmt: skip
    data = {"ADMIN_TOKEN": token, "API_TOKENS": json.dumps(spec)}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "celery-stack"}},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def main(argv: list[str]) -> int:
    name = argv[0]
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
    api = (
        os.environ.get("KUBE_API")
        or f"https://{host}:{os.environ.get('KUBERNETES_SERVICE_PORT', '443')}"
    )
    ns = os.environ.get("KUBE_NAMESPACE") or (SA / "namespace").read_text().strip()
    base = f"{api}/api/v1/namespaces/{ns}/secrets"
    status = _request("GET", f"{base}/{name}")
    if status == 200:
        print(f"secret {name} exists: token kept", flush=True)
        return 0
    if status != 404:
        print(f"GET secret {name}: HTTP {status}", file=sys.stderr)
        return 1
    status = _request("POST", base, secret_body(name, secrets.token_urlsafe(32)))
    if status in (201, 409):  # 409: a concurrent run created it first; it is kept
        print(f"secret {name}: {'created' if status == 201 else 'exists'}", flush=True)
        return 0
    print(f"POST secret {name}: HTTP {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
