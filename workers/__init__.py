"""Stream stages, one module each: ``text`` (posts → hints), ``classify`` (posts + hints → labels)."""
