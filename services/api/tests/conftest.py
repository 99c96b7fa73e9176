import contextlib

import httpx
import pytest

from celery_stack_api.main import create_app
from celery_stack_core.config import DEV_ADMIN_TOKEN, DEV_USER_TOKEN


@pytest.fixture
def client_for():
    """client_for(settings) -> async context manager yielding a client on an app with those settings."""

    @contextlib.asynccontextmanager
    async def make(settings, token=DEV_USER_TOKEN):
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://api",
                headers={"Authorization": f"Bearer {token}", "X-User-Id": "u1"},
            ) as c:
                yield c

    return make


@pytest.fixture
def admin_headers():
    return {"Authorization": f"Bearer {DEV_ADMIN_TOKEN}"}


@pytest.fixture
async def post_id(api):
    r = await api.post("/api/v1/posts", json={"title": "hello"})
    assert r.status_code == 201, r.text
    return r.json()["id"]
