"""The settings file named by ``STYLESTREAM_CONFIG_FILE``: TOML or JSON, read and checked."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from streamcore.exceptions import StylestreamError

CONFIG_FILE_VARIABLE = "STYLESTREAM_CONFIG_FILE"


def read_config_file(path: Path, known: set[str]) -> dict[str, Any]:
    """The settings a TOML or JSON file holds; ``known``: the keys a setting has.

    Raises:
        StylestreamError: the file cannot be read or parsed, is not a table of settings, or names a setting
            that does not exist (a typo would otherwise leave the default in place without a word).
    """
    try:
        text = path.read_text(encoding="utf-8")
        values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSON and TOML errors are ValueErrors
        raise StylestreamError(f"config file {path} ({CONFIG_FILE_VARIABLE}): {exc}") from None
    if not isinstance(values, dict):
        raise StylestreamError(f"config file {path}: expected a table of settings, got {type(values).__name__}")
    unknown = sorted(set(values) - known)
    if unknown:
        raise StylestreamError(f"config file {path}: no such setting: {', '.join(unknown[:5])} (docs/settings.md "
                               "lists them: the variables' names without STYLESTREAM_, lower-case)")
    return values
