"""Generate docs/values-reference.md from charts/celery-stack/values.schema.json.

`python tests/chart/gen_values_reference.py [--check]`: the schema is the single source of every
key's type, default and description; `--check` exits 1 when the committed page differs (the
drift test and `make chart-docs` use it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "charts" / "celery-stack" / "values.schema.json"
OUT = ROOT / "docs" / "values-reference.md"


def _type(prop: dict[str, Any]) -> str:
    t = prop.get("type", "")
    text = " or ".join(t) if isinstance(t, list) else str(t)
    if "enum" in prop:
        text += " (" + ", ".join(f"`{v}`" for v in prop["enum"]) + ")"
    bounds = [
        f"{label} {prop[key]}"
        for key, label in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="))
        if key in prop
    ]
    if bounds:
        text += " " + ", ".join(bounds)
    return text


def _default(prop: dict[str, Any]) -> str:
    if "default" not in prop:
        return ""
    value = json.dumps(prop["default"], separators=(", ", ": "))
    if len(value) > 60:
        return "see values.yaml"
    return f"`{value}`".replace("|", "\\|")


def _rows(props: dict[str, Any], prefix: str, defs: dict[str, Any]) -> list[str]:
    rows = []
    for name, prop in props.items():
        key = f"{prefix}{name}"
        desc = prop.get("description", "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_type(prop)} | {_default(prop)} | {desc} |")
        if prop.get("type") == "object" and "properties" in prop:
            rows += _rows(prop["properties"], f"{key}.", defs)
        extra = prop.get("additionalProperties")
        if isinstance(extra, dict) and "$ref" in extra:
            ref = defs[extra["$ref"].rsplit("/", 1)[1]]
            rows += _rows(ref["properties"], f"{key}.<name>.", defs)
    return rows


def render() -> str:
    schema = json.loads(SCHEMA.read_text())
    lines = [
        "# celery-stack chart: values reference",
        "",
        "<!-- Generated from charts/celery-stack/values.schema.json by",
        "     tests/chart/gen_values_reference.py (`make chart-docs`): do not edit. -->",
        "",
        schema["description"],
        "",
        "Entries of `queues` take any key of `queueDefaults` (listed under `queues.<name>.`);",
        "a key an entry leaves out keeps its `queueDefaults` value.",
        "",
        "| Key | Type | Default | Description |",
        "| --- | --- | --- | --- |",
        *_rows(schema["properties"], "", schema.get("definitions", {})),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = render()
    if argv == ["--check"]:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run `make chart-docs`")
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
