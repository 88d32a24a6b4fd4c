"""Benchmarks (`make bench`): speed targets measured as ratios to a reference timed in the same run."""
