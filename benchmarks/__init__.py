"""Benchmark harness for parlay: see benchmarks/README.md."""
