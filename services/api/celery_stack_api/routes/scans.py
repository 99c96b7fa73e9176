"""Scan endpoints. Owners (X-User-Id) see their own scans; tokens with the admin scope see all."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from pydantic import BaseModel, Field, field_validator

from celery_stack_api import scans
from celery_stack_api.auth import Principal
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


class ScanIn(BaseModel):
    domain: str = Field(min_length=1, max_length=300, examples=["example.com"])
    config: ScanConfig = Field(default_factory=ScanConfig)

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        try:
            return normalize_domain(value)
        except InvalidDomain as exc:
            raise ValueError(str(exc)) from None


def _owner(principal: Principal, user: str) -> str | None:
    return None if "admin" in principal.scopes else user


def _hooks(request: Request) -> scans.ScanHooks:
    hooks: scans.ScanHooks = getattr(request.app.state, "scan_hooks", scans.NO_HOOKS)
    return hooks


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Replay of an Idempotency-Key: the existing scan"}},
)
async def create_scan(
    *,
    body: ScanIn,
    user: ActingUser,
    state: StateDep,
    _: UserDep,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    scan, created = await scans.create_scan(
        state,
        owner=user,
        domain=body.domain,
        config=body.config.model_dump(mode="json", exclude_defaults=True),
        idempotency_key=idempotency_key,
        hooks=_hooks(request),
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return scan


@router.get("")
async def read_scans(
    *,
    user: ActingUser,
    state: StateDep,
    principal: UserDep,
    status_filter: Annotated[ScanStatus | None, Query(alias="status")] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> dict[str, Any]:
    return await scans.list_scans(
        state, _owner(principal, user), status=status_filter, cursor=cursor, limit=limit
    )


@router.get("/{scan_id}")
async def read_scan(
    *, scan_id: uuid.UUID, user: ActingUser, state: StateDep, principal: UserDep
) -> dict[str, Any]:
    return await scans.get_scan(state, scan_id, _owner(principal, user))


@router.get("/{scan_id}/findings")
async def read_findings(
    *,
    scan_id: uuid.UUID,
    user: ActingUser,
    state: StateDep,
    principal: UserDep,
    cursor: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    return await scans.list_findings(
        state, scan_id, _owner(principal, user), after=cursor, limit=limit
    )


@router.post("/{scan_id}/cancel")
async def cancel_scan(
    *, scan_id: uuid.UUID, user: ActingUser, state: StateDep, principal: UserDep
) -> dict[str, Any]:
    return await scans.cancel_scan(state, scan_id, _owner(principal, user))


@router.post("/{scan_id}/retry", status_code=status.HTTP_202_ACCEPTED)
async def retry_scan(
    *,
    scan_id: uuid.UUID,
    user: ActingUser,
    state: StateDep,
    principal: UserDep,
    request: Request,
) -> dict[str, Any]:
    return await scans.retry_scan(state, scan_id, _owner(principal, user), _hooks(request))


@router.delete("/{scan_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_scan(
    *, scan_id: uuid.UUID, user: ActingUser, state: StateDep, principal: UserDep
) -> None:
    await scans.delete_scan(state, scan_id, _owner(principal, user))
