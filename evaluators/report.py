"""Visual report of a submission: a PNG with one row per (task, test input).

Columns: the test input, ``attempt_1``, ``attempt_2`` and the target (a blank "hidden" panel
when the test pair has no output), each panel titled with its grid size; a left-hand label
gives the task id, the test index and the verdict. Tasks with a solved test input come
first, so what the model solved is what a reader sees. With the run's logged records, a
band on top draws its learning curve. Drawn with the Agg canvas directly, so the caller's
pyplot backend is untouched.
"""

from __future__ import annotations

import os
import tempfile

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

ARC_PALETTE = (
    "#000000",  # 0 black
    "#0074D9",  # 1 blue
    "#FF4136",  # 2 red
    "#2ECC40",  # 3 green
    "#FFDC00",  # 4 yellow
    "#AAAAAA",  # 5 grey
    "#F012BE",  # 6 magenta
    "#FF851B",  # 7 orange
    "#7FDBFF",  # 8 light blue
    "#870C25",  # 9 maroon
)
ARC_CMAP = ListedColormap(ARC_PALETTE, name="arc")
VERDICT_COLOURS = {"wrong": "#C0392B", "unlabeled": "#7F8C8D"}  # "solved ..." is green
SOLVED_COLOUR = "#1E8449"
DPI = 80
PANEL_INCHES = 2.2
TITLE_INCHES = 0.7  # figure title band
CURVE_INCHES = 3.0  # learning-curve band


def verdict(task_test_pair: dict, entry: dict | None) -> str:
    """The verdict for one test input: "solved (attempt 1)", "solved (attempt 2)", "wrong", or
    "unlabeled" when the pair has no output.

    ``entry`` is the submission's ``{"attempt_1": grid, "attempt_2": grid}`` for this test
    input (None when the submission lacks it, which counts as wrong)."""
    if "output" not in task_test_pair:
        return "unlabeled"
    entry = entry or {}
    for k in (1, 2):
        if entry.get(f"attempt_{k}") == task_test_pair["output"]:
            return f"solved (attempt {k})"
    return "wrong"


def _draw_grid(ax: Axes, grid: list[list[int]] | None, label: str, colour: str = "black") -> None:
    """A grid with thin cell lines, titled ``label HxW``; None draws a blank panel titled ``label``."""
    ax.set_xticks([])
    ax.set_yticks([])
    if grid is None:
        ax.set_title(label, fontsize=10, color="#7F8C8D")
        ax.set_facecolor("#F2F2F2")
        return
    h, w = len(grid), len(grid[0])
    ax.imshow(grid, cmap=ARC_CMAP, vmin=0, vmax=9, interpolation="nearest")
    ax.vlines([x - 0.5 for x in range(1, w)], -0.5, h - 0.5, colors="#555555", linewidth=0.5)
    ax.hlines([y - 0.5 for y in range(1, h)], -0.5, w - 0.5, colors="#555555", linewidth=0.5)
    ax.set_title(f"{label} {h}x{w}", fontsize=10, color=colour)


def solved_first(tasks: dict, submission: dict) -> list[str]:
    """Task ids, those with a solved test input first; each group in ``tasks``' order."""

    def solved(task_id: str) -> bool:
        entries = submission.get(task_id) or []
        return any(
            verdict(pair, entries[i] if i < len(entries) else None).startswith("solved")
            for i, pair in enumerate(tasks[task_id]["test"])
        )

    return sorted(tasks, key=lambda t: not solved(t))  # stable: the file's order within each group


def _draw_curve(ax: Axes, records: list[dict]) -> None:
    """Training accuracy over halted examples and the held-out test figures, against step."""
    series = (
        ("train/accuracy", "train cell accuracy (halted)", "-"),
        ("train/exact_accuracy", "train exact (halted)", "-"),
        ("all/accuracy", "test cell accuracy (per view)", "o-"),
        ("ARC/pass@2", "test pass@2 (voted, per task)", "s-"),
    )
    for key, label, style in series:
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points), style, label=label, markersize=4, linewidth=1)
    ax.set(xlabel="step", ylim=(0, 1), title="learning curve")
    if ax.lines:
        ax.legend(fontsize=8, loc="upper left")


def render_report(
    path: str, tasks: dict, submission: dict, max_tasks: int = 16, title: str = "", curve: list[dict] | None = None
) -> int:
    """Write the PNG report for ``max_tasks`` tasks of ``tasks`` (solved ones first) atomically;
    return the rows drawn. ``curve``: the run's logged records (metrics.jsonl), drawn on top.

    ``tasks`` maps task id -> ARC task (``{"train": [...], "test": [{"input", "output"?}]}``),
    ``submission`` is in ARC Prize format (task id -> one attempts dict per test input)."""
    rows = []
    for task_id in solved_first(tasks, submission)[:max_tasks]:
        entries = submission.get(task_id) or []
        for i, pair in enumerate(tasks[task_id]["test"]):
            rows.append((task_id, i, pair, entries[i] if i < len(entries) else None))
    n = max(len(rows), 1)
    title_inches = TITLE_INCHES + 0.3 * title.count("\n")  # one more line of title text each
    curve_inches = CURVE_INCHES if curve else 0.0
    height = PANEL_INCHES * n + title_inches + curve_inches
    fig = Figure(figsize=(PANEL_INCHES * 5, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=14, y=1 - 0.15 / height, va="top")
    top = 1 - (title_inches + curve_inches) / height
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.1 / height, top=top, wspace=0.1, hspace=0.3)
    if curve:
        _draw_curve(fig.add_axes((0.08, top + 0.6 / height, 0.88, (curve_inches - 1.0) / height)), curve)
    axes = fig.subplots(n, 5, squeeze=False)
    if not rows:
        for ax in axes[0]:
            ax.axis("off")
        axes[0][0].text(0, 0.5, "no test inputs", fontsize=12)
    for (task_id, i, pair, entry), (label_ax, *grid_axes) in zip(rows, axes):
        v = verdict(pair, entry)
        label_ax.axis("off")
        label_ax.text(
            0,
            0.5,
            f"{task_id}\ntest {i}\n{v}",
            fontsize=12,
            va="center",
            linespacing=1.6,
            color=VERDICT_COLOURS.get(v, SOLVED_COLOUR),
        )
        target = pair.get("output")
        _draw_grid(grid_axes[0], pair["input"], "input")
        for k, ax in zip((1, 2), grid_axes[1:3]):
            grid = (entry or {}).get(f"attempt_{k}")
            hit = target is not None and grid == target
            _draw_grid(
                ax, grid, f"attempt {k}" if grid is not None else f"attempt {k}: missing", SOLVED_COLOUR if hit else "black"
            )
        _draw_grid(grid_axes[3], target, "target" if target is not None else "hidden")

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=DPI)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return len(rows)
