"""bench/gpu_check.sh's plumbing that CI's dry run does not reach: its argument errors, and the packing
step, which must write the same five files whatever the run left behind (a GPU run cut short, a step
that failed). The dry run itself runs in .ci/run (bash bench/gpu_check.sh --dry-run)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.sh")
sys.path.insert(0, os.path.join(ROOT, "bench"))
import gpu_check_pack as pack  # noqa: E402

sys.path.pop(0)


@pytest.mark.parametrize("args,message", [([], "usage"), (["--budget", "8m", "x"], "whole seconds"),
                                          (["--frobnicate", "x"], "unknown option")])
def test_bad_arguments_are_named(args, message, tmp_path):
    proc = subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def _work(tmp_path, steps, junit=None):
    work = tmp_path / "work"
    (work / "logs").mkdir(parents=True)
    (work / "steps.tsv").write_text("step\tstatus\trc\tseconds\n" + "".join("\t".join(s) + "\n" for s in steps))
    (work / "logs" / "tests.log").write_text("log line\n")
    if junit:
        (work / "junit.xml").write_text(junit)
    return work


def test_pack_writes_the_five_files_of_an_empty_run(tmp_path):
    work = _work(tmp_path, [])
    out = tmp_path / "out"
    assert pack.main(str(work), str(out), "0", "480", str(int(time.time()))) == 0
    assert sorted(os.listdir(out)) == sorted(pack.FILES)
    assert "no benchmark report" in (out / "bench.txt").read_text()
    assert "no static report" in (out / "sass.txt").read_text()
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["dry_run"] is False and data["bench"] is None and data["steps"] == []


def test_pack_reports_steps_and_failed_tests(tmp_path):
    junit = ('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
             '<testcase classname="tests.test_cuda_gpu" name="test_a"><failure message="x"/></testcase>'
             '<testcase classname="tests.test_cuda_gpu" name="test_b"/>'
             '<testcase classname="tests.test_cuda_gpu" name="test_c"><skipped/></testcase></testsuite></testsuites>')
    work = _work(tmp_path, [("build", "ok", "0", "95"), ("tests", "failed", "1", "140"),
                            ("bench", "skipped (budget spent)", "-", "0")], junit)
    out = tmp_path / "out"
    pack.main(str(work), str(out), "1", "300", str(int(time.time()) - 7))
    summary = (out / "summary.txt").read_text()
    assert "DRY RUN" in summary and "tests: 1 passed, 1 failed, 1 skipped" in summary
    assert "FAILED tests.test_cuda_gpu::test_a" in summary and "skipped (budget spent)" in summary
    data = json.loads((out / "gpu_check.json").read_text())
    assert [s["status"] for s in data["steps"]] == ["ok", "failed", "skipped (budget spent)"]
    with tarfile.open(out / "logs.tar.gz") as tar:
        assert "logs/tests.log" in tar.getnames() and "junit.xml" in tar.getnames()
