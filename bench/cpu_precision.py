"""CPU forward time of a recursive model in fp32 against bf16, the two bf16 paths side by side.

    python bench/cpu_precision.py                       # this CPU as it is
    python bench/cpu_precision.py --isa avx2            # in a child process limited to AVX2 (no bf16 units)
    python bench/cpu_precision.py --both                # both, one after the other, one table

A bf16 forward on a CPU runs its GEMMs one of two ways (models/layers.py): *native*
(PyTorch's bf16 kernels; fast only where the CPU has bf16 units, AVX512-BF16 or AMX) or
*emulated* (fp32 GEMMs on bf16-rounded operands, the same math, chosen automatically on CPUs
without bf16 units). Both pay casts around every layer. Timed here, per configuration:
``model.predict`` (every supervision step, as evaluation runs it) on a fixed random batch, the
median of ``--repeats`` after a warm-up, with 1) fp32, 2) bf16 native, 3) bf16 emulated.
``--isa avx2`` reruns itself with ``ATEN_CPU_CAPABILITY=avx2`` and ``ONEDNN_MAX_CPU_ISA=AVX2``,
the view a CPU without bf16 (or AVX-512) units gives PyTorch. Configurations: the README's
tiny TRM on a 7x7 canvas (batch 64), and the paper TRM (hidden 512, 8 heads) on the 30x30
canvas (batch 4, one supervision step). Prints a markdown table, the fastest path per row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models.layers as layers  # noqa: E402
from models import build_model  # noqa: E402
from models.base import DataShape  # noqa: E402
from models.recursive import RecursiveArchConfig

CONFIGS = {
    "trm_tiny, canvas 7, batch 64": (
        dict(
            hidden_size=64,
            num_heads=2,
            expansion=2,
            H_cycles=2,
            L_cycles=2,
            L_layers=1,
            puzzle_emb_len=1,
            puzzle_emb_ndim=64,
            halt_max_steps=4,
        ),
        49,
        64,
    ),
    "trm (paper), canvas 30, batch 4, 1 ACT step": (
        dict(
            hidden_size=512,
            num_heads=8,
            expansion=4,
            H_cycles=3,
            L_cycles=4,
            L_layers=2,
            puzzle_emb_len=16,
            puzzle_emb_ndim=512,
            halt_max_steps=1,
        ),
        900,
        4,
    ),
}
ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def time_predict(arch: dict, seq_len: int, batch: int, dtype: str, emulate: bool, repeats: int) -> float:
    layers.CPU_LOW_PRECISION_GEMM_IN_FP32 = emulate
    torch.manual_seed(0)
    config = RecursiveArchConfig(name="bench", core="trm", forward_dtype=dtype, **arch)
    model = build_model(
        config, DataShape(seq_len=seq_len, vocab_size=12, num_puzzle_identifiers=16, batch_size=batch)
    ).eval()
    data = {
        "inputs": torch.randint(0, 12, (batch, seq_len)),
        "labels": torch.randint(0, 12, (batch, seq_len)),
        "puzzle_identifiers": torch.randint(1, 16, (batch,)),
    }
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            started = time.perf_counter()
            model.predict(data)
            if i:  # the first call is a warm-up
                times.append(time.perf_counter() - started)
    return statistics.median(times)


def run_here(repeats: int, label: str) -> list[str]:
    rows = []
    for name, (arch, seq_len, batch) in CONFIGS.items():
        fp32 = time_predict(arch, seq_len, batch, "float32", False, repeats)
        native = time_predict(arch, seq_len, batch, "bfloat16", False, repeats)
        emulated = time_predict(arch, seq_len, batch, "bfloat16", True, repeats)
        best = min((fp32, "fp32"), (native, "bf16 native"), (emulated, "bf16 emulated"))[1]
        rows.append(
            f"| {label} | {name} | {1000 * fp32:.1f} | {1000 * native:.1f} | {1000 * emulated:.1f} | "
            f"{native / fp32:.2f}x | {emulated / fp32:.2f}x | {best} |"
        )
    return rows


def cpu_label() -> str:
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    units = "bf16 units" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "no bf16 units"
    limited = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return f"ATen {torch.backends.cpu.get_cpu_capability()}, {f'oneDNN limited to {limited}' if limited else units}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--isa", choices=["native", *ISA_ENV], default="native")
    parser.add_argument("--both", action="store_true", help="this CPU as it is, then limited to AVX2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows-only", action="store_true", help=argparse.SUPPRESS)  # a child's part
    args = parser.parse_args(argv)
    if args.rows_only:
        print("\n".join(run_here(args.repeats, cpu_label())))
        return 0
    rows: list[str] = []
    for isa in ["native", *ISA_ENV] if args.both else [args.isa]:  # each in its own process: ISA is read at start
        child = [sys.executable, os.path.abspath(__file__), "--rows-only", "--repeats", str(args.repeats)]
        done = subprocess.run(child, env={**os.environ, **ISA_ENV.get(isa, {})}, check=True, capture_output=True, text=True)
        rows += done.stdout.strip().splitlines()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        "| CPU as PyTorch sees it | model | fp32 ms | bf16 native ms | bf16 emulated ms | native/fp32 "
        "| emulated/fp32 | fastest |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
