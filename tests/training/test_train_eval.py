"""Tiny end to end: benchmark → train → checkpoint → Table II report (< 60 s on 2 cores)."""

import json

import torch

from serving.checkpoint import load_checkpoint
from serving.ontology import load_ontology
from serving.registry import default_entry, verify_checksums, weights_checksum
from training import default_model, evaluate, train
from training.real.cli import main as train_real
from training.real.fixture import fixture_records
from training.real.manifest import write_manifest


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


def _fixture_manifest(tmp_path):
    """The fixture's real photos, split here (the committed manifest keeps them all for testing)."""
    manifest = tmp_path / "photos.jsonl"
    splits = ("train", "train", "train", "val", "test")
    write_manifest([r.model_copy(update={"split": splits[i % 5]}) for i, r in enumerate(fixture_records(load_ontology()))],
                   manifest)
    return manifest


def test_default_model_rebuild_writes_an_entry_the_worker_can_serve(tmp_path) -> None:
    manifest = _fixture_manifest(tmp_path)
    out = tmp_path / "default"
    argv = ["--data", str(manifest), "--out", str(out), "--reports", "", "--cache-dir", str(tmp_path / "cache"),
            "--image-size", "64", "--epochs", "1", "--negatives", "40"]
    assert default_model.main(argv) == 0
    entry = default_entry(out)
    assert entry.version == f"default-{weights_checksum(out)[:12]}"
    assert list(verify_checksums(out, entry.version)) == ["model.safetensors", "config.json", "onnx.json"]
    config = json.loads((out / "config.json").read_text())["training"]
    assert config["command"].startswith("python -m training.default_model") and config["finetune"]["epochs_run"] == 1
    model = entry.load(device="cpu")
    assert model.config.head == "fusion" and model.config.backbone == "efficientnet_lite0" and model.config.multi
    assert 0 < model.config.abstain_below < 1 and model.config.label_floor > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"silent", "mention", "main"} <= set(metrics)


def test_a_head_retrains_on_a_reused_trunk(tmp_path) -> None:
    manifest = _fixture_manifest(tmp_path)
    out = tmp_path / "retrained"
    argv = ["--data", str(manifest), "--out", str(out), "--trunk-from", str(default_entry().path), "--image-size", "64",
            "--negatives", "40", "--head", "dynamic_pruning", "--hint-dropout", "0", "--route-threshold", "0.05",
            "--cache-dir", str(tmp_path / "cache")]
    assert train_real(argv) == 0
    model = default_entry(out).load()
    assert (model.config.head, model.config.route_threshold) == ("dynamic_pruning", 0.05)
    config = json.loads((out / "config.json").read_text())["training"]
    assert config["finetune"] == {"trunk_from": str(default_entry().path)} and config["config"]["hint_dropout"] == 0
    trunk = default_entry().load().backbone.features.net._blocks[15]._project_conv.weight
    assert torch.equal(model.backbone.features.net._blocks[15]._project_conv.weight, trunk)


def test_table2_report_shape(tmp_path) -> None:
    out = tmp_path / "table2.json"
    argv = ["--backbones", "tiny", "--scenarios", "single", "--seeds", "0", "1", "--variants", "main", "wrong_0.5", "--share-backbone",
            "--n-train", "150", "--n-test", "60", "--epochs", "2", "--pretrain-epochs", "1",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--device", "cpu"]
    assert evaluate.main(argv) == 0
    report = json.loads(out.read_text())
    assert {"rows", "hint_quality", "selected_settings", "verdicts", "protocol", "generated_at", "git_sha", "machine",
            "command"} <= set(report)
    rows = report["rows"]
    keys = {(r["variant"], r["head"], r["hints"], r["level"]) for r in rows}
    assert len(keys) == len(rows)
    for variant in ("main", "wrong_0.5"):
        for level in ("category", "subcategory", "attribute"):
            assert (variant, "base", "none", level) in keys and (variant, "base", "mined", level) not in keys
            assert (variant, "text_only", "mined", level) in keys and (variant, "text_only", "none", level) not in keys
            for head in ("fusion", "base_masked", "dynamic_pruning", "dynamic_layers", "dynamic_layers_pure"):
                assert {(variant, head, h, level) for h in ("mined", "none")} <= keys
    for row in rows:
        assert row["n_seeds"] == 2 and set(row["ci95"]) == {"P@1", "P@3", "P@5", "R@1", "R@3", "R@5", "mAP"}
        assert ("diff_vs_base" in row) is (row["head"] != "base")
    precision = {q["variant"]: q["precision"] for q in report["hint_quality"]}
    assert precision["wrong_0.5"] < precision["main"]
    assert set(report["selected_settings"]["single/tiny"]) == {"base", "text_only", "fusion", "base_masked",
                                                              "dynamic_pruning", "dynamic_layers", "dynamic_layers_pure"}
    assert out.with_suffix(".png").stat().st_size > 0
    # the raw per-seed results rebuild the same table without retraining
    again = tmp_path / "again.json"
    assert evaluate.main([*argv[:-4], "--raw", str(out.with_suffix(".raw.jsonl")), "--out", str(again), "--aggregate-only"]) == 0
    assert json.loads(again.read_text())["rows"] == rows


def test_selection_grid_adds_learning_rates_to_trained_heads() -> None:
    assert all("lr" not in g for g in evaluate._grid("dynamic_layers"))
    grid = evaluate._grid("dynamic_layers", (0.05, 0.01))
    assert len(grid) == 2 * len(evaluate._grid("dynamic_layers")) and {g["lr"] for g in grid} == {0.05, 0.01}
    assert all("lr" not in g for g in evaluate._grid("base_masked", (0.05, 0.01)))  # takes Base's choice
    assert [g["lr"] for g in evaluate._grid("base", (0.05, 0.01))] == [0.05, 0.01]


def test_train_fine_tunes_the_lite2_trunk_when_asked(tmp_path, monkeypatch) -> None:
    from efficientnet_lite_pytorch import EfficientNet

    from serving.models import backbones

    # Lite2's ImageNet weights are an extra CI does not install: random ones in their file format stand in.
    weights = tmp_path / "lite2.pth"
    torch.save(EfficientNet.from_name("efficientnet-lite2").state_dict(), weights)
    monkeypatch.setattr(backbones, "_imagenet_weights", lambda variant: str(weights))
    out = tmp_path / "lite2"
    argv = ["--data", str(_fixture_manifest(tmp_path)), "--out", str(out), "--backbone", "efficientnet_lite2",
            "--image-size", "64", "--epochs", "1", "--cut", "18", "--no-augment", "--negatives", "40", "--head", "base",
            "--cache-dir", str(tmp_path / "cache")]
    assert train_real(argv) == 0
    model = default_entry(out).load()
    assert model.config.backbone == "efficientnet_lite2" and len(model.backbone.features.net._blocks) == 21
    start, blocks = torch.load(weights, weights_only=True), model.backbone.features.net._blocks
    assert torch.equal(blocks[0]._project_conv.weight, start["_blocks.0._project_conv.weight"])  # before the cut
    assert not torch.equal(blocks[20]._project_conv.weight, start["_blocks.20._project_conv.weight"])  # fine-tuned
