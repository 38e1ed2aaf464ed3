"""ARCForge's URM core (arch.core=urm) equals the public URM (UbiquantAI/URM, commit 41de2c3),
forward and one training step, and its presets are the paper's.

The fixture ``tests/data/reference_urm_tiny.pt`` was recorded from URM's own
``models/urm/urm.py`` (URM, URMBlock, URM_Inner), ``models/layers.py`` (Attention,
ConvSwiGLU, RotaryEmbedding, rms_norm) and ``models/losses.py`` (ACTLossHead with
stablemax_cross_entropy), on CPU in float32, by a generator that does not import ARCForge:
``flash_attn_func`` stubbed by ``scaled_dot_product_attention`` (the same maths; URM imports
flash-attn unconditionally), ``model.float()`` so URM's bfloat16 depthwise conv is float32,
and ``torch.rand_like`` returning ones so URM's hard-coded halting exploration (0.1) never
fires. It holds:

* ``config``: URM's config (batch 4, seq_len 16, vocab 12, 5 puzzle identifiers, hidden 32,
  2 heads, expansion 2, 2 layers, H_cycles 2, L_cycles 2, loops 3, puzzle_emb_ndim 32);
* ``state_dict``: URM's own initialisation after ``torch.manual_seed(0)``, with the tensors it
  zero-initialises (puzzle table, q_head, conv bias) made random (x 0.5) so that they matter,
  keyed as URM's checkpoints (``_orig_mod.model.inner.*``). Weights random everywhere make
  the recursion expansive: a kernel's 1e-7 rounding then grows about 5x per block, and the
  ``ATEN_CPU_CAPABILITY=default`` kernels ended 6e-3 away; at URM's init they stay within 1e-5;
* ``batches``: ``batch`` then ``batch2`` three times;
* ``outputs["eval"]`` / ``outputs["train"]``: per call, logits, q_halt / q_continue logits,
  halted, steps; in train mode also the loss (lm + 0.5 q_halt) and, for the first two calls
  (three of four examples halt at call 0, so call 1 replaces three and continues one), the
  gradient of every parameter: the truncated backpropagation through loops.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_helpers import compose_config

from losses import build_loss
from losses.act import LossConfig
from models import build_model
from models.base import DataShape
from models.convert import convert_state_dict
from models.recursive import RecursiveArchConfig

FIXTURE = Path(__file__).resolve().parent / "data" / "reference_urm_tiny.pt"
TOL = {"atol": 1e-4, "rtol": 1e-4}  # as tests/test_reference_equality.py: float32 GEMM rounding across CPUs


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


def build(fixture: dict):
    ref = fixture["config"]
    config = RecursiveArchConfig(
        name="urm_tiny",
        core="urm",
        hidden_size=ref["hidden_size"],
        num_heads=ref["num_heads"],
        expansion=ref["expansion"],
        H_cycles=ref["H_cycles"],
        L_cycles=ref["L_cycles"],
        H_layers=0,
        L_layers=ref["num_layers"],
        mlp="conv_swiglu",
        puzzle_emb_ndim=ref["puzzle_emb_ndim"],
        puzzle_emb_len=0,
        halt_max_steps=ref["loops"],
        halt_exploration_prob=0.0,
        forward_dtype="float32",
    )
    shape = DataShape(ref["seq_len"], ref["vocab_size"], ref["num_puzzle_identifiers"], ref["batch_size"])
    model = build_model(config, shape)
    model.load_state_dict(convert_state_dict(dict(fixture["state_dict"]), model.state_dict()))
    return model


def run_calls(model, batches, train: bool):
    model.train(train)
    loss_fn = build_loss(LossConfig(name="stablemax", token_loss="stablemax"))
    carry = model.initial_carry(batches[0])
    records = []
    for batch in batches:
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(train):
            carry, out = model(carry, batch)
        rec = {
            "logits": out.logits.detach(),
            "q_halt_logits": out.q_halt_logits.detach(),
            "q_continue_logits": out.q_continue_logits.detach(),
            "halted": carry.halted,
            "steps": carry.steps,
        }
        if train:
            loss, _ = loss_fn(out, carry.current_data)
            loss.backward()
            rec["loss"] = loss.detach()
            rec["grads"] = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        records.append(rec)
    return records


def assert_close(got, want, what):
    if want.dtype.is_floating_point:
        torch.testing.assert_close(got.to(want.dtype), want, **TOL, msg=lambda m: f"{what}: {m}")
    else:
        assert torch.equal(got.to(want.dtype), want), f"{what}: {got} vs {want}"


def test_every_urm_key_loads_one_to_one(fixture):
    model = build(fixture)
    ours = model.state_dict()
    converted = convert_state_dict(dict(fixture["state_dict"]), ours)
    assert set(converted) == set(ours)
    for key, value in converted.items():
        assert torch.equal(ours[key], value), key
    assert converted["inner.H_init"].abs().min() > 0 and converted["inner.puzzle_emb.weights"].abs().min() > 0


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_calls_match_urm(fixture, mode):
    model = build(fixture)
    got = run_calls(model, fixture["batches"], train=mode == "train")
    want = fixture["outputs"][mode]
    assert len(got) == len(want) == 4
    for i, (g, w) in enumerate(zip(got, want)):
        for key in ("logits", "q_halt_logits", "q_continue_logits", "halted", "steps", "loss"):
            if key in w:
                assert_close(g[key], w[key], f"{mode} call {i}: {key}")


def test_one_training_step_has_urms_gradients(fixture):
    """The gradient of lm + 0.5 q_halt loss: only the last L_cycles passes carry it."""
    model = build(fixture)
    got = run_calls(model, fixture["batches"], train=True)
    for i in (0, 1):
        want = convert_state_dict(dict(fixture["outputs"]["train"][i]["grads"]), dict(model.named_parameters()))
        assert set(got[i]["grads"]) == set(want), f"call {i}"
        for name, grad in want.items():
            assert_close(got[i]["grads"][name], grad, f"train call {i}: grad of {name}")


def test_truncation_cuts_the_gradient_of_the_forward_only_loops():
    """Without truncation (every pass with gradient) the gradients differ: the test above can fail."""
    shape = DataShape(16, 12, 5, 2)
    config = compose_config(["arch=urm_tiny", "data.paths=[unused]"]).arch
    torch.manual_seed(0)
    model = build_model(config, shape)
    batch = {
        "inputs": torch.randint(0, 12, (2, 16)),
        "labels": torch.randint(0, 12, (2, 16)),
        "puzzle_identifiers": torch.ones(2).long(),
    }
    x = model.inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
    z0 = model.inner.H_init.expand_as(x).clone()
    truncated = model.inner.reason(type(model.initial_carry(batch).inner)(z0, None), x, model.inner.rotary_emb()).z_H
    full = z0
    for _ in range(config.H_cycles * config.L_cycles):
        full = model.inner.L_level(full, x, model.inner.rotary_emb())
    torch.testing.assert_close(truncated, full)  # the same forward ...
    g_truncated = torch.autograd.grad(truncated.sum(), model.inner.embed_tokens.embedding_weight, retain_graph=True)[0]
    g_full = torch.autograd.grad(full.sum(), model.inner.embed_tokens.embedding_weight)[0]
    assert not torch.allclose(g_truncated, g_full, rtol=1e-3, atol=1e-6)  # ... another gradient


def test_the_paper_config_has_urms_parameter_count():
    """13,663,234 trainable parameters (URM's ARC config: 4 layers of width 512, ConvSwiGLU,
    vocab 12), counted from URM's model built on CPU."""
    config = compose_config(["arch=urm", "data.paths=[unused]"]).arch
    model = build_model(config, DataShape(seq_len=900, vocab_size=12, num_puzzle_identifiers=1, batch_size=1))
    assert sum(p.numel() for p in model.parameters()) == 13_663_234


# URM's ARC-AGI-1 run as its scripts/URM_arcagi1.sh and config/cfg_pretrain.yaml set it.
URM_ARC1 = {
    "arch.core": "urm",
    "arch.hidden_size": 512,
    "arch.num_heads": 8,
    "arch.expansion": 4.0,
    "arch.H_cycles": 2,
    "arch.L_cycles": 6,
    "arch.L_layers": 4,
    "arch.mlp": "conv_swiglu",
    "arch.conv_kernel": 2,
    "arch.halt_max_steps": 16,
    "arch.halt_exploration_prob": 0.1,
    "arch.no_ACT_continue": True,
    "arch.pos_encodings": "rope",
    "arch.puzzle_emb_ndim": 512,
    "arch.forward_dtype": "bfloat16",
    "loss.token_loss": "stablemax",
    "loss.halt_loss_weight": 0.5,
    "optimizer.name": "adam_atan2",
    "optimizer.lr": 1e-4,
    "optimizer.betas": [0.9, 0.95],
    "optimizer.weight_decay": 0.1,
    "lr_warmup_steps": 2000,
    "lr_min_ratio": 1.0,
    "puzzle_emb_lr": 1e-2,
    "puzzle_emb_weight_decay": 0.1,
    "global_batch_size": 768,
    "epochs": 200000,
    "eval_interval": 2000,
    "checkpoint_every_eval": True,
    "ema": True,
    "ema_rate": 0.999,
    "data.paths": ["data/arc1concept-aug-1000"],
}


def value(config, dotted: str):
    for part in dotted.split("."):
        config = getattr(config, part)
    return getattr(config, "value", config)


def test_the_arc1_preset_is_urms_run():
    config = compose_config(["experiment=urm_arc1"])
    assert {key: value(config, key) for key in URM_ARC1} == URM_ARC1
    assert "--subsets training evaluation concept --test-set-name evaluation" in config.data.build


def test_the_arc2_preset_is_urms_run_with_muon():
    config = compose_config(["experiment=urm_arc2"])
    arc2 = {**URM_ARC1, "optimizer.name": "muon", "data.paths": ["data/arc2concept-aug-1000"]}
    del arc2["optimizer.betas"]  # Muon's AdamW half takes URM's betas from the optimizer option
    assert {key: value(config, key) for key in arc2} == arc2
    assert (config.optimizer.muon_momentum, config.optimizer.muon_nesterov, config.optimizer.muon_ns_steps) == (
        0.95,
        True,
        5,
    )
    assert "--subsets training2 evaluation2 concept --test-set-name evaluation2" in config.data.build
