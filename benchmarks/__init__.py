"""Benchmarks: side-by-side measurements written as JSON to ``benchmarks/results/``."""
