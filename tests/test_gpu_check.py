"""bench/gpu_check.sh: the --cpu mode prints every row without a FAIL; a check that raises,
skips or overruns its budget becomes its own row while the others still run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402

ROW = re.compile(r"^\| `(\w+)` .*? \| (OK|SKIP|FAIL) \| (.*) \| [\d.]+ \|$")


def rows(stdout: str) -> dict[str, tuple[str, str]]:
    found = {}
    for line in stdout.splitlines():
        m = ROW.match(line)
        if m:
            found[m.group(1)] = (m.group(2), m.group(3))
    return found


@pytest.mark.slow
def test_cpu_mode_prints_every_row_and_no_fail(tmp_path):
    """~60 s on the shared 2-core machine (compile and the torchrun run take most of it)."""
    started = time.perf_counter()
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHON": sys.executable},
    )
    seconds = time.perf_counter() - started
    table = rows(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert list(table) == list(gpu_check.CHECKS), proc.stdout
    assert all(status != "FAIL" for status, _ in table.values()), proc.stdout
    for check in ("attention", "adam_atan2"):  # CUDA-only packages
        assert table[check][0] == "SKIP" and table[check][1].startswith("skipped (no CUDA)"), table[check]
    for check in ("compile", "canvas30", "urm", "varc", "buckets", "process_group", "torchrun"):
        assert table[check][0] == "OK", (check, table[check])
    assert "pass@1" in table["torchrun"][1]
    # stdout is the title, the table and the summary line: what the checks print goes to stderr.
    other = [line for line in proc.stdout.splitlines() if line and not line.startswith("|")]
    assert len(other) == 2 and other[0].startswith("ARCForge GPU check") and " FAIL; logs" in other[1], other
    print(f"gpu_check.sh --cpu: {seconds:.0f} s")


def test_arc1_bucket_mix_is_arckits():
    assert gpu_check.arc1_bucket_examples() == gpu_check.ARC1_BUCKET_EXAMPLES


def run_main(args: list[str], capsys) -> tuple[int, dict[str, tuple[str, str]], str]:
    code = gpu_check.main(args)
    out = capsys.readouterr().out
    return code, rows(out), out


def test_a_failing_check_is_a_row_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    def boom(ctx):
        raise RuntimeError("boom\nsecond line")

    def skip(ctx):
        raise gpu_check.Skipped("skipped: nothing to compare")

    monkeypatch.setitem(gpu_check.CHECKS, "attention", boom)
    monkeypatch.setitem(gpu_check.CHECKS, "adam_atan2", skip)
    code, table, out = run_main(
        ["--cpu", "--workdir", str(tmp_path), "--only", "attention", "adam_atan2", "process_group"], capsys
    )
    assert code == 1
    assert table["attention"] == ("FAIL", "RuntimeError: boom")
    assert table["adam_atan2"] == ("SKIP", "skipped: nothing to compare")
    assert table["process_group"][0] == "OK"
    assert "1 OK, 1 SKIP, 1 FAIL" in out
    assert "boom" in (tmp_path / "attention.traceback.txt").read_text()


def test_skips_alone_exit_zero(tmp_path, monkeypatch, capsys):
    def skip(ctx):
        raise gpu_check.Skipped("not installed: x")

    monkeypatch.setitem(gpu_check.CHECKS, "attention", skip)
    code, table, _ = run_main(["--cpu", "--workdir", str(tmp_path), "--only", "attention"], capsys)
    assert code == 0 and table["attention"][0] == "SKIP"


def test_a_check_past_its_budget_is_stopped(tmp_path, monkeypatch, capsys):
    def slow(ctx):
        time.sleep(30)
        return "never"

    profile = gpu_check.cpu_profile

    def short(batch):
        p = profile(batch)
        p.budgets = {**p.budgets, "attention": 1}
        return p

    monkeypatch.setitem(gpu_check.CHECKS, "attention", slow)
    monkeypatch.setattr(gpu_check, "cpu_profile", short)
    monkeypatch.setattr(gpu_check, "HARD_GRACE_S", 1.0)
    monkeypatch.setattr(gpu_check, "MIN_BUDGET_S", 0.0)
    started = time.perf_counter()
    code, table, _ = run_main(["--cpu", "--workdir", str(tmp_path), "--only", "attention", "process_group"], capsys)
    assert time.perf_counter() - started < 15
    assert code == 1
    assert table["attention"][0] == "FAIL" and "exceeded its budget" in table["attention"][1]
    assert table["process_group"][0] == "OK"


def test_gpu_mode_without_cuda_says_so(capsys):
    if gpu_check.torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert gpu_check.main([]) == 2
    assert "--cpu" in capsys.readouterr().err
