"""The pieces of the benchmark harness that bench/conftest.py and the suites share. They live in the
package, shared with the `fastconv bench` command: fastconv.benchmarks.runner (the benchmark case,
inputs, steps and checks, timing, the measured machine peak, a CPU-contention meter),
fastconv.benchmarks.records (Timing, the row type BenchRecord, the Collector that pairs fastconv with
torch, the table printer) and fastconv.benchmarks.report (the JSON report and its printout)."""
from __future__ import annotations

from fastconv.benchmarks.records import BASELINE, BenchRecord, Collector, Timing  # noqa: F401
from fastconv.benchmarks.report import format_report, make_report, write_report  # noqa: F401
from fastconv.benchmarks.runner import (BUSY_FLAG, BusyMeter, Case, TimingConfig, assert_same,  # noqa: F401
                                        check_conv, conv_inputs, conv_step, machine_peak, measure_peak,
                                        not_implemented, pool_inputs, pool_step, prepare_device, synced,
                                        synchronize, time_once)

__all__ = ["BASELINE", "BUSY_FLAG", "BenchRecord", "BusyMeter", "Case", "Collector", "Timing", "TimingConfig",
           "assert_same", "check_conv", "conv_inputs", "conv_step", "format_report", "machine_peak", "make_report",
           "measure_peak", "not_implemented", "pool_inputs", "pool_step", "prepare_device", "synced",
           "synchronize", "time_once", "write_report"]
