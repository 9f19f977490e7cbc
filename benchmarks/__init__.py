"""Benchmarks of scl_loss against the dense reference, peers and the matrix-multiply floor.

Collected only when asked: ``pytest benchmarks/test_supcon_bench.py`` (see docs/benchmarks.md).
The normal test suite (``pytest``) runs only ``tests/`` and the doctests. Name the file, not
the folder. (The GLUE experiments live in ``experiments/``.)
"""
