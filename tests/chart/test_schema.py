"""values.schema.json: values.yaml validates against it, every key is described, typed and
defaulted, nothing escapes it; values.yaml has a comment above every key; the generated values
reference is in sync."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import jsonschema
import pytest
import yaml
from chartlib import CHART, HERE

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def walk(schema: dict[str, Any], path: str = ""):
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from walk(prop, f"{path}.{name}" if path else name)


def test_schema_is_draft_07_and_itself_valid():
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_values_yaml_validates_against_the_schema():
    jsonschema.Draft7Validator(SCHEMA).validate(VALUES)


@pytest.mark.parametrize(
    "bad",
    [
        {"queues": {"counters": {"concurency": 1}}},
        {"queues": {"Bad_Name": {"command": "x"}}},
        {"celery": {"visibilityTimeout": "3600"}},
        {"beat": {"replicas": 3}},
        {"podSecurityContext": {"runAsNonRoot": False}},
        {"image": {"digest": "latest"}},
        {"redis": {"url": "http://redis"}},
        {"unknownTopLevel": 1},
    ],
)
def test_schema_refuses_bad_values(bad):
    merged = json.loads(json.dumps(VALUES))
    stack: list[tuple[dict[str, Any], dict[str, Any]]] = [(merged, bad)]
    while stack:
        dst, src = stack.pop()
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                stack.append((dst[k], v))
            else:
                dst[k] = v
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(SCHEMA).validate(merged)


def test_every_property_has_description_type_default():
    for path, prop in walk(SCHEMA):
        if not path:
            continue
        assert prop.get("description"), path
        assert "type" in prop, path
        assert "default" in prop, path


def test_schema_defaults_equal_values_yaml():
    for path, prop in walk(SCHEMA):
        if not path:
            continue
        cur: Any = VALUES
        for part in path.split("."):
            cur = cur[part]
        assert prop["default"] == cur, path


def test_every_object_closes_its_properties():
    """Our own structures refuse unknown keys; open objects are only Kubernetes pass-throughs
    (marked with $comment) or maps of a typed value."""
    for path, prop in [*walk(SCHEMA), *walk(SCHEMA["definitions"]["queue"], "queues.<name>")]:
        if prop.get("type") != "object":
            continue
        extra = prop.get("additionalProperties")
        if "properties" in prop:
            assert extra is False, path
        elif extra is True:
            # Kubernetes pass-throughs, and Helm's `global`, open by Helm's contract
            assert path == "global" or "Kubernetes" in prop.get("$comment", ""), path
        else:
            assert isinstance(extra, dict), path


def test_queue_entries_accept_every_queue_default_and_a_command():
    entry = SCHEMA["definitions"]["queue"]["properties"]
    assert set(entry) == set(SCHEMA["properties"]["queueDefaults"]["properties"]) | {"command"}


def test_values_yaml_has_a_comment_above_every_key():
    lines = (CHART / "values.yaml").read_text().splitlines()
    missing = []
    for i, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z0-9_]+:", line):
            prev = lines[i - 1].strip() if i else ""
            if not prev.startswith("#"):
                missing.append(f"{i + 1}: {line.strip()}")
    assert not missing, missing


def test_values_reference_is_generated_from_the_schema():
    proc = subprocess.run(
        [sys.executable, str(HERE / "gen_values_reference.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout
    text = (CHART.parents[1] / "docs" / "values-reference.md").read_text()
    for path, _ in walk(SCHEMA):
        if path:
            assert f"`{path}`" in text, path
