"""Benchmarks: each prints its result as a ratio or rate measured in one run."""
