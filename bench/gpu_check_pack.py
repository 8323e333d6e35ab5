"""Packs what bench/gpu_check.sh collected in its work folder into OUTDIR's five files (always the same
set, in a GPU run and a dry run, whatever failed): summary.txt, gpu_check.json, bench.txt, sass.txt,
logs.tar.gz. Usage (by gpu_check.sh): python bench/gpu_check_pack.py WORK OUTDIR DRY BUDGET START"""
from __future__ import annotations

import datetime
import json
import platform
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

FILES = ("summary.txt", "gpu_check.json", "bench.txt", "sass.txt", "logs.tar.gz")


def junit_counts(path: Path) -> dict:
    """tests / failures / errors / skipped / passed of a pytest --junitxml file ({} when absent)."""
    if not path.is_file():
        return {}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return {"unreadable": str(exc)}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    c = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    c["passed"] = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
    c["failed_ids"] = [f"{tc.get('classname')}::{tc.get('name')}" for s in suites for tc in s.iter("testcase")
                       if tc.find("failure") is not None or tc.find("error") is not None][:50]
    return c


def device_line() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            return f"{p.name} (sm_{p.major}{p.minor}, {p.multi_processor_count} SMs), torch {torch.__version__}"
        return f"no CUDA device ({platform.processor() or platform.machine()}), torch {torch.__version__}"
    except Exception as exc:  # the summary must be written whatever broke
        return f"unknown ({exc})"


def main(work: str, out: str, dry: str, budget: str, start: str) -> int:
    work_p, out_p = Path(work), Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    steps = []
    tsv = work_p / "steps.tsv"
    if tsv.is_file():
        lines = tsv.read_text().splitlines()[1:]
        for line in lines:
            name, status, rc, secs = (line.split("\t") + ["", "", "", ""])[:4]
            steps.append({"step": name, "status": status, "rc": rc, "seconds": int(secs or 0)})
    bench_json = work_p / "bench.json"
    bench = json.loads(bench_json.read_text()) if bench_json.is_file() else None
    bench_txt = work_p / "bench.txt"
    bench_text = bench_txt.read_text() if bench_txt.is_file() else "no benchmark report (see logs/bench.log)\n"
    sass_txt = work_p / "sass.txt"
    sass_text = sass_txt.read_text() if sass_txt.is_file() else "no static report (see logs/static.log)\n"
    ptxas = work_p / "logs" / "ptxas.txt"
    if ptxas.is_file():
        sass_text += "\n" + ptxas.read_text()
    sass_json = work_p / "sass.json"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    elapsed = int(datetime.datetime.now().timestamp()) - int(start)
    result = {
        "kind": "gpu-check", "dry_run": dry == "1", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"), "device": device_line(), "commit": commit or None, "budget_s": int(budget),
        "elapsed_s": elapsed, "steps": steps, "tests": junit_counts(work_p / "junit.xml"),
        "bench_tests": junit_counts(work_p / "bench-junit.xml"), "bench": bench,
        "static": json.loads(sass_json.read_text()) if sass_json.is_file() else None,
    }
    (out_p / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
    (out_p / "bench.txt").write_text(bench_text)
    (out_p / "sass.txt").write_text(sass_text)
    with tarfile.open(out_p / "logs.tar.gz", "w:gz") as tar:
        for p in sorted(work_p.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=str(p.relative_to(work_p)))
    (out_p / "summary.txt").write_text(summary(result, sass_text, bench_text))
    print((out_p / "summary.txt").read_text(), end="")
    return 0


def summary(r: dict, sass_text: str, bench_text: str) -> str:
    lines = [f"fastconv gpu_check{' (DRY RUN: CPU, emulator/interpreter; no GPU numbers)' if r['dry_run'] else ''}",
             f"date {r['date']}  commit {r['commit']}  device {r['device']}",
             f"budget {r['budget_s']} s, elapsed {r['elapsed_s']} s", "", "step        status                 s"]
    lines += [f"{s['step']:<11} {s['status']:<22} {s['seconds']}" for s in r["steps"]]
    for key, title in (("tests", "tests"), ("bench_tests", "bench cases")):
        c = r[key]
        if c and "tests" in c:
            lines.append(f"{title}: {c['passed']} passed, {c['failures'] + c['errors']} failed, {c['skipped']} skipped")
            lines += [f"  FAILED {t}" for t in c["failed_ids"]]
    lines += [line for line in sass_text.splitlines() if line.startswith("RESULT") or "FAIL" in line][:40]
    geo, table = [], ""
    for line in bench_text.splitlines():
        if line.startswith("== "):
            table = line.strip("= ")
        elif "geomean" in line.lower():
            geo.append(f"{table:<48} {' '.join(line.split()[2:])}")
    lines += ["", "benchmark geomeans, baseline time / ours (> 1: fastconv faster):", *geo[:60]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
