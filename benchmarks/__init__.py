"""Benchmarks of cereal: ``python -m benchmarks.bench`` (or ``scripts/bench``)."""
