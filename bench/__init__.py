"""Benchmarks (not tests): `make bench-<service>` runs one and prints figures for docs/benchmarks/."""
