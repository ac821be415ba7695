"""Benchmarks of the stream stages, run end to end on the embedded broker."""
