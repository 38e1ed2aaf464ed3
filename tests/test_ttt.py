"""Test-time training (adapt.py, ttt.py) on a task family whose rule takes a per-task colour
that only the demonstrations reveal: a 2x2 mask drawn in colour 5 becomes the same mask in
the task's colour. A model pretrained on the family knows a task only through its puzzle
embedding, so a new task needs adaptation."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import learning_seed, use_test_threads, write_folder_source, write_kaggle_source
from train_helpers import MEMORISE, read_json, seeded, split_metrics, tiny_overrides, train_until

import ttt
from dataset.build_arc_dataset import main as build_main
from evaluators.validate_submission import validate
from models.convert import PUZZLE_EMB_KEY, extend_puzzle_embeddings
from pipelines import ttt_ranks
from pipelines.ttt_config import TTTConfig
from utils import checkpoint as ckpt

COLOURS = (2, 4, 6, 8)
SHARED_TEST_MASK = np.array([[1, 0], [1, 1]])
# The tiny model's settings that memorise (train_helpers.MEMORISE); the embeddings need a
# larger sign-SGD step to separate 13 tasks. Pretraining stops at the first chunk whose model
# gets every training example right (100-150 steps measured; at lr 3e-3 its accuracy swings
# and one seed took 600); from there adapting the new tasks' embeddings solves both within
# 50 steps (measured): TTT_STEPS leaves 4x that.
PRETRAIN = [*MEMORISE, "puzzle_emb_lr=0.1"]
PRETRAIN_CHUNK, PRETRAIN_CAP = 50, 1000
TTT_STEPS = 200


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mask(rng: np.random.Generator) -> np.ndarray:
    while True:
        m = rng.integers(0, 2, size=(2, 2))
        if 0 < m.sum() < 4:
            return m


def family_task(
    rng: np.random.Generator, colour: int, demos: int = 3, test_mask: np.ndarray | None = None, labeled: bool = True
) -> dict:
    def pair(m):
        return {"input": (5 * m).tolist(), "output": (colour * m).tolist()}

    train = [pair(mask(rng)) for _ in range(demos)]
    test = pair(mask(rng) if test_mask is None else test_mask)
    if not labeled:
        del test["output"]
    return {"train": train, "test": [test]}


@pytest.fixture(scope="module")
def pretraining(tmp_path_factory):
    """A tiny TRM trained on 12 tasks of the family (three per colour) until it gets every
    training example right: the folder of its run and the (step, accuracy) of each chunk."""
    tmp = tmp_path_factory.mktemp("ttt")
    rng = np.random.default_rng(learning_seed())
    src = write_folder_source(
        tmp / "src",
        {
            "training": {f"t{i}": family_task(rng, COLOURS[i % len(COLOURS)]) for i in range(12)},
            "evaluation": {"e0": family_task(rng, COLOURS[0])},
        },
    )
    data = tmp / "data"
    assert (
        build_main(
            [
                "--input-file-prefix",
                str(src),
                "--output-dir",
                str(data),
                "--subsets",
                "training",
                "evaluation",
                "--test-set-name",
                "evaluation",
                "--num-aug",
                "0",
                "--max-grid-size",
                "3",
            ]
        )
        == 0
    )
    use_test_threads()  # numba's first parallel call (in the builder) may reset torch's thread count
    _, _, history = train_until(
        seeded(*tiny_overrides(data, tmp / "ck", *PRETRAIN)),
        lambda _summary, config: split_metrics(config, data)["all/exact_accuracy"],
        target=1.0,
        chunk=PRETRAIN_CHUNK,
        cap=PRETRAIN_CAP,
    )
    return tmp / "ck", history


@pytest.fixture(scope="module")
def pretrained(pretraining):
    return pretraining[0]


@pytest.fixture(scope="module")
def new_tasks(tmp_path_factory) -> str:
    """Two unseen tasks (colours 4 and 8) with the same test input, as Kaggle files with solutions."""
    rng = np.random.default_rng(learning_seed() + 1)
    tasks = {"n4": family_task(rng, 4, test_mask=SHARED_TEST_MASK), "n8": family_task(rng, 8, test_mask=SHARED_TEST_MASK)}
    return write_kaggle_source(tmp_path_factory.mktemp("new"), {"test": tasks})


def run_ttt(checkpoint, tasks, out: Path, *extra: str) -> dict:
    assert ttt.main([f"checkpoint={checkpoint}", f"tasks={tasks}", f"ttt.output_dir={out}", "ttt.num_aug=0", *extra]) == 0
    return read_json(out / "metrics.json")


@pytest.fixture(scope="module")
def adapted(pretrained, new_tasks, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapted")
    return out, run_ttt(pretrained, new_tasks, out, f"ttt.steps={TTT_STEPS}", "ttt.keep_checkpoints=true")


def test_extend_puzzle_embeddings_keeps_old_rows():
    table = torch.randn(5, 4)
    table[0] = 0  # the blank row, never trained
    state = {f"_orig_mod.model.{PUZZLE_EMB_KEY}": table, "_orig_mod.model.inner.lm_head.weight": torch.randn(3, 4)}
    mean = extend_puzzle_embeddings(state, 8, "mean", key=PUZZLE_EMB_KEY)
    zeros = extend_puzzle_embeddings(state, 8, "zeros", key=PUZZLE_EMB_KEY)
    for out in (mean, zeros):
        assert set(out) == {PUZZLE_EMB_KEY, "inner.lm_head.weight"}  # reference prefixes stripped
        assert out[PUZZLE_EMB_KEY].shape == (8, 4)
        assert torch.equal(out[PUZZLE_EMB_KEY][:5], table)  # bitwise
        assert out["inner.lm_head.weight"] is state["_orig_mod.model.inner.lm_head.weight"]
    assert torch.allclose(mean[PUZZLE_EMB_KEY][5:], table[1:].mean(0).expand(3, 4))
    assert torch.equal(zeros[PUZZLE_EMB_KEY][5:], torch.zeros(3, 4))
    assert state[f"_orig_mod.model.{PUZZLE_EMB_KEY}"] is table  # the input is left alone
    with pytest.raises(ValueError, match="shrink"):
        extend_puzzle_embeddings(state, 4, key=PUZZLE_EMB_KEY)
    with pytest.raises(ValueError, match="median"):
        extend_puzzle_embeddings(state, 8, "median", key=PUZZLE_EMB_KEY)


@pytest.mark.learning
def test_adaptation_solves_new_tasks_the_unadapted_model_cannot(pretraining, pretrained, new_tasks, adapted, tmp_path):
    history = pretraining[1]
    assert history[-1][1] == 1.0, f"pretraining did not fit the family in {PRETRAIN_CAP} steps: {history}"
    out, metrics = adapted
    assert metrics["metrics"]["ARC/pass@2"] == 1.0, metrics
    baseline = run_ttt(pretrained, new_tasks, tmp_path / "base", "ttt.steps=0")
    submission = read_json(tmp_path / "base" / "submission.json")
    # Both new tasks start from the same (mean) row and share their test input: the model
    # answers them alike, so it can solve at most one of them without adaptation.
    assert submission["n4"] == submission["n8"]
    assert baseline["metrics"]["ARC/pass@2"] < 1.0
    tasks = {t: {"test": [{"input": SHARED_TEST_MASK.tolist()}]} for t in ("n4", "n8")}
    assert validate(read_json(out / "submission.json"), tasks) == []
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert metrics["chunks"][0]["steps"] == [TTT_STEPS]


def test_frozen_trunk_trains_only_the_new_embedding_rows(pretrained, adapted):
    out, metrics = adapted
    chunk = out / "chunks" / "000"
    before = torch.load(chunk / "init.pt", weights_only=False)["model"]
    after = ckpt.load_shared(metrics["chunks"][0]["final_checkpoint"])["model"]
    original = ckpt.load_shared(ckpt.list_checkpoints(str(pretrained))[-1][1])["model"]
    assert set(before) == set(after)
    for key, value in before.items():
        if key != PUZZLE_EMB_KEY:
            assert torch.equal(after[key], value), key
            assert torch.equal(original[key], value), key
    old_rows = original[PUZZLE_EMB_KEY].shape[0]
    assert torch.equal(after[PUZZLE_EMB_KEY][:old_rows], original[PUZZLE_EMB_KEY])  # old rows bitwise
    assert not torch.equal(after[PUZZLE_EMB_KEY][old_rows:], before[PUZZLE_EMB_KEY][old_rows:])
    # The dataset of the new tasks numbers its variants after the checkpoint's; 0 stays blank.
    identifiers = read_json(chunk / "data" / "identifiers.json")
    assert len(identifiers) == after[PUZZLE_EMB_KEY].shape[0] == old_rows + 2
    assert identifiers[0] == "<blank>" and sorted(identifiers[old_rows:]) == ["n4", "n8"]
    for split in ("train", "test"):
        ids = np.load(chunk / "data" / split / "all__puzzle_identifiers.npy")
        assert ids.min() == old_rows
        assert read_json(chunk / "data" / split / "dataset.json")["num_puzzle_identifiers"] == old_rows + 2


def test_embeddings_then_all_trains_the_trunk_in_its_second_stage(pretrained, new_tasks, tmp_path):
    run_ttt(
        pretrained,
        new_tasks,
        tmp_path,
        "ttt.steps=4",
        "ttt.mode=embeddings_then_all",
        "ttt.trunk_lr=1e-3",
        "ttt.keep_checkpoints=true",
    )
    chunk = tmp_path / "chunks" / "000"
    before = torch.load(chunk / "init.pt", weights_only=False)["model"]
    first = ckpt.load_shared(ckpt.list_checkpoints(str(chunk / "embeddings"))[-1][1])
    second = ckpt.load_shared(ckpt.list_checkpoints(str(chunk / "all"))[-1][1])
    assert first["step"] == second["step"] == 2  # the steps split between the stages
    assert torch.equal(first["model"]["inner.lm_head.weight"], before["inner.lm_head.weight"])
    assert not torch.equal(second["model"]["inner.lm_head.weight"], before["inner.lm_head.weight"])
    assert (first["config"]["freeze_weights"], second["config"]["freeze_weights"]) == (True, False)
    assert second["config"]["optimizer"]["lr"] == 1e-3 and second["config"]["puzzle_emb_lr"] == 0.01


def test_chunked_run_merges_one_valid_submission(pretrained, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # wandb's default mode: one run per chunk, none in the way
    rng = np.random.default_rng(2)
    tasks = {
        "a": family_task(rng, 2),
        "b": family_task(rng, 6, labeled=False),
        "c": family_task(rng, 4),
        "big": {"train": [{"input": [[5] * 4] * 4, "output": [[4] * 4] * 4}], "test": [{"input": [[5] * 4] * 4}]},
    }
    src = write_folder_source(tmp_path / "src", {"hidden": tasks})
    metrics = run_ttt(pretrained, src, tmp_path / "out", "subset=hidden", "ttt.chunk_size=2", "ttt.num_aug=1", "ttt.steps=2")
    submission = read_json(tmp_path / "out" / "submission.json")
    assert validate(submission, tasks) == []
    assert [c["tasks"] for c in metrics["chunks"]] == [["a", "b"], ["c"]]  # each chunk from the checkpoint
    assert metrics["oversized"] == ["big"]  # 4x4 grids do not fit the checkpoint's 3x3 canvas
    assert submission["big"] == [{"attempt_1": [[5] * 4] * 4, "attempt_2": [[5] * 4] * 4}]
    assert metrics["metrics"]["ARC/tasks"] == 4 and metrics["metrics"]["ARC/tasks_scored"] == 2  # b, big unlabeled
    printed = capsys.readouterr().out
    assert "2/3 tasks adapted (chunk 1/2)" in printed and "3/3 tasks adapted (chunk 2/2)" in printed
    for k in ("000", "001"):  # every chunk's identifiers follow the checkpoint's
        ids = read_json(tmp_path / "out" / "chunks" / k / "data" / "identifiers.json")
        assert ids[0] == "<blank>" and not (tmp_path / "out" / "chunks" / k / "init.pt").exists()


def test_time_budget_is_shared_over_the_chunks_left():
    config = TTTConfig(checkpoint="x", tasks="y", total_minutes=10.0)
    assert ttt_ranks.chunk_minutes(config, 0.0, 4, []) == pytest.approx(10 / 4 * 0.75)  # a quarter kept for build + eval
    done = [{"seconds": 50.0, "train_seconds": 20.0}]  # 30 s of overhead measured
    assert ttt_ranks.chunk_minutes(config, 150.0, 3, done) == pytest.approx(((600 - 150) / 3 - 30) / 60)
    config.minutes = 0.5
    assert ttt_ranks.chunk_minutes(config, 150.0, 3, done) == 0.5
    assert ttt_ranks.chunk_minutes(TTTConfig(checkpoint="x", tasks="y", minutes=2.0), 1e6, 1, []) == 2.0


def test_out_of_time_answers_every_task_with_the_fallback(pretrained, new_tasks, tmp_path, capsys):
    metrics = run_ttt(pretrained, new_tasks, tmp_path, "ttt.total_minutes=0.0001", "ttt.steps=null")
    assert metrics["out_of_time"] == ["n4", "n8"] and metrics["chunks"] == []
    assert "out of time" in capsys.readouterr().out
    submission = read_json(tmp_path / "submission.json")
    test_input = (5 * SHARED_TEST_MASK).tolist()
    assert submission["n4"] == [{"attempt_1": test_input, "attempt_2": test_input}]


def test_bad_inputs_fail_clearly(pretrained, new_tasks, tmp_path, capsys):
    def error(*args: str) -> str:
        assert ttt.main(list(args)) == 2
        return capsys.readouterr().err

    assert "checkpoint=PATH is required" in error(f"tasks={new_tasks}")
    assert "tasks=SOURCE is required" in error(f"checkpoint={pretrained}")
    missing = tmp_path / "nope"
    assert str(missing) in error(f"checkpoint={missing}", f"tasks={new_tasks}")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "arc_test_challenges.json").write_text("{not json")
    assert "arc_test_challenges.json: malformed JSON" in error(f"checkpoint={pretrained}", f"tasks={bad / 'arc'}")
    assert "arc_evaluation_challenges.json not found" in error(
        f"checkpoint={pretrained}", f"tasks={new_tasks}", "subset=evaluation"
    )
    assert "ttt.mode='frozen'" in error(f"checkpoint={pretrained}", f"tasks={new_tasks}", "ttt.mode=frozen")
    assert "stepz" in error(f"checkpoint={pretrained}", f"tasks={new_tasks}", "ttt.stepz=3")
    assert "ttt.global_batch_size=99 exceeds the 6" in error(
        f"checkpoint={pretrained}",
        f"tasks={new_tasks}",
        f"ttt.output_dir={tmp_path / 'o'}",
        "ttt.num_aug=0",
        "ttt.global_batch_size=99",
    )
