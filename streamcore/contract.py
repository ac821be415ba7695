"""The JSON Schema files of the contract (``schemas/*.json``), generated from the models in :mod:`streamcore.schemas`.

Records others write to us (``post``, ``feedback``) get the schema the stages enforce: unknown fields refused, as
the stages refuse them. Records we write for others to read (``hints``, ``label``, ``dead-letter``,
``model-update``) get the schema readers may rely on: fields are added without a version bump and enumerations
(a label's ``head``, ``hints_used.source``, ``abstain``) may grow, so unknown fields are allowed and the known
values are listed as ``examples``. A file is named after its record's ``schema`` value (``post/v1`` →
``post.v1.json``).

``python -m streamcore.contract DIR`` writes the files; ``--check`` exits 1 when one differs from its model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from streamcore.schemas import DeadLetter, Feedback, Hints, Label, ModelUpdate, Post

#: Records the project reads from other producers: the schema is what the stages accept.
INBOUND: tuple[type[BaseModel], ...] = (Post, Feedback)
#: Records the project writes for others: the schema is what readers may rely on.
OUTBOUND: tuple[type[BaseModel], ...] = (Hints, Label, DeadLetter, ModelUpdate)

_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_name(model: type[BaseModel]) -> str:
    """The record's ``schema`` value, e.g. ``post/v1``."""
    return model.model_fields["schema_"].default


def file_name(model: type[BaseModel]) -> str:
    """``post/v1`` → ``post.v1.json``."""
    return schema_name(model).replace("/", ".") + ".json"


def _open(node: Any) -> Any:
    """``node`` with unknown properties allowed and string enumerations turned into examples, at every depth."""
    if isinstance(node, list):
        return [_open(item) for item in node]
    if not isinstance(node, dict):
        return node
    opened = {key: _open(value) for key, value in node.items() if key != "additionalProperties"}
    if node.get("type") == "string" and "enum" in opened:
        opened["examples"] = opened.pop("enum")
    elif node.get("type") == "string" and "const" in opened:
        opened["examples"] = [opened.pop("const")]
    return opened


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one contract record."""
    body = model.model_json_schema(by_alias=True, mode="validation")
    if model in OUTBOUND:
        version = body["properties"]["schema"]  # the one value that stays fixed: another is another contract
        body = _open(body)
        body["properties"]["schema"] = version
        body["description"] += " Readers must ignore fields they do not know; new optional fields and new values " \
                               "of the listed examples arrive without a version bump."
    name = schema_name(model)
    return {"$schema": _DIALECT, "$id": f"urn:stylestream:schema:{name}", **body, "title": name}


def render(model: type[BaseModel]) -> str:
    """The file text of one schema (stable: the same models always give the same bytes)."""
    return json.dumps(json_schema(model), indent=2, ensure_ascii=False) + "\n"


def write(directory: Path) -> list[Path]:
    """Write every contract schema into ``directory``; returns the files."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for model in (*INBOUND, *OUTBOUND):
        path = directory / file_name(model)
        path.write_text(render(model), encoding="utf-8")
        written.append(path)
    return written


def stale(directory: Path) -> list[str]:
    """The schema files under ``directory`` that are missing or differ from their models."""
    return [file_name(m) for m in (*INBOUND, *OUTBOUND)
            if not (directory / file_name(m)).is_file()
            or (directory / file_name(m)).read_text(encoding="utf-8") != render(m)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamcore.contract", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, nargs="?", default=Path("schemas"))
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file is stale")
    args = parser.parse_args(argv)
    if args.check:
        differing = stale(args.directory)
        for name in differing:
            print(f"{args.directory / name} differs from its model; rewrite with python -m streamcore.contract")
        return 1 if differing else 0
    for path in write(args.directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
