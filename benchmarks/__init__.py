"""calsched benchmarks: `make bench` (quick) and `make bench ARGS=--full`."""
