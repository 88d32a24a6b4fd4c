"""The README's stage table lists exactly the registry's stages, in the order they run, with their scopes."""

import re
from pathlib import Path

from precompute import stages

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `(\w+)` \| (arm|pair) \|")  # | `matching` | pair | what it stores |


def readme_stages(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in map(ROW.match, text.splitlines()) if m]


def test_the_readme_lists_every_stage_with_its_scope():
    assert readme_stages(README.read_text(encoding="utf-8")) == [(s.name, s.scope) for s in stages.REGISTRY.values()]


def test_the_check_sees_a_missing_row_and_a_wrong_scope():
    table = "| `projection` | arm | top tokens |\n| `matching` | pair | matches |\n"
    assert readme_stages(table) == [("projection", "arm"), ("matching", "pair")]
    assert readme_stages(table.replace("| pair |", "| arm |")) == [("projection", "arm"), ("matching", "arm")]
