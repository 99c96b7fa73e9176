"""Render docs/configuration.md from config.py: every setting, its default and the comment above it.

`python -m celery_stack_core.settings_doc > docs/configuration.md`; a test fails when the file
is stale or a setting has no comment ("one documented variable per knob").
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from celery_stack_core.config import Settings

SOURCE = Path(__file__).with_name("config.py")
SECTION = re.compile(r"^\s*# --- (.+?) -+\s*$")


@dataclass(frozen=True)
class Knob:
    section: str
    name: str
    default: str
    doc: str


def knobs() -> list[Knob]:
    lines = SOURCE.read_text().splitlines()
    tree = ast.parse(SOURCE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    fields = Settings.model_fields
    out: list[Knob] = []
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        if name not in fields:
            continue
        doc: list[str] = []
        section = ""
        # The comment block above the field documents it; a block above a run of fields with no
        # blank line between them documents the whole run.
        i = node.lineno - 2
        while i >= 0 and lines[i].strip() and not lines[i].strip().startswith("#"):
            i -= 1
        while i >= 0 and lines[i].strip().startswith("#") and not SECTION.match(lines[i]):
            doc.insert(0, lines[i].strip().lstrip("#").strip())
            i -= 1
        for j in range(node.lineno - 1, -1, -1):
            if m := SECTION.match(lines[j]):
                section = m.group(1).strip()
                break
        inline = lines[node.end_lineno - 1 if node.end_lineno else node.lineno - 1]
        if "# " in inline and "noqa" not in inline.split("# ", 1)[1]:
            doc.append(inline.split("# ", 1)[1].strip())
        field = fields[name]
        default = "" if field.default_factory else repr(field.default)
        if name == "API_TOKENS":
            default = "dev tokens (local/test only)"
        out.append(Knob(section, name, default, " ".join(doc)))
    return out


def render() -> str:
    rows = [
        "# Configuration reference",
        "",
        "Every setting is an environment variable (pydantic-settings; empty values are ignored).",
        "Generated from `libs/core/celery_stack_core/config.py` by",
        "`python -m celery_stack_core.settings_doc`; a test keeps it in sync.",
        "",
    ]
    section = None
    for k in knobs():
        if k.section != section:
            section = k.section
            rows += [
                "",
                f"## {section}",
                "",
                "| variable | default | meaning |",
                "| --- | --- | --- |",
            ]
        default = f"`{k.default}`" if k.default else ""
        rows.append(f"| `{k.name}` | {default} | {k.doc.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(render(), end="")
