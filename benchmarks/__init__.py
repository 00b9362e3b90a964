"""Benchmarks: scripts that print figures beside their same-run references (see BENCHMARKS.md)."""
