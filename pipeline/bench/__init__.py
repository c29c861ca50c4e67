"""Benchmarks (`make bench`): they print numbers; speed is never asserted in tests."""
