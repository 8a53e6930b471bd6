"""Benchmarks and their scripts, importable as modules by the tests (each script also runs by path)."""
