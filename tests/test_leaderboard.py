"""bench/leaderboard.py: its entries are discovered from conf/arch (a size variant such as
trm_tiny is no entry of its own), and a 2-step run of every entry on a tiny dataset writes one
row each (finite figures, the curve, the plot), records a failing entry and goes on, retries
only that entry on a rerun, and trains nothing on the run after."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path

import pytest
from conftest import ROOT
from train_helpers import build_tiny_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load_leaderboard():
    spec = importlib.util.spec_from_file_location("leaderboard_bench", ROOT / "bench" / "leaderboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECURSIVE_ROOT = """# a root
defaults:
  - /schema/arch@_here_: recursive_schema
  - _self_
name: base
family: recursive
core: trm
hidden_size: 512
H_layers: 0
L_layers: 2
"""
DIFFUSION_ROOT = """defaults:
  - /schema/arch@_here_: diffusion_schema
  - _self_
name: other
family: diffusion
"""


def variant(parent: str, name: str, **keys) -> str:
    lines = ["defaults:", f"  - {parent}", "  - _self_", f"name: {name}", *(f"{k}: {v}" for k, v in keys.items())]
    return "\n".join(lines) + "\n"


def test_the_discovery_rule_on_a_folder_of_its_own(tmp_path: Path):
    lb = load_leaderboard()
    files = {
        "base": RECURSIVE_ROOT,
        "base_tiny": variant("base", "base_tiny", hidden_size=64, L_layers=1, L_cycles=2, forward_dtype="float32"),
        "base_tinier": variant("base_tiny", "base_tinier", hidden_size=32),  # a size variant of a size variant
        "base_mlp": variant("base", "base_mlp", mlp_t="true", pos_encodings="none"),  # another computation
        "base_mlp_tiny": variant("base_mlp", "base_mlp_tiny", hidden_size=64, puzzle_emb_len=1),
        "base_high": variant("base", "base_high", H_layers=2),  # a stack the parent has none of
        "base_flag": variant("base", "base_flag", halt_max_steps=4, no_ACT_continue="false"),  # not a size key
        "other": DIFFUSION_ROOT,
        "other_quiet": variant("other", "other_quiet", num_timesteps=8, self_condition="false"),  # switched off: smaller
        "other_loud": variant("other_quiet", "other_loud", self_condition="true"),  # switched on: a part added
    }
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    assert lb.discover(str(tmp_path)) == {
        "base": ["base", "base_tinier", "base_tiny"],
        "base_flag": ["base_flag"],
        "base_high": ["base_high"],
        "base_mlp": ["base_mlp", "base_mlp_tiny"],
        "other": ["other", "other_quiet"],
        "other_loud": ["other_loud"],
    }


def test_conf_arch_entries_are_the_roots_and_the_non_size_variants():
    lb = load_leaderboard()
    trees = lb.discover()
    options = lb.read_options()
    members = [o for tree in trees.values() for o in tree]
    assert sorted(members) == sorted(options)  # every option belongs to exactly one entry
    assert {o for o, opt in options.items() if opt.parent is None} <= set(trees)  # every root is an entry
    for size_variant in (
        "trm_tiny",
        "hrm_tiny",
        "transformer_tiny",
        "diffusion_tiny",
        "efe_tiny",
        "decoder_only_tiny",
        "encoder_decoder_tiny",
        "champion_tiny",
        "trm_mlp_tiny",
        "urm_tiny",
    ):
        assert size_variant not in trees and size_variant in trees[size_variant[:-5].replace("efe", "efe_agent")]
    assert "champion" in trees and "trm_mlp" in trees  # variants that change what is computed
    assert all(len(tree) > 1 for tree in trees.values()), "an entry without a CPU-sized variant"


def read_board(out: Path) -> tuple[dict, str]:
    return json.loads((out / "leaderboard.json").read_text()), (out / "leaderboard.md").read_text()


def stamps(out: Path) -> dict[str, int]:
    """Modification times of every entry's result and run log."""
    return {
        str(p.relative_to(out)): p.stat().st_mtime_ns
        for pattern in ("*/result.json", "*/run/metrics.jsonl")
        for p in out.glob(pattern)
    }


@pytest.mark.slow
def test_every_entry_trains_two_steps_one_failure_is_retried_and_a_rerun_trains_nothing(tmp_path, monkeypatch, caplog):
    lb = load_leaderboard()
    data = build_tiny_dataset(tmp_path)
    out = tmp_path / "board"
    argv = ["--steps", "2", "--data", str(data), "--out", str(out), "--threads", "1", "global_batch_size=8"]
    entries = lb.discover()
    train = lb.loop.train

    def trm_fails(config, env):
        if config.arch.name in entries["trm"]:
            raise RuntimeError("injected failure\nsecond line")
        return train(config, env)

    # --- first run: trm fails, every other entry is trained and the run exits 1 -----------------
    monkeypatch.setattr(lb.loop, "train", trm_fails)
    assert lb.main(argv) == 1
    board, md = read_board(out)
    failed = [r for r in board["entries"] if r["status"] != "ok"]
    assert failed == [{"entry": "trm", "option": "trm_tiny", "status": "failed", "error": "RuntimeError: injected failure"}]
    assert "| trm | trm_tiny | - |" in md and "failed: RuntimeError: injected failure |" in md
    assert (out / "trm" / "failed.json").is_file() and not (out / "trm" / "result.json").exists()
    before = stamps(out)
    assert len([k for k in before if k.endswith("result.json")]) == len(entries) - 1

    # --- rerun: only the failed entry trains -------------------------------------------------------
    monkeypatch.setattr(lb.loop, "train", train)
    assert lb.main(argv) == 0
    after = stamps(out)
    assert {k: v for k, v in after.items() if not k.startswith("trm/")} == before
    assert not (out / "trm" / "failed.json").exists()

    board, md = read_board(out)
    rows = {r["entry"]: r for r in board["entries"]}
    assert list(rows) == [r["entry"] for r in board["entries"]] and set(rows) == set(entries)  # one row per entry
    assert board["protocol"]["steps"] == 2 and board["protocol"]["data"] == str(data)
    for entry, r in rows.items():
        assert r["status"] == "ok" and r["option"] in entries[entry] and r["steps"] == 2, r
        assert r["option"] != entry, f"{entry} trained at full size"  # each entry has a smaller variant
        for key in ("pass@1", "pass@2", "test_cell_accuracy", "examples_per_s", "train_minutes"):
            assert math.isfinite(r[key]) and r[key] >= 0, (entry, key, r[key])
        assert 0 <= r["pass@1"] <= r["pass@2"] <= 1 and 0 <= r["test_cell_accuracy"] <= 1
        assert r["train_exact"] is None or 0 <= r["train_exact"] <= 1  # None: no example halted in 2 steps
        assert 0 < r["parameters"] < 300_000 and r["examples_per_s"] > 0 and r["train_minutes"] > 0
        assert r["examples_per_s"] == pytest.approx(2 * 8 / (60 * r["train_minutes"]))
        # the curve: one evaluation per slice (steps 1 and 2 of 4 slices), the last one the final figures
        assert [p["step"] for p in r["curve"]] == [1, 2]
        assert 0 < r["curve"][0]["minutes"] < r["curve"][1]["minutes"] == pytest.approx(r["train_minutes"])
        assert r["curve"][-1]["test_cell_accuracy"] == r["test_cell_accuracy"]
    table = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| entry ")]
    assert sorted(line.split(" | ")[0][2:] for line in table) == sorted(entries)
    assert all(line.endswith("| ok |") and " | 2 | " in line for line in table)
    assert (out / "leaderboard.png").stat().st_size > 0

    # --- the run after: nothing is trained, the table is written again ------------------------------
    caplog.set_level(logging.INFO, logger="bench.leaderboard")
    assert lb.main(argv) == 0
    assert stamps(out) == after
    assert sum("not trained again" in m for m in caplog.messages) == len(entries)
    assert read_board(out) == (board, md)
    # another budget in the same folder would not compare: refused
    assert lb.main([*argv[:1], "3", *argv[2:]]) == 2
