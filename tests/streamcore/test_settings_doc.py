"""The settings tables in docs/settings.md and the README cannot drift from the settings model: every variable,
its default, and in docs/settings.md its section and field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from streamcore.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
_ROW = re.compile(r"^\| `STYLESTREAM_([A-Z0-9_]+)` \| ([^|]*) \|")
_SECTION = re.compile(r"^## `(\w+)`")
_IN_CODE = re.compile(r"\| `(\w+)\.(\w+)` \|$")


def _rows(path: Path) -> dict[str, str]:
    """Variable name (lower-case, no prefix) → the default column."""
    return {name: default for name, (default, _, _) in _placed_rows(path).items()}


def _placed_rows(path: Path) -> dict[str, tuple[str, str | None, tuple[str, str] | None]]:
    """Variable name → (default column, the section heading above the row, the row's ``section.field`` cell)."""
    rows: dict[str, tuple[str, str | None, tuple[str, str] | None]] = {}
    heading = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if section := _SECTION.match(line):
            heading = section.group(1)
        match = _ROW.match(line)
        if match:
            name = match.group(1).lower()
            assert name not in rows, f"{path.name}: STYLESTREAM_{match.group(1)} is listed twice"
            code = _IN_CODE.search(line)
            rows[name] = (match.group(2).strip(), heading, code.groups() if code else None)
    return rows


def _documented_default_matches(cell: str, default: object) -> bool:
    """The table's default column against the model's default (its first word is the value)."""
    word = cell.split(" ")[0].strip("`")
    if default is None:
        return word == "unset"
    if isinstance(default, bool):
        return word == str(default).lower()
    if isinstance(default, int | float):
        try:
            return float(word) == float(default)
        except ValueError:
            return False
    if isinstance(default, SecretStr):
        return word == "unset"
    if default == "":
        return word == "empty"
    if default == {}:
        return word == "{}"
    return word == str(default) or word == f"./{default}"


def _model_defaults() -> dict[str, object]:
    """Variable name → the model's default, whatever the section."""
    defaults = {}
    sections = Settings.sections()
    for name, (section, field_name) in Settings.NAMES.items():
        field = sections[section].model_fields[field_name]
        defaults[name] = field.default_factory() if field.default_factory else field.default
    return defaults


def test_docs_table_lists_every_setting_with_its_default() -> None:
    rows = _rows(ROOT / "docs" / "settings.md")
    defaults = _model_defaults()
    assert sorted(set(defaults) - set(rows)) == [], "settings missing from docs/settings.md"
    assert sorted(set(rows) - set(defaults)) == [], "docs/settings.md lists settings the model does not have"
    wrong = {name: (rows[name], defaults[name]) for name in rows
             if not _documented_default_matches(rows[name], defaults[name])}
    assert wrong == {}, "defaults in docs/settings.md differ from the model"


def test_docs_table_lists_every_setting_under_its_section_with_its_field() -> None:
    placed = _placed_rows(ROOT / "docs" / "settings.md")
    wrong = {name: (heading, code) for name, (_, heading, code) in placed.items()
             if code is None or (heading, code[1]) != Settings.NAMES[name] or code[0] != heading}
    assert wrong == {}, "rows under another section than the model's, or naming another field"


@pytest.mark.parametrize("doc", ["README.md"])
def test_readme_table_is_a_true_subset(doc: str) -> None:
    rows = _rows(ROOT / doc)
    defaults = _model_defaults()
    assert rows, f"{doc} has no settings table"
    assert sorted(set(rows) - set(defaults)) == []
    wrong = {name: (rows[name], defaults[name]) for name in rows
             if not _documented_default_matches(rows[name], defaults[name])}
    assert wrong == {}


def test_a_wrong_default_is_caught() -> None:
    assert not _documented_default_matches("5", 4)
    assert not _documented_default_matches("true", False)
    assert not _documented_default_matches("`./other`", Path("./models"))
    assert _documented_default_matches("`./models`", Path("./models"))
