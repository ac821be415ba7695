"""Session-scoped miner: vectors and indices load once for all text tests."""

from __future__ import annotations

import pytest

from serving.ontology import Ontology, load_ontology
from training.text import TextMiner


@pytest.fixture(scope="session")
def ontology() -> Ontology:
    return load_ontology()


@pytest.fixture(scope="session")
def miner(ontology: Ontology) -> TextMiner:
    return TextMiner.load(ontology)
