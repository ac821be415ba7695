"""Tiny end to end: benchmark → train → checkpoint → Table II report (< 60 s on 2 cores)."""

import json

import torch

from training import evaluate, train
from training.checkpoint import load_checkpoint


def test_train_writes_a_loadable_checkpoint(tmp_path) -> None:
    out = tmp_path / "ckpt"
    argv = ["--scenario", "single", "--backbone", "tiny", "--head", "dynamic_layers", "--n-train", "200",
            "--n-test", "100", "--epochs", "2", "--pretrain-epochs", "1", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(out), "--device", "cpu"]
    assert train.main(argv) == 0
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    for hints in ("mined", "none"):
        for level in ("category", "subcategory", "attribute"):
            assert set(metrics[hints][level]) == {"P@1", "P@3", "P@5", "R@1", "R@3", "R@5", "mAP"}
            assert all(0.0 <= v <= 1.0 for v in metrics[hints][level].values())
    model = load_checkpoint(out, device="cpu")
    assert model.config.head == "dynamic_layers" and model.config.backbone == "tiny"
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).attributes.shape[0] == 2


def test_table2_report_shape(tmp_path) -> None:
    out = tmp_path / "table2.json"
    argv = ["--backbones", "tiny", "--n-train", "150", "--n-test", "60", "--epochs", "2", "--pretrain-epochs", "1",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--device", "cpu"]
    assert evaluate.main(argv) == 0
    report = json.loads(out.read_text())
    assert {"rows", "generated_at", "git_sha", "machine", "command"} <= set(report)
    keys = {(r["scenario"], r["head"], r["hints"], r["level"]) for r in report["rows"]}
    assert len(keys) == 2 * 3 * 2 * 3 == len(report["rows"])
    assert out.with_suffix(".png").stat().st_size > 0
