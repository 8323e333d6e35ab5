"""Benchmark support shared by the pytest-benchmark suites in bench/ and the `fastconv bench` command:
tables (the shape tables, one source of truth, and their FLOP / byte models), runner (inputs, steps,
checks, timing, the measured peak), records (Timing, the row type BenchRecord, the suites' Collector,
the table printer), report (the JSON report, schema_version 2, and the readers of older files), sweep
(the `fastconv bench` loop), compare (--compare) and charts (ratio.png, roofline.png)."""
from .tables import CPU_CONV, CPU_POOL, TABLES, ConvShape, PoolShape, short_table

__all__ = ["ConvShape", "PoolShape", "CPU_CONV", "CPU_POOL", "TABLES", "short_table"]
