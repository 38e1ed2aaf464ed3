"""VARC (models/varc.py, losses/varc.py): the ViT against the public code, the canvas <-> image
transforms, the paper's size, multi-view prediction, and training on real ARC tasks to a
valid submission.

The equality fixture ``tests/data/reference_varc_tiny.pt`` was written by a generator script
(kept outside the repository) from lillian039/VARC at commit
537b01ed95944cfb080455b795f4888db8d0484b ("code release"): it imports the reference's own
``src/ARC_ViT.py`` (``ARCViT``), ``utils/pos_embed.py`` (``VisionRotaryEmbeddingFast``, needs
einops) and ``src/ARC_loader.py`` (``pad_grid_with_translation``) unchanged. timm is not
installed, so ``timm.models.vision_transformer.PatchEmbed`` was stubbed with the module it
is at these arguments (a ``proj`` Conv2d with kernel = stride = patch size and bias, then
flatten and transpose; timm's default ``norm_layer=None`` is an identity), keeping timm's
state-dict keys. On CPU in float32 with ``torch.manual_seed(0)`` it builds
``ARCViT(num_tasks=5, image_size=24, num_colors=12, embed_dim=32, depth=3, num_heads=2,
mlp_dim=48, dropout=0.1, patch_size=2)`` in eval mode, redraws the position, task and colour
tables and the head's bias from N(0, 0.5) (the reference initialises them near zero), draws
five (input, output) grid pairs with numpy's ``default_rng(0)``, each with a scale and an
offset, upsamples them by pixel repetition and places them with ``pad_grid_with_translation``
(the output with its border; target 10 outside its mask, as the loader), and saves the
config, the state dict, the grids with their scale and offset, the images, attention masks,
targets, task ids and the logits with and without the attention mask.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, use_test_threads, write_folder_source, write_kaggle_source
from train_helpers import CPU, MEMORISE_CHUNK, build_tiny_dataset, compose_config, read_json, split_metrics, train_until

import ttt
from dataset.build_arc_dataset import main as build_main
from dataset.common import COLOR_OFFSET, EOS_ID, IGNORE_LABEL_ID, PAD_ID
from evaluators.validate_submission import validate
from losses import build_loss
from models import build_model
from models.base import DataShape, StepCarry, find_grid
from models.varc import (
    BACKGROUND,
    BORDER,
    NUM_CLASSES,
    VARCArchConfig,
    VARCModel,
    VARCOutput,
    Views,
    draw_views,
    place,
    read_back,
    reference_state_dict,
    to_origin,
)
from training import loop

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURE = ROOT / "tests" / "data" / "reference_varc_tiny.pt"
# The design note's count of the paper's ViT (d 512, MLP 512, 10 layers, patch 2, 64x64, 12 classes),
# without the task tokens: what the reference's count_parameters prints.
PAPER_PARAMETERS = 17_385_008


def canvas(grid: torch.Tensor, side: int, r0: int = 0, c0: int = 0) -> torch.Tensor:
    """A grid's tokens on a side x side canvas at (r0, c0), EOS right of and below it, PAD elsewhere."""
    h, w = grid.shape
    c = torch.full((side, side), PAD_ID, dtype=torch.long)
    c[r0 : r0 + h, c0 : c0 + w] = grid + COLOR_OFFSET
    if c0 + w < side:
        c[r0 : r0 + h, c0 + w] = EOS_ID
    if r0 + h < side:
        c[r0 + h, c0 : c0 + w] = EOS_ID
    return c.view(-1)


def one_box(side: int, grid: torch.Tensor, r0: int = 0, c0: int = 0):
    tokens = canvas(grid, side, r0, c0)[None]
    return tokens, find_grid(tokens, side)


def views(s: int, y: int, x: int) -> Views:
    return Views(torch.tensor([s]), torch.tensor([y]), torch.tensor([x]))


# ----------------------------------------------------------------------------------------
# The ViT against the reference


@pytest.fixture(scope="module")
def reference():
    return torch.load(FIXTURE, weights_only=False)


def model_of(ref) -> VARCModel:
    c = ref["config"]
    config = VARCArchConfig(
        name="reference",
        image_size=c["image_size"],
        patch_size=c["patch_size"],
        hidden_size=c["embed_dim"],
        num_layers=c["depth"],
        num_heads=c["num_heads"],
        expansion=c["mlp_dim"] / c["embed_dim"],
        dropout=c["dropout"],
    )
    assert c["num_colors"] == NUM_CLASSES
    model = VARCModel(config, DataShape(seq_len=100, vocab_size=12, num_puzzle_identifiers=c["num_tasks"], batch_size=5))
    model.load_state_dict(reference_state_dict(ref["state_dict"]), strict=True)
    return model.eval()


def test_logits_equal_the_reference_vit(reference):
    model = model_of(reference)
    task = model.puzzle_emb(reference["task_ids"])
    with torch.no_grad():
        masked = model.vit(reference["pixels"], task, reference["attention_mask"].bool())
        unmasked = model.vit(reference["pixels"], task, torch.ones_like(reference["attention_mask"], dtype=torch.bool))
    # fp32 rounding (observed: about 1e-6 on logits of magnitude ~1); the mask changes them
    torch.testing.assert_close(masked, reference["logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(unmasked, reference["logits_unmasked"], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(reference["logits"], reference["logits_unmasked"], atol=1e-2)


def test_images_equal_the_reference_loader(reference):
    """The dataset's canvases placed by the model equal the reference loader's images, masks
    and targets for the same grids, scales and offsets."""
    g = reference["config"]["image_size"]
    side = 10
    for i, ex in enumerate(reference["examples"]):
        v = views(ex["scale"], ex["y"], ex["x"])
        tokens, box = one_box(side, torch.tensor(ex["input"]), 1, 2)  # a translated canvas
        image, mask = place(tokens, side, box, v, g)
        assert torch.equal(image[0], reference["pixels"][i]), i
        assert torch.equal(mask[0].long(), reference["attention_mask"][i]), i
        labels, out_box = one_box(side, torch.tensor(ex["output"]))
        target, _ = place(labels, side, out_box, v, g, border=True)
        assert torch.equal(target[0], reference["targets"][i]), i


def test_the_paper_config_has_the_papers_size():
    arch = compose_config(["arch=varc", "loss=varc_ce"]).arch
    assert (arch.num_layers, arch.hidden_size, arch.num_heads, arch.expansion, arch.patch_size, arch.image_size) == (
        10,
        512,
        8,
        1.0,
        2,
        64,
    )
    ids = 401
    model = build_model(arch, DataShape(seq_len=900, vocab_size=12, num_puzzle_identifiers=ids, batch_size=2))
    vit = sum(p.numel() for p in model.vit.parameters())
    assert abs(vit - PAPER_PARAMETERS) <= 0.02 * PAPER_PARAMETERS
    assert vit == PAPER_PARAMETERS  # exactly the note's formula
    assert model.puzzle_emb.weights.shape == (ids, 512)  # + one 512-wide task token per identifier


# ----------------------------------------------------------------------------------------
# Canvas <-> image


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 2), (9, 9)])
@pytest.mark.parametrize("scale", [1, 2, 3])
@pytest.mark.parametrize("offset", [(1, 1), (4, 2), (0, 6)])
def test_a_placed_grid_reads_back_as_itself(shape, scale, offset):
    side, g = 10, 40
    grid = torch.randint(0, 10, shape, generator=torch.Generator().manual_seed(sum(shape) + scale))
    tokens, box = one_box(side, grid, 1, 0)
    y, x = offset
    v = views(scale, y, x)
    image, mask = place(tokens, side, box, v, g, border=True)
    h, w = shape
    assert mask.sum() == h * w * scale * scale
    assert (image == BORDER).sum() == (h * scale) + (w * scale) + 1
    assert torch.equal(read_back(image, v, side)[0], canvas(grid, side))


def test_read_back_takes_the_block_majority_and_stops_at_the_border():
    side, g = 6, 24
    grid = torch.tensor([[1, 2], [3, 4]])
    tokens, box = one_box(side, grid)
    v = views(3, 2, 5)
    image, _ = place(tokens, side, box, v, g, border=True)
    image[0, 2, 5] = 7  # one pixel of a 3x3 block: the majority holds
    image[0, 6, 9] = 0
    assert torch.equal(read_back(image, v, side)[0], canvas(grid, side))
    image[0, 2:5, 5:8] = torch.tensor([[5, 5, 5], [6, 6, 6], [6, 5, 6]])  # 4 fives, 5 sixes ... then a tie
    assert read_back(image, v, side)[0].view(side, side)[0, 0] == 6 + COLOR_OFFSET
    image[0, 2:5, 5:8] = torch.tensor([[5, 5, 5], [6, 6, 6], [6, 5, 9]])  # 4 and 4: the smaller colour
    assert read_back(image, v, side)[0].view(side, side)[0, 0] == 5 + COLOR_OFFSET
    image[0, 2:5, 5:8] = BACKGROUND  # a block of background is no colour: PAD, which the voter crops away
    assert read_back(image, v, side)[0].view(side, side)[0, 0] == PAD_ID
    empty = torch.full((1, g, g), BORDER)
    assert torch.equal(read_back(empty, v, side)[0], torch.full((side * side,), PAD_ID))


def test_views_keep_the_grid_and_its_border_on_the_image():
    gen = torch.Generator().manual_seed(0)
    h = torch.randint(1, 31, (2000,), generator=gen)
    w = torch.randint(1, 31, (2000,), generator=gen)
    v = draw_views(h, w, 64, generator=gen)
    longest = torch.maximum(h, w)
    assert (v.scale >= 1).all() and (v.scale <= 62 // longest).all()
    assert (v.y >= 1).all() and (v.x >= 1).all()
    assert (v.y + v.scale * h <= 62).all() and (v.x + v.scale * w <= 62).all()  # the border fits: <= 63
    # every allowed value is drawn: a 1x1 grid's scales span 1..62
    small = draw_views(torch.ones(5000, dtype=torch.long), torch.ones(5000, dtype=torch.long), 64, generator=gen)
    assert set(small.scale.tolist()) == set(range(1, 63))
    fixed = draw_views(h, w, 64, scale=torch.full_like(h, 2), translate=False)
    assert (fixed.scale == 2).all() and (fixed.y == 1).all() and (fixed.x == 1).all()


def test_find_grid_reads_translated_canvases():
    grid = torch.randint(0, 10, (3, 4), generator=torch.Generator().manual_seed(1))
    tokens, box = one_box(8, grid, 2, 3)
    assert (int(box.r0), int(box.c0), int(box.h), int(box.w)) == (2, 3, 3, 4)
    full = canvas(torch.zeros(8, 8, dtype=torch.long), 8)[None]
    assert [int(t) for t in (find_grid(full, 8).h, find_grid(full, 8).w)] == [8, 8]
    blank = torch.zeros(1, 64, dtype=torch.long)
    assert int(find_grid(blank, 8).h) == 0 and int(find_grid(blank, 8).w) == 0


# ----------------------------------------------------------------------------------------
# The model in the framework


def tiny_batch(side: int = 6, n: int = 4):
    gen = torch.Generator().manual_seed(3)
    inputs, labels = [], []
    for _ in range(n):
        h, w = (int(t) for t in torch.randint(1, side, (2,), generator=gen))
        grid = torch.randint(0, 10, (h, w), generator=gen)
        inputs.append(canvas(grid, side))
        labels.append(canvas(grid.flip(1), side))
    labels_t = torch.stack(labels)
    return {
        "inputs": torch.stack(inputs).int(),
        "labels": torch.where(labels_t == PAD_ID, IGNORE_LABEL_ID, labels_t),
        "puzzle_identifiers": torch.arange(1, n + 1, dtype=torch.int32),
    }


def test_targets_score_the_output_grid_and_its_border_only():
    config = compose_config(["arch=varc_tiny", "loss=varc_ce"])
    b = tiny_batch()
    model = build_model(config.arch, DataShape(36, 12, 5, 4)).train()
    _, out = model(StepCarry(b), b)
    labels = torch.where(b["labels"] == IGNORE_LABEL_ID, PAD_ID, b["labels"])
    box = find_grid(labels, 6)
    scored = (out.targets != BACKGROUND).sum((1, 2))
    # each example's own random scale: area s^2 hw plus a border of s(h + w) + 1 pixels
    for i in range(4):
        h, w = int(box.h[i]), int(box.w[i])
        s = [k for k in range(1, 31) if k * k * h * w + k * (h + w) + 1 == int(scored[i])]
        assert s, i
    loss, metrics = build_loss(config.loss)(out, b)
    assert torch.isfinite(loss) and metrics["count"] == 4 and 0 <= metrics["pixel_accuracy"] <= 4


def test_metrics_compare_the_read_back_canvas_with_the_labels_moved_to_the_top_left():
    """Training examples may sit translated on their canvas; predictions are read back at the
    top-left (the voter's layout), so the metrics move the labels there first."""
    side = 6
    grid = torch.tensor([[1, 2, 3], [4, 5, 6]])
    moved, box = one_box(side, grid, 2, 1)
    labels = torch.where(moved == PAD_ID, IGNORE_LABEL_ID, moved)
    top_left = canvas(grid, side)
    at_origin = to_origin(labels, side, box)
    scored = at_origin != IGNORE_LABEL_ID
    assert torch.equal(at_origin[scored], top_left[None][scored])
    assert int(scored.sum()) == 2 * 3 + 2 + 3  # the grid and its EOS cells
    g = 16
    logits = torch.zeros(1, NUM_CLASSES, g, g)
    out = VARCOutput(logits, torch.full((1, g, g), BACKGROUND), top_left[None], at_origin, torch.tensor([True]))
    _, metrics = build_loss(compose_config(["arch=varc_tiny", "loss=varc_ce"]).loss)(out, {"labels": labels})
    assert metrics["exact_accuracy"] == 1 and metrics["accuracy"] == 1


def test_prediction_views_are_votes_and_reproducible():
    config = compose_config(["arch=varc_tiny", "loss=varc_ce", "arch.num_views=4"])
    b = tiny_batch()
    model = build_model(config.arch, DataShape(36, 12, 5, 4)).eval()
    with torch.no_grad():
        _, _, first = model.predict(b)
        torch.rand(3)  # the global RNG does not matter
        _, _, again = model.predict(b)
        one = build_model(compose_config(["arch=varc_tiny", "loss=varc_ce"]).arch, DataShape(36, 12, 5, 4))
        one.load_state_dict(model.state_dict())
        _, _, single = one.eval().predict(b)
    assert first.tokens.shape == (4, 4, 36) and first.scores.shape == (4, 4)
    assert torch.equal(first.tokens, again.tokens) and torch.equal(first.scores, again.scores)
    assert torch.equal(single.tokens[:, 0], first.tokens[:, 0])  # view 0: scale 2 at (1, 1)


def test_a_bad_size_is_refused():
    with pytest.raises(ValueError, match="image_size"):
        arch = compose_config(["arch=varc_tiny", "loss=varc_ce", "arch.image_size=32"]).arch
        build_model(arch, DataShape(31 * 31, 12, 2, 2))  # 31 + border > 30
    with pytest.raises(ValueError, match="num_heads"):
        VARCArchConfig(hidden_size=48, num_heads=8).validate()


# ----------------------------------------------------------------------------------------
# Training on real ARC tasks


def small_real_tasks(shared: Path, n: int, max_side: int) -> dict:
    """The first ``n`` ARC-AGI-1 training tasks whose grids are all at most max_side."""
    challenges = json.loads((shared / "arc-kaggle" / "arc-agi_training_challenges.json").read_text())
    solutions = json.loads((shared / "arc-kaggle" / "arc-agi_training_solutions.json").read_text())
    picked = {}
    for task_id in sorted(challenges):
        task = challenges[task_id]
        test = [{**t, "output": o} for t, o in zip(task["test"], solutions[task_id], strict=True)]
        grids = [g for pair in task["train"] + test for g in (pair["input"], pair["output"])]
        if max(max(len(g), len(g[0])) for g in grids) <= max_side:
            picked[task_id] = {"train": task["train"], "test": test}
        if len(picked) == n:
            return picked
    raise AssertionError("not enough small tasks")


def test_tiny_varc_trains_on_real_arc_tasks_to_a_valid_submission(shared_data, tmp_path):
    tasks = small_real_tasks(shared_data, 4, 6)
    src = write_folder_source(
        tmp_path / "src", {"training": dict(list(tasks.items())[:2]), "evaluation": dict(list(tasks.items())[2:])}
    )
    data = tmp_path / "data"
    args = ["--input-file-prefix", str(src), "--output-dir", str(data), "--subsets", "training", "evaluation"]
    assert build_main([*args, "--test-set-name", "evaluation", "--num-aug", "2", "--max-grid-size", "6"]) == 0
    use_test_threads()
    config = compose_config(
        [
            "arch=varc_tiny",
            "loss=varc_ce",
            "optimizer=adamw",
            f"data.paths=[{data}]",
            "data.name=tiny_arc",
            "global_batch_size=8",
            "epochs=4",
            "eval_interval=4",
            "lr_warmup_steps=2",
            "optimizer.lr=1e-3",
            f"checkpoint_path={tmp_path / 'ck'}",
            "progress_bar=false",
            "wandb.mode=disabled",
            "arch.num_views=3",
        ]
    )
    summary = loop.train(config, CPU)
    assert summary["step"] > 0 and torch.isfinite(torch.tensor(summary["train/lm_loss"]))
    # the voter pools the dataset's augmented variants x the model's views: 3 x 3 per test input
    assert summary["ARC/variants_per_task"] == 3 and summary["ARC/views_per_input"] == 9
    found = sorted((tmp_path / "ck").glob("evaluator_ARC_step_*/submission.json"))
    assert found, "no submission written"
    submission = read_json(found[-1])
    answered = {t: tasks[t] for t in list(tasks)[2:]}
    assert set(submission) == set(answered)
    assert validate(submission, answered) == []


# ----------------------------------------------------------------------------------------
# Test-time training (ttt.py) unchanged: new tasks get task-token rows, the whole net adapts


def test_ttt_adapts_a_varc_checkpoint_to_new_tasks(tmp_path):
    rng = np.random.default_rng(0)

    def task(colour: int) -> dict:
        def pair() -> dict:
            m = rng.integers(0, 2, size=(2, 2))
            return {"input": (5 * m).tolist(), "output": (colour * m).tolist()}

        return {"train": [pair() for _ in range(3)], "test": [pair()]}

    src = write_folder_source(
        tmp_path / "src", {"training": {f"t{i}": task(2 + 2 * (i % 4)) for i in range(6)}, "evaluation": {"e0": task(2)}}
    )
    data = tmp_path / "data"
    args = ["--input-file-prefix", str(src), "--output-dir", str(data), "--subsets", "training", "evaluation"]
    assert build_main([*args, "--test-set-name", "evaluation", "--num-aug", "0", "--max-grid-size", "3"]) == 0
    use_test_threads()
    config = compose_config(
        [
            "arch=varc_tiny",
            "loss=varc_ce",
            "optimizer=adamw",
            f"data.paths=[{data}]",
            "data.name=tiny",
            "global_batch_size=8",
            "max_steps=4",
            "evaluate=false",
            f"checkpoint_path={tmp_path / 'ck'}",
            "progress_bar=false",
            "wandb.mode=disabled",
        ]
    )
    loop.train(config, CPU)
    new = {"n4": task(4), "n8": task(8)}
    tasks = write_kaggle_source(tmp_path / "new", {"test": new})
    out = tmp_path / "out"
    # VARC's test-time training adapts every weight (ttt.mode=all) from the new tasks' fresh rows
    argv = [f"checkpoint={tmp_path / 'ck'}", f"tasks={tasks}", f"ttt.output_dir={out}", "ttt.num_aug=2", "ttt.steps=4"]
    assert ttt.main([*argv, "ttt.mode=all", "ttt.keep_checkpoints=true"]) == 0
    report = read_json(out / "metrics.json")
    assert report["failed_chunks"] == [] and report["chunks"][0]["steps"] == [4]
    assert validate(read_json(out / "submission.json"), new) == []
    init = torch.load(next(out.glob("chunks/000/init.pt")), weights_only=False)
    table = init["model"][VARCModel.puzzle_table_key]
    assert table.shape[0] == len(init["identifiers"]) > 8  # the checkpoint's rows + the new variants'


def test_the_paper_preset_composes_with_the_papers_hyperparameters():
    c = compose_config(["experiment=varc_arc1"])
    assert (c.arch.name, c.loss.name, c.optimizer.name) == ("varc", "varc_ce", "adamw")
    assert (c.optimizer.lr, list(c.optimizer.betas), c.optimizer.weight_decay, c.optimizer.eps) == (
        3e-4,
        [0.9, 0.999],
        0,
        1e-8,
    )
    assert (c.global_batch_size, c.grad_clip_norm, str(c.precision), c.seed, c.ema) == (256, 1.0, "fp16", 42, False)
    assert (str(c.lr_schedule), c.lr_min_ratio) == ("cosine", 0.0)
    # the reference's 100 epochs of 1568 steps, 10 of them warm-up; the epochs on the ARC-1 set (800
    # tasks, ~3.85 examples each) reach them
    assert c.lr_schedule_steps == c.max_steps == 100 * 1568 and c.lr_warmup_steps == 10 * 1568
    assert c.epochs * 800 * 3.85125 / c.global_batch_size > c.max_steps
    assert (c.arch.dropout, c.arch.eval_scale, c.arch.scale_augmentation, c.arch.translation) == (0.1, 2, True, True)
    assert c.arch.num_views == 10  # the reference's 10 attempts per augmented view


@pytest.mark.slow
def test_tiny_varc_memorises_a_tiny_set_at_a_fixed_view(tmp_path):
    """With one view (scale 2 at (1, 1)) in training as in evaluation and no dropout, the tiny
    ViT gets every training example right, read back through the border crop and the block
    majority (about 150-250 steps, ~25 s per 100 steps on 2 cores, measured); random views
    need far longer."""
    data = build_tiny_dataset(tmp_path, memorisable=True)
    overrides = [
        "arch=varc_tiny",
        "loss=varc_ce",
        "optimizer=adamw",
        "optimizer.weight_decay=0",
        "optimizer.lr=1e-3",
        "arch.dropout=0",
        "arch.scale_augmentation=false",
        "arch.translation=false",
        f"data.paths=[{data}]",
        "data.name=tiny",
        "global_batch_size=8",
        "lr_warmup_steps=10",
        "evaluate=false",
        f"checkpoint_path={tmp_path / 'ck'}",
        "progress_bar=false",
        "wandb.mode=disabled",
    ]
    _, _, history = train_until(
        overrides,
        lambda _summary, config: split_metrics(config, data)["all/exact_accuracy"],
        target=1.0,
        chunk=MEMORISE_CHUNK,
        cap=600,
    )
    assert history[-1][1] == 1.0, history
