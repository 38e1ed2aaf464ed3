"""``arch=transformer`` is TinyRecursiveModels' transformers_baseline (commit e7b68717,
``config/arch/transformers_baseline.yaml`` + ``models/recursive_reasoning/transformers_baseline.py``):
ceil(puzzle_emb_ndim / hidden_size) = 1 puzzle-embedding token, and in training an example
halts when q_halt > q_continue, with no Q target for the continue logit."""

from __future__ import annotations

import pytest
import torch
from train_helpers import compose_config

from models import build_model
from models.base import DataShape

SHAPE = DataShape(seq_len=16, vocab_size=12, num_puzzle_identifiers=6, batch_size=4)
# The option as composed, shrunk to CPU size; everything else (puzzle tokens, halting) is the yaml's.
TINY = [
    "arch=transformer",
    "arch.hidden_size=32",
    "arch.num_heads=2",
    "arch.expansion=2",
    "arch.H_layers=1",
    "arch.forward_dtype=float32",
    "arch.halt_exploration_prob=0.0",
]


def baseline(*overrides: str):
    return build_model(compose_config([*TINY, *overrides]).arch, SHAPE)


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "inputs": torch.randint(0, 12, (4, 16), generator=g),
        "labels": torch.randint(0, 12, (4, 16), generator=g),
        "puzzle_identifiers": torch.randint(0, 6, (4,), generator=g, dtype=torch.int32),
    }


def test_the_option_has_one_puzzle_token_as_the_reference():
    arch = compose_config(["arch=transformer"]).arch
    assert arch.puzzle_emb_ndim == arch.hidden_size == 512
    model = baseline()
    assert model.inner.puzzle_emb_len == 1
    assert model.inner.total_len == SHAPE.seq_len + 1
    b = batch()
    carry, out = model(model.initial_carry(b), b)
    assert carry.inner.z_H.shape == (4, SHAPE.seq_len + 1, 32)
    assert out.logits.shape == (4, SHAPE.seq_len, 12)


def force_q(model, q_halt: float, q_continue: float) -> None:
    """Make the Q head output these two logits for every example."""
    with torch.no_grad():
        model.inner.q_head.weight.zero_()
        model.inner.q_head.bias.copy_(torch.tensor([q_halt, q_continue]))


@pytest.mark.parametrize(
    "q_halt,q_continue,halts",
    [
        (0.5, 1.0, False),  # q_halt > 0, but the continue logit is higher: keeps going (TRM's rule would halt)
        (1.0, 0.5, True),
        (-0.5, -1.0, True),  # q_halt < 0, but beats the continue logit: halts (TRM's rule would not)
        (-1.0, -0.5, False),
    ],
)
def test_training_halts_when_q_halt_beats_q_continue(q_halt, q_continue, halts):
    torch.manual_seed(0)
    model = baseline().train()
    assert model.config.halt_max_steps == 16  # the first step is far from the forced halt
    force_q(model, q_halt, q_continue)
    b = batch()
    carry, out = model(model.initial_carry(b), b)
    assert (out.steps == 1).all()
    assert out.halted.tolist() == [halts] * 4
    # the reference's loss never asks for the continue logit's bootstrapped target
    assert out.target_q_continue is None


def test_evaluation_still_runs_every_step():
    torch.manual_seed(0)
    model = baseline("arch.halt_max_steps=3").eval()
    force_q(model, 1.0, 0.5)
    b = batch()
    carry = model.initial_carry(b)
    for step in (1, 2, 3):
        carry, out = model(carry, b)
        assert bool(out.halted.all()) == (step == 3)


def test_q_continue_target_is_kept_for_hrm_style_q_learning():
    """The switch only drops the target; no_ACT_continue=false alone is still HRM's Q-learning."""
    b = batch()
    hrm_style = baseline("arch.q_continue_target=true").train()
    assert hrm_style(hrm_style.initial_carry(b), b)[1].target_q_continue is not None
