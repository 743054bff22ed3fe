"""Benchmarks of medmtl (speed, memory, learning quality); results in ``bench/RESULTS.md``."""
