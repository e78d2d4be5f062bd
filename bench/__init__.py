"""Benchmarks (run as scripts; importable helpers for later benchmarks)."""
