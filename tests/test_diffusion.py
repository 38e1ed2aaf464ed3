"""Discrete diffusion (models/diffusion.py, losses/diffusion.py) and run_full_pipeline.py."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import learning_seed, use_test_threads, write_folder_source
from train_helpers import build_tiny_dataset, compose_config, read_json, seeded, split_metrics, tiny_overrides, train_until

import run_full_pipeline
from dataset.build_arc_dataset import main as build_main
from dataset.common import COLOR_OFFSET, IGNORE_LABEL_ID, NUM_COLORS
from dataset.puzzle_dataset import PuzzleDataset
from evaluators.loop import evaluate_examples
from losses import build_loss
from models import build_model
from models.base import DataShape
from models.diffusion import alpha_bar, canvas_frame, corrupt, grid_extent, is_colour
from pipelines import diffusion as diffusion_pipeline
from training import loop
from utils import checkpoint as ckpt
from utils.distributed import DistEnv

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
DIFFUSION = ["arch=diffusion_tiny", "loss=diffusion"]
# With the lr decayed to 5% over the run, the tiny model memorises the tiny set in 150-200
# epochs (measured over seeds, kernels and thread counts); the pipeline runs twice that.
PIPELINE_EPOCHS = 400


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_dataset(*args, **kwargs) -> Path:
    return build_tiny_dataset(*args, **kwargs)


def load_model(config, data: Path, weights: dict, batch_size: int = 8):
    meta = PuzzleDataset([str(data)], "train", batch_size).metadata
    model = build_model(config.arch, DataShape(meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers, batch_size))
    model.load_state_dict(weights)
    return model.eval()


def first_batch(data: Path, split: str = "test") -> dict[str, torch.Tensor]:
    _, batch, _ = next(iter(PuzzleDataset([str(data)], split, 8, test_mode=True)))
    batch.pop("example_indices", None)
    return batch


# ----------------------------------------------------------------------------------------
# Forward process


@pytest.mark.parametrize("noise", ["uniform", "absorbing"])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_forward_marginals_match_the_schedule(noise, schedule):
    T, cells = 128, 40_000
    ts = torch.tensor([0, 8, 32, 64, 96, 128])
    ab = alpha_bar(ts, T, schedule)
    assert ab[0] == 1.0 and ab[-1] < 1e-3 and (ab[1:] < ab[:-1]).all()  # clean at 0, noise at T, decreasing

    torch.manual_seed(0)
    x0 = torch.randint(COLOR_OFFSET, COLOR_OFFSET + NUM_COLORS, (len(ts), cells))
    region = torch.ones_like(x0, dtype=torch.bool)
    region[:, :1000] = False  # cells outside the grid are never noised
    mask_id = 12
    xt, replaced = corrupt(x0, region, ts, T, schedule, noise, mask_id)
    assert torch.equal(xt[:, :1000], x0[:, :1000]) and not replaced[:, :1000].any()
    inside = region[0].sum()
    rate = replaced.sum(-1) / inside
    changed = (xt != x0).sum(-1) / inside
    expected = 1 - ab
    assert torch.allclose(rate, expected, atol=0.012), (rate, expected)
    if noise == "absorbing":
        assert torch.equal(xt == mask_id, replaced)
        assert torch.allclose(changed, expected, atol=0.012)
    else:  # a uniform redraw keeps the old colour 1 time in 10
        assert torch.allclose(changed, expected * (NUM_COLORS - 1) / NUM_COLORS, atol=0.012)
        drawn = xt[3][replaced[3]] - COLOR_OFFSET
        freq = torch.bincount(drawn, minlength=NUM_COLORS) / drawn.numel()
        assert torch.allclose(freq, torch.full((NUM_COLORS,), 1 / NUM_COLORS), atol=0.02)


def test_frame_matches_the_dataset_encoding(tmp_path):
    data = tiny_dataset(tmp_path, num_aug=0, canvas=4, side=2)
    batch = first_batch(data, "train")
    labels = torch.where(batch["labels"] == IGNORE_LABEL_ID, 0, batch["labels"])
    origin, size = grid_extent(labels, 4)
    frame, region = canvas_frame(origin, size, 4)
    assert torch.equal(region, is_colour(labels))
    assert torch.equal(torch.where(region, labels, frame), labels)  # EOS row/column and PAD as encode_examples
    in_origin, _ = grid_extent(batch["inputs"], 4)
    assert torch.equal(in_origin, origin)  # predict() takes the corner from the input


# ----------------------------------------------------------------------------------------
# Model


def test_bad_values_are_errors_naming_the_key():
    for override, key in [
        ("arch.num_timesteps=0", "num_timesteps"),
        ("arch.sampling_steps=33", "sampling_steps"),
        ("arch.noise=gaussian", "noise"),
        ("arch.train_part=head", "train_part"),
        ("loss.size_loss_weight=-1", "size_loss_weight"),
    ]:
        with pytest.raises(ValueError, match=f"{key}="):
            compose_config([*DIFFUSION, override])


def test_train_parts_decide_what_trains():
    shape = DataShape(seq_len=16, vocab_size=12, num_puzzle_identifiers=3, batch_size=2)
    joint = build_model(compose_config(DIFFUSION).arch, shape)
    head = build_model(compose_config([*DIFFUSION, "arch.train_part=size_head"]).arch, shape)
    separate = build_model(compose_config([*DIFFUSION, "arch.size_head=separate"]).arch, shape)
    head_ids = {id(p) for p in head.size_head.parameters()}
    assert joint.puzzle_emb is not None and head.puzzle_emb is None  # frozen puzzle embeddings: no sparse optimizer
    assert {id(p) for g in head.param_groups() for p in g["params"]} == head_ids
    grouped = {id(p) for g in separate.param_groups() for p in g["params"]}
    trained = [n for n, p in separate.named_parameters() if id(p) in grouped]
    assert trained and not any(n.startswith("size_head.") for n in trained)
    assert any(n.startswith("size_head.") for n, _ in joint.named_parameters())
    assert len([p for g in joint.param_groups() for p in g["params"]]) == len(list(joint.parameters()))


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["arch.noise=absorbing", "arch.self_condition=true", "arch.num_samples=3"],
        ["arch.conditioning=add", "arch.pos_encodings=learned"],
    ],
)
def test_predictions_never_read_labels(tmp_path, extra):
    data = tiny_dataset(tmp_path, num_aug=1, canvas=4, side=2, n_eval=2)
    config = compose_config([*DIFFUSION, *extra])
    meta = PuzzleDataset([str(data)], "test", 8).metadata
    torch.manual_seed(1)
    model = build_model(config.arch, DataShape(meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers, 8)).eval()
    batch = first_batch(data)
    hidden = {**batch, "labels": torch.full_like(batch["labels"], IGNORE_LABEL_ID)}
    rng = torch.get_rng_state()
    output, _, seen = model.predict(batch)
    blind_output, _, blind = model.predict(hidden)
    assert torch.equal(seen.tokens, blind.tokens) and torch.equal(seen.scores, blind.scores)
    assert torch.equal(torch.get_rng_state(), rng)  # its own random stream: evaluation leaves training's alone
    n = config.arch.num_samples
    assert seen.tokens.shape == (batch["inputs"].shape[0], n, meta.seq_len) and seen.scores.shape[1] == n
    loss_fn = build_loss(config.loss)
    assert loss_fn(output, batch)[1]["count"] > 0 and loss_fn(blind_output, hidden)[1]["count"] == 0

    # Every sample is a well-formed canvas: colours in an h x w grid at the input's corner,
    # EOS below and right of it, PAD elsewhere.
    for b in range(seen.tokens.shape[0]):
        for sample in seen.tokens[b]:
            origin, size = grid_extent(sample.unsqueeze(0), 4)
            assert torch.equal(origin, grid_extent(batch["inputs"][b : b + 1], 4)[0]) and (size > 0).all()
            frame, region = canvas_frame(origin, size, 4)
            assert is_colour(sample[region[0]]).all() and torch.equal(sample[~region[0]], frame[0][~region[0]])


def test_interrupted_run_resumes_step_for_step(tmp_path):
    # (with ema=true too once pretrain.py builds its EMA copy without drawing from the training RNG)
    data = tiny_dataset(tmp_path, num_aug=0, canvas=3, side=2)
    common = [
        *DIFFUSION,
        "epochs=40",
        "eval_interval=1000",
        "arch.self_condition=true",
        "arch.noise=absorbing",
        "log_interval=100",
    ]
    loop.train(compose_config(tiny_overrides(data, tmp_path / "straight", *common, "max_steps=10")), CPU)
    loop.train(compose_config(tiny_overrides(data, tmp_path / "cut", *common, "max_steps=4")), CPU)  # evaluates
    loop.train(compose_config(tiny_overrides(data, tmp_path / "cut", *common, "max_steps=10", "resume=auto")), CPU)
    straight, resumed = (ckpt.load_shared(ckpt.list_checkpoints(str(tmp_path / run))[-1][1]) for run in ("straight", "cut"))
    assert straight["step"] == resumed["step"] == 10
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def transpose_tasks(root: Path, seed: int = 0) -> Path:
    """Tasks whose output is the input transposed, on grids of 1..3 x 1..3: sizes vary."""
    rng = np.random.default_rng(seed)

    def task():
        pairs = []
        for _ in range(4):
            grid = rng.integers(0, 10, size=rng.integers(1, 4, size=2))
            pairs.append({"input": grid.tolist(), "output": grid.T.tolist()})
        return {"train": pairs[:3], "test": pairs[3:]}

    src = write_folder_source(
        root / "src", {"training": {f"tr{i}": task() for i in range(3)}, "evaluation": {"ev0": task()}}
    )
    out = root / "transpose"
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
                "0",
                "--max-grid-size",
                "4",
            ]
        )
        == 0
    )
    use_test_threads()  # numba's first parallel call (in the builder) may reset torch's thread count
    return out


@pytest.mark.learning
def test_size_head_learns_sizes_on_a_frozen_backbone(tmp_path):
    data = transpose_tasks(tmp_path, seed=learning_seed())
    overrides = seeded(
        *tiny_overrides(
            data,
            tmp_path / "ck",
            *DIFFUSION,
            "arch.train_part=size_head",
            "eval_interval=1000000",
            "optimizer.lr=3e-3",
            "log_interval=50",
        )
    )
    # Every size right in 60-80 steps (measured); the cap leaves 5x that.
    _, config, history = train_until(
        overrides, lambda _s, c: split_metrics(c, data)["all/size_accuracy"], target=1.0, chunk=20, cap=400
    )
    assert history[-1][1] == 1.0, history
    state = ckpt.load_shared(ckpt.list_checkpoints(str(tmp_path / "ck"))[-1][1])
    torch.manual_seed(config.seed)  # the run's initial weights: only the size head may differ
    initial = build_model(config.arch, DataShape(16, 12, state["model"]["puzzle_embedding.weights"].shape[0], 8))
    changed = {k for k, v in initial.state_dict().items() if not torch.equal(v, state["model"][k])}
    assert changed and all(k.startswith("size_head.") for k in changed), changed
    model = load_model(config, data, state["model"])
    metrics, _ = evaluate_examples(
        model, build_loss(config.loss), PuzzleDataset([str(data)], "train", 8, test_mode=True), CPU
    )
    assert metrics["all/count"] >= 12 and metrics["all/size_accuracy"] == 1.0, metrics


# ----------------------------------------------------------------------------------------
# Pipeline (its backbone run is the memorisation run)


def pipeline_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "diffusion_cpu",
        f"data.paths=[{data}]",
        "data.name=tiny",
        "global_batch_size=8",
        "lr_warmup_steps=5",
        "optimizer.lr=3e-3",
        "lr_min_ratio=0.05",
        f"epochs={PIPELINE_EPOCHS}",
        f"seed={learning_seed()}",
        f"eval_interval={PIPELINE_EPOCHS}",
        "log_interval=100",
        "progress_bar=false",
        "wandb.mode=disabled",
        "--output-dir",
        str(out),
        "--size-head-override",
        "epochs=20",
        "--eval-limit",
        "1",
        *extra,
    ]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    data = tiny_dataset(tmp, num_aug=0, canvas=3, side=2, n_train=2, n_eval=1, memorisable=True, seed=learning_seed())
    out = tmp / "out"
    with pytest.MonkeyPatch.context() as env:  # wandb's default mode: its runs must not trip the pipeline
        env.setenv("WANDB_MODE", "offline")
        code = run_full_pipeline.main(pipeline_args(data, out, "wandb.mode=offline"))
    assert code == 0
    return data, out


def evaluations(out: Path) -> list[Path]:
    return sorted(out.glob("evaluation_*.json"))


def test_pipeline_writes_every_artifact(pipeline):
    import matplotlib.image

    data, out = pipeline
    model = torch.load(out / "best_model.pt", weights_only=False)
    head = torch.load(out / "best_size_head.pt", weights_only=False)
    assert head["size_head"] and set(head["size_head"]) <= {k[len("size_head.") :] for k in model["model"]}
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp file
    [evaluation] = evaluations(out)
    report = read_json(evaluation)
    assert report["split"] == "test" and "ARC Prize" in report["scoring"] and report["task_limit"] == 1
    assert report["pass@2"] == report["metrics"]["ARC/pass@2"] and report["views_per_input"] == 2
    assert list(report["tasks"]) == ["ev0"] and report["tasks"]["ev0"]["labeled"]
    assert {"all/exact_accuracy", "all/size_accuracy", "all/lm_loss", "all/count"} <= set(report["metrics"])
    assert (Path(report["outputs"]) / "submission.json").is_file()
    image = matplotlib.image.imread(out / "training_noise_visualization.png")
    cols, rows = 1 + len(diffusion_pipeline.NOISE_LEVELS), 3
    dpi, inches = diffusion_pipeline.FIGURE_DPI, diffusion_pipeline.PANEL_INCHES
    assert image.shape[:2] == (round(inches * (rows + 1.6) * dpi), round(inches * cols * dpi))
    assert image[..., :3].std() > 0.05  # drawn, not blank


@pytest.mark.learning
def test_denoiser_memorises_the_tiny_task(pipeline):
    data, out = pipeline
    weights = torch.load(out / "best_model.pt", weights_only=False)["model"]
    weights.update(
        {f"size_head.{k}": v for k, v in torch.load(out / "best_size_head.pt", weights_only=False)["size_head"].items()}
    )
    config = compose_config(["experiment=diffusion_cpu", f"data.paths=[{data}]"])
    model = load_model(config, data, weights)
    torch.manual_seed(0)
    samples = 0
    for _set, batch, _n in PuzzleDataset([str(data)], "train", 8, test_mode=True):
        batch.pop("example_indices")
        _, _, predictions = model.predict(batch)
        labels = batch["labels"].unsqueeze(1)
        valid = labels != IGNORE_LABEL_ID
        real = valid.any(-1).squeeze(1)
        exact = (valid.logical_not() | (predictions.tokens == labels)).all(-1)
        assert exact[real].all(), f"{int((~exact[real]).sum())} inexact samples"
        samples += int(real.sum()) * predictions.tokens.shape[1]
    assert samples == 11 * config.arch.num_samples


def test_pipeline_skip_flags_use_existing_artifacts(pipeline, capsys):
    data, out = pipeline
    model_bytes = (out / "best_model.pt").read_bytes()
    before = len(evaluations(out))
    capsys.readouterr()
    assert run_full_pipeline.main(pipeline_args(data, out, "--skip-training")) == 0
    printed = capsys.readouterr().out
    assert f"skipped: using the existing {out / 'best_model.pt'}" in printed
    assert (out / "best_model.pt").read_bytes() == model_bytes and len(evaluations(out)) == before + 1

    head_bytes = (out / "best_size_head.pt").read_bytes()
    assert run_full_pipeline.main(pipeline_args(data, out, "--skip-size-head", "--skip-evaluation")) == 0
    printed = capsys.readouterr().out
    assert f"skipped: using the existing {out / 'best_size_head.pt'}" in printed and "skipped (--skip-evaluation)" in printed
    assert (out / "best_size_head.pt").read_bytes() == head_bytes and len(evaluations(out)) == before + 1


class RunsCode:
    """Unpickled, it would run a shell command."""

    def __reduce__(self):
        return os.system, ("true",)


def test_pipeline_fails_clearly(pipeline, tmp_path, capsys):
    data, _ = pipeline
    empty = tmp_path / "empty"
    assert run_full_pipeline.main(pipeline_args(data, empty, "--skip-training", "--skip-size-head")) == 1
    printed = capsys.readouterr().out
    assert f"--skip-training: {empty / 'best_model.pt'} does not exist" in printed
    assert re.search(r"evaluation\s+FAILED: not run: it needs the output of training", printed)

    broken = tmp_path / "broken"  # no test split there: a config error, one line before any step runs
    assert run_full_pipeline.main(pipeline_args(data, broken, f"data.test_paths=[{tmp_path / 'nowhere'}]")) == 2
    printed = capsys.readouterr()
    assert re.fullmatch(r"error: data.test_paths: no dataset at .*nowhere.*\n", printed.err) and not printed.out
    assert not broken.exists()

    rigged = tmp_path / "rigged"  # a best_model.pt that would run code when unpickled: refused, named in one line
    rigged.mkdir()
    torch.save({"model": RunsCode()}, rigged / "best_model.pt")
    assert run_full_pipeline.main(pipeline_args(data, rigged, "--skip-training", "--skip-size-head")) == 1
    printed = capsys.readouterr().out
    failure = next(line for line in printed.splitlines() if "evaluation" in line and "FAILED" in line)
    assert str(rigged / "best_model.pt") in failure and "posix.system" in failure, printed
    assert "Re-running" not in printed and "will likely succeed" not in printed, printed  # torch's advice

    assert run_full_pipeline.main(["no_such_experiment"]) == 2
    assert "neither a JSON file nor a Hydra experiment" in capsys.readouterr().err


OLD_CONFIG = {
    "model_version": "v4",
    "tag": "tiny",
    "model": {"vocab_size": 11, "d_model": 64, "nhead": 2, "num_layers": 2, "max_size": 3},
    "training": {
        "num_timesteps": 32,
        "schedule_type": "cosine",
        "batch_size": 8,
        "learning_rate": 3e-3,
        "optimizer_steps": 10,
        "size_weight": 0.2,
        "use_ema": False,
    },
    "size_head": {"hidden_dim": 64, "epochs": 5, "learning_rate": 1e-3},
    "output": {"output_dir": "OUT", "use_wandb": False, "save_best": True},
}


def test_json_config_maps_old_keys(pipeline, tmp_path, capsys):
    data, out = pipeline
    cfg = json.loads(json.dumps(OLD_CONFIG))
    cfg["output"]["output_dir"] = str(out)
    cfg["data"] = {"data_dir": str(data)}
    cfg["experiment"] = "diffusion_cpu"
    cfg["overrides"] = ["progress_bar=false", "arch.num_samples=2"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(cfg))
    plan = run_full_pipeline.make_plan(str(path), [])
    assert {
        "arch.hidden_size=64",
        "optimizer.lr=0.003",
        "max_steps=10",
        "loss.size_loss_weight=0.2",
        "ema=false",
        "global_batch_size=8",
        'wandb.mode="disabled"',
    } <= set(plan.overrides)
    assert plan.settings["size_head_overrides"] == ["epochs=5", "optimizer.lr=0.001"]
    assert plan.settings["output_dir"] == str(out)
    # Evaluation only, on the artifacts the pipeline fixture trained with the same architecture.
    before = len(evaluations(out))
    assert run_full_pipeline.main([str(path), "--skip-training", "--skip-size-head", "--eval-limit", "1"]) == 0
    assert "pipeline: JSON config" in capsys.readouterr().out and len(evaluations(out)) == before + 1

    for section, key, value, message in [
        ("training", "cfg_drop_prob", 0.1, "training.cfg_drop_prob"),
        ("model", "max_size", 30, "model.max_size=30"),
        ("model", "vocab_size", 16, "model.vocab_size=16"),
        (None, "lora", {}, "'lora'"),
    ]:
        bad = json.loads(json.dumps(cfg))
        (bad[section] if section else bad)[key] = value
        path.write_text(json.dumps(bad))
        assert run_full_pipeline.main([str(path)]) == 2
        assert message in capsys.readouterr().err


def test_noise_figure_is_a_real_image_of_its_size(tmp_path):
    from PIL import Image

    data = tiny_dataset(tmp_path, num_aug=0, canvas=4, side=3)
    config = compose_config([*DIFFUSION, f"data.paths=[{data}]", "arch.noise=absorbing"])
    path = tmp_path / "noise.png"
    height, width = diffusion_pipeline.render_noise_figure(str(path), config, num_examples=2)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (width, height)
        pixels = np.asarray(image.convert("RGB"))
    purple = np.array([0x8E, 0x44, 0xAD])  # MASK cells appear at high noise
    assert (np.abs(pixels.astype(int) - purple).sum(-1) < 10).any()
    assert os.path.getsize(path) > 10_000
