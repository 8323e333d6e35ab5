"""The sweep behind `fastconv bench` (front-end: fastconv.cli.bench): every (table row, op, mode, layout,
dtype) timed for torch and for each fastconv backend, in one process, with the check of our result
against torch's before timing; run_bench returns the report dict (benchmarks.report, kind
"fastconv-bench"), whose rows are benchmarks.records.BenchRecord's fields.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from . import runner as R
from .records import BenchRecord, Timing
from .report import make_report


def run_bench(tables: List[str], ops: List[str], modes: List[str], backends: List[str], dtypes: List[str],
              layouts: List[str], device: str = "cpu", batch: Optional[int] = None, quick: bool = False,
              name_filter: Optional[str] = None, check: bool = True) -> Dict[str, Any]:
    """Times every (row, op, mode, layout, dtype) for torch and for each backend; returns the report.
    %peak of every row is taken against the first dtype's peak."""
    import torch

    from .. import backends as B
    from . import TABLES

    R.prepare_device(device)
    timing = R.TimingConfig.quick() if quick else R.TimingConfig()
    busy_run = R.BusyMeter()
    peak = R.measure_peak(device, dtypes[0])
    records: List[BenchRecord] = []
    for table in tables:
        for shape in TABLES[table]:
            if batch is not None:
                shape = shape.with_batch(batch)
            if name_filter and name_filter not in shape.name:
                continue
            for op in R.ops_for(shape, ops):
                for mode in modes:
                    for dtype in dtypes:
                        for layout in layouts:
                            records += _run_row(B, table, shape, op, mode, dtype, layout, device, backends,
                                                timing, peak, check)
    config = {"tables": tables, "ops": ops, "modes": modes, "backends": backends, "dtypes": dtypes,
              "layouts": layouts, "threads": torch.get_num_threads(), "batch": batch, "quick": quick,
              "filter": name_filter, "warmup_s": timing.warmup_s, "target_s": timing.target_s,
              "min_rounds": timing.min_rounds, "max_rounds": timing.max_rounds}
    return make_report("fastconv-bench", records, device, config, peak, others_cpu_share=busy_run.others())


def _time(fn, timing: R.TimingConfig, device: str) -> Timing:
    meter = R.BusyMeter()
    data = R.time_step(fn, timing, device)
    return Timing.of(data, busy=meter.others())


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else ""


def _run_row(B, table, shape, op, mode, dtype, layout, device, backends, timing, peak, check) -> List[BenchRecord]:
    work, unit, nbytes = R.work_of(op, shape, mode, dtype)
    torch_t, torch_note = None, None
    try:
        fn, _ = R.make_step(op, mode, shape, layout, "torch", dtype, device)
        torch_t = _time(fn, timing, device)
        del fn
    except Exception as exc:  # noqa: BLE001  (e.g. a dtype torch has no CPU kernel for)
        torch_note = f"torch: {type(exc).__name__}: {_first_line(exc)}"
    out = []
    for backend in backends:
        ours, note = None, torch_note
        try:
            with B.use_backend(backend):
                fn, chk = R.make_step(op, mode, shape, layout, "fastconv", dtype, device)
                if check:
                    chk()
                ours = _time(fn, timing, device)
        except AssertionError as exc:
            note = f"MISMATCH vs torch: {_first_line(exc)}"
        except Exception as exc:  # noqa: BLE001
            kind = "not implemented" if R.not_implemented(exc) else type(exc).__name__
            note = f"fastconv {backend}: {kind}: {_first_line(exc)}"
        out.append(BenchRecord.measured(op, mode, shape, layout, ours=ours, base=torch_t, work=work, unit=unit,
                                        peak=peak, dtype=dtype, backend=backend, device=device, table=table,
                                        nbytes=nbytes, note=note))
    return out
