"""Scan endpoints. Owners (X-User-Id) see their own scans; tokens with the admin scope see all."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response, status
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, StringConstraints

from celery_stack_api import scans
from celery_stack_api.deps import ActingUser, StateDep, UserDep
from celery_stack_core.models import ScanStatus
from celery_stack_core.scan_spec import InvalidDomain, ScanConfig, normalize_domain

router = APIRouter(prefix="/api/v1/scans", tags=["scans"])
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="Repeat a create with the same key and you get the same scan, not a new one.",
    ),
]


# The schema's constraint IS the validation: a name of ASCII labels (IDNs in their xn-- form),
# at least two, a top-level label that starts with a letter, at most 253 characters.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DOMAIN_PATTERN = rf"^(?:{_LABEL}\.)+[A-Za-z](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?\.?$"


def _explain(value: object) -> object:
    """A clear message for the usual mistakes, before the pattern's generic one."""
    if isinstance(value, str):
        if not value.isascii():
            raise ValueError("give the domain in its ASCII (IDNA, xn--) form")
        try:
            normalize_domain(value)
        except InvalidDomain as exc:
            raise ValueError(str(exc)) from None
    return value


def _normalize(value: str) -> str:
    return normalize_domain(value)


Domain = Annotated[
    str,
    StringConstraints(min_length=1, max_length=253, pattern=DOMAIN_PATTERN),
    BeforeValidator(_explain),  # runs first: it wraps what is left of it
    AfterValidator(_normalize),
]


class ScanIn(BaseModel):
    domain: Domain = Field(
        description="A domain name (stored lower-cased, trailing dot removed).",
        examples=["example.com"],
    )
    config: ScanConfig = Field(default_factory=ScanConfig)


async def _owner(user: ActingUser, principal: UserDep) -> str | None:
    """Whose scans this request may see: the acting user's; an admin token sees all (None)."""
    return None if "admin" in principal.scopes else user


OwnerDep = Annotated[str | None, Depends(_owner)]


@router.post(
    "",
    name="create_scan",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "Replay of an Idempotency-Key: the existing scan"},
        409: {"description": "The Idempotency-Key was used for a different request."},
    },
)
async def post_scan(
    *,
    body: ScanIn,
    user: ActingUser,
    state: StateDep,
    _: UserDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    scan, created = await scans.create_scan(
        state,
        owner=user,
        domain=body.domain,
        config=body.config.model_dump(mode="json", exclude_defaults=True),
        idempotency_key=idempotency_key,
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return scan


@router.get("")
async def read_scans(
    *,
    owner: OwnerDep,
    state: StateDep,
    status_filter: Annotated[ScanStatus | None, Query(alias="status")] = None,
    cursor: Annotated[
        str | None,
        Query(
            max_length=49,
            pattern=scans.CURSOR_PATTERN,
            description="`next_cursor` of the previous page; empty or absent: the first page.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> dict[str, Any]:
    return await scans.list_scans(state, owner, status=status_filter, cursor=cursor, limit=limit)


@router.get("/{scan_id}")
async def read_scan(*, scan_id: uuid.UUID, owner: OwnerDep, state: StateDep) -> dict[str, Any]:
    return await scans.get_scan(state, scan_id, owner)


@router.get("/{scan_id}/findings")
async def read_findings(
    *,
    scan_id: uuid.UUID,
    owner: OwnerDep,
    state: StateDep,
    cursor: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    return await scans.list_findings(state, scan_id, owner, after=cursor, limit=limit)


@router.post("/{scan_id}/cancel", responses={409: {"description": "The scan has finished."}})
async def cancel_scan(*, scan_id: uuid.UUID, owner: OwnerDep, state: StateDep) -> dict[str, Any]:
    return await scans.cancel_scan(state, scan_id, owner)


@router.post(
    "/{scan_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    responses={409: {"description": "The scan has not finished."}},
)
async def retry_scan(*, scan_id: uuid.UUID, owner: OwnerDep, state: StateDep) -> dict[str, Any]:
    return await scans.retry_scan(state, scan_id, owner)


@router.delete("/{scan_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_scan(*, scan_id: uuid.UUID, owner: OwnerDep, state: StateDep) -> None:
    await scans.delete_scan(state, scan_id, owner)
