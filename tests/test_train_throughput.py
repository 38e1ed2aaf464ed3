"""bench/train_throughput.py: its figures, its warm-up rule, real (size-bucketed) batches
with --data, and the random mode's output that bench/compare_reference.py parses."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import use_test_threads, write_folder_source

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import compare_reference  # noqa: E402
import train_throughput as tt  # noqa: E402

from dataset.build_arc_dataset import main as build_main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


def test_timing_figures():
    timing = tt.Timing(batch_size=4, step_s={16: [0.1, 0.3], 64: [0.4]})
    seconds, examples, tokens = timing.realized()
    assert seconds == pytest.approx(0.8 / 3)
    assert examples == pytest.approx(12 / 0.8)
    assert tokens == pytest.approx((2 * 16 + 64) * 4 / 0.8)
    assert timing.mix() == "16x2 64x1"
    # 3 of 4 steps at 16 (0.2 s each on average), 1 at 64 (0.4 s).
    seconds, examples, tokens = timing.weighted({16: 3, 64: 1})
    assert seconds == pytest.approx(0.25)
    assert examples == pytest.approx(4 / 0.25)
    assert tokens == pytest.approx((3 * 16 + 64) / 4 * 4 / 0.25)
    with pytest.raises(ValueError, match="100"):
        timing.weighted({16: 1, 100: 1})


def test_first_steps_and_each_new_length_warm_up():
    config = tt.build_config(["arch=trm_tiny", "global_batch_size=2"])
    state = tt.build_state(config, tt.RandomData(seq_len=64, canvas_sides={"canvas4": 4, "canvas8": 8}), CPU)
    batches = {s: tt.random_batch(2, 0, CPU, s) for s in (16, 64)}
    order = [16, 16, 64, 16, 64, 64]
    timing = tt.time_steps(state, (batches[s] for s in order), CPU, steps=100, warmup=1)
    # step 0: warm-up (first step, new length); 1: timed; 2: warm-up (new length); 3-5: timed
    assert timing.warmup_steps == 2
    assert timing.lengths_seen == [16, 64]
    assert {s: len(v) for s, v in timing.step_s.items()} == {16: 2, 64: 2}
    assert len(timing.load_s) == 6 and timing.peak_cuda_bytes is None
    assert state.step == 6


def bucketed_dataset(tmp_path: Path) -> Path:
    """Tasks of 2x2 and of 5x5 grids on canvas buckets 3 and 6."""
    rng = np.random.default_rng(0)

    def task(side):
        pairs = [{"input": (g := rng.integers(0, 10, (side, side))).tolist(), "output": g[::-1].tolist()} for _ in range(4)]
        return {"train": pairs[:3], "test": pairs[3:]}

    src = write_folder_source(
        tmp_path / "src",
        {
            "training": {f"t{side}_{i}": task(side) for side in (2, 5) for i in range(3)},
            "evaluation": {f"e{side}": task(side) for side in (2, 5)},
        },
    )
    out = tmp_path / "buckets"
    assert (
        build_main(
            [
                "--input-file-prefix",
                str(src),
                "--output-dir",
                str(out),
                "--subsets",
                "training",
                "evaluation",
                "--test-set-name",
                "evaluation",
                "--num-aug",
                "3",
                "--max-grid-size",
                "6",
                "--canvas-buckets",
                "3",
                "6",
            ]
        )
        == 0
    )
    use_test_threads()
    return out


def test_data_mode_times_real_bucketed_batches(tmp_path, capsys):
    data = bucketed_dataset(tmp_path)
    tt.main(["--data", str(data), "--steps", "8", "--warmup", "1", "arch=trm_tiny", "global_batch_size=4"])
    out = capsys.readouterr().out
    assert f"real batches of {data} (train split; canvas3: seq 9, canvas6: seq 36)" in out
    assert "seq 9-36 (one length per batch)" in out
    # the summary line keeps the random mode's 's/step, examples/s' (compare_reference parses it)
    parsed = compare_reference.parse_arcforge_step(out)
    assert parsed["examples_per_s"] > 0 and parsed["params"] > 0
    summary = next(line for line in out.splitlines() if "s/step," in line)
    # warm-up: step 0 (the first step, and the first at its length), then the other length's first
    assert "8 steps timed after 2 warm-up" in summary, summary
    assert re.search(r"seq mix (9|36)x\d+", summary)
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| seq len | timed steps | ms/step | examples/s | grid tokens/s")
    lengths = [int(line.split("|")[1]) for line in table[2:-1]]
    assert set(lengths) <= {9, 36} and lengths
    assert table[-1].startswith("| all (") and "| 8 |" in table[-1]


def test_random_mode_output_is_unchanged(capsys):
    tt.main(["--steps", "1", "--warmup", "0", "arch=trm_tiny", "global_batch_size=2"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("pretrain.py's train_step (precision fp32, ema False")
    assert "on one random batch" in out[0]
    assert out[1].startswith("arch=trm_tiny (ACTModel), seq 900, batch 2, cpu (")
    assert re.match(
        r"  [\d.]+ s/step, [\d.]+ examples/s, [\d,]+ grid tokens/s, peak RSS [\d.]+ GiB "
        r"\(mean of 1 steps after 1 warm-up\)$",
        out[2],
    ), out[2]
    assert compare_reference.parse_arcforge_step("\n".join(out))["params"] == 67202
