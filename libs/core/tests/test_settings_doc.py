from pathlib import Path

from celery_stack_core.config import Settings
from celery_stack_core.settings_doc import knobs, render

DOC = Path(__file__).parents[3] / "docs" / "configuration.md"


def test_every_setting_is_documented():
    found = {k.name: k for k in knobs()}
    assert set(found) == set(Settings.env_names()), "a variable is missing from the reference"
    undocumented = [n for n, k in found.items() if not k.doc]
    assert not undocumented, f"settings without a comment in config.py: {undocumented}"


def test_reference_is_up_to_date():
    assert DOC.read_text() == render(), (
        "run: uv run python -m celery_stack_core.settings_doc > docs/configuration.md"
    )
