"""The ``voxline`` command: the composition root, the one place that puts server and benchmarks
together (each command imports what it needs when it runs)."""
