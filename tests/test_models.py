import pytest
import torch

from models import build_model
from models.recursive import DataShape, RecursiveArchConfig

SHAPE = DataShape(seq_len=16, vocab_size=12, num_puzzle_identifiers=6, batch_size=4)


def tiny(name: str, **kw) -> RecursiveArchConfig:
    base = dict(name=name, hidden_size=32, num_heads=2, expansion=2, H_cycles=2, L_cycles=2, L_layers=1,
                puzzle_emb_ndim=32, puzzle_emb_len=2, forward_dtype="float32", halt_max_steps=3,
                halt_exploration_prob=0.0)
    if name in ("hrm", "transformer"):
        base["H_layers"] = 1
    base.update(kw)
    return RecursiveArchConfig(**base)


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"inputs": torch.randint(0, 12, (4, 16), generator=g), "labels": torch.randint(0, 12, (4, 16), generator=g),
            "puzzle_identifiers": torch.randint(0, 6, (4,), generator=g, dtype=torch.int32)}


@pytest.mark.parametrize("name,kw", [("trm", {}), ("trm_mlp", {"mlp_t": True, "pos_encodings": "none"}),
                                     ("hrm", {"puzzle_emb_len": 0}), ("transformer", {}),
                                     ("trm", {"pos_encodings": "learned", "puzzle_emb_ndim": 48})])
def test_shapes_and_eval_halting(name, kw):
    torch.manual_seed(0)
    model = build_model(tiny(name, **kw), SHAPE).eval()
    b = batch()
    carry = model.initial_carry(b)
    for step in range(1, 4):
        carry, out = model(carry, b)
        assert out.logits.shape == (4, 16, 12) and out.q_halt_logits.shape == (4,)
        assert out.q_halt_logits.dtype == torch.float32
        assert (out.steps == step).all()
        assert bool(out.halted.all()) == (step == 3)  # evaluation always runs halt_max_steps


def test_halted_examples_are_replaced_and_reset():
    torch.manual_seed(0)
    model = build_model(tiny("trm"), SHAPE).train()
    b1, b2 = batch(1), batch(2)
    carry, _ = model(model.initial_carry(b1), b1)
    carry.halted = torch.tensor([True, False, True, False])
    carry.steps = torch.tensor([3, 1, 3, 1], dtype=torch.int32)
    before = carry.inner.z_H.clone()
    new_carry, out = model(carry, b2)
    for i, replaced in enumerate([True, False, True, False]):
        source = b2 if replaced else b1
        assert torch.equal(new_carry.current_data["inputs"][i], source["inputs"][i])
        assert int(out.steps[i]) == (1 if replaced else 2)
    reset = model.inner.reset_carry(carry.halted, carry.inner)
    assert torch.equal(reset.z_H[0], model.inner.H_init.expand_as(reset.z_H[0]))
    assert torch.equal(reset.z_H[1], before[1])


def test_training_halts_at_max_steps_and_exploration_delays_halting():
    torch.manual_seed(0)
    model = build_model(tiny("trm", halt_max_steps=2), SHAPE).train()
    b = batch()
    carry = model.initial_carry(b)
    carry, out = model(carry, b)
    assert not out.halted.any()  # q_halt starts at sigmoid(-5): no early halting
    carry, out = model(carry, b)
    assert out.halted.all()
    # a halt logit forced high halts at once, unless exploration sets a minimum
    with torch.no_grad():
        model.inner.q_head.bias.fill_(10.0)
    carry, out = model(model.initial_carry(b), b)
    assert out.halted.all()
    model.config.halt_exploration_prob = 1.0
    model.inner.config.halt_exploration_prob = 1.0
    carry, out = model(model.initial_carry(b), b)
    assert not out.halted.any()  # minimum steps drawn in [2, halt_max_steps]


def test_continue_target_only_without_no_act_continue():
    torch.manual_seed(0)
    b = batch()
    with_target = build_model(tiny("hrm", no_ACT_continue=False), SHAPE).train()
    _, out = with_target(with_target.initial_carry(b), b)
    assert out.target_q_continue is not None and out.target_q_continue.shape == (4,)
    assert ((out.target_q_continue >= 0) & (out.target_q_continue <= 1)).all()
    without = build_model(tiny("hrm", no_ACT_continue=True), SHAPE).train()
    assert without(without.initial_carry(b), b)[1].target_q_continue is None


def test_gradient_reaches_puzzle_embedding_rows_only_in_training():
    torch.manual_seed(0)
    model = build_model(tiny("trm"), SHAPE).train()
    b = batch()
    _, out = model(model.initial_carry(b), b)
    out.logits.sum().backward()
    assert model.puzzle_emb.local_weights.grad is not None
    assert model.puzzle_emb.local_weights.grad.abs().sum() > 0
    assert torch.equal(model.puzzle_emb.local_ids, b["puzzle_identifiers"])


def test_bad_arch_values_are_refused():
    with pytest.raises(ValueError, match="num_heads"):
        build_model(tiny("trm", hidden_size=30, num_heads=4), SHAPE)
    with pytest.raises(ValueError, match="not a registered model"):
        build_model(tiny("nope"), SHAPE)
