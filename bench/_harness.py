"""The pieces of the benchmark harness that bench/conftest.py and the suites share. They live in the
package (fastconv.benchmarks.runner), shared with the `fastconv bench` command: the benchmark case,
its timing record, the session collector that pairs fastconv with torch, the ratio tables, the
measured machine peak, a CPU-contention meter and the machine/version facts for the JSON report."""
from __future__ import annotations

from fastconv.benchmarks.runner import (BUSY_FLAG, BusyMeter, Case, Collector, Record, TimingConfig,  # noqa: F401
                                        assert_same, check_conv, conv_inputs, conv_step, cpu_isa, cpu_model, device_name,
                                        format_tables, git_commit, machine_peak, measure_peak,
                                        not_implemented, pool_inputs, pool_step, prepare_device, quantile,
                                        synced, synchronize, time_once, versions)

__all__ = ["BUSY_FLAG", "BusyMeter", "Case", "Collector", "Record", "TimingConfig", "assert_same", "check_conv", "conv_inputs",
           "conv_step", "cpu_isa", "cpu_model", "device_name", "format_tables", "git_commit", "machine_peak",
           "measure_peak", "not_implemented", "pool_inputs", "pool_step", "prepare_device", "quantile", "synced",
           "synchronize", "time_once", "versions"]
