"""What a scan request is: a domain name and its options. Shared by the API (which refuses bad
input with a 422) and worker-scans (which reads the stored config back)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from celery_stack_core.jsontypes import (
    JSON_INTEGER,
    JsonBool,
    JsonInt,
    exactly_one_of,
    given_once,
)

SCAN_TASK = "scans.run"
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class InvalidDomain(ValueError):
    pass


def normalize_domain(raw: str) -> str:
    """A lower-case ASCII (IDNA) host name with at least two labels, or InvalidDomain.

    IP literals, ports, paths, schemes and user info are refused: a scan names a domain.
    """
    name = raw.strip().lower().rstrip(".")
    if not name:
        raise InvalidDomain("domain is empty")
    if any(c in name for c in "/:@?#[] \\"):
        raise InvalidDomain("give a bare domain name (no scheme, port, path or user info)")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise InvalidDomain("IP addresses are not accepted; give a domain name")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidDomain(f"not a valid internationalized domain name: {exc}") from None
    if len(name) > 253:
        raise InvalidDomain("domain is longer than 253 characters")
    labels = name.split(".")
    if len(labels) < 2:
        raise InvalidDomain("domain needs at least two labels (e.g. example.com)")
    for label in labels:
        if not _LABEL.match(label):
            raise InvalidDomain(f"invalid label {label!r} in domain")
    if labels[-1].isdigit():
        raise InvalidDomain("the top-level label cannot be numeric")
    return name


class ContentRule(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=exactly_one_of("keyword", "regex"))
    name: str = Field(min_length=1, max_length=64)
    # A keyword (case-insensitive substring) or a regex; exactly one.
    keyword: str | None = Field(default=None, min_length=1, max_length=200)
    regex: str | None = Field(default=None, min_length=1, max_length=200)
    severity: str = Field(default="medium", pattern=r"^(info|low|medium|high)$")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regex: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_matcher(self) -> ContentRule:
        if not given_once(self, ("keyword", "regex")):
            raise ValueError("a content rule needs exactly one of keyword or regex")
        return self


class ScanConfig(BaseModel):
    """Per-scan options; anything unknown is refused (422), not silently ignored."""

    # JSON's types (jsontypes): `false` is not a port, `0` is not a boolean
    model_config = ConfigDict(extra="forbid")
    max_pages: Annotated[int, Field(ge=1, le=200), JSON_INTEGER] | None = Field(
        default=None, description="Same-origin pages to crawl (default: server's)."
    )
    https_port: JsonInt = Field(default=443, ge=1, le=65535)
    http_port: JsonInt = Field(default=80, ge=1, le=65535)
    check_http: JsonBool = Field(default=True, description="Also fetch over plain HTTP.")
    content_rules: list[ContentRule] = Field(
        default_factory=list,
        max_length=20,
        description="Each rule's `name` must differ from the others' (a finding's key).",
    )

    @field_validator("content_rules")
    @classmethod
    def _unique_names(cls, rules: list[ContentRule]) -> list[ContentRule]:
        # A finding's key is derived from its rule's name: duplicates would collide.
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError("content rule names must be unique")
        return rules


def task_id(scan_id: str, attempt: int) -> str:
    """The Celery task id of one attempt: every message and result key maps back to its row."""
    return f"scan-{scan_id}-{attempt}"
