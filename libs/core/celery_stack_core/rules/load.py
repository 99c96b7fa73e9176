"""The rule set of this deployment: the shipped rules (with per-name overrides) plus the
operator's own, validated as data. Any error names the rule and the field."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from celery_stack_core.rules.defaults import DEFAULT_RULES
from celery_stack_core.rules.spec import Rule

_ADAPTER: TypeAdapter[Rule] = TypeAdapter(Rule)


class RuleConfigError(ValueError):
    """A rule that cannot run: malformed, duplicated, or naming what the schema lacks."""


def _field(loc: tuple[int | str, ...], kind: object) -> str:
    # pydantic puts the discriminator's value first in a tagged union's location.
    parts = [str(p) for p in loc]
    if parts and parts[0] == kind:
        parts = parts[1:]
    return ".".join(parts) or "(rule)"


def parse_rule(raw: Mapping[str, Any], *, where: str) -> Rule:
    """One rule from data; `where` says where it came from (`MAINTENANCE_RULES[2]`)."""
    if not isinstance(raw, Mapping):
        raise RuleConfigError(f"{where}: a rule must be an object, got {type(raw).__name__}")
    label = f"{where} (rule {raw.get('name')!r})" if raw.get("name") else where
    try:
        return _ADAPTER.validate_python(dict(raw))
    except ValidationError as exc:
        problems = "; ".join(
            f"{label}.{_field(err['loc'], raw.get('kind'))}: {err['msg']}" for err in exc.errors()
        )
        raise RuleConfigError(problems) from None


def with_overrides(
    rules: Iterable[Mapping[str, Any]], overrides: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    out = [dict(r) for r in rules]
    names = {r["name"] for r in out}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise RuleConfigError(
            f"MAINTENANCE_RULE_OVERRIDES names rules that do not exist: {unknown} "
            f"(default rules: {sorted(names)})"
        )
    for rule in out:
        rule.update(overrides.get(rule["name"], {}))
    return out


def build_rules(
    *,
    defaults: bool,
    overrides: Mapping[str, Mapping[str, Any]],
    extra: Iterable[Mapping[str, Any]],
) -> list[Rule]:
    """Default rules (if on, with overrides) then the operator's: each validated, and a name
    used twice refused (two definitions of one job is report 003's duplicate-task bug)."""
    sources: list[tuple[str, Mapping[str, Any]]] = []
    if defaults:
        merged = with_overrides(DEFAULT_RULES, overrides)
        sources += [(f"default rule {i}", rule) for i, rule in enumerate(merged)]
    elif overrides:
        raise RuleConfigError(
            "MAINTENANCE_RULE_OVERRIDES is set but MAINTENANCE_DEFAULT_RULES is off"
        )
    sources += [(f"MAINTENANCE_RULES[{i}]", raw) for i, raw in enumerate(extra)]
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for where, data in sources:
        rule = parse_rule(data, where=where)
        if rule.name in seen:
            raise RuleConfigError(
                f"{where}: rule name {rule.name!r} is already defined by {seen[rule.name]}; "
                "every rule (and its task) must have one definition"
            )
        seen[rule.name] = where
        rules.append(rule)
    return rules
