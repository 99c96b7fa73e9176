"""Render docs/configuration.md from config.py: every setting, its default and the comment above it.

`python -m celery_stack_core.settings_doc > docs/configuration.md`; a test fails when the file
is stale or a setting has no comment ("one documented variable per knob"). Sections are the
settings groups (their docstring names them); per-queue variables come from the queue registry.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from celery_stack_core.config import QueueSettings, Settings, env_name
from celery_stack_core.queues import QUEUES

SOURCE = Path(__file__).with_name("config.py")


@dataclass(frozen=True)
class Knob:
    section: str
    name: str
    default: str
    doc: str


@functools.cache
def _tree() -> ast.Module:
    source = SOURCE.read_text()
    try:
        return ast.parse(source)
    except SystemError:
        # CPython 3.11 keeps the AST converter's recursion depth in state shared by threads; a
        # thread converting at the same moment trips its "recursion depth mismatch" check
        # (gh-106905, fixed in later releases). The source is fine: converting again succeeds.
        return ast.parse(source)


def _comments(cls: type[BaseModel]) -> dict[str, str]:
    """Field -> the comment block above it; a block above a run of fields with no blank line
    between them documents the whole run."""
    lines = SOURCE.read_text().splitlines()
    tree = _tree()
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    out: dict[str, str] = {}
    for field in node.body:
        if not (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)):
            continue
        doc: list[str] = []
        i = field.lineno - 2
        while i >= 0 and lines[i].strip() and not lines[i].strip().startswith("#"):
            i -= 1
        while i >= 0 and lines[i].strip().startswith("#"):
            doc.insert(0, lines[i].strip().lstrip("#").strip())
            i -= 1
        out[field.target.id] = " ".join(doc)
    return out


def _default(cls: type[BaseModel], field: str) -> str:
    info = cls.model_fields[field]
    return "" if info.default_factory else repr(info.default)


def knobs() -> list[Knob]:
    out: list[Knob] = []
    for group, cls in Settings.GROUPS.items():
        docs = _comments(cls)
        section = (cls.__doc__ or group).strip()
        for field in cls.model_fields:
            default = _default(cls, field)
            if group == "api" and field == "tokens":
                default = "dev tokens (local/test only)"
            out.append(Knob(section, env_name(cls, field), default, docs.get(field, "")))
        if group == "celery":
            out += _queue_knobs()
    return out


def _queue_knobs() -> list[Knob]:
    docs = _comments(QueueSettings)
    section = (QueueSettings.__doc__ or "queues").strip()
    out = []
    for spec in QUEUES.values():
        for env, field in QueueSettings.env_names(spec).items():
            default = getattr(spec, field, None)
            doc = f"Queue `{spec.name}`: {docs.get(field, '')}" if docs.get(field) else ""
            out.append(Knob(section, env, "" if default is None else repr(default), doc))
    return out


def render() -> str:
    rows = [
        "# Configuration reference",
        "",
        "Every setting is an environment variable (pydantic-settings; empty values are ignored).",
        "Generated from `libs/core/celery_stack_core/config.py` and the queue registry",
        "(`queues.py`) by `python -m celery_stack_core.settings_doc`; a test keeps it in sync.",
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
