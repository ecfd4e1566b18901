"""`make bench`: speed of each stage against its I/O floor, measured in one run on synthetic data."""
