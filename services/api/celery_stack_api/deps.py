"""Typed dependencies, so routes read like plain functions."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from celery_stack_api.auth import Principal
from celery_stack_api.state import AppState

_bearer = HTTPBearer(auto_error=False)

# The dependencies are `async def` although they never await: FastAPI runs a plain `def`
# dependency in a worker thread, three thread hand-offs per request on the hot path.


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.app
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def _principal(
    state: StateDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    principal = state.tokens.lookup(creds.credentials) if creds else None
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or invalid bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


def require(scope: str) -> object:
    async def check(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
        if scope not in principal.scopes:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this token lacks the {scope!r} scope")
        return principal

    return check


UserDep = Annotated[Principal, Depends(require("user"))]
AdminDep = Annotated[Principal, Depends(require("admin"))]

# Ids are PostgreSQL bigints: anything else is a 422, never a 500 from the database.
TargetId = Annotated[int, Path(ge=1, le=2**63 - 1, description="Row id (positive bigint).")]
ActingUser = Annotated[
    str,
    Header(
        alias="X-User-Id",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:@\-]+$",
        description="The end user on whose behalf the calling service acts.",
    ),
]
