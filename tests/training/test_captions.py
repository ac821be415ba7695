"""Synthetic caption generator: determinism, mention semantics, noise kinds, template splits."""

from __future__ import annotations

import random

import pytest

from serving.ontology import Ontology, load_ontology
from training.synthetic.captions import NOISE_KINDS, Caption, make_caption


@pytest.fixture(scope="module")
def ontology() -> Ontology:
    return load_ontology()


def _make(ontology: Ontology, seed: int, **kwargs) -> Caption:
    defaults = {"category": "dresses", "subcategory": "maxi_dress", "materials": ["silk"], "patterns": ["floral"]}
    return make_caption(random.Random(seed), ontology, **(defaults | kwargs))


def test_same_seed_same_caption(ontology: Ontology) -> None:
    assert _make(ontology, 7) == _make(ontology, 7)
    assert len({_make(ontology, s).caption for s in range(30)}) > 10


def test_always_mentioned_without_noise_names_the_item(ontology: Ontology) -> None:
    words = ("dress", "gown", "frock", "maxi")
    for seed in range(50):
        cap = _make(ontology, seed, mention_prob=1.0, noise=0.0)
        assert cap.mentioned and cap.noise is None
        assert any(w in cap.caption.lower() for w in words), cap.caption


def test_never_mentioned_does_not_name_the_category(ontology: Ontology) -> None:
    for seed in range(50):
        cap = _make(ontology, seed, mention_prob=0.0, noise=0.0)
        assert not cap.mentioned
        assert "dress" not in cap.caption.lower() and "gown" not in cap.caption.lower()


def test_mention_rate_follows_mention_prob(ontology: Ontology) -> None:
    caps = [_make(ontology, s, mention_prob=0.7, noise=0.0) for s in range(400)]
    assert 0.62 < sum(c.mentioned for c in caps) / len(caps) < 0.78


def test_every_noise_kind_occurs(ontology: Ontology) -> None:
    kinds = {_make(ontology, s, noise=1.0).noise for s in range(200)}
    assert kinds == set(NOISE_KINDS)


def test_hashtags_only_puts_the_item_in_hashtags(ontology: Ontology) -> None:
    caps = [c for s in range(300) if (c := _make(ontology, s, noise=1.0, mention_prob=1.0)).noise == "hashtags_only"]
    assert caps and all(len(c.caption) <= 2 and c.hashtags for c in caps)


def test_brand_handle_in_user_tags(ontology: Ontology) -> None:
    cap = _make(ontology, 3, brand="marc_jacobs", noise=0.0)
    assert "@marcjacobs" in cap.user_tags


def test_splits_use_different_templates(ontology: Ontology) -> None:
    dev = {_make(ontology, s, split="dev", noise=0.0, mention_prob=0.0).caption for s in range(100)}
    held = {_make(ontology, s, split="heldout", noise=0.0, mention_prob=0.0).caption for s in range(100)}
    assert not dev & held


@pytest.mark.parametrize("bad", [{"split": "test"}, {"subcategory": "sneaker"}, {"materials": ["unobtainium"]}])
def test_bad_arguments_raise(ontology: Ontology, bad: dict) -> None:
    with pytest.raises(ValueError):
        _make(ontology, 0, **bad)


def test_distractors_name_another_category(ontology: Ontology) -> None:
    dress_words = {"dress", "gown", "frock", "maxi"}
    other_words = {w for c in ontology.categories if c.name != "dresses" for w in c.keywords} - dress_words
    caps = [_make(ontology, s, mention_prob=1.0, noise=0.0, distractor_prob=1.0) for s in range(40)]
    assert all(any(w in c.caption.lower().split() for w in other_words) for c in caps)
    plain = [_make(ontology, s, mention_prob=1.0, noise=0.0) for s in range(40)]
    assert plain == [_make(ontology, s, mention_prob=1.0, noise=0.0, distractor_prob=0.0) for s in range(40)]


def test_slang_stays_outside_the_ontology_keywords(ontology: Ontology) -> None:
    keywords = {w for c in ontology.categories for w in (*c.keywords, *(k for s in c.subcategories for k in s.keywords))}
    caps = [_make(ontology, s, category="coats", subcategory="parka", mention_prob=1.0, noise=0.0, slang_prob=1.0)
            for s in range(30)]
    for cap in caps:
        assert not any(w in keywords for w in cap.caption.lower().replace("!", " ").split()), cap.caption
