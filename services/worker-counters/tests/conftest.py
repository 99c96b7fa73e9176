import pytest
from sqlalchemy import text


@pytest.fixture
async def posts(clean_db):
    """Factory: n posts, returns their ids."""

    async def make(n: int, table: str = "posts") -> list[int]:
        async with clean_db.begin() as conn:
            rows = await conn.execute(
                text(
                    f"INSERT INTO {table} (author_id, title) "
                    "SELECT 'author', 't' || g FROM generate_series(1, :n) g RETURNING id"
                ),
                {"n": n},
            )
            return [r[0] for r in rows]

    return make


async def _column(engine, table: str, col: str) -> dict[int, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(text(f"SELECT id, {col} FROM {table}"))
        return {r[0]: r[1] for r in rows}


@pytest.fixture
def column():
    """column(engine, table, col) -> {id: value}"""
    return _column
