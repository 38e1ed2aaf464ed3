"""The model contract (models/base.py), checked for EVERY ``conf/arch`` option, discovered from
the folder and paired with a loss of the family its schema names: build, one training step
(the carry interface, the loss, backward, the optimizers), predict, a checkpoint round trip
(state dict and carry state through torch.save), resume (a fresh model continues exactly),
and the puzzle table resized by identifier (``fit_weights``) and grown for new tasks
(``extend_puzzle_embeddings``). A new family or variant is covered by adding its yaml; a new
size variant needs no Python at all (the last tests compose one from a folder of its own).
docs/extending.md is the checklist."""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import pytest
import torch
from train_helpers import CONF_DIR, build_tiny_dataset, compose_config, tiny_overrides

from dataset.common import BLANK_IDENTIFIER, COLOR_OFFSET, EOS_ID, IGNORE_LABEL_ID, PAD_ID
from losses import build_loss
from models import ARCH_SCHEMAS, MODELS, build_model, puzzle_table_key
from models.base import ARCModel, DataShape
from models.convert import extend_puzzle_embeddings, fit_weights
from runconfig.groups import option_family, options_of_family
from training.optimizers import SparseSignSGD, build_optimizer
from utils.distributed import DistEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIDE, VOCAB, BATCH, IDS = 4, 12, 2, 5
SHAPE = DataShape(seq_len=SIDE * SIDE, vocab_size=VOCAB, num_puzzle_identifiers=IDS, batch_size=BATCH)
# CPU-sized widths, applied to the keys a family's schema has (puzzle_emb_ndim follows hidden_size).
SHRINK = {"hidden_size": 32, "num_heads": 2, "size_head_hidden": 32, "prompt_dim": 32}
SCHEMA_OF_FAMILY = {schema.family: schema for schema in ARCH_SCHEMAS.values()}


def arch_options() -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / "arch").glob("*.yaml"))


def tiny_config(option: str, *extra: str):
    """The option as composed (with a loss of the family its schema names), shrunk to CPU size."""
    schema = SCHEMA_OF_FAMILY[option_family("arch", option)]
    losses = options_of_family("loss", schema.loss_family)
    assert losses, f"no conf/loss option of family {schema.loss_family} scores arch={option}"
    fields = {f.name for f in dataclasses.fields(schema)}
    shrink = [f"arch.{k}={v}" for k, v in SHRINK.items() if k in fields]
    return compose_config([f"arch={option}", f"loss={losses[0]}", *shrink, *extra])


def canvas(grid: torch.Tensor) -> torch.Tensor:
    """A grid's tokens at the canvas' top-left, EOS after its right and bottom edges, PAD elsewhere."""
    h, w = grid.shape
    c = torch.full((SIDE, SIDE), PAD_ID, dtype=torch.int32)
    c[:h, :w] = grid + COLOR_OFFSET
    if h < SIDE:
        c[h, :w] = EOS_ID
    if w < SIDE:
        c[:h, w] = EOS_ID
    return c.view(-1)


def batch(seed: int, demos: int) -> dict[str, torch.Tensor]:
    """Mirror-the-grid examples as the loader gives them (labels: PAD unscored), with ``demos``
    demonstration pairs of the same rule for in-context models."""
    g = torch.Generator().manual_seed(seed)

    def pair() -> tuple[torch.Tensor, torch.Tensor]:
        h, w = (int(x) for x in torch.randint(1, SIDE, (2,), generator=g))
        grid = torch.randint(0, 10, (h, w), generator=g)
        return canvas(grid), canvas(grid.flip(1))

    pairs = [pair() for _ in range(BATCH)]
    labels = torch.stack([p[1] for p in pairs])
    out = {
        "inputs": torch.stack([p[0] for p in pairs]),
        "labels": torch.where(labels == PAD_ID, IGNORE_LABEL_ID, labels),
        "puzzle_identifiers": torch.randint(1, IDS, (BATCH,), generator=g, dtype=torch.int32),
    }
    if demos:
        demo = [[pair() for _ in range(demos)] for _ in range(BATCH)]
        out.update(
            demo_inputs=torch.stack([torch.stack([d[0] for d in row]) for row in demo]),
            demo_labels=torch.stack([torch.stack([d[1] for d in row]) for row in demo]),
            demo_mask=torch.ones(BATCH, demos, dtype=torch.bool),
        )
    return out


def optimizers(model: ARCModel, config) -> list[torch.optim.Optimizer]:
    """As the trainer: sign-SGD for the puzzle table, the configured optimizer for the rest."""
    opts: list[torch.optim.Optimizer] = [build_optimizer(config.optimizer, model.param_groups())]
    if model.puzzle_emb is not None:
        opts.append(SparseSignSGD(model.puzzle_emb, lr=1e-2, weight_decay=0.1))
    return opts


def train_step(model: ARCModel, loss_fn, opts, carry, b: dict[str, torch.Tensor]):
    """One step as the trainer takes it: forward through the carry, loss, backward, step."""
    carry, output = model(carry, b)
    loss, metrics = loss_fn(output, carry.current_data)
    (loss / BATCH).backward()
    for opt in opts:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return carry, loss.detach(), metrics


def round_trip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, map_location="cpu", weights_only=False)


def assert_same(a, b, what: str) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), what
        for k in a:
            assert_same(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), what
    else:
        assert a == b, what


def check_contract(config) -> None:
    torch.manual_seed(0)
    model = build_model(config.arch, SHAPE)
    assert isinstance(model, MODELS[config.arch.family])
    loss_fn = build_loss(config.loss)
    b1, b2 = batch(1, model.num_demos), batch(2, model.num_demos)

    # --- one training step -------------------------------------------------------------------
    model.train()
    opts = optimizers(model, config)
    before = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    carry, loss, metrics = train_step(model, loss_fn, opts, model.initial_carry(b1), b1)
    assert torch.isfinite(loss), f"loss {loss}"
    assert {"count", "accuracy", "exact_accuracy", "lm_loss"} <= set(metrics)
    assert any(not torch.equal(v, before[k]) for k, v in model.named_parameters() if k in before), "nothing trained"

    # --- checkpoint: weights and carry through torch.save ------------------------------------------
    saved = round_trip({"model": model.state_dict(), "carry": model.carry_state(carry)})
    torch.manual_seed(1)  # another initialisation: everything must come from the checkpoint
    fresh = build_model(config.arch, SHAPE).train()
    fresh.load_state_dict(saved["model"])
    assert_same(model.state_dict(), fresh.state_dict(), "state_dict")
    restored = fresh.carry_from_state(saved["carry"], torch.device("cpu"))
    if saved["carry"] is None:
        assert restored is None  # nothing in flight: the trainer starts with initial_carry
    else:
        assert_same(saved["carry"], fresh.carry_state(restored), "carry")

    # --- resume: the next step is the same step -------------------------------------------------
    torch.manual_seed(2)
    carry_a, out_a = model(carry, b2)
    loss_a, metrics_a = loss_fn(out_a, carry_a.current_data)
    torch.manual_seed(2)
    carry_b, out_b = fresh(restored if restored is not None else fresh.initial_carry(b2), b2)
    loss_b, metrics_b = loss_fn(out_b, carry_b.current_data)
    assert torch.equal(loss_a, loss_b), f"resumed loss {loss_b} != {loss_a}"
    assert_same({k: v.detach() for k, v in metrics_a.items()}, {k: v.detach() for k, v in metrics_b.items()}, "metrics")

    # --- predict ---------------------------------------------------------------------------------
    model.eval()
    fresh.eval()
    with torch.no_grad():
        output, data, predictions = model.predict(b1)
        eval_loss, eval_metrics = loss_fn(output, data)
        _, _, again = fresh.predict(b1)
    n = predictions.tokens.shape[1]
    assert predictions.tokens.shape == (BATCH, n, SHAPE.seq_len) and n >= 1
    assert not predictions.tokens.dtype.is_floating_point
    assert predictions.scores.shape == (BATCH, n) and torch.isfinite(predictions.scores.float()).all()
    assert torch.isfinite(eval_loss) and {"count", "accuracy", "exact_accuracy", "lm_loss"} <= set(eval_metrics)
    assert torch.equal(again.tokens, predictions.tokens) and torch.equal(again.scores, predictions.scores)

    # --- the puzzle table: resized by identifier, grown for new tasks ----------------------------
    key = model.puzzle_table_key
    assert key == puzzle_table_key(config.arch)
    state = model.state_dict()
    bigger = build_model(config.arch, dataclasses.replace(SHAPE, num_puzzle_identifiers=IDS + 2))
    source_ids = [BLANK_IDENTIFIER] + [f"task{i}" for i in range(1, IDS)]  # row 0: the blank row, as every build
    target_ids = [BLANK_IDENTIFIER, "new_a", "task3", "task1", "new_b", "task4", "task2"]
    if key is None or key not in state:
        assert model.puzzle_emb is None, "a puzzle table the loaders cannot find (puzzle_table_key)"
        fitted, notes = fit_weights(state, bigger.state_dict(), table_key=key, source_ids=source_ids, target_ids=target_ids)
        bigger.load_state_dict(fitted)
        assert notes == []
        return
    table = torch.randn(state[key].shape).to(state[key].dtype)
    state[key] = table
    fitted, notes = fit_weights(state, bigger.state_dict(), table_key=key, source_ids=source_ids, target_ids=target_ids)
    bigger.load_state_dict(fitted)
    resized = bigger.state_dict()[key]
    assert resized.shape == (IDS + 2, table.shape[1]) and len(notes) == 1
    trained_mean = table[1:].float().mean(0).to(table.dtype)  # the blank row 0 never trains: left out
    for row, name in enumerate(target_ids):
        want = table[source_ids.index(name)] if name in source_ids else trained_mean
        assert torch.equal(resized[row], want), f"row {row} ({name})"
    grown = extend_puzzle_embeddings(state, IDS + 2, "mean", key=key)
    bigger.load_state_dict(grown)
    assert torch.equal(bigger.state_dict()[key][:IDS], table)  # test-time training keeps the old rows bitwise
    assert torch.equal(bigger.state_dict()[key][IDS:], trained_mean.expand(2, -1))  # new rows: the same rule


@pytest.mark.parametrize("option", arch_options())
def test_every_arch_option_keeps_the_model_contract(option):
    config = tiny_config(option)
    assert config.arch.name == option and config.arch.family in MODELS
    check_contract(config)


WIDE = """# A size variant in a folder of its own: an option of another option, no Python.
defaults:
  - trm_tiny
  - _self_
name: trm_wide
hidden_size: 96
"""


@pytest.fixture
def variant_folder(tmp_path: Path) -> Path:
    (tmp_path / "variants" / "arch").mkdir(parents=True)
    (tmp_path / "variants" / "arch" / "trm_wide.yaml").write_text(WIDE)
    return tmp_path / "variants"


def test_a_size_variant_is_one_yaml(variant_folder):
    search = f"hydra.searchpath=[file://{variant_folder}]"
    wide = compose_config([search, "arch=trm_wide"]).arch
    tiny = compose_config(["arch=trm_tiny"]).arch
    changed = {k for k in dataclasses.asdict(tiny) if getattr(wide, k) != getattr(tiny, k)}
    assert changed == {"name", "hidden_size", "puzzle_emb_ndim"}  # the table width follows hidden_size
    assert (wide.family, wide.core, wide.hidden_size, wide.puzzle_emb_ndim) == ("recursive", "trm", 96, 96)
    check_contract(compose_config([search, "arch=trm_wide", "arch.num_heads=2"]))


def test_pretrain_trains_a_new_size_variant(variant_folder, tmp_path):
    from training import loop

    data = build_tiny_dataset(tmp_path)
    overrides = [
        o
        for o in tiny_overrides(data, tmp_path / "ck", "epochs=20", "evaluate=false", "max_steps=2")
        if not o.startswith("arch=")
    ]
    config = compose_config([f"hydra.searchpath=[file://{variant_folder}]", "arch=trm_wide", *overrides])
    summary = loop.train(config, DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    assert summary["step"] == 2 and math.isfinite(summary["train/lm_loss"])
