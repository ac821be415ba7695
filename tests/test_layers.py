"""The import graph: the contracts in pyproject.toml hold, and each entry point loads only what it uses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MINER = ("gensim", "nltk", "training.text")

#: Runs ``stylestream worker STAGE`` through the real CLI up to the stage's ``run``, which reports the
#: loaded modules instead of connecting to Kafka.
_WORKER = """
import json, sys
import workers.{stage} as stage
stage.run = lambda settings: print(json.dumps(sorted(sys.modules)))
from workers.cli import app
app(["worker", "{stage}"], standalone_mode=False)
"""
_IMPORT = "import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"

ENTRIES = {
    "worker classify": (_WORKER.format(stage="classify"), MINER),
    "worker text": (_WORKER.format(stage="text"), ("torchvision", "serving.models")),
    "worker profiles": (_WORKER.format(stage="profiles"), ("torch", *MINER)),
    "worker catalogue": (_WORKER.format(stage="catalogue"), MINER),
    "synthetic posts": (_IMPORT.format(module="training.synthetic.posts"), MINER),
    "pipeline benchmark": (_IMPORT.format(module="workers.benchmarks.pipeline"), MINER),
    # `python -m training.default_model` tunes the process before torch loads (OpenMP reads its policy once).
    "default model rebuild": (_IMPORT.format(module="training.default_model"), ("torch",)),
}


def test_import_contracts_hold() -> None:
    """``lint-imports`` (layers, no cycles, independent stages, forbidden imports) passes on this tree."""
    check = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    result = subprocess.run([sys.executable, "-c", check, "--no-cache", "--config", str(ROOT / "pyproject.toml")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("entry", ENTRIES)
def test_entry_point_loads_only_what_it_uses(entry: str) -> None:
    script, forbidden = ENTRIES[entry]
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=240,
                            check=False)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert any(m.startswith(("workers.", "training.")) for m in loaded), "the entry point was not imported"
    heavy = [f for f in forbidden if any(m == f or m.startswith(f"{f}.") for m in loaded)]
    assert not heavy, f"{entry} loads {heavy}"
