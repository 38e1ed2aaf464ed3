import pytest
import torch
from conftest import learning_seed
from train_helpers import MEMORISE_CAP, build_tiny_dataset, memorise, read_json

import evaluate
from evaluators.validate_submission import load_tasks, validate
from utils import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny TRM trained until it memorises a set whose test pairs repeat demonstrations
    (train_helpers.memorise, as tests/test_training.py, with two evaluation tasks)."""
    tmp = tmp_path_factory.mktemp("evaluate")
    data = build_tiny_dataset(tmp, num_aug=0, canvas=2, side=2, n_eval=2, memorisable=True, seed=learning_seed())
    _, _, history = memorise(data, tmp / "ck")
    return data, ckpt.list_checkpoints(str(tmp / "ck"))[-1][1], history


@pytest.mark.learning
def test_memorised_set_scores_and_writes_valid_outputs(trained, tmp_path, capsys):
    data, checkpoint, history = trained
    assert history[-1][1] == 1.0, f"not memorised in {MEMORISE_CAP} steps: {history}"
    out = tmp_path / "out"
    run_folder = checkpoint.rsplit("/", 1)[0]  # the run's newest checkpoint is taken
    assert evaluate.main([f"checkpoint={run_folder}", f"eval.output_dir={out}"]) == 0
    metrics = read_json(out / "metrics.json")["metrics"]
    # the test pairs are memorised training examples: every task solved
    assert metrics["ARC/pass@1"] == metrics["ARC/pass@2"] == 1.0 and metrics["ARC/tasks"] == 2, metrics
    assert metrics["ARC/views_per_input"] == 1  # num-aug 0: the original view only
    assert validate(read_json(out / "submission.json"), load_tasks(str(data))) == []
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "pass@k per task (ARC Prize)" in printed and str(out) in printed


def test_reference_checkpoint_file_and_limit(trained, tmp_path):
    data, checkpoint, _ = trained
    weights = ckpt.load_shared(checkpoint)["model"]
    trm_file = tmp_path / "step_600"
    torch.save({f"_orig_mod.model.{k}": v for k, v in weights.items()}, trm_file)
    out = tmp_path / "out"
    args = [
        f"checkpoint={trm_file}",
        "arch=trm_tiny",
        "arch.halt_max_steps=2",
        f"data.paths=[{data}]",
        "global_batch_size=8",
        f"eval.output_dir={out}",
    ]
    assert evaluate.main(args) == 0
    full = read_json(out / "metrics.json")["metrics"]
    assert evaluate.main(args + ["eval.limit=1"]) == 0
    limited = read_json(out / "metrics.json")
    assert limited["task_limit"] == 1 and limited["metrics"]["ARC/tasks"] == 1
    assert len(read_json(out / "submission.json")) == 1
    assert full["ARC/tasks"] == 2


def test_bad_invocations_fail_clearly(trained, tmp_path, capsys):
    data, checkpoint, _ = trained
    assert evaluate.main([]) == 2
    assert "checkpoint=PATH is required" in capsys.readouterr().err
    assert evaluate.main([f"checkpoint={tmp_path / 'nope'}"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert evaluate.main([f"checkpoint={tmp_path}"]) == 2
    assert "neither a checkpoint" in capsys.readouterr().err
    other = build_tiny_dataset(tmp_path, num_aug=0, canvas=2, side=2, n_eval=2, prefix="other-")
    assert evaluate.main([f"checkpoint={checkpoint}", f"data.paths=[{other}]", f"eval.output_dir={tmp_path}"]) == 2
    assert "identifiers" in capsys.readouterr().err
