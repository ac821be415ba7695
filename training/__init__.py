"""Training side of stylestream: ontology, data, models, training loop, evaluation."""
