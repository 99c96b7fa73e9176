async def test_healthz(api):
    r = await api.get("/healthz")
    assert r.status_code == 200
