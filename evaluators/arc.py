"""Voting evaluator for ARC test splits: pass@k metrics and an ARC Prize submission.

Every prediction is a canvas of token ids for one test example of one augmented variant
(puzzle). :class:`ARCVoter` crops it and undoes the variant's augmentation
(``dataset.augment.invert_predictions``), then votes per (task, test input) over the
distinct grids: each grid keeps its vote count, the sum of its halting confidences
``sigmoid(q_halt_logit)`` and the sum of ``log(1 - sigmoid(q))`` (for noisy-or). Memory
is proportional to the number of distinct grids.

Rankings (``finalize(ranking=...)``), each with a deterministic last tie-break on the grid
bytes (shape, then cells):

- ``"vote"`` (TinyRecursiveModels): vote count, then mean confidence.
- ``"count"``: vote count only.
- ``"noisy_or"``: ``1 - prod(1 - p)`` over the grid's views (ranked through the log sum, which
  does not saturate at 1.0), then vote count.

Metrics (labeled tasks only; a task counts as labeled when every test pair has an output):

- ``ARC/pass@k``: ARC Prize convention, a task scores the fraction of its test inputs whose
  true grid is among the top k; averaged over tasks.
- ``ARC/kaggle_pass@k``: the same averaged over test inputs.
- ``ARC/strict_pass@k``: fraction of tasks with every test input solved.

Submission (ARC Prize format): ``{task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}``
with one entry per test input, in order, for every task in ``test_puzzles.json``. Fallback
where the model gave fewer than two valid candidates: attempt_2 repeats attempt_1; with no
candidate at all, ``evaluators.submission.fallback_attempts`` (both attempts are the test
input itself, the standard baseline; it keeps the list aligned with the test inputs).

Distributed use: each rank calls :meth:`ARCVoter.add` on its own predictions, then
``torch.distributed.gather_object(voter.state(), ...)`` and rank 0 calls
``voter.merge(other_states)`` (or ``ARCVoter.from_states(path, all_states)``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import numpy as np

from dataset.augment import invert_predictions, parse_variant_name
from dataset.common import BLANK_IDENTIFIER, PUZZLE_ID_SEPARATOR
from dataset.puzzle_dataset import DatasetError, load_metadata, read_json, read_npy
from evaluators.submission import fallback_attempts, pass_at_k
from utils.config.schema import RANKINGS
from utils.io import write_json_atomic

DEFAULT_PASS_KS = (1, 2, 5, 10, 100, 1000)
_STATE_VERSION = 1


def grid_key(grid) -> bytes:
    """The vote key of a grid: its height and width (one byte each), then its cells."""
    g = np.asarray(grid, dtype=np.uint8)
    if g.ndim != 2:
        raise ValueError(f"grid must be 2-D, got shape {g.shape}")
    return bytes((g.shape[0], g.shape[1])) + g.tobytes()


def key_to_grid(key: bytes) -> list[list[int]]:
    h, w = key[0], key[1]
    return np.frombuffer(key, dtype=np.uint8, offset=2).reshape(h, w).tolist()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def _parse_names(names: list[str], task_index: dict[str, int]):
    """Batch :func:`parse_variant_name`: (task index or -1, dihedral id, colour mapping) per
    puzzle name. Irregular names go through ``parse_variant_name`` for its error message."""
    n = len(names)
    task = np.full(n, -1, dtype=np.int64)
    trans = np.zeros(n, dtype=np.uint8)
    digits = ["0123456789"] * n
    sep = PUZZLE_ID_SEPARATOR
    for p, name in enumerate(names):
        if sep in name:
            parts = name.rsplit(sep, 2)
            if len(parts) != 3 or len(parts[2]) != 10 or parts[1][:1] != "t" or not parts[1][1:].isdigit():
                parse_variant_name(name)  # raises
            task_id, tr, digits[p] = parts
            trans[p] = int(tr[1:])
        else:
            task_id = name
        task[p] = task_index.get(task_id, -1)
    mapping = (np.frombuffer("".join(digits).encode("ascii"), dtype=np.uint8) - ord("0")).reshape(n, 10)
    bad = np.flatnonzero((np.sort(mapping, axis=1) != np.arange(10)).any(axis=1) | (trans > 7))
    if bad.size:
        parse_variant_name(names[bad[0]])  # raises for a bad mapping
        raise ValueError(f"dihedral id of {names[bad[0]]!r} is not 0-7")
    return task, trans, np.ascontiguousarray(mapping)


class ARCVoter:
    """Collects predictions on a dataset's test split and votes per (task, test input)."""

    def __init__(self, dataset_path: str):
        # Each file read names itself in the DatasetError of a missing, cut or mismatched file.
        self.dataset_path = str(dataset_path)
        ids_path = os.path.join(dataset_path, "identifiers.json")
        identifiers = read_json(ids_path)
        if isinstance(identifiers, dict):  # tolerate {"index": name}
            identifiers = {int(k): v for k, v in identifiers.items()}
        self.tasks: dict[str, dict] = read_json(os.path.join(dataset_path, "test_puzzles.json"))
        test_dir = os.path.join(dataset_path, "test")
        meta = load_metadata(os.path.join(test_dir, "dataset.json"))
        canvas = math.isqrt(meta.seq_len)
        if canvas * canvas != meta.seq_len or not 1 <= canvas <= 255:
            raise ValueError(f"{test_dir}: seq_len {meta.seq_len} is not a square canvas of side <= 255")
        self.canvas = canvas
        # Canvas buckets: one set per canvas side; example indices count rows of the sets
        # concatenated in the metadata's order (as the loader's test batches do).
        self.canvas_sides = {math.isqrt(meta.set_seq_len(name)) for name in meta.sets}
        indices, ids, rows = [], [], 0
        for name in meta.sets:
            ids_file = os.path.join(test_dir, f"{name}__puzzle_identifiers.npy")
            set_indices = read_npy(os.path.join(test_dir, f"{name}__puzzle_indices.npy")).astype(np.int64)
            ids.append(read_npy(ids_file).astype(np.int64))
            if set_indices.ndim != 1 or ids[-1].shape != (set_indices.size - 1,):
                raise DatasetError(
                    f"{ids_file}: {ids[-1].shape} identifiers for the {set_indices.size - 1} "
                    f"puzzles of {name}__puzzle_indices.npy"
                )
            indices.append(set_indices[:-1] + rows)
            rows += int(set_indices[-1])
        self.puzzle_indices = np.concatenate([*indices, [rows]]).astype(np.int64)
        puzzle_ids = np.concatenate(ids)
        self.num_examples = rows

        try:
            names = [identifiers[i] for i in puzzle_ids.tolist()]
        except (IndexError, KeyError):
            raise DatasetError(
                f"{ids_path}: {len(identifiers)} names, too few for the puzzle identifiers (up to "
                f"{int(puzzle_ids.max())}) of {test_dir}"
            ) from None
        # Tasks in the order their groups come in the split (with canvas buckets not
        # test_puzzles.json's), so that the first N tasks are the split's first N groups.
        task_ids = list(self.tasks)
        puzzle_task, self.puzzle_trans, self.puzzle_mapping = _parse_names(names, {t: i for i, t in enumerate(task_ids)})
        seen = dict.fromkeys(puzzle_task[puzzle_task >= 0].tolist())
        order = [*seen, *(i for i in range(len(task_ids)) if i not in seen)]
        new_index = np.empty(len(task_ids), dtype=np.int64)
        new_index[order] = np.arange(len(order))
        self.puzzle_task = np.where(puzzle_task >= 0, new_index[np.maximum(puzzle_task, 0)], -1)
        self.task_ids: list[str] = [task_ids[i] for i in order]
        self.num_inputs = np.array([len(self.tasks[t]["test"]) for t in self.task_ids], dtype=np.int64)
        self.slot_start = np.concatenate([[0], np.cumsum(self.num_inputs)]).astype(np.int64)
        self.num_slots = int(self.slot_start[-1])
        for p in np.flatnonzero(self.puzzle_task < 0):
            if names[p] != BLANK_IDENTIFIER:
                raise ValueError(f"{dataset_path}: puzzle {names[p]!r} belongs to no task of test_puzzles.json")
        n_ex = np.diff(self.puzzle_indices)
        labeled = self.puzzle_task >= 0
        bad = np.flatnonzero(labeled & (n_ex != self.num_inputs[np.maximum(self.puzzle_task, 0)]))
        if bad.size:
            first = int(bad[0])
            raise ValueError(
                f"{dataset_path}: puzzle {names[first]!r} has {n_ex[first]} test examples, its task has "
                f"{self.num_inputs[self.puzzle_task[first]]} test inputs"
            )
        self.variants_per_task = np.bincount(self.puzzle_task[self.puzzle_task >= 0], minlength=len(self.task_ids))
        # Test outputs larger than their task's canvas (--canvas-buckets): unsolvable, counted in the metrics.
        info_path = os.path.join(dataset_path, "build_info.json")
        info = read_json(info_path) if os.path.isfile(info_path) else {}
        self.beyond_canvas = {
            (b["task"], b["test_pair"]) for b in info.get("canvas_buckets", {}).get("test_outputs_beyond_canvas", [])
        }
        self.reset()

    # ------------------------------------------------------------------------------------
    # collection

    def reset(self) -> None:
        self.views = np.zeros(self.num_slots, dtype=np.int64)
        self.no_prediction = np.zeros(self.num_slots, dtype=np.int64)
        # per slot: {grid key: [count, sum of confidences, sum of log(1 - confidence)]}
        self.votes: list[dict[bytes, list]] = [{} for _ in range(self.num_slots)]

    def add(self, example_indices: np.ndarray, preds: np.ndarray, q_halt_logits: np.ndarray) -> None:
        """Add one batch: example indices into the test split (-1 = padding, skipped),
        predicted token ids [B, S*S] (S: the batch's canvas side) and halting logits [B]."""
        ex = np.asarray(example_indices, dtype=np.int64).reshape(-1)
        preds = np.asarray(preds)
        q = np.asarray(q_halt_logits, dtype=np.float64).reshape(-1)
        b = ex.shape[0]
        preds = preds.reshape(b, -1)
        canvas = math.isqrt(preds.shape[1])
        if canvas not in self.canvas_sides or canvas * canvas != preds.shape[1] or q.shape[0] != b:
            raise ValueError(
                f"batch shapes: examples {ex.shape}, preds {preds.shape}, q {q.shape}; "
                f"canvas sides {sorted(self.canvas_sides)}"
            )
        keep = ex >= 0
        if not keep.all():
            ex, preds, q = ex[keep], preds[keep], q[keep]
        if ex.size == 0:
            return
        if ex.max() >= self.num_examples:
            raise ValueError(f"example index {int(ex.max())} out of range ({self.num_examples} test examples)")
        puzzle = np.searchsorted(self.puzzle_indices, ex, side="right") - 1
        task = self.puzzle_task[puzzle]
        if (task < 0).any():  # blank puzzles carry no task
            sel = task >= 0
            ex, preds, q, puzzle, task = ex[sel], preds[sel], q[sel], puzzle[sel], task[sel]
            if ex.size == 0:
                return
        slot = self.slot_start[task] + ex - self.puzzle_indices[puzzle]

        if preds.dtype != np.uint8:  # anything outside 0..255 is not a colour token: make it PAD
            preds = np.where((preds >= 0) & (preds < 256), preds, 0).astype(np.uint8)
        grids, heights, widths = invert_predictions(
            np.ascontiguousarray(preds), self.puzzle_trans[puzzle], self.puzzle_mapping[puzzle], canvas
        )
        self.views += np.bincount(slot, minlength=self.num_slots)
        has = heights > 0
        if not has.all():
            self.no_prediction += np.bincount(slot[~has], minlength=self.num_slots)
            slot, q, grids, heights, widths = slot[has], q[has], grids[has], heights[has], widths[has]
            if slot.size == 0:
                return

        # Aggregate the batch per distinct (slot, grid) row: grids are zero outside h x w, so
        # the row [slot, h, w, all cells] identifies the cropped grid exactly.
        n = slot.shape[0]
        s2 = canvas * canvas
        rows = np.empty((n, 10 + s2), dtype=np.uint8)
        rows[:, :8] = slot.astype(">i8").view(np.uint8).reshape(n, 8)
        rows[:, 8] = heights
        rows[:, 9] = widths
        rows[:, 10:] = grids.reshape(n, s2)
        void = rows.view(np.dtype((np.void, rows.shape[1]))).ravel()
        _, first, inverse = np.unique(void, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        counts = np.bincount(inverse).tolist()
        conf = np.bincount(inverse, weights=_sigmoid(q)).tolist()
        log1m = np.bincount(inverse, weights=-np.logaddexp(0.0, q)).tolist()  # log(1 - sigmoid(q))
        slots = slot[first].tolist()
        hs = heights[first].tolist()
        ws = widths[first].tolist()
        votes = self.votes
        for u, i in enumerate(first.tolist()):
            h, w = hs[u], ws[u]
            key = bytes((h, w)) + grids[i, :h, :w].tobytes()
            d = votes[slots[u]]
            entry = d.get(key)
            if entry is None:
                d[key] = [counts[u], conf[u], log1m[u]]
            else:
                entry[0] += counts[u]
                entry[1] += conf[u]
                entry[2] += log1m[u]

    # ------------------------------------------------------------------------------------
    # distributed merge

    def _fingerprint(self) -> tuple:
        return (self.num_slots, self.num_examples, len(self.puzzle_indices), self.canvas, tuple(self.task_ids[:1]))

    def state(self) -> dict:
        """A picklable snapshot of the votes (for ``torch.distributed.gather_object``)."""
        return {
            "version": _STATE_VERSION,
            "fingerprint": self._fingerprint(),
            "views": self.views.copy(),
            "no_prediction": self.no_prediction.copy(),
            "votes": [{k: list(v) for k, v in d.items()} for d in self.votes],
        }

    def merge(self, states: Iterable[dict]) -> ARCVoter:
        """Add other voters' states into this one (do not pass this voter's own state)."""
        for st in states:
            if st.get("version") != _STATE_VERSION or tuple(st["fingerprint"]) != self._fingerprint():
                raise ValueError("state comes from a voter on another dataset or version")
            self.views += st["views"]
            self.no_prediction += st["no_prediction"]
            for d, other in zip(self.votes, st["votes"]):
                for k, v in other.items():
                    entry = d.get(k)
                    if entry is None:
                        d[k] = list(v)
                    else:
                        entry[0] += v[0]
                        entry[1] += v[1]
                        entry[2] += v[2]
        return self

    @classmethod
    def from_states(cls, dataset_path: str, states: Iterable[dict]) -> ARCVoter:
        return cls(dataset_path).merge(states)

    # ------------------------------------------------------------------------------------
    # ranking, metrics, submission

    @staticmethod
    def ranked(votes: dict[bytes, list], ranking: str = "vote") -> list[bytes]:
        """Grid keys of one (task, test input), best first."""
        if ranking == "vote":

            def sort_key(k):
                c, s, _ = votes[k]
                return (-c, -s / c, k)
        elif ranking == "count":

            def sort_key(k):
                return (-votes[k][0], k)
        elif ranking == "noisy_or":

            def sort_key(k):  # higher 1 - prod(1 - p) <=> lower sum log(1 - p)
                c, _, l1m = votes[k]
                return (l1m, -c, k)
        else:
            raise ValueError(f"unknown ranking {ranking!r}; choose from {RANKINGS}")
        return sorted(votes, key=sort_key)

    def finalize(
        self, pass_ks: Sequence[int] = DEFAULT_PASS_KS, ranking: str = "vote", task_limit: int | None = None
    ) -> tuple[dict, dict]:
        """(metrics, submission). Metrics carry scores only when some task is labeled.
        ``task_limit``: only the first N tasks (the test split's first N groups), for quick
        evaluations; the submission then holds those tasks only."""
        if ranking not in RANKINGS:
            raise ValueError(f"unknown ranking {ranking!r}; choose from {RANKINGS}")
        pass_ks = sorted({int(k) for k in pass_ks})
        task_scores = []  # per labeled task: array [n_inputs, len(pass_ks)] of solved flags
        submission: dict[str, list[dict]] = {}
        unlabeled_tasks = 0
        no_pred_inputs = 0
        task_ids = self.task_ids[:task_limit] if task_limit is not None else self.task_ids
        slots = slice(0, int(self.slot_start[len(task_ids)]) if task_ids else 0)
        views, votes = self.views[slots], self.votes[slots]
        for t, task_id in enumerate(task_ids):
            tests = self.tasks[task_id]["test"]
            labeled = all("output" in pair for pair in tests)
            unlabeled_tasks += not labeled
            entries = []
            solved = np.zeros((len(tests), len(pass_ks)), dtype=bool)
            for i, pair in enumerate(tests):
                s = int(self.slot_start[t]) + i
                order = self.ranked(self.votes[s], ranking)
                if not order:
                    no_pred_inputs += 1
                    entries.append(fallback_attempts(pair["input"]))
                else:
                    a1 = key_to_grid(order[0])
                    entries.append({"attempt_1": a1, "attempt_2": key_to_grid(order[1]) if len(order) > 1 else a1})
                if labeled:
                    truth = grid_key(pair["output"])
                    rank = order.index(truth) if truth in self.votes[s] else None
                    if rank is not None:
                        solved[i] = [rank < k for k in pass_ks]
            submission[task_id] = entries
            if labeled:
                task_scores.append(solved)

        metrics: dict = {
            "ARC/tasks": len(task_ids),
            "ARC/test_inputs": len(views),
            "ARC/inputs_no_prediction": no_pred_inputs,
            "ARC/predictions_no_grid": int(self.no_prediction[slots].sum()),
            "ARC/views_per_input": float(views.mean()) if len(views) else 0.0,
            "ARC/views_per_input_min": int(views.min()) if len(views) else 0,
            "ARC/variants_per_task": (float(self.variants_per_task[: len(task_ids)].mean()) if task_ids else 0.0),
            "ARC/distinct_grids_per_input": (float(np.mean([len(d) for d in votes])) if len(votes) else 0.0),
            "ARC/unlabeled_tasks": unlabeled_tasks,
            "ARC/unlabeled": int(not task_scores),
            "ARC/tasks_scored": len(task_scores),
            "ARC/test_inputs_scored": int(sum(len(s) for s in task_scores)),
            "ARC/answers_beyond_canvas": sum(
                (t, i) in self.beyond_canvas for t in task_ids for i in range(len(self.tasks[t]["test"]))
            ),
        }
        metrics.update(pass_at_k(task_scores, pass_ks))
        return metrics, submission


def write_submission(path: str, submission: dict) -> None:
    """Write the submission JSON atomically (temp file in the same folder, then os.replace)."""
    write_json_atomic(path, submission, separators=(",", ":"))


__all__ = ["ARCVoter", "RANKINGS", "DEFAULT_PASS_KS", "grid_key", "key_to_grid", "write_submission"]
