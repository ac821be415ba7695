"""The fashion ontology: the authors' FashionRec lists plus our curated category hierarchy.

Everything that needs class names or index spaces (text miner, synthetic posts, models, evaluation)
reads them from one :class:`Ontology`, never from hard-coded lists.
"""

from serving.ontology.model import Category, Ontology, Term, load_ontology

__all__ = ["Category", "Ontology", "Term", "load_ontology"]
