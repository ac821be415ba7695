"""Fine-tuning on photos redrawn each step: what changes, and what stays frozen."""

import numpy as np
import pytest
import torch

from serving.models import build_model
from serving.ontology import load_ontology
from training.real.augment import augment, photo_augmenter
from training.real.finetune import Fronts, TuneConfig, finetune

SIZE = 64


def _photos(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3, SIZE, SIZE), dtype=np.uint8)


def test_each_photo_is_redrawn_at_its_size_differently_each_time():
    photos = torch.from_numpy(_photos(4))
    transform = photo_augmenter(SIZE)
    torch.manual_seed(0)
    first = augment(photos, transform)
    second = augment(photos, transform)
    assert first.shape == photos.shape and first.dtype == torch.uint8
    assert not torch.equal(first, photos) and not torch.equal(first, second)
    torch.manual_seed(0)
    assert torch.equal(augment(photos, transform), first)  # seeded runs repeat


@pytest.fixture(scope="module")
def ontology():
    return load_ontology()


def test_augmented_fine_tuning_trains_the_tail_and_leaves_the_front_and_its_statistics_alone(ontology):
    torch.manual_seed(0)
    model = build_model(backbone="efficientnet_lite0", head="base", ontology=ontology, multi=True, image_size=SIZE)
    trunk = model.backbone.features
    cut = 11
    photos = _photos(6)
    with torch.no_grad():
        trunk.eval()
        cached = trunk.front(model.preprocess(torch.from_numpy(photos)), cut)
    k = len(ontology.category_names)
    targets = {"categories": torch.eye(k)[torch.arange(6) % k],
               "subcategories": torch.zeros(6, len(ontology.subcategory_names)),
               "attributes": torch.zeros(6, len(ontology.attribute_names))}
    train = Fronts(cached, cached, targets, images=photos)
    front_before = {n: t.clone() for n, t in trunk.state_dict().items() if not n.startswith(_tail_prefixes(trunk, cut))}
    tail_before = [p.clone() for m in trunk.tail_modules(cut) for p in m.parameters()]
    finetune(model, train, train, TuneConfig(cut=cut, epochs=1, batch_size=3, augment=True))
    front_after = trunk.state_dict()
    assert all(torch.equal(front_after[n], t) for n, t in front_before.items())  # weights and BN running stats
    tail_after = [p for m in trunk.tail_modules(cut) for p in m.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(tail_before, tail_after))
    with pytest.raises(ValueError, match="photos themselves"):
        finetune(model, Fronts(cached, cached, targets), train, TuneConfig(cut=cut, epochs=1, augment=True))


def _tail_prefixes(trunk, cut: int) -> tuple[str, ...]:
    names = {id(m): n for n, m in trunk.named_modules()}
    return tuple(names[id(m)] + "." for m in trunk.tail_modules(cut))
