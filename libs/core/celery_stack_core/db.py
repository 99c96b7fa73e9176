"""Async engine on asyncpg. One engine per process (and per event loop)."""

from __future__ import annotations

from sqlalchemy.ext import asyncio as sa_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from celery_stack_core.config import Settings


def make_engine(settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    # Looked up when called: OpenTelemetry's SQLAlchemy instrumentation wraps
    # create_async_engine after this module is imported, and a name bound at import would
    # bypass it (each statement untraced, only the connects).
    return sa_asyncio.create_async_engine(
        settings.stores.database_url,
        pool_size=pool_size or settings.stores.database_pool_size,
        max_overflow=2,
        pool_pre_ping=True,  # a PostgreSQL restart must not leave dead connections in the pool
        pool_recycle=1800,
        connect_args={"server_settings": {"application_name": settings.deploy.service_name}},
    )


def sync_url(url: str) -> str:
    """The same database for tools that want a plain driver name (psql-style URLs)."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)
