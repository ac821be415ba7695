"""``stylestream train --data``: bad arguments refused before any photo loads, and photos that fail to load
logged, counted in the checkpoint, or refusing the run when too many of a split failed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from efficientnet_lite_pytorch import EfficientNet

from serving.ontology import load_ontology
from serving.registry import default_entry
from training.real.cli import TRUNK_BLOCKS, main, parse
from training.real.fixture import fixture_records
from training.real.manifest import ManifestError, Record, write_manifest
from training.real.pipeline import RealConfig, load_photos

ONTOLOGY = load_ontology()
FIXTURE = Path(__file__).parents[3] / "training" / "real" / "data" / "fixture" / "manifest.jsonl"


def _records(count: int, missing: int, split: str = "train") -> list[Record]:
    """``count`` fixture photos and ``missing`` records whose photo is not there, all in ``split``."""
    real = [r.model_copy(update={"split": split}) for r in fixture_records(ONTOLOGY)[:count]]
    return real + [Record(image=f"/no/such/{i}.jpg", categories=["bags"], split=split) for i in range(missing)]


@pytest.mark.parametrize("bad", [["--head", "nosuch"], ["--image-size", "0"], ["--image-size", "x"],
                                 ["--epochs", "0"], ["--negatives", "-1"], ["--cut", "-1"], ["--cut", "17"],
                                 ["--seeds", "0"], ["--max-missing", "1.5"], ["--device", "tpu"],
                                 ["--device", "meta"], ["--device", "cuda:99"]])
def test_a_bad_value_is_refused_at_once_with_exit_2(bad, tmp_path, capsys):
    # The manifest does not exist: a refusal after parsing would be about it, not the value.
    with pytest.raises(SystemExit) as caught:
        main(["--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "out"), *bad])
    assert caught.value.code == 2
    assert bad[0] in capsys.readouterr().err


def test_a_cut_is_bounded_by_the_chosen_trunk():
    manifest = str(FIXTURE)
    assert parse(["--data", manifest, "--out", "o", "--backbone", "efficientnet_lite2", "--cut", "21"]).cut == 21
    assert parse(["--data", manifest, "--out", "o", "--cut", "16", "--head", "base"]).cut == 16


@pytest.mark.parametrize("flag", ["--data", "--trunk-from"])
def test_a_manifest_or_trunk_that_is_not_there_is_a_usage_error(flag, tmp_path, capsys):
    argv = ["--data", str(FIXTURE), "--out", str(tmp_path / "out"), flag, str(tmp_path / "nowhere")]
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert f"argument {flag}: no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    for name, blocks in TRUNK_BLOCKS.items():
        assert len(EfficientNet.from_name(name.replace("_", "-"))._blocks) == blocks


def test_failed_photos_are_logged_and_counted(caplog):
    config = RealConfig(image_size=32, negatives=4, max_missing=0.1)
    with caplog.at_level(logging.WARNING, logger="training.real.pipeline"):
        photos, dropped = load_photos(_records(20, 1), config)
    assert dropped == {"train": 1, "val": 0, "test": 0}
    assert len(photos["train"][0]) == len(photos["train"][1]) == 20 + 4  # the photos that loaded, the drawn ones
    assert "train split: 1 of 21 photos did not load" in caplog.text and "/no/such/0.jpg" in caplog.text


@pytest.mark.parametrize(("records", "max_missing", "reason"), [
    (_records(20, 2), 0.05, "train 2 of 22"),
    (_records(0, 3, "val"), 1.0, "val 3 of 3"),  # none of a split loaded: refused whatever the share
])
def test_too_many_failed_photos_refuse_the_run(records, max_missing, reason):
    with pytest.raises(ManifestError, match=reason):
        load_photos(records, RealConfig(image_size=32, negatives=4, max_missing=max_missing))


def test_a_manifest_whose_photos_are_missing_writes_no_checkpoint(tmp_path):
    manifest = tmp_path / "missing.jsonl"
    write_manifest([Record(image=f"nope/{i}.jpg", categories=["bags"]) for i in range(60)], manifest)
    argv = ["--data", str(manifest), "--out", str(tmp_path / "out"), "--image-size", "64", "--epochs", "1",
            "--negatives", "40", "--no-augment", "--cache-dir", str(tmp_path / "cache")]
    with pytest.raises(ManifestError, match="photos that did not load"):
        main(argv)
    assert not (tmp_path / "out").exists()


def test_the_checkpoint_records_how_many_photos_were_left_out(tmp_path):
    splits = ("train", "train", "train", "val", "test")
    records = [r.model_copy(update={"split": splits[i % 5]}) for i, r in enumerate(fixture_records(ONTOLOGY))]
    write_manifest([*records, Record(image="gone.jpg", categories=["bags"], split="train")], tmp_path / "m.jsonl")
    out = tmp_path / "out"
    argv = ["--data", str(tmp_path / "m.jsonl"), "--out", str(out), "--trunk-from", str(default_entry().path),
            "--image-size", "64", "--negatives", "40", "--head", "base", "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    training = json.loads((out / "config.json").read_text())["training"]
    assert training["photos_dropped"] == {"train": 1, "val": 0, "test": 0}
    assert training["config"]["max_missing"] == 0.05
