"""The trunk fine-tunes on the device asked for (CUDA when there is one) and comes back to the host, where the
heads train and the checkpoint is written."""

from __future__ import annotations

import pytest
import torch

from serving.models import build_model
from serving.ontology import load_ontology
from training.real.finetune import TuneConfig
from training.real.fixture import fixture_records
from training.real.pipeline import RealConfig, prepare

ONTOLOGY = load_ontology()
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=cuda)]
SPLITS = ("train", "train", "train", "val", "test")


@pytest.mark.parametrize("augment", [True, False], ids=["redrawn", "cached"])
@pytest.mark.parametrize("device", DEVICES)
def test_the_trunk_fine_tunes_on_the_chosen_device_and_comes_back_to_the_host(device, augment):
    records = [r.model_copy(update={"split": SPLITS[i % 5]}) for i, r in enumerate(fixture_records(ONTOLOGY)[:40])]
    config = RealConfig(image_size=32, negatives=10, device=device,
                        tune=TuneConfig(cut=14, epochs=1, batch_size=16, augment=augment))
    prepared = prepare(records, ONTOLOGY, config)
    assert {p.device.type for p in prepared.base.parameters()} == {"cpu"}
    assert all(f.device.type == "cpu" and bool(torch.isfinite(f).all()) for f in prepared.features.values())
    assert prepared.history["epochs_run"] == 1
    fresh = build_model(backbone=config.backbone, head="base", ontology=ONTOLOGY, multi=True, image_size=32)
    tuned = dict(prepared.base.backbone.named_parameters())
    trained = [n for n, p in fresh.backbone.named_parameters() if not torch.equal(p, tuned[n])]
    blocks = {int(n.split("_blocks.")[1].split(".")[0]) for n in trained if "_blocks." in n}
    assert trained and min(blocks) >= config.tune.cut  # the front stays as ImageNet left it
