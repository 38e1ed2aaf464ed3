"""Checkpoints written before today's format are refused with the upgrade command, and
``python -m pipelines.upgrade_checkpoint`` turns them into ones that resume to the same
weights as the run that never stopped."""

import shutil

import pytest
import torch
from train_helpers import CPU, FOREVER_EPOCHS, build_tiny_dataset, compose_config, tiny_overrides

import evaluate
from pipelines.upgrade_checkpoint import main as upgrade_main
from pipelines.upgrade_checkpoint import upgrade_config
from training import loop
from utils import checkpoint as ckpt
from utils.checkpoint.manifest import write_manifest
from utils.checkpoint.write import write_torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RUN = ["checkpoint_interval_steps=2", "max_checkpoints=0", "eval_interval=1000", f"epochs={FOREVER_EPOCHS}"]
# What a checkpoint written before each field existed lacks (config keys, state keys).
NEWER_CONFIG = {"arch": ("family", "core"), "loss": ("family", "token_loss")}
NEWER_STATE = ("format", "skipped_steps", "bad_steps_in_a_row", "evaluated_step", "canvas_sides")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny HRM run straight to step 4, and the same run's step-2 checkpoint."""
    tmp = tmp_path_factory.mktemp("upgrade")
    data = build_tiny_dataset(tmp, num_aug=0, canvas=3, side=2)
    arch = ["arch=hrm_tiny", "arch.halt_max_steps=2"]
    loop.train(compose_config(tiny_overrides(data, tmp / "straight", "max_steps=4", *RUN, *arch)), CPU)
    return data, tmp / "straight", arch


def make_old(folder):
    """Rewrite a checkpoint as the format before manifests, counts, canvas buckets and family keys."""
    state = ckpt.load_shared(str(folder))
    for key in NEWER_STATE:
        del state[key]
    for group, keys in NEWER_CONFIG.items():
        for key in keys:
            del state["config"][group][key]
    write_torch(str(folder / ckpt.STATE_FILE), state)
    own = ckpt.load_rank(str(folder), 0)
    (carry,) = own.pop("carries").values()
    write_torch(str(folder / "rank0.pt"), {**own, "carry": carry})
    (folder / ckpt.MANIFEST).unlink()


def test_an_old_checkpoint_is_refused_then_upgraded_and_resumes_as_if_never_stopped(runs, tmp_path, capsys):
    data, straight, arch = runs
    root = tmp_path / "cut"
    shutil.copytree(straight, root)
    shutil.rmtree(root / "step_00000004")
    old = root / "step_00000002"
    original = ckpt.load_shared(str(old))
    original_rank = ckpt.load_rank(str(old), 0)
    make_old(old)
    resume = compose_config(tiny_overrides(data, root, "max_steps=4", "resume=auto", *RUN, *arch))
    with pytest.raises(ckpt.CheckpointCorruptError, match="upgrade_checkpoint"):
        loop.train(resume, CPU)
    write_manifest(str(old))  # a manifest alone does not make an old state readable
    assert evaluate.main([f"checkpoint={old}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint format 1" in err[0] and "python -m pipelines.upgrade_checkpoint" in err[0], err
    (old / ckpt.MANIFEST).unlink()

    assert upgrade_main([str(root)]) == 0
    assert "upgraded (arch.family=recursive, arch.core=hrm, loss.family=act" in capsys.readouterr().out
    assert ckpt.checkpoint_status(str(old)) == (ckpt.COMPLETE, None)
    upgraded = ckpt.load_shared(str(old))
    assert upgraded["config"] == original["config"]
    assert upgraded["evaluated_step"] == 2 and upgraded["skipped_steps"] == 0
    assert upgraded["canvas_sides"] == original["canvas_sides"] == [3]
    assert torch.equal(
        ckpt.load_rank(str(old), 0)["carries"][next(iter(original_rank["carries"]))]["z_H"],
        next(iter(original_rank["carries"].values()))["z_H"],
    )
    assert upgrade_main([str(old)]) == 0
    assert "already current" in capsys.readouterr().out

    loop.train(resume, CPU)
    resumed, reference = (ckpt.load_shared(str(r / "step_00000004"))["model"] for r in (root, straight))
    for key, value in reference.items():
        assert torch.equal(resumed[key], value), key


def test_a_folder_that_is_no_checkpoint_gets_one_line(tmp_path, capsys):
    assert upgrade_main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path}: neither a checkpoint folder (state.pt) nor a run folder (step_*)"
    ]


@pytest.mark.parametrize(
    "arch, added",
    [
        ({"name": "hrm_tiny", "L_layers": 1, "H_layers": 1}, ["arch.family=recursive", "arch.core=hrm"]),
        ({"name": "my_transformer", "L_layers": 0, "H_layers": 2}, ["arch.family=recursive", "arch.core=transformer"]),
        ({"name": "my_decoder", "encoder_layers": 0}, ["arch.family=sequence", "arch.variant=decoder_only"]),
        ({"name": "champion_tiny", "encoder_layers": 1}, ["arch.family=sequence", "arch.variant=encoder_decoder"]),
    ],
)
def test_an_old_config_gets_its_options_keys_else_its_layers(arch, added):
    config = {"arch": dict(arch), "loss": {"name": "softmax" if "L_layers" in arch else "my_loss"}}
    loss = ["loss.family=act", "loss.token_loss=softmax"] if "L_layers" in arch else ["loss.family=sequence"]
    assert upgrade_config(config) == added + loss
    assert upgrade_config(config) == []  # nothing left to add
