"""Benchmarks (speed and memory measurements, not tests); run through `vlm2 bench ...`."""
