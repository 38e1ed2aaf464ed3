"""Size-bucketed canvases (``build_arc_dataset --canvas-buckets``) and gradient accumulation:
the builder puts each task on its smallest canvas, the loader serves one canvas per batch
(seeded, resumable), models keep the big canvas's positions, the voter scores across
buckets, and ``grad_accum_steps=k`` gives the update of the whole batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_task, write_folder_source
from train_helpers import CPU, compose_config, tiny_overrides

from dataset.augment import crop_canvas
from dataset.build_arc_dataset import main as build_main
from dataset.common import PAD_ID
from dataset.puzzle_dataset import PuzzleDataset
from evaluators.arc import ARCVoter
from evaluators.submission import fallback_attempts
from evaluators.validate_submission import validate
from models import build_model
from models.base import DataShape
from models.layers import canvas_positions
from training.optimizers import SparseSignSGD
from training.state import build_train_state
from training.step import train_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BUCKETS = [4, 8, 12]


# Each task's canvas, written out: the smallest bucket above the largest side of the grids it
# gives the model (demonstrations and test inputs; a training task's test pairs train too).
# "answer6" shows 3x3 grids and a 6x5 test output: its answer must not move it to bucket 8.
EXPECTED_CANVAS = {"t3x0": 4, "t3x1": 4, "t6x2": 8, "t6x3": 8, "t10x4": 12, "t10x5": 12, "t3x6": 4, "t6x7": 8, "answer6": 4}


def mixed_tasks(root: Path, seed: int = 0) -> Path:
    """Tasks whose largest grids are 3, 6 and 10 per side (buckets 4, 8 and 12), and an
    evaluation task whose test output (6x5) is larger than every grid it shows (3x3)."""
    rng = np.random.default_rng(seed)
    training, evaluation = {}, {}
    for i, side in enumerate([3, 3, 6, 6, 10, 10, 3, 6]):
        task = random_task(rng, n_train=3, n_test=1, max_side=side)
        task["train"][0]["input"] = np.zeros((side, side), int).tolist()  # the task's largest grid is side x side
        (evaluation if i >= 6 else training)[f"t{side}x{i}"] = task
    answer6 = random_task(rng, n_train=3, n_test=1, max_side=3)
    answer6["test"][0]["output"] = np.full((6, 5), 7).tolist()
    evaluation["answer6"] = answer6
    return write_folder_source(root, {"training": training, "evaluation": evaluation})


def build(tmp: Path, *extra: str, name: str = "ds") -> Path:
    src = tmp / "src"
    if not src.exists():
        mixed_tasks(src)
    out = tmp / name
    args = [
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
        "12",
        *extra,
    ]
    assert build_main(args) == 0
    return out


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("buckets")
    return build(tmp, name="canvas12"), build(tmp, "--canvas-buckets", *map(str, BUCKETS), name="bucketed")


def test_each_task_sits_on_its_smallest_canvas_with_the_same_grids(datasets):
    single, bucketed = datasets
    meta = json.loads((bucketed / "test" / "dataset.json").read_text())
    assert meta["seq_len"] == 144 and set(meta["canvas_sides"].values()) <= set(BUCKETS)
    ids = json.loads((bucketed / "identifiers.json").read_text())
    assert ids == json.loads((single / "identifiers.json").read_text())  # one identifiers table
    canvas_of = {}
    for split in ("train", "test"):
        sides = json.loads((bucketed / split / "dataset.json").read_text())["canvas_sides"]
        for set_name, side in sides.items():
            for ident in np.load(bucketed / split / f"{set_name}__puzzle_identifiers.npy"):
                assert canvas_of.setdefault(ids[ident].split("|||")[0], side) == side  # every variant, both splits
    assert canvas_of == EXPECTED_CANVAS

    def grids(root: Path, set_name: str, side: int) -> dict[str, list]:
        """Test-split input grids (top-left, no translation) by puzzle name."""
        d = root / "test"
        inputs = np.load(d / f"{set_name}__inputs.npy")
        bounds = np.load(d / f"{set_name}__puzzle_indices.npy")
        out = {}
        for p, ident in enumerate(np.load(d / f"{set_name}__puzzle_identifiers.npy")):
            out[ids[ident]] = [crop_canvas(row, side)[0].tolist() for row in inputs[bounds[p] : bounds[p + 1]]]
        return out

    reference = grids(single, "all", 12)
    seen = {}
    for set_name, side in meta["canvas_sides"].items():
        seen.update(grids(bucketed, set_name, side))
    assert seen == reference  # every test input, cropped, as on the single canvas


def test_an_answer_larger_than_its_canvas_leaves_its_label_unscored_and_is_counted(datasets):
    """answer6 sits on canvas 4 (chosen without its answer), where its 6x5 test output cannot be
    written: its label rows are all PAD (as a hidden output's), build_info.json counts it."""
    single, bucketed = datasets
    info = json.loads((bucketed / "build_info.json").read_text())["canvas_buckets"]
    assert info["test_outputs_beyond_canvas"] == [{"task": "answer6", "test_pair": 0, "output_side": 6, "canvas": 4}]
    ids = json.loads((bucketed / "identifiers.json").read_text())

    def labels_of(root: Path, set_name: str) -> np.ndarray:
        d = root / "test"
        owner = np.repeat(
            np.load(d / f"{set_name}__puzzle_identifiers.npy"), np.diff(np.load(d / f"{set_name}__puzzle_indices.npy"))
        )
        rows = [i for i, ident in enumerate(owner) if ids[ident].split("|||")[0] == "answer6"]
        return np.load(d / f"{set_name}__labels.npy")[rows]

    assert len(labels_of(bucketed, "canvas4")) == 4 and (labels_of(bucketed, "canvas4") == PAD_ID).all()
    assert (labels_of(single, "all") != PAD_ID).any(1).all()  # on the 12 canvas the answer is there
    assert "test_outputs_beyond_canvas" not in json.loads((single / "build_info.json").read_text())


def test_build_info_counts_tokens_per_epoch_against_the_single_canvas(datasets):
    single, bucketed = datasets
    info = json.loads((bucketed / "build_info.json").read_text())["canvas_buckets"]
    per_side = {int(s): n for s, n in info["train_examples"].items()}
    tokens = info["train_tokens_per_epoch"]
    assert sum(per_side.values()) == json.loads((single / "build_info.json").read_text())["train_examples"]
    assert tokens["tokens"] == sum(n * s * s for s, n in per_side.items())
    assert tokens["tokens_on_canvas_12"] == sum(per_side.values()) * 144
    assert tokens["token_ratio"] == pytest.approx(tokens["tokens_on_canvas_12"] / tokens["tokens"])
    assert "canvas_buckets" not in json.loads((single / "build_info.json").read_text())


def test_an_unknown_bucket_preset_and_bad_sides_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build(tmp_path, "--canvas-buckets", "huge")
    assert "--canvas-buckets takes canvas sides or 'arc'" in capsys.readouterr().err
    assert (
        build_main(
            [
                "--input-file-prefix",
                str(mixed_tasks(tmp_path / "s")),
                "--output-dir",
                str(tmp_path / "o"),
                "--subsets",
                "training",
                "evaluation",
                "--test-set-name",
                "evaluation",
                "--max-grid-size",
                "12",
                "--canvas-buckets",
                "8",
                "4",
            ]
        )
        == 2
    )
    assert "increasing" in capsys.readouterr().err


def _train_batches(path: Path, seed: int, batch: int = 4, epochs: int = 1):
    data = PuzzleDataset([str(path)], "train", batch, seed=seed)
    out = []
    for _ in range(epochs):
        out += [(name, b["inputs"].clone(), b["puzzle_identifiers"].clone()) for name, b, _ in data]
    return out


def test_train_batches_come_one_canvas_at_a_time_in_a_seeded_resumable_order(datasets):
    _, bucketed = datasets
    batches = _train_batches(bucketed, seed=3, epochs=2)
    sides = json.loads((bucketed / "train" / "dataset.json").read_text())["canvas_sides"]
    assert {name for name, _, _ in batches} == set(sides)  # every bucket is trained on
    for name, inputs, _ in batches:
        assert inputs.shape[1] == sides[name] ** 2  # one sequence length per batch
    names = [n for n, _, _ in batches]
    assert names != sorted(names, key=list(sides).index)  # buckets interleave, not one after another
    again = _train_batches(bucketed, seed=3, epochs=2)
    assert all(a[0] == b[0] and torch.equal(a[1], b[1]) for a, b in zip(batches, again, strict=True))
    assert [n for n, _, _ in _train_batches(bucketed, seed=4, epochs=2)] != names

    # Resume mid-epoch: the rest equals the uninterrupted run's.
    data = PuzzleDataset([str(bucketed)], "train", 4, seed=3)
    it = iter(data)
    for _ in range(3):
        next(it)
    resumed = PuzzleDataset([str(bucketed)], "train", 4, seed=3)
    resumed.load_state_dict(data.state_dict())
    rest = [(n, b["inputs"]) for n, b, _ in resumed]
    assert len(rest) == len(batches) // 2 - 3
    assert all(n == m and torch.equal(x, y) for (n, x), (m, y, _) in zip(rest, batches[3:], strict=False))


def test_test_batches_cover_every_example_once_with_indices_across_buckets(datasets):
    _, bucketed = datasets
    data = PuzzleDataset([str(bucketed)], "test", 4)
    seen = []
    starts = []
    for _name, batch, _n in data:
        ex = batch["example_indices"]
        starts.append(int(ex[0]))
        seen += ex[ex >= 0].tolist()
    total = int(data.index_arrays()["puzzle_indices"][-1])
    assert sorted(seen) == list(range(total)) and len(seen) == total
    assert starts == data.test_batch_starts()


def test_the_voter_scores_perfect_predictions_across_buckets_as_on_one_canvas(datasets):
    """Feeding each test example's own label as its prediction: inverting and cropping in
    every bucket must recover the task's answer, as on the single canvas; only answer6, whose
    answer its canvas cannot hold, is scored unsolved there (its input echoed)."""
    tasks = json.loads((datasets[0] / "test_puzzles.json").read_text())
    for path, solved in zip(datasets, (1.0, 2 / 3), strict=True):
        data = PuzzleDataset([str(path)], "test", 4)
        voter = ARCVoter(str(path))
        for _name, batch, _n in data:
            labels = batch["labels"].clamp(min=0)  # ignored cells -> PAD
            voter.add(batch["example_indices"].numpy(), labels.to(torch.uint8).numpy(), np.zeros(4))
        metrics, submission = voter.finalize([1, 2])
        assert metrics["ARC/pass@1"] == pytest.approx(solved), path
        assert metrics["ARC/answers_beyond_canvas"] == (solved < 1), path  # answer6 on the bucketed build
        assert len(submission) == 3
    assert submission["answer6"] == [fallback_attempts(tasks["answer6"]["test"][0]["input"])]


def test_a_bucket_keeps_the_big_canvas_positions():
    # Written out: a side-2 bucket of the 3x3 canvas after 1 puzzle token: the token, then
    # cells (0,0) (0,1) (1,0) (1,1) at 1 + r*3 + c; a side-3 bucket of the 4x4 canvas after 2.
    assert canvas_positions(4, 9, prefix=1).tolist() == [0, 1, 2, 4, 5]
    assert canvas_positions(9, 16, prefix=2).tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 10, 11, 12]
    assert canvas_positions(144, 144, prefix=0).tolist() == list(range(144))
    with pytest.raises(ValueError, match="no square canvas"):
        canvas_positions(15, 144, prefix=0)


@pytest.mark.parametrize("pos_encodings", ["rope", "learned"])
def test_rope_and_learned_positions_of_a_bucket_are_the_big_canvas_rows(pos_encodings):
    """A 2x2 grid on a side-2 bucket gets exactly the positional terms (rotary angles, or the
    learned table's rows) of the same cells on the 3x3 canvas the model is built for: rows
    0 (the puzzle token), 1, 2, 4, 5, written out. Weights trained on one run on the other
    (not as the same function: see the test below)."""
    config = compose_config(["arch=trm_tiny", "data.paths=[unused]", f"arch.pos_encodings={pos_encodings}"]).arch
    model = build_model(config, DataShape(9, 12, 4, 2))
    core = model.inner
    assert core.puzzle_emb_len == 1
    seen = []
    reason = core.reason

    def capture(carry, x, cos_sin):
        seen.append((x, cos_sin))
        return reason(carry, x, cos_sin)

    core.reason = capture
    bucket = torch.tensor([[2, 3, 4, 5], [6, 7, 8, 9]])  # two 2x2 grids, as tokens
    canvas = torch.ones(2, 9, dtype=torch.int64)  # EOS around them on the 3x3 canvas
    canvas[:, [0, 1, 3, 4]] = bucket
    model.train()
    for inputs in (bucket, canvas):
        batch = {
            "inputs": inputs,
            "puzzle_identifiers": torch.zeros(2, dtype=torch.int64),
            "labels": torch.zeros_like(inputs),
        }
        model(model.initial_carry(batch), batch)
    (x_bucket, angles_bucket), (x_canvas, angles_canvas) = seen
    rows = [0, 1, 2, 4, 5]
    assert torch.equal(x_bucket, x_canvas[:, rows])  # learned: token + position rows; rope: tokens alone
    if pos_encodings == "rope":
        assert torch.equal(angles_bucket[0], angles_canvas[0][rows])
        assert torch.equal(angles_bucket[1], angles_canvas[1][rows])
    else:
        assert angles_bucket is None and angles_canvas is None
        assert not torch.equal(x_canvas[:, [0, 1, 2, 3, 4]], x_bucket)  # the bucket's row 3 is the canvas's 4


@pytest.mark.parametrize("arch", ["arch.pos_encodings=learned", "arch=urm_tiny"])
def test_a_model_trains_and_evaluates_on_a_bucketed_build(datasets, tmp_path, arch):
    """Learned positions and URM's sequence conv end to end: training batches of every bucket,
    then the voter."""
    from training import loop

    _, bucketed = datasets
    config = compose_config(
        tiny_overrides(
            bucketed,
            tmp_path / "run",
            arch,
            "global_batch_size=4",
            "max_steps=6",
            "epochs=1",
            "eval_interval=1",
        )
    )
    summary = loop.train(config, CPU)
    assert summary["step"] == 6 and summary["ARC/tasks"] == 3
    submission = json.loads(next((tmp_path / "run").glob("evaluator_ARC_step_*/submission.json")).read_text())
    assert validate(submission, json.loads((bucketed / "test_puzzles.json").read_text())) == []


def test_families_that_need_one_sequence_length_refuse_a_bucketed_dataset(datasets, tmp_path):
    _, bucketed = datasets
    for arch in ("decoder_only", "trm_mlp"):
        overrides = tiny_overrides(bucketed, tmp_path / arch, f"arch={arch}", "global_batch_size=4")
        if arch == "decoder_only":
            overrides.append("loss=seq_ce")
        config = compose_config(overrides)
        train = PuzzleDataset([str(bucketed)], "train", 4)
        with pytest.raises(ValueError, match=f"arch={arch} .*size-bucketed dataset {bucketed}.*Rebuild it"):
            build_train_state(config, CPU, train)


def test_each_bucket_keeps_its_own_carry(datasets, tmp_path):
    """An unhalted example continues in its own bucket: after a batch of another canvas,
    a bucket's carry resumes at the step it had reached."""
    _, bucketed = datasets
    config = compose_config(
        tiny_overrides(
            bucketed, tmp_path / "run", "global_batch_size=4", "arch.halt_max_steps=4", "arch.halt_exploration_prob=0"
        )
    )
    data = PuzzleDataset([str(bucketed)], "train", 4, seed=0)
    state = build_train_state(config, CPU, data)
    batches = [b for _, b, _ in data]
    by_len = {}
    for batch in batches:
        by_len.setdefault(batch["inputs"].shape[1], batch)
    small, big = sorted(by_len)[:2]
    for length in (small, small, big, small):
        train_step(state, by_len[length])
    steps = {key: carry.steps.tolist() for key, carry in state.carries.items()}
    assert steps == {f"micro0/len{small}": [3] * 4, f"micro0/len{big}": [1] * 4}


# ----------------------------------------------------------------------------------------
# Gradient accumulation


def _run_steps(path: Path, tmp: Path, accum: int, extra: list[str], n_steps: int = 3):
    """Weights after ``n_steps`` steps and, per step, the gradients every optimizer got
    (dense parameters; the puzzle table's rows by identifier)."""
    config = compose_config(
        tiny_overrides(path, tmp / f"accum{accum}-{n_steps}", "global_batch_size=8", f"grad_accum_steps={accum}", *extra)
    )
    data = PuzzleDataset([str(path)], "train", 8, seed=0)
    state = build_train_state(config, CPU, data)
    grads: list[dict[str, torch.Tensor]] = []

    def capture(opt, _args, _kwargs):
        step = {}
        for group in opt.param_groups:
            for i, p in enumerate(group["params"]):
                if p.grad is not None:
                    step[f"{type(opt).__name__}.{i}.{tuple(p.shape)}"] = p.grad.detach().clone()
        if isinstance(opt, SparseSignSGD):  # rows as a sum per identifier: the order of rows may differ
            ids = opt.param_groups[0]["params"][2].long()
            table = torch.zeros(int(ids.max()) + 1, step.pop(next(k for k in step if ".1." in k)).shape[1])
            table.index_add_(0, ids, opt.param_groups[0]["params"][1].grad)
            step["puzzle_rows"] = table
        grads.append(step)

    for opt in state.optimizers:
        opt.register_step_pre_hook(capture)
    batches = []
    for _ in range(3):
        batches += [b for _, b, _ in data]
    for batch in batches[:n_steps]:
        train_step(state, batch)
    return {k: v.detach().clone() for k, v in state.model.state_dict().items()}, grads


@pytest.mark.parametrize("family", ["recursive", "urm", "sequence"])
def test_accumulating_two_halves_equals_the_whole_batch(datasets, tmp_path, family):
    """2 x 4 examples give the update of 1 x 8 in fp32, ACT carries included.

    Gradients (what accumulation is responsible for) are compared at every step with the
    weights held still (lr 0: the carries still evolve), to 1e-5. With the lr on, the
    weights after 3 steps agree to 1e-5 except where a gradient is within rounding of zero:
    Adam's first step is ~lr * sign(g), so such an element (measured: 1 in 10^5 for the
    sequence model, none for the recursive one) may move either way."""
    single, _ = datasets
    extra = {
        "recursive": ["arch.halt_exploration_prob=0"],
        "urm": ["arch=urm_tiny", "arch.halt_exploration_prob=0"],
        "sequence": ["arch=decoder_only", "loss=seq_ce"],
    }[family]
    still = [*extra, "optimizer.lr=0", "puzzle_emb_lr=0"]
    _, whole_grads = _run_steps(single, tmp_path / "still", 1, still)
    _, halves_grads = _run_steps(single, tmp_path / "still", 2, still)
    assert len(whole_grads) == len(halves_grads) >= 3
    for step_whole, step_halves in zip(whole_grads, halves_grads, strict=True):
        assert step_whole.keys() == step_halves.keys()
        for key, grad in step_whole.items():
            assert torch.allclose(step_halves[key], grad, rtol=0, atol=1e-5), key

    whole, _ = _run_steps(single, tmp_path, 1, extra)
    halves, _ = _run_steps(single, tmp_path, 2, extra)
    off = total = 0
    for key, value in whole.items():
        if value.is_floating_point():
            off += int(((halves[key] - value).abs() > 1e-5).sum())
            total += value.numel()
    assert off <= (0 if family != "sequence" else total // 10**4), (off, total)
    initial, _ = _run_steps(single, tmp_path, 1, extra, n_steps=0)
    assert any(not torch.allclose(initial[k], v) for k, v in whole.items() if v.is_floating_point())  # it trained


def test_grad_accum_steps_must_divide_the_batch():
    with pytest.raises(ValueError, match="grad_accum_steps=3"):
        compose_config(["data.paths=[unused]", "global_batch_size=8", "grad_accum_steps=3"])


def test_a_bucketed_run_trains_evaluates_and_adapts_end_to_end(datasets, tmp_path):
    """pretrain (periodic evaluation) -> evaluate.py -> ttt.py on a bucketed build: every
    stage writes a valid submission over the held-out tasks; ttt builds its chunks on the
    checkpoint's 12 canvas, whose positions the bucketed model was trained on."""
    import evaluate
    import ttt
    from training import loop

    _, bucketed = datasets
    run = tmp_path / "run"
    config = compose_config(
        tiny_overrides(bucketed, run, "global_batch_size=4", "max_steps=6", "epochs=1", "eval_interval=1")
    )
    summary = loop.train(config, CPU)
    assert summary["step"] == 6 and summary["ARC/tasks"] == 3  # the final periodic evaluation voted
    tasks = json.loads((bucketed / "test_puzzles.json").read_text())
    periodic = json.loads(next(run.glob("evaluator_ARC_step_*/submission.json")).read_text())
    assert validate(periodic, tasks) == []

    assert evaluate.main([f"checkpoint={run}"]) == 0
    evaluated = json.loads(next(run.glob("step_*/evaluate/bucketed/submission.json")).read_text())
    assert validate(evaluated, tasks) == [] and evaluated.keys() == periodic.keys()

    out = tmp_path / "ttt"
    assert (
        ttt.main(
            [
                f"checkpoint={run}",
                f"tasks={bucketed.parent / 'src'}",
                "subset=evaluation",
                f"ttt.output_dir={out}",
                "ttt.num_aug=1",
                "ttt.steps=2",
            ]
        )
        == 0
    )
    adapted = json.loads((out / "submission.json").read_text())
    assert validate(adapted, tasks) == [] and adapted.keys() == tasks.keys()


def test_evaluating_on_canvases_the_checkpoint_never_trained_on_is_warned(datasets, tmp_path, caplog):
    """A canvas-12 checkpoint on the bucketed build of the same tasks: buckets 4 and 8 show
    the model fewer PAD cells, so it computes another function (docs/data.md measures the
    cost). evaluate.py says so; on its own build it says nothing."""
    from pipelines.evaluate_checkpoint import evaluate_checkpoint, load_checkpoint
    from training import loop

    canvas12, bucketed = datasets
    config = compose_config(
        tiny_overrides(canvas12, tmp_path / "run", "global_batch_size=4", "max_steps=2", "epochs=1", "evaluate=false")
    )
    loop.train(config, CPU)
    checkpoint = load_checkpoint(str(tmp_path / "run"))
    assert checkpoint.state["canvas_sides"] == [12]
    for data, warned in ((canvas12, False), (bucketed, True)):
        config.data.paths, config.force_identifiers = [str(data)], True
        config.eval.output_dir = str(tmp_path / data.name)
        caplog.clear()
        with caplog.at_level("WARNING"):
            evaluate_checkpoint(config, checkpoint, CPU)
        notes = [r.getMessage() for r in caplog.records if "never trained on" in r.getMessage()]
        assert len(notes) == int(warned), notes
        if warned:
            assert "canvases [4, 8]" in notes[0] and "trained on [12]" in notes[0], notes


def test_a_smaller_canvas_changes_what_the_model_computes():
    """What docs/data.md says: without an attention mask, the PAD cells a bigger canvas adds
    take part in attention, so one random-weight TRM gives a 3x3 grid other logits on the
    canvas-6 layout than on a bucket of side 4 (the positions of its cells are the same)."""
    from dataset.common import EOS_ID

    torch.manual_seed(0)
    config = compose_config(["arch=trm_tiny", "data.paths=[unused]"]).arch
    model = build_model(config, DataShape(36, 12, 4, 1)).eval()
    grid = torch.arange(2, 11).view(3, 3)  # colours 0-8 as tokens
    outputs = []
    for side in (4, 6):
        canvas = torch.full((side, side), PAD_ID)
        canvas[:3, :3], canvas[3, :4], canvas[:4, 3] = grid, EOS_ID, EOS_ID
        batch = {
            "inputs": canvas.view(1, -1),
            "puzzle_identifiers": torch.zeros(1, dtype=torch.int64),
            "labels": torch.zeros(1, side * side, dtype=torch.int64),
        }
        with torch.no_grad():
            _, out = model(model.initial_carry(batch), batch)
        outputs.append(out.logits[0].view(side, side, -1)[:3, :3])
    assert (outputs[0] - outputs[1]).abs().max() > 0.1
