"""Embedded held-out photos are reused only while the packaged model is the one that embedded them."""

from __future__ import annotations

import numpy as np

from serving.ontology import load_ontology
from serving.registry import default_entry
from training.recommend import photos
from training.recommend.photos import Embedded, embedded_photos


def _embedded(version: str) -> Embedded:
    return Embedded(["a.jpg"], ["co_parsing"], [["shoes"]], np.zeros((1, 3), np.float32),
                    np.zeros((1, 4, 2), np.float32), version, {"served": 0.1})


def test_photos_embedded_by_another_model_are_embedded_again_and_then_reused(tmp_path, monkeypatch):
    cache = tmp_path / "test_photos.npz"
    _embedded("default-000000000000").save(cache)
    calls = []
    monkeypatch.setattr(photos.Predictor, "load", lambda settings: object())
    monkeypatch.setattr(photos, "held_out_records", lambda manifests, ontology, split: [])
    monkeypatch.setattr(photos, "embed_records",
                        lambda records, predictor, layout: calls.append(1) or _embedded(default_entry().version))
    ontology = load_ontology()
    assert embedded_photos([], cache, ontology).version == default_entry().version
    assert Embedded.load(cache).version == default_entry().version and calls == [1]
    assert embedded_photos([], cache, ontology).version == default_entry().version
    assert calls == [1]  # the second time from the cache
