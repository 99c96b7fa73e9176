"""Validate rendered Kubernetes objects against the API schemas of several Kubernetes versions.

Runs with the tools venv's Python (kubernetes-validate lives there, not in the workspace):
    .tools/chart-venv/bin/python tests/chart/k8s_validate.py VERSIONS FILE...
VERSIONS is comma-separated (1.30.0,1.32.0,1.35.0); each FILE holds YAML documents. Prints one
JSON line: a list of {file, index, kind, name, version, status, error}, where status is "ok",
"invalid" or "crd" (a custom resource: no built-in schema; the tests check those themselves).
Strict mode: an unknown field is an error, not a warning.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils as kv_utils
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

# kubernetes-validate re-reads the (large) definitions file for every object: read each once.
kv_utils.schema_contents = functools.cache(kv_utils.schema_contents)


_seen: dict[tuple[str, str], tuple[str, str]] = {}


def check(doc: dict[str, Any], version: str) -> tuple[str, str]:
    """Validate once per distinct object and version (the matrix repeats most objects)."""
    key = (json.dumps(doc, sort_keys=True), version)
    if key not in _seen:
        _seen[key] = _check(doc, version)
    return _seen[key]


def _check(doc: dict[str, Any], version: str) -> tuple[str, str]:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except SchemaNotFoundError:
        return "crd", ""
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        return "invalid", f"{path}: {exc.message}"
    return "ok", ""


def main(argv: list[str]) -> int:
    versions = argv[0].split(",")
    results = []
    for filename in argv[1:]:
        with open(filename) as fh:
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            docs = [d for d in yaml.load_all(fh, Loader=loader) if d]
        for index, doc in enumerate(docs):
            for version in versions:
                status, error = check(doc, version)
                results.append(
                    {
                        "file": filename,
                        "index": index,
                        "kind": doc.get("kind"),
                        "name": doc.get("metadata", {}).get("name"),
                        "version": version,
                        "status": status,
                        "error": error,
                    }
                )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
