"""Real photos: labelled-photo manifests, importers for public datasets, and the real-photo model's data."""
