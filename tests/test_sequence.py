"""Sequence baselines (models/sequence.py, losses/sequence.py) and the builder's task-level
split and many-pair task files."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import learning_seed, random_task, use_test_threads, write_folder_source
from train_helpers import seeded, train_until

from dataset.augment import crop_canvas, find_origin, parse_variant_name
from dataset.build_arc_dataset import main as build_main
from dataset.common import EOS_ID, IGNORE_LABEL_ID, PAD_ID
from dataset.puzzle_dataset import PuzzleDataset
from evaluators.arc import ARCVoter
from losses.sequence import SequenceCELoss, SequenceLossConfig
from models import build_model
from models.base import DataShape
from models.layers import RotaryEmbedding, apply_rope
from models.sequence import (
    END,
    NEWLINE,
    SEQ_VOCAB,
    Decoding,
    SequenceArchConfig,
    canvas_to_seq,
    grid_coords,
    seq_to_canvas,
)
from utils.distributed import DistEnv

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
SIDE = 4
SHAPE = DataShape(seq_len=SIDE * SIDE, vocab_size=12, num_puzzle_identifiers=3, batch_size=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def canvas(grid, side: int = SIDE, r0: int = 0, c0: int = 0) -> torch.Tensor:
    """A grid on a side x side canvas at (r0, c0), in the dataset's layout."""
    g = np.asarray(grid)
    h, w = g.shape
    c = np.full((side, side), PAD_ID)
    c[r0 : r0 + h, c0 : c0 + w] = g + 2
    if r0 + h < side:
        c[r0 + h, c0 : c0 + w] = EOS_ID
    if c0 + w < side:
        c[r0 : r0 + h, c0 + w] = EOS_ID
    return torch.tensor(c.reshape(-1))


def tiny_config(name: str, **kw) -> SequenceArchConfig:
    base = dict(name=name, hidden_size=32, num_heads=2, expansion=2, encoder_layers=1, decoder_layers=2, context_layers=1)
    if name == "decoder_only":
        base.update(variant="decoder_only", encoder_layers=0, context_layers=0)
    if name == "champion":
        base.update(num_demos=2, pos_2d=True)
    return SequenceArchConfig(**{**base, **kw})


def mirror_batch(seed: int = 0, n: int = 8, side: int = SIDE, demos: int = 2) -> dict[str, torch.Tensor]:
    """Random grids (1..side-1 per side) and their left-right mirrors, as a loader batch, with
    demonstration pairs of the same rule."""
    rng = np.random.default_rng(seed)

    def pairs(count):
        grids = [rng.integers(0, 10, size=rng.integers(1, side, size=2)) for _ in range(count)]
        return torch.stack([canvas(g, side) for g in grids]), torch.stack([canvas(g[:, ::-1], side) for g in grids])

    inputs, labels = pairs(n)
    demo_in, demo_out = pairs(n * demos)
    return {
        "inputs": inputs.int(),
        "labels": torch.where(labels == PAD_ID, IGNORE_LABEL_ID, labels).int(),
        "puzzle_identifiers": torch.ones(n, dtype=torch.int32),
        "demo_inputs": demo_in.view(n, demos, -1).int(),
        "demo_labels": demo_out.view(n, demos, -1).int(),
        "demo_mask": torch.ones(n, demos, dtype=torch.bool),
    }


# ----------------------------------------------------------------------------------------
# Tokenisation


def test_tokeniser_round_trips_canvases_of_every_shape_and_offset():
    rng = np.random.default_rng(0)
    side = 6
    cases = [
        (h, w, r0, c0)
        for h in range(1, side + 1)
        for w in range(1, side + 1)
        for r0, c0 in [(0, 0), (side - h, side - w), (rng.integers(0, side - h + 1), rng.integers(0, side - w + 1))]
    ]
    grids = [rng.integers(0, 10, size=(h, w)) for h, w, _, _ in cases]
    placed = torch.stack([canvas(g, side, r0, c0) for g, (_, _, r0, c0) in zip(grids, cases)])
    seq = canvas_to_seq(placed, side)
    for i, (g, (h, w, _, _)) in enumerate(zip(grids, cases)):
        want = [t for row in g.tolist() for t in [c + 2 for c in row] + [NEWLINE]] + [END]
        assert seq.tokens[i, : seq.lengths[i]].tolist() == want
        assert (seq.tokens[i, seq.lengths[i] :] == PAD_ID).all()
        assert (int(seq.heights[i]), int(seq.widths[i])) == (h, w)
    # back to a canvas: the same grid, top-left, in the dataset's PAD/EOS layout
    assert torch.equal(seq_to_canvas(seq.tokens, side), torch.stack([canvas(g, side) for g in grids]))
    empty = canvas_to_seq(torch.zeros(2, side * side, dtype=torch.long), side)
    assert empty.tokens.tolist() == [[END], [END]] and torch.equal(
        seq_to_canvas(empty.tokens, side), torch.zeros(2, side * side, dtype=torch.long)
    )


def test_tokeniser_reads_the_builders_canvases(tmp_path):
    """Translated train examples and top-left test examples of a real build decode to the
    grids the dataset holds (checked with the evaluator's crop)."""
    rng = np.random.default_rng(1)
    src = write_folder_source(
        tmp_path / "src",
        {
            "training": {f"t{i}": random_task(rng, max_side=5) for i in range(3)},
            "evaluation": {"e": random_task(rng, max_side=5)},
        },
    )
    out = tmp_path / "ds"
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
                "2",
                "--max-grid-size",
                "7",
            ]
        )
        == 0
    )
    for split in ("train", "test"):
        for name in ("inputs", "labels"):
            rows = np.load(out / split / f"all__{name}.npy")
            back = seq_to_canvas(canvas_to_seq(torch.from_numpy(rows.astype(np.int64)), 7).tokens, 7).numpy()
            for row, got in zip(rows, back):
                r0, c0 = find_origin(row, 7)
                assert np.array_equal(crop_canvas(row, 7, r0, c0)[0], crop_canvas(got, 7, 0, 0)[0])
                if split == "test":
                    assert np.array_equal(row, got)


def test_coordinates_come_from_the_real_width():
    narrow = canvas([[1, 2], [3, 4], [5, 6]], side=8)  # 3 x 2
    wide = canvas([[0, 1, 2, 3, 4, 5, 6]], side=8)  # 1 x 7
    full = canvas([[1, 2, 3, 4, 5, 6, 7, 8]] * 2, side=8)  # 2 x 8: no EOS column
    seq = canvas_to_seq(torch.stack([narrow, wide, full]), 8)
    rows, cols = grid_coords(seq.tokens)
    assert rows[0, :10].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert cols[0, :10].tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert rows[1, :9].tolist() == [0] * 8 + [1] and cols[1, :9].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 0]
    assert rows[2, :19].tolist() == [0] * 9 + [1] * 9 + [2] and cols[2, :19].tolist() == [*range(9)] * 2 + [0]
    # the champion's edge distances use the real height and width
    model = build_model(tiny_config("champion"), DataShape(64, 12, 3, 3))
    f = model.features(seq, 0)
    assert f["right"][0, :10].tolist() == [2, 1, 0, 2, 1, 0, 2, 1, 0, 0]
    assert f["below"][0, :10].tolist() == [3, 3, 3, 2, 2, 2, 1, 1, 1, 0]
    assert f["right"][1, :9].tolist() == [7, 6, 5, 4, 3, 2, 1, 0, 0]


def test_decoding_state_tracks_the_same_coordinates():
    """The running (row, col) of decoding equals grid_coords of the emitted tokens, and the
    grammar keeps rows rectangular."""
    target = canvas_to_seq(canvas([[1, 2, 3], [4, 5, 6]], side=5)[None], 5).tokens
    state = Decoding(1, 5, torch.device("cpu"))
    seen = []
    for t in range(target.shape[1]):
        seen.append((int(state.row), int(state.col)))
        forced = torch.full((1, SEQ_VOCAB), -1e4)
        forced[0, target[0, t]] = 0
        state.step(forced, sample=False, temperature=1.0, generator=None)
    rows, cols = grid_coords(target)
    assert seen == list(zip(rows[0].tolist(), cols[0].tolist()))
    assert bool(state.done)
    # after a 3-wide first row, a second row may not end early nor run long
    state = Decoding(1, 5, torch.device("cpu"))
    for tok in [3, 4, 5, NEWLINE, 6]:
        state.step(torch.nn.functional.one_hot(torch.tensor([tok]), SEQ_VOCAB).float() * 50, False, 1.0, None)
    allowed = state.allowed()[0]
    assert not allowed[NEWLINE] and not allowed[END] and allowed[2:12].all()


# ----------------------------------------------------------------------------------------
# Positions and causality


def test_rope_scores_depend_only_on_the_position_difference():
    torch.manual_seed(0)
    cos, sin = RotaryEmbedding(16, 64, 10000.0)()
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        qm, _ = apply_rope(q, q, cos[m : m + 1], sin[m : m + 1])
        _, kn = apply_rope(k, k, cos[n : n + 1], sin[n : n + 1])
        return float((qm * kn).sum())

    for delta in (0, 3, 17):
        ref = score(delta, 0)
        for shift in (1, 9, 40):
            assert abs(score(delta + shift, shift) - ref) < 1e-4
    assert abs(score(5, 0) - score(9, 0)) > 1e-3  # and it does depend on the difference


@pytest.mark.parametrize("name", ["decoder_only", "encoder_decoder", "champion"])
def test_changing_target_token_i_changes_no_logit_at_or_before_i(name):
    torch.manual_seed(0)
    model = build_model(tiny_config(name), SHAPE).eval()
    batch = mirror_batch()
    targets = torch.randint(2, SEQ_VOCAB - 1, (8, 12))  # colours, NEWLINE, END
    with torch.no_grad():
        base = model.teacher_forced(batch, targets)
        for i in (0, 4, 10):
            changed = targets.clone()
            changed[:, i] = torch.where(changed[:, i] == NEWLINE, 2, NEWLINE)  # also moves later 2-D coordinates
            logits = model.teacher_forced(batch, changed)
            torch.testing.assert_close(logits[:, : i + 1], base[:, : i + 1], rtol=0, atol=1e-6)
            assert not torch.allclose(logits[:, i + 1 :], base[:, i + 1 :])  # later positions do see it


@pytest.mark.parametrize("name", ["decoder_only", "encoder_decoder", "champion"])
def test_predictions_do_not_read_labels(name):
    torch.manual_seed(0)
    model = build_model(tiny_config(name, decoding="sample", num_samples=3), SHAPE).eval()
    batch = mirror_batch()
    _, _, a = model.predict(batch)
    other = {**batch, "labels": torch.flip(batch["labels"], [0])}
    _, _, b = model.predict(other)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.scores, b.scores)
    assert a.tokens.shape == (8, 3, SIDE * SIDE) and a.scores.shape == (8, 3)


def grammar_allows(prefix: list[int], side: int) -> list[int]:
    """The tokens decoding may emit after ``prefix``, written out from the rules: colours
    while the row is shorter than the first row (or the canvas) and rows remain, NEWLINE to
    end a non-empty row at the first row's width, END after a complete row."""
    rows = [[]]
    for token in prefix:
        if token == NEWLINE:
            rows.append([])
        else:
            rows[-1].append(token)
    width = len(rows[0]) if len(rows) > 1 else None
    col, complete = len(rows[-1]), len(rows) - 1
    allowed = []
    if complete < side and col < (side if width is None else width):
        allowed += range(2, 12)
    if col >= 1 and (width is None or col == width):
        allowed.append(NEWLINE)
    if col == 0 and complete >= 1:
        allowed.append(END)
    return allowed


@pytest.mark.parametrize("name", ["decoder_only", "encoder_decoder", "champion"])
def test_sample_scores_are_their_sequence_log_probabilities(name):
    """Each sample's score is the sum, over its tokens up to END, of the log-softmax of the
    teacher-forced logits over the tokens the grammar allows, gathered at the sampled token."""
    torch.manual_seed(0)
    model = build_model(tiny_config(name, decoding="sample", num_samples=3), SHAPE).eval()
    batch = mirror_batch()
    tokens, scores = model.generate(batch)
    n = tokens.shape[1]
    flat = tokens.flatten(0, 1)
    with torch.no_grad():
        logits = model.teacher_forced({k: v.repeat_interleave(n, 0) for k, v in batch.items()}, flat).double()
    expected = torch.zeros(flat.shape[0], dtype=torch.float64)
    for i, sample in enumerate(flat.tolist()):
        end = sample.index(END)
        for t in range(end + 1):
            allowed = grammar_allows(sample[:t], SIDE)
            assert sample[t] in allowed, (i, t, sample)
            expected[i] += logits[i, t, sample[t]] - torch.logsumexp(logits[i, t, allowed], 0)
    torch.testing.assert_close(scores.flatten().double(), expected, rtol=0, atol=1e-4)
    assert len(set(scores.flatten().tolist())) > n  # samples differ (and are not all the greedy one)


@pytest.mark.parametrize("name", ["decoder_only", "encoder_decoder", "champion"])
def test_cached_decoding_matches_teacher_forcing(name):
    """Greedy decoding with the KV cache (decoder-only: each prompt at its own RoPE positions
    in a shared cache) emits what the teacher-forced model, re-run on each prefix without a
    cache, would choose under the same grammar; an example's logits do not depend on the
    other examples of its batch (their lengths, hence the padding)."""
    torch.manual_seed(0)
    model = build_model(tiny_config(name), SHAPE).eval()
    batch = mirror_batch(n=5)
    tokens, scores = model.generate(batch)
    state = Decoding(5, SIDE, torch.device("cpu"))
    prefix = torch.zeros(5, 0, dtype=torch.long)
    with torch.no_grad():
        for t in range(tokens.shape[2]):
            logits = model.teacher_forced(batch, torch.cat([prefix, torch.full((5, 1), END)], 1))[:, t]
            prefix = torch.cat([prefix, state.step(logits, False, 1.0, None)[:, None]], 1)
        assert torch.equal(prefix, tokens[:, 0])
        torch.testing.assert_close(state.score, scores[:, 0], rtol=1e-4, atol=1e-4)
        alone = model.teacher_forced({k: v[:1] for k, v in batch.items()}, prefix[:1])
        together = model.teacher_forced(batch, prefix)
    torch.testing.assert_close(together[:1], alone, rtol=1e-5, atol=1e-5)
    assert len(set(canvas_to_seq(batch["inputs"], SIDE).lengths.tolist())) > 1  # the batch really is ragged


# ----------------------------------------------------------------------------------------
# Learning


def fit(model, batches, measure, target: float, chunk: int, cap: int, lr: float = 3e-3) -> list[tuple[int, float]]:
    """Adam on ``batches(step)`` (the loss per example) ``chunk`` steps at a time until
    ``measure()`` reaches ``target`` or ``cap`` steps have run; returns (step, value) of each
    check. A learning test asserts the last one reached the target."""
    loss_fn = SequenceCELoss(SequenceLossConfig())
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for step in range(1, cap + 1):
        model.train()
        batch = batches(step)
        loss, _ = loss_fn(model(model.initial_carry(batch), batch)[1], batch)
        opt.zero_grad()
        (loss / batch["inputs"].shape[0]).backward()
        opt.step()
        if step % chunk == 0 or step == cap:
            model.eval()
            history.append((step, measure()))
            if history[-1][1] >= target:
                break
    return history


@pytest.mark.learning
@pytest.mark.parametrize("name", ["decoder_only", "encoder_decoder", "champion"])
def test_greedy_decode_of_a_trained_model_reproduces_memorised_outputs(name):
    torch.manual_seed(learning_seed())
    batch = mirror_batch(learning_seed())
    model = build_model(tiny_config(name, hidden_size=64, num_heads=4), SHAPE)
    loss_fn = SequenceCELoss(SequenceLossConfig())
    want = torch.where(batch["labels"] == IGNORE_LABEL_ID, PAD_ID, batch["labels"]).long()

    def memorised() -> float:
        return float((model.predict(batch)[2].tokens[:, 0] == want).all(1).float().mean())

    # All 8 memorised in 25 steps (measured); the cap leaves 8x that.
    history = fit(model, lambda _step: batch, memorised, target=1.0, chunk=10, cap=200)
    assert history[-1][1] == 1.0, history
    model.eval()
    output, _, predictions = model.predict(batch)
    assert torch.equal(predictions.tokens[:, 0], want)  # canvases in the dataset's layout
    _, metrics = loss_fn(output, batch)
    assert float(metrics["exact_accuracy"]) == float(metrics["count"]) == 8
    # a wrong decoded candidate is not counted exact
    output.decoded = torch.roll(output.decoded, 1, 0)
    assert float(loss_fn(output, batch)[1]["exact_accuracy"]) < 8


def constant_output_batch(task_ids: np.ndarray, seed: int, demos: int = 2) -> dict[str, torch.Tensor]:
    """Tasks whose output is a task-specific 2x2 grid whatever the input: only the
    demonstrations say what it is."""
    rng = np.random.default_rng(seed)
    consts = {t: np.random.default_rng(1000 + int(t)).integers(0, 10, size=(2, 2)) for t in np.unique(task_ids)}

    def pair(t):
        return canvas(rng.integers(0, 10, size=rng.integers(1, SIDE, size=2))), canvas(consts[t])

    q = [pair(t) for t in task_ids]
    d = [pair(t) for t in task_ids for _ in range(demos)]
    labels = torch.stack([b for _, b in q])
    n = len(task_ids)
    return {
        "inputs": torch.stack([a for a, _ in q]).int(),
        "labels": torch.where(labels == PAD_ID, IGNORE_LABEL_ID, labels).int(),
        "puzzle_identifiers": torch.zeros(n, dtype=torch.int32),
        "demo_inputs": torch.stack([a for a, _ in d]).view(n, demos, -1).int(),
        "demo_labels": torch.stack([b for _, b in d]).view(n, demos, -1).int(),
        "demo_mask": torch.ones(n, demos, dtype=torch.bool),
    }


@pytest.mark.learning
def test_champion_reads_the_answer_from_its_demonstrations():
    """Trained on tasks 0-199, the champion answers tasks 1000+ whose (constant) outputs it
    never saw, and fails when the demonstrations come from other tasks."""
    seed = learning_seed()
    torch.manual_seed(seed)
    model = build_model(tiny_config("champion", hidden_size=64, num_heads=4), SHAPE)
    rng = np.random.default_rng(seed)
    unseen = constant_output_batch(np.arange(1000, 1016), seed=999999 - seed)
    swapped = {**unseen, "demo_inputs": unseen["demo_inputs"].roll(1, 0), "demo_labels": unseen["demo_labels"].roll(1, 0)}
    want = torch.where(unseen["labels"] == IGNORE_LABEL_ID, PAD_ID, unseen["labels"]).long()

    def solved(batch) -> float:
        return float((model.predict(batch)[2].tokens[:, 0] == want).all(1).float().mean())

    # 15-16 of 16 right after 60 steps (measured); the cap leaves 10x that.
    history = fit(
        model,
        lambda step: constant_output_batch(rng.integers(0, 200, size=16), seed=1000 * seed + step),
        lambda: solved(unseen),
        target=0.9,
        chunk=30,
        cap=600,
    )
    assert history[-1][1] >= 0.9, history
    assert solved(swapped) <= 0.25


# ----------------------------------------------------------------------------------------
# Builder: task-level split, many-pair task files


def mirror_tasks(n: int, seed: int, n_train: int = 3, prefix: str = "m") -> dict[str, dict]:
    """Mirror left-right tasks on random grids of 1-3 rows and 1-3 columns."""
    rng = np.random.default_rng(seed)

    def task():
        grids = [rng.integers(0, 10, size=rng.integers(1, 4, size=2)) for _ in range(n_train + 1)]
        pairs = [{"input": g.tolist(), "output": g[:, ::-1].tolist()} for g in grids]
        return {"train": pairs[:-1], "test": pairs[-1:]}

    return {f"{prefix}{i:02d}": task() for i in range(n)}


def build(src: Path, out: Path, *extra, num_aug: int = 1, canvas_side: int = 4) -> int:
    return build_main(
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
            str(num_aug),
            "--max-grid-size",
            str(canvas_side),
            *map(str, extra),
        ]
    )


def split_tasks(root: Path, split: str) -> dict[str, list[tuple[list, list]]]:
    """task id -> the (input, output) grids of its original variant's examples in a split."""
    names = json.loads((root / "identifiers.json").read_text())
    d = {k: np.load(root / split / f"all__{k}.npy") for k in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices")}
    side = int(np.sqrt(d["inputs"].shape[1]))
    found: dict[str, list] = {}
    for p, ident in enumerate(d["puzzle_identifiers"]):
        task, trans, _ = parse_variant_name(names[ident])
        found.setdefault(task, [])
        if trans != 0 or names[ident] != task:
            continue
        for e in range(d["puzzle_indices"][p], d["puzzle_indices"][p + 1]):
            grids = []
            for row in (d["inputs"][e], d["labels"][e]):
                r0, c0 = find_origin(row, side)
                grids.append(crop_canvas(row, side, r0, c0)[0].tolist())
            found[task].append(tuple(grids))
    return found


def test_task_split_moves_seeded_training_tasks_to_an_unseen_dataset(tmp_path):
    tasks = mirror_tasks(10, seed=0)
    src = write_folder_source(tmp_path / "src", {"training": tasks, "evaluation": mirror_tasks(2, seed=1, prefix="e")})
    assert build(src, tmp_path / "plain") == 0
    out = tmp_path / "split"
    assert build(src, out, "--task-split-frac", 0.3, "--task-split-seed", 5) == 0
    unseen = json.loads((out / "build_info.json").read_text())["task_split"]["unseen_tasks"]
    assert len(unseen) == 3 and set(unseen) <= set(tasks)
    assert json.loads((out / "unseen" / "build_info.json").read_text())["task_split"]["unseen_tasks"] == unseen

    main_train = split_tasks(out, "train")
    assert not set(unseen) & set(main_train) and set(tasks) - set(unseen) <= set(main_train)
    held_train, held_test = split_tasks(out / "unseen", "train"), split_tasks(out / "unseen", "test")
    assert set(held_train) == set(held_test) == set(unseen)
    for t in unseen:  # demonstrations in its train split, test pairs in its test split
        assert sorted(held_train[t]) == sorted((p["input"], p["output"]) for p in tasks[t]["train"])
        assert held_test[t] == [(p["input"], p["output"]) for p in tasks[t]["test"]]
    assert set(json.loads((out / "unseen" / "test_puzzles.json").read_text())) == set(unseen)
    # identifiers are shared and unchanged; the main test split is the plain build's
    for f in (
        "identifiers.json",
        "test_puzzles.json",
        "test/all__inputs.npy",
        "test/all__labels.npy",
        "test/all__puzzle_identifiers.npy",
    ):
        assert (out / f).read_bytes() == (tmp_path / "plain" / f).read_bytes(), f
    assert (out / "unseen" / "identifiers.json").read_bytes() == (out / "identifiers.json").read_bytes()
    # the loader and the voter take the unseen folder as an evaluation set
    assert PuzzleDataset([str(out / "unseen")], "test", 4).metadata.total_groups == 3
    assert ARCVoter(str(out / "unseen")).num_slots == 3
    # the choice is the seed's
    assert build(src, tmp_path / "again", "--task-split-frac", 0.3, "--task-split-seed", 5) == 0
    assert json.loads((tmp_path / "again" / "build_info.json").read_text())["task_split"]["unseen_tasks"] == unseen
    assert build(src, tmp_path / "other", "--task-split-frac", 0.3, "--task-split-seed", 6) == 0
    assert json.loads((tmp_path / "other" / "build_info.json").read_text())["task_split"]["unseen_tasks"] != unseen


def test_task_split_flags_are_checked(tmp_path, capsys):
    src = write_folder_source(
        tmp_path / "src", {"training": mirror_tasks(3, seed=0), "evaluation": mirror_tasks(1, 1, prefix="e")}
    )
    assert build(src, tmp_path / "a", "--task-split-frac", 1.0) == 2
    assert "--task-split-frac must be in [0, 1)" in capsys.readouterr().err
    assert build(src, tmp_path / "b", "--task-split-frac", 0.1) == 2  # 0.1 x 3 tasks rounds to none
    assert "is no task" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_many_pair_task_files_with_held_out_test_pairs(tmp_path, capsys):
    rng = np.random.default_rng(3)
    generated = [
        {"input": g.tolist(), "output": g[::-1].tolist()} for g in (rng.integers(0, 10, size=(2, 3)) for _ in range(40))
    ]
    src = write_folder_source(
        tmp_path / "src",
        {
            "training": {
                "gen_train": generated[:30],
                "plain": random_task(rng, max_side=4),
                "no_test_key": {"train": generated[30:35]},
            },
            "evaluation": {"gen_eval": generated[35:]},
        },
    )  # a bare list of pairs: re-arc's format
    assert build(src, tmp_path / "a", canvas_side=5) == 2
    assert "no_test_key: missing 'test' key (pass --holdout-test-pairs" in capsys.readouterr().err
    (src / "training" / "no_test_key.json").unlink()
    assert build(src, tmp_path / "b", canvas_side=5) == 2
    assert "gen_eval of the test set has no test pairs" in capsys.readouterr().err

    (src / "training" / "no_test_key.json").write_text(json.dumps({"train": generated[30:35]}))
    out = tmp_path / "c"
    assert build(src, out, "--holdout-test-pairs", 2, canvas_side=5) == 0
    pair = lambda p: (p["input"], p["output"])  # noqa: E731
    test = split_tasks(out, "test")
    assert list(test) == ["gen_eval"] and test["gen_eval"] == [pair(p) for p in generated[38:]]
    train = split_tasks(out, "train")
    assert sorted(train["gen_eval"]) == sorted(pair(p) for p in generated[35:38])
    # training tasks without tests: all their pairs train (held-out ones too: they are not tested)
    assert sorted(train["gen_train"]) == sorted(pair(p) for p in generated[:30])
    assert sorted(train["no_test_key"]) == sorted(pair(p) for p in generated[30:35])
    saved = json.loads((out / "test_puzzles.json").read_text())["gen_eval"]
    assert saved["test"] == generated[38:] and saved["train"] == generated[35:38]
    # with a task split they can be held out too, and test on their held-out pairs
    out = tmp_path / "d"
    assert build(src, out, "--holdout-test-pairs", 2, "--task-split-frac", 0.99, canvas_side=5) == 0
    unseen_test = split_tasks(out / "unseen", "test")
    assert unseen_test["gen_train"] == [pair(p) for p in generated[28:30]]
    assert build(src, tmp_path / "e", "--holdout-test-pairs", 5, canvas_side=5) == 2
    assert "--holdout-test-pairs 5 needs more than 5 train pairs" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# End to end: builder split -> pretrain (demonstrations, seq_ce) -> voter on unseen tasks


@pytest.mark.learning
def test_champion_solves_held_out_tasks_of_a_family_it_trained_on(tmp_path):
    seed = learning_seed()
    src = write_folder_source(
        tmp_path / "src",
        {"training": mirror_tasks(40, seed=seed, n_train=4), "evaluation": mirror_tasks(2, seed=seed + 1, prefix="e")},
    )
    data = tmp_path / "ds"
    assert build(src, data, "--task-split-frac", 0.2, num_aug=0) == 0
    unseen = json.loads((data / "build_info.json").read_text())["task_split"]["unseen_tasks"]
    use_test_threads()
    overrides = seeded(
        "arch=champion",
        "loss=seq_ce",
        f"data.paths=[{data}]",
        f"data.test_paths=[{data / 'unseen'}]",
        "data.name=m",
        "arch.hidden_size=64",
        "arch.num_heads=4",
        "arch.expansion=2",
        "arch.encoder_layers=2",
        "arch.decoder_layers=2",
        "arch.context_layers=1",
        "optimizer=adamw",
        "optimizer.lr=2e-3",
        "optimizer.weight_decay=0",
        "lr_warmup_steps=20",
        "global_batch_size=16",
        "eval_interval=1000000",
        f"checkpoint_path={tmp_path / 'ck'}",
        "progress_bar=false",
        "log_interval=20",
        "wandb.mode=disabled",
    )
    # Each chunk ends with an evaluation on the unseen tasks: 6+ of 8 solved in 100-150 steps
    # (measured); the cap leaves 4x that.
    summary, _, history = train_until(overrides, lambda summary, _c: summary["ARC/pass@1"], target=0.75, chunk=50, cap=600)
    assert summary["ARC/tasks_scored"] == len(unseen) == 8
    assert summary["ARC/pass@1"] >= 0.75, history
    submission = json.loads((tmp_path / "ck" / f"evaluator_ARC_step_{summary['step']}" / "submission.json").read_text())
    assert sorted(submission) == unseen
