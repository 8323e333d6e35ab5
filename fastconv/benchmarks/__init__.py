"""Benchmark support shared by the pytest-benchmark suites in bench/ and the `fastconv bench` command:
the shape tables (one source of truth) and their FLOP / byte models."""
from .tables import CPU_CONV, CPU_POOL, TABLES, ConvShape, PoolShape, short_table

__all__ = ["ConvShape", "PoolShape", "CPU_CONV", "CPU_POOL", "TABLES", "short_table"]
