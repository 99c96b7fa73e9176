"""Swagger UI works with no internet: /docs references only assets the app serves itself."""

import re

from celery_stack_api.main import create_app


async def test_docs_page_and_its_assets_are_served_locally(settings):
    import httpx

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            page = await c.get("/docs")
            assert page.status_code == 200
            refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
            assert refs, page.text
            assert not [r for r in refs if "//" in r], f"external assets: {refs}"
            assert "cdn" not in page.text.lower()
            for ref in refs:
                asset = await c.get(ref)
                assert asset.status_code == 200 and asset.content, ref
            assert (await c.get("/openapi.json")).status_code == 200
            assert (await c.get("/redoc")).status_code == 404  # its page would load a CDN
