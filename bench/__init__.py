"""Benchmarks: `make bench`. Figures are printed as ratios against a baseline measured in the same run."""
