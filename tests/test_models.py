import pytest
import torch

from models import build_model
from models.base import DataShape
from models.recursive import RecursiveArchConfig

SHAPE = DataShape(seq_len=16, vocab_size=12, num_puzzle_identifiers=6, batch_size=4)


def tiny(name: str, **kw) -> RecursiveArchConfig:
    base = dict(
        name=name,
        core={"trm_mlp": "trm"}.get(name, name),
        hidden_size=32,
        num_heads=2,
        expansion=2,
        H_cycles=2,
        L_cycles=2,
        L_layers=1,
        puzzle_emb_ndim=32,
        puzzle_emb_len=2,
        forward_dtype="float32",
        halt_max_steps=3,
        halt_exploration_prob=0.0,
    )
    if name in ("hrm", "transformer"):
        base["H_layers"] = 1
    base.update(kw)
    return RecursiveArchConfig(**base)


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "inputs": torch.randint(0, 12, (4, 16), generator=g),
        "labels": torch.randint(0, 12, (4, 16), generator=g),
        "puzzle_identifiers": torch.randint(0, 6, (4,), generator=g, dtype=torch.int32),
    }


@pytest.mark.parametrize(
    "name,kw",
    [
        ("trm", {}),
        ("trm_mlp", {"mlp_t": True, "pos_encodings": "none"}),
        ("hrm", {"puzzle_emb_len": 0}),
        ("transformer", {}),
        ("trm", {"pos_encodings": "learned", "puzzle_emb_ndim": 48}),
    ],
)
def test_shapes_and_eval_halting(name, kw):
    """Evaluation runs halt_max_steps whatever the halt head says: here it says "halt now"
    (q_halt ~ +10) for every example, which halts training at once."""
    torch.manual_seed(0)
    model = build_model(tiny(name, **kw), SHAPE).eval()
    with torch.no_grad():
        model.inner.q_head.bias.fill_(10.0)
    b = batch()
    carry = model.initial_carry(b)
    for step in range(1, 4):
        carry, out = model(carry, b)
        assert out.logits.shape == (4, 16, 12) and out.q_halt_logits.shape == (4,)
        assert out.q_halt_logits.dtype == torch.float32 and (out.q_halt_logits > 0).all()
        assert (out.steps == step).all()
        assert bool(out.halted.all()) == (step == 3)  # evaluation always runs halt_max_steps
    assert model.train()(model.initial_carry(b), b)[1].halted.all()  # the same head halts training at once


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


@pytest.mark.parametrize("no_act_continue", [True, False])
def test_training_halts_and_sets_the_continue_target_by_the_q_logits(no_act_continue):
    """Without exploration an example halts when q_halt > 0 (TRM) or q_halt > q_continue
    (HRM's Q-learning), and always at halt_max_steps. HRM's continue target is the sigmoid of
    the next step's q_halt at the last step, else of the next step's max(q_halt, q_continue),
    both computed here from the carry the step returns."""
    torch.manual_seed(0)
    model = build_model(tiny("hrm", no_ACT_continue=no_act_continue, halt_max_steps=2), SHAPE).train()
    b1, b2 = batch(1), batch(2)
    with torch.no_grad():  # (the initial head says "never halt") a boundary between the examples' q logits
        model.inner.q_head.weight.normal_(0.0, 0.5)
        model.inner.q_head.bias.zero_()
        out = model(model.initial_carry(b1), b1)[1]
        margin = out.q_halt_logits - (0 if no_act_continue else out.q_continue_logits)
        model.inner.q_head.bias[0] = -margin.sort().values[1:3].mean()  # two of the four halt at step 1
    carry = model.initial_carry(b1)
    for step in (1, 2):
        steps_before = torch.where(carry.halted, 0, carry.steps)
        carry, out = model(carry, b1 if step == 1 else b2)  # halted rows take b2's data, the others keep b1's
        q_halt, q_continue = out.q_halt_logits, out.q_continue_logits
        is_last = steps_before + 1 == 2
        wants = q_halt > 0 if no_act_continue else q_halt > q_continue
        assert torch.equal(out.halted, is_last | wants), step
        if no_act_continue:
            assert out.target_q_continue is None
            continue
        _, _, next_halt, next_continue = model.inner(carry.inner, carry.current_data)
        expected = torch.sigmoid(torch.where(is_last, next_halt, torch.maximum(next_halt, next_continue)))
        torch.testing.assert_close(out.target_q_continue, expected)
        if step == 1:
            assert 0 < int(wants.sum()) < 4  # some halt early, some go on to the last step
            target_1, going_on = out.target_q_continue, ~out.halted
        else:
            assert 0 < int(is_last.sum()) < 4  # both branches of the target are checked
            assert not torch.equal(torch.sigmoid(next_halt), expected)
            # Observed, not recomputed: an example that went on after step 1 (with its data) meets
            # at step 2 the q logits step 1's target was made of: max(q_halt, q_continue) there.
            seen = torch.sigmoid(torch.maximum(q_halt, q_continue))
            torch.testing.assert_close(target_1[going_on], seen[going_on])


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
