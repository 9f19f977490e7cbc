"""Benchmarks of scl_loss against the dense reference, peers and the matrix-multiply floor.

Collected only when asked: ``pytest benchmarks/`` (see docs/benchmarks.md). The normal test
suite (``pytest``) runs only ``tests/`` and the doctests of ``scl_loss/``.
"""
