"""Benchmarks: one command each, run by hand (not in CI; CI runs tiny versions)."""
