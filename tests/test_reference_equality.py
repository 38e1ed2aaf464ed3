"""ARCForge's TRM, TRM-MLP and HRM equal the public reference implementations.

The fixtures ``tests/data/reference_{trm,trm_mlp,hrm}_tiny.pt`` were recorded from
TinyRecursiveModels (commit e7b68717; ``models/recursive_reasoning/trm.py`` and its copy of
HRM, ``hrm.py``), run on CPU in float32 by a generator that does not import ARCForge. Each
holds:

* ``config``: the reference model's config dict (batch 4, seq_len 16, vocab 12, 5 puzzle
  identifiers, hidden 32, 2 heads, expansion 2, H_cycles 2, L_cycles 2, puzzle_emb_ndim 32,
  halt_max_steps 3, halt_exploration_prob 0, float32);
* ``state_dict``: every persistent tensor filled with random values after
  ``torch.manual_seed(0)`` (so the zero-initialised puzzle embedding and q_head matter),
  keyed exactly as a reference checkpoint of ``torch.compile(ACTLossHead(model))``
  (``_orig_mod.model.inner.*``);
* ``batches``: the batch passed to each ACT call: ``batch`` then ``batch2`` three times.
  Calls 2-3 must ignore ``batch2`` (nobody has halted), call 4 follows a full halt and so
  loads ``batch2`` with a reset carry;
* ``outputs["eval"]`` / ``outputs["train"]``: per call, logits, q_halt_logits,
  q_continue_logits, (HRM, train) target_q_continue, and the carry's halted / steps,
  recorded in ``model.eval()`` and ``model.train()`` (exploration 0, so deterministic) from
  ``initial_carry``. In train mode the trm fixture's first call halts 3 of 4 examples
  (q_halt > 0), exercising the partial replacement of halted examples.

Not covered because the reference crashes: TRM with ``no_ACT_continue=False`` in train mode
unpacks 5 values from its inner model's 3-tuple (ValueError); the fixtures' ``notes`` say so.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import build_model
from models.base import DataShape
from models.convert import convert_state_dict
from models.recursive import RecursiveArchConfig

DATA = Path(__file__).resolve().parent / "data"

# Same ops in the same order in float32 on CPU. On an AMD EPYC (AVX2) the outputs are bitwise
# equal; on an Intel Xeon with AVX-512 and AMX the GEMM kernels block the sums differently and
# logits move by up to 1.05e-5 (2026-12-07, torch 2.13.0+cpu). The tolerance leaves 10x room
# over that; a real discrepancy (a wrong op order, a missing norm, a swapped q/k/v split, a
# wrong RoPE) moves outputs by >1e-2.
TOL = {"atol": 1e-4, "rtol": 1e-4}

# ARCForge arch name and the fields that differ from / are absent in the reference config.
CASES = {
    "trm_tiny": ("trm", {}),
    "trm_mlp_tiny": ("trm_mlp", {}),
    # The reference HRM always uses ceil(ndim / hidden) puzzle tokens and Q-learning with
    # the continue logit; ARCForge spells those puzzle_emb_len=0 and no_ACT_continue=False.
    "hrm_tiny": ("hrm", {"core": "hrm", "puzzle_emb_len": 0, "no_ACT_continue": False}),
}

ARCH_FIELDS = (
    "hidden_size",
    "num_heads",
    "expansion",
    "H_cycles",
    "L_cycles",
    "H_layers",
    "L_layers",
    "puzzle_emb_ndim",
    "puzzle_emb_len",
    "pos_encodings",
    "rope_theta",
    "rms_norm_eps",
    "mlp_t",
    "halt_max_steps",
    "halt_exploration_prob",
    "no_ACT_continue",
    "forward_dtype",
)


def load_fixture(case: str) -> dict:
    return torch.load(DATA / f"reference_{case}.pt", weights_only=True)


def build(case: str, fixture: dict):
    name, overrides = CASES[case]
    ref = fixture["config"]
    fields = {k: ref[k] for k in ARCH_FIELDS if k in ref}
    fields.update(overrides)
    config = RecursiveArchConfig(name=name, **fields)
    shape = DataShape(
        seq_len=ref["seq_len"],
        vocab_size=ref["vocab_size"],
        num_puzzle_identifiers=ref["num_puzzle_identifiers"],
        batch_size=ref["batch_size"],
    )
    model = build_model(config, shape)
    model.load_state_dict(convert_state_dict(dict(fixture["state_dict"]), model.state_dict()))
    return model


def run_calls(model, batches: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    carry = model.initial_carry(batches[0])
    records = []
    for batch in batches:
        carry, out = model(carry, batch)
        rec = {
            "logits": out.logits,
            "q_halt_logits": out.q_halt_logits,
            "q_continue_logits": out.q_continue_logits,
            "halted": carry.halted,
            "steps": carry.steps,
        }
        if out.target_q_continue is not None:
            rec["target_q_continue"] = out.target_q_continue
        records.append({k: v.detach() for k, v in rec.items()})
    return records


def assert_calls_equal(got: list[dict], want: list[dict], mode: str) -> None:
    assert len(got) == len(want) > 0
    for i, (g, w) in enumerate(zip(got, want)):
        assert set(g) == set(w), f"{mode} call {i}: outputs {sorted(g)} vs reference {sorted(w)}"
        for key in w:
            msg = f"{mode} call {i}: {key}"
            if w[key].dtype.is_floating_point:
                assert g[key].dtype == w[key].dtype, msg
                torch.testing.assert_close(g[key], w[key], **TOL, msg=lambda m, msg=msg: f"{msg}: {m}")
            else:
                assert torch.equal(g[key].to(w[key].dtype), w[key]), f"{msg}: {g[key]} vs {w[key]}"


@pytest.mark.parametrize("case", list(CASES))
def test_checkpoint_loads_one_to_one(case):
    """Every reference key maps onto one ARCForge tensor of the same shape, values unchanged."""
    fixture = load_fixture(case)
    model = build(case, fixture)
    ours = model.state_dict()
    prefix = "_orig_mod.model."
    ref = {k.removeprefix(prefix): v for k, v in fixture["state_dict"].items()}
    assert all(k.startswith(prefix) for k in fixture["state_dict"])
    assert set(ref) == set(ours)
    for key, value in ref.items():
        assert torch.equal(ours[key], value), key
    # The recorded weights must make the zero-initialised tensors matter.
    assert ref["inner.puzzle_emb.weights"].abs().min() > 0
    assert ref["inner.q_head.weight"].abs().min() > 0


@pytest.mark.parametrize("case", list(CASES))
def test_eval_calls_match_reference(case):
    fixture = load_fixture(case)
    model = build(case, fixture).eval()
    with torch.no_grad():
        got = run_calls(model, fixture["batches"])
    assert_calls_equal(got, fixture["outputs"]["eval"], "eval")


@pytest.mark.parametrize("case", list(CASES))
def test_train_calls_match_reference(case):
    fixture = load_fixture(case)
    assert fixture["outputs"]["train"], fixture["notes"]
    model = build(case, fixture).train()
    torch.manual_seed(0)  # exploration prob is 0, so the random draws cannot change halting
    got = run_calls(model, fixture["train_batches"])  # with grad, as in training
    assert_calls_equal(got, fixture["outputs"]["train"], "train")
