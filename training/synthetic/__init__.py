"""Synthetic Instagram posts built from the ontology: captions (``captions``) and whole posts (``posts``)."""
