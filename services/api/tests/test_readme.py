"""The README's API commands run as written: no `<id>` placeholders to fill in, and what it says
about the admin token and `X-User-Id` is what the API does."""

import re
from pathlib import Path

from celery_stack_core.config import DEV_ADMIN_TOKEN

README = (Path(__file__).parents[3] / "README.md").read_text()
SHELL = "\n".join(re.findall(r"```bash\n(.*?)```", README, re.S))
COMMANDS = re.sub(r"(^|\s)#.*", "", SHELL, flags=re.M)  # comments may describe formats


def test_shell_blocks_have_no_placeholders():
    """`curl .../scans/<id>` made a newcomer edit each command: ids go in shell variables."""
    assert "curl" in SHELL
    assert not re.findall(r"<[a-z_-]+>", COMMANDS), re.findall(r"<[a-z_-]+>", COMMANDS)
    assert "$SCAN" in SHELL


async def test_the_admin_token_needs_x_user_id_as_the_readme_says(api, clean_db):
    assert "The admin token sends `X-User-Id` too" in README
    admin = {"Authorization": f"Bearer {DEV_ADMIN_TOKEN}"}
    r = await api.get("/api/v1/scans", headers={**admin, "X-User-Id": ""})
    assert r.status_code == 422 and "X-User-Id" in r.text
    r = await api.get("/api/v1/scans", headers={**admin, "X-User-Id": "anyone"})
    assert r.status_code == 200
