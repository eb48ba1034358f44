"""voxline benchmarks package."""
