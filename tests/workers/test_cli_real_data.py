"""``import`` and ``train --data`` on input a user can fix: one line on stderr and exit 1, and no manifest or
checkpoint written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import one_line


def _run(*args: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STYLESTREAM_")}
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], env=environ, capture_output=True, text=True,
                          timeout=300, check=False)


def _clothing(root: Path, table: bytes, *images: str) -> Path:
    (root / "images").mkdir(parents=True)
    for name in images:
        (root / "images" / f"{name}.jpg").write_bytes(b"")
    (root / "images.csv").write_bytes(table)
    return root


@pytest.mark.parametrize(("table", "images", "out", "reason"), [
    (b"image,sender_id,kids\na,1,False\n", ("a",), None, "no column ['label']"),
    (b"image,sender_id,label,kids\na,1,Caf\xe9,False\n", ("a",), None, "utf-8"),
    (b"image,sender_id,label,kids\na,1,Shoes,False\n", ("a",), "sub", "is a folder"),
    (b"image,sender_id,label,kids\na,1,Shoes,False\nb,1,Body,False\n", (), None, "no records"),
])
def test_import_refuses_what_it_cannot_read_or_write_inone_line(tmp_path, table, images, out, reason):
    root = _clothing(tmp_path / "clothing", table, *images)
    (tmp_path / "sub").mkdir()
    target = tmp_path / (out or "m.jsonl")
    assert reason in one_line(_run("import", "clothing-dataset", str(root), "--out", str(target)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clothing", "sub"]


def test_import_counts_a_missing_image_apart(tmp_path):
    root = _clothing(tmp_path / "clothing", b"image,sender_id,label,kids\na,1,Shoes,False\nb,1,Shoes,False\n", "a")
    result = _run("import", "clothing-dataset", str(root), "--out", str(tmp_path / "m.jsonl"))
    assert result.returncode == 0, result.stderr
    assert "(missing image)" in result.stdout and len((tmp_path / "m.jsonl").read_text().splitlines()) == 1


def test_train_on_photos_that_are_all_missing_is_one_line_and_writes_nothing(tmp_path):
    manifest = tmp_path / "missing.jsonl"
    manifest.write_text("".join(json.dumps({"image": f"nope/{i}.jpg", "categories": ["bags"]}) + "\n"
                                for i in range(30)))
    result = _run("train", "--data", str(manifest), "--out", str(tmp_path / "out"), "--image-size", "64",
                  "--epochs", "1", "--negatives", "40", "--no-augment", "--cache-dir", str(tmp_path / "cache"))
    # The log names the photos first; the refusal is the last line.
    assert result.stderr.strip().splitlines()[-1].startswith("stylestream: photos that did not load: train ")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert all(f"{split} split: " in result.stderr for split in ("train", "val", "test"))
    assert not (tmp_path / "out").exists()
