"""The served embedding: the pooled trunk features, normalised, next to unchanged scores."""

from __future__ import annotations

import numpy as np
import torch

from serving.models import build_model
from serving.models.embedding import REGIONS, band_rows, region_embeddings
from serving.ontology import load_ontology
from serving.predict import Predictor


def test_infer_returns_the_pooled_features_normalised_and_the_same_scores() -> None:
    torch.manual_seed(0)
    ontology = load_ontology()
    model = build_model(backbone="tiny", head="fusion", ontology=ontology, weights="random", multi=True)
    predictor = Predictor(model, ontology, version="t", device=torch.device("cpu"))
    images = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for _ in range(3)]
    staged = predictor.stage(images, [None] * 3)
    plain, with_embeddings = predictor.infer(staged), predictor.infer(staged, embeddings=True)
    assert plain.embeddings is None
    assert np.array_equal(plain.table, with_embeddings.table)
    emb = with_embeddings.embeddings
    assert emb.shape == (3, model.backbone.out_features) and emb.dtype == np.float16
    with torch.inference_mode():
        pooled = model.backbone(model.preprocess(torch.stack(images)))
    expected = torch.nn.functional.normalize(pooled, dim=1).numpy()
    assert np.allclose(emb.astype(np.float32), expected, atol=2e-3)


def test_band_embeddings_pool_their_rows_and_the_whole_map() -> None:
    assert band_rows(9, (0.15, 0.55)) == (1, 5) and band_rows(9, (0.8, 1.0)) == (7, 9)
    fmap = torch.zeros(1, 2, 9, 9)
    fmap[0, 0, 7:, :] = 1.0  # only the feet band lights channel 0
    fmap[0, 1] = 1.0
    out = region_embeddings(fmap)
    assert out.shape == (1, len(REGIONS), 2)
    feet, upper = out[0, REGIONS.index("feet")], out[0, REGIONS.index("upper")]
    assert feet[0] > 0.7 and upper[0] == 0.0
    assert torch.allclose(out.norm(dim=2), torch.ones(1, len(REGIONS)))
