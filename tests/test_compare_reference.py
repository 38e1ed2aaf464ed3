"""The pure parts of bench/compare_reference.py (the harness itself needs a TinyRecursiveModels
checkout and is not run here), and the stand-in AdamATan2 that bench/trm_reference_step.py
gives the reference against ARCForge's."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT

BENCH = Path(ROOT) / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


cr = _load("compare_reference")
ref_step = _load("trm_reference_step")

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni
bogomips\t: 5200.00

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni
"""


def test_cpu_flags_line_names_present_and_absent_flags():
    line = cr.cpu_flags_line(CPUINFO, "AVX512")
    assert line == (
        "AMD EPYC 9R14 96-Core Processor, 2 logical CPUs; avx2 yes, avx512f yes, avx512_bf16 yes, "
        "amx no; torch ATen CPU capability AVX512"
    )
    # avx512_bf16 must not be read off avx512f or avx512bw; amx is any amx_* flag
    intel = CPUINFO.replace("avx512_bf16 ", "").replace("avx512_vnni", "avx512_vnni amx_tile amx_bf16")
    line = cr.cpu_flags_line(intel)
    assert "avx512_bf16 no" in line and "avx512f yes" in line and "amx yes (amx_bf16 amx_tile)" in line
    assert "capability" not in line
    assert cr.cpu_flags_line("processor : 0\nflags : sse2\n").startswith("unknown CPU, 1 logical CPUs; avx2 no")


def test_median_range_and_ratios_are_paired_by_round():
    assert cr.median_range([3.0, 1.0, 2.0, 10.0]) == (2.5, 1.0, 10.0)
    with pytest.raises(ValueError):
        cr.median_range([])
    # times: ref / ours; per-round ratios 20, 10, 40 -> min 10, max 40; medians 200 / 10
    ref, ours = [200.0, 100.0, 400.0], [10.0, 10.0, 10.0]
    assert cr.ratio_summary(ref, ours, higher_is_better=False) == (20.0, 10.0, 40.0)
    # rates: ours / ref
    med, lo, hi = cr.ratio_summary([4.0, 5.0], [4.4, 4.0], higher_is_better=True)
    assert med == pytest.approx(4.2 / 4.5) and lo == pytest.approx(0.8) and hi == pytest.approx(1.1)
    with pytest.raises(ValueError):
        cr.ratio_summary([1.0, 2.0], [1.0], higher_is_better=False)


def test_stat_and_ratio_formatting():
    assert cr.fmt_stat([14.0, 6.6, 17.4, 12.1], "s") == "13.1 s (6.60-17.4)"
    assert cr.fmt_stat([226.5], "s") == "226 s"  # one value: no range
    assert cr.fmt_stat([0.52, 0.5, 0.51], "GiB") == "0.51 GiB (0.50-0.52)"
    assert cr.fmt_stat([4.6, 4.5], "") == "4.55 (4.50-4.60)"
    assert cr.fmt_ratio([226.5, 220.0], [14.0, 11.0], higher_is_better=False) == "17.9x (16.2-20.0x)"
    assert cr.fmt_ratio([4.41], [4.60], higher_is_better=True) == "1.04x"


def test_format_table():
    rows = [
        dict(measure="builder wall", unit="s", higher_is_better=False, ref=[100.0, 120.0], ours=[10.0, 6.0]),
        dict(measure="train examples/s", unit="", higher_is_better=True, ref=[4.0, 4.0], ours=[4.4, 3.6]),
    ]
    text = cr.format_table(["machine: X"], rows, "TRM e7b68717")
    lines = text.splitlines()
    assert lines[0] == "machine: X"
    assert lines[2] == "| measure | TRM e7b68717 | ARCForge | ARCForge's advantage |"
    assert lines[4] == "| builder wall | 110 s (100-120) | 8.00 s (6.00-10.0) | 13.8x (10.0-20.0x) |"
    assert lines[5] == "| train examples/s | 4.00 (4.00-4.00) | 4.00 (3.60-4.40) | 1.00x (0.90-1.10x) |"
    assert "median (min-max)" in lines[-1]


def test_parse_step_outputs():
    ours = (
        "pretrain.py's train_step (precision fp32, ...)\n"
        "arch=trm (ACTModel), seq 900, batch 32, cpu (2 threads), 527,618 params\n"
        "  6.96 s/step, 4.60 examples/s, 4,138 grid tokens/s, peak RSS 3.22 GiB (mean of 5 steps after 2 warm-up)\n"
    )
    assert cr.parse_arcforge_step(ours) == {"s_per_step": 6.96, "examples_per_s": 4.60, "params": 527618}
    with pytest.raises(ValueError):
        cr.parse_arcforge_step("Traceback (most recent call last):\n")
    ref = "TinyRecursiveReasoningModel_ACTV1(\n)\nTRM_STEP " + json.dumps({"s_per_step": 7.3, "params": 527618}) + "\n"
    assert cr.parse_reference_step('TRM_STEP {"s_per_step": 1}\n' + ref) == {"s_per_step": 7.3, "params": 527618}
    with pytest.raises(ValueError):
        cr.parse_reference_step("print(model)\n")


def test_parse_arcforge_build_log():
    log = (
        "WARNING leakage (pass --fail-on-leakage to refuse): 1 test pairs ...\n"
        'ARCFORGE_TIMINGS {"load": 0.3, "plan": 1.8, "write": 9.0}\n'
        "INFO wrote /tmp/x/build-ours: 2810923 train / 385815 test examples, 800801 identifiers, 11.1 s\n"
    )
    assert cr.parse_arcforge_build(log) == {
        "timings": {"load": 0.3, "plan": 1.8, "write": 9.0},
        "train_examples": 2810923,
        "test_examples": 385815,
        "identifiers": 800801,
        "seconds": 11.1,
    }
    with pytest.raises(ValueError):
        cr.parse_arcforge_build(log.splitlines()[2])  # no timings line


def test_compare_digests():
    ref = {"identifiers.json": "a", "train/all__inputs.npy": "b", "test/dataset.json": "c"}
    assert cr.compare_digests(ref, {**ref, "build_info.json": "z"}) == []
    assert cr.compare_digests(ref, {**ref, "train/all__inputs.npy": "B"}) == ["differs: train/all__inputs.npy"]
    missing = {k: v for k, v in ref.items() if k != "test/dataset.json"}
    assert cr.compare_digests(ref, {**missing, "extra.npy": "e"}) == [
        "missing in ARCForge's output: test/dataset.json",
        "only in ARCForge's output: extra.npy",
    ]
    assert cr.compare_digests({}, {}) == ["the reference wrote no files"]


def test_write_bound_line():
    line = cr.write_bound_line(write_s=9.0, total_s=12.0, nbytes=5_400_000_000, disk_mb_s=300.0)
    assert "9.0 s of 12.0 s (75%)" in line and "5.40 GB = 600 MB/s" in line
    assert "synced take >= 18.0 s" in line and "2.00x the synced rate" in line
    assert "disk" not in cr.write_bound_line(9.0, 12.0, 5_400_000_000, None)


def test_reference_stand_in_adam_atan2_takes_the_kernels_steps():
    """bench/trm_reference_step.py's AdamATan2 (what the reference trains with here) against
    the kernel's formula in plain Python floats (test_optimizers.reference_steps), with a
    varying lr and gradients across six orders of magnitude; ARCForge's optimizer is held to
    the same formula in tests/test_optimizers.py."""
    from test_optimizers import P0, reference_steps

    gen = torch.Generator().manual_seed(4)
    grads = (torch.randn(12, len(P0), generator=gen) * 10.0 ** torch.randint(-3, 3, (12, 1), generator=gen)).tolist()
    lrs = [0.05 / (1 + t) for t in range(12)]
    p = torch.nn.Parameter(torch.tensor(P0, dtype=torch.float64))
    opt = ref_step.AdamATan2([p], lr=lrs[0], betas=(0.9, 0.95), weight_decay=0.1)
    for lr, g in zip(lrs, grads):
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    expected = torch.tensor(reference_steps(P0, grads, lrs, (0.9, 0.95), 0.1), dtype=torch.float64)
    assert (p.detach() - expected).abs().max() < 1e-12
    assert (p.detach() - torch.tensor(P0, dtype=torch.float64)).abs().min() > 1e-3  # every element moved
