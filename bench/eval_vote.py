"""Wall time of the voting evaluator on a synthetic ARC-sized test split.

    python bench/eval_vote.py                     # 400 tasks x 1000 variants, 30x30 canvas
    python bench/eval_vote.py --tasks 100 --variants 200 --batch 1024

A hand-written test split (``identifiers.json``, ``test_puzzles.json``, ``test/``) with
``--tasks`` tasks (every ``--two-every``-th has two test inputs), ``--variants`` random
augmentations each (dihedral id + colour permutation), one prediction per example. Each
(task, test input) has 4 answer grids drawn with probabilities 0.5/0.25/0.15/0.10; 10% of
the predictions get one cell changed (many distinct grids) and 5% are all PAD (no grid).
Predictions are made in each variant's frame, so the evaluator must undo the augmentation.
Timed phases: voter construction, add() over all batches, finalize(), write_submission().
numba compilation is warmed first and reported apart. Target: <= 10 s total on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset.augment import transform_grid, variant_name  # noqa: E402
from dataset.common import COLOR_OFFSET, EOS_ID, PuzzleDatasetMetadata  # noqa: E402
from evaluators.arc import ARCVoter, write_submission  # noqa: E402
from evaluators.validate_submission import validate  # noqa: E402

CANVAS = 30
N_ANSWERS = 4
ANSWER_P = np.array([0.5, 0.25, 0.15, 0.10])


def build(root: Path, rng, n_tasks: int, n_variants: int, two_every: int):
    """Write the split; return (answers[slot][a] grids, slot of each example, trans, mapping per example)."""
    tasks, names, ids, indices = {}, ["<blank>"], [], [0]
    answers, ex_slot, ex_trans, ex_map = [], [], [], []
    slot0 = 0
    for t in range(n_tasks):
        task_id = f"{t:08x}"
        n_in = 2 if two_every and t % two_every == 0 else 1
        test = []
        for _ in range(n_in):
            h, w = rng.integers(3, 16, size=2)
            grids = [rng.integers(0, 10, size=(h, w), dtype=np.uint8) for _ in range(N_ANSWERS)]
            answers.append(grids)
            test.append({"input": grids[1].tolist(), "output": grids[0].tolist()})
        tasks[task_id] = {"train": [], "test": test}
        trans = rng.integers(0, 8, size=n_variants)
        trans[0] = 0
        for v in range(n_variants):
            mapping = np.arange(10, dtype=np.uint8)
            if v:
                mapping[1:] = rng.permutation(np.arange(1, 10))
            names.append(variant_name(task_id, int(trans[v]), mapping) if v else task_id)
            ids.append(len(names) - 1)
            indices.append(indices[-1] + n_in)
            for i in range(n_in):
                ex_slot.append(slot0 + i)
                ex_trans.append(trans[v])
                ex_map.append(mapping)
        slot0 += n_in
    (root / "test").mkdir(parents=True)
    (root / "identifiers.json").write_text(json.dumps(names))
    (root / "test_puzzles.json").write_text(json.dumps(tasks))
    meta = PuzzleDatasetMetadata(
        pad_id=0,
        ignore_label_id=0,
        blank_identifier_id=0,
        vocab_size=12,
        seq_len=CANVAS * CANVAS,
        num_puzzle_identifiers=len(names),
        total_groups=n_tasks,
        mean_puzzle_examples=indices[-1] / len(ids),
        total_puzzles=len(ids),
    )
    (root / "test" / "dataset.json").write_text(meta.to_json())
    np.save(root / "test" / "all__puzzle_identifiers.npy", np.array(ids, dtype=np.int32))
    np.save(root / "test" / "all__puzzle_indices.npy", np.array(indices, dtype=np.int32))
    return answers, np.array(ex_slot), np.array(ex_trans), np.stack(ex_map)


def canvases(answers) -> tuple[np.ndarray, np.ndarray]:
    """Per (slot, answer, dihedral id): the canvas in colours-as-tokens (identity colours),
    and the smaller side of the transformed grid (where a noisy cell may go)."""
    n = len(answers)
    out = np.zeros((n, N_ANSWERS, 8, CANVAS * CANVAS), dtype=np.uint8)
    side = np.zeros((n, N_ANSWERS), dtype=np.int64)
    ident = np.arange(10, dtype=np.uint8)
    for s, grids in enumerate(answers):
        for a, g in enumerate(grids):
            side[s, a] = min(g.shape)
            for t in range(8):
                tg = transform_grid(g, t, ident)
                c = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
                h, w = tg.shape
                c[:h, :w] = tg + COLOR_OFFSET
                c[h, :w] = EOS_ID
                c[:h, w] = EOS_ID
                out[s, a, t] = c.reshape(-1)
    return out, side


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=400)
    ap.add_argument("--variants", type=int, default=1000)
    ap.add_argument("--two-every", type=int, default=10, help="every n-th task has 2 test inputs (0: never)")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--ranking", default="vote")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        t0 = time.perf_counter()
        answers, ex_slot, ex_trans, ex_map = build(root, rng, args.tasks, args.variants, args.two_every)
        table, side = canvases(answers)
        n = len(ex_slot)
        # one prediction per example, shuffled as a distributed loader would not guarantee order
        order = rng.permutation(n)
        pick = rng.choice(N_ANSWERS, size=n, p=ANSWER_P)
        noisy = rng.random(n) < 0.10
        empty = rng.random(n) < 0.05
        q = rng.normal(size=n).astype(np.float32)
        lut = np.zeros((n, 12), dtype=np.uint8)  # token -> token under each example's colour map
        lut[:, 1] = EOS_ID
        lut[:, COLOR_OFFSET:] = ex_map + COLOR_OFFSET
        batches = []
        for b0 in range(0, n, args.batch):
            e = order[b0 : b0 + args.batch]
            base = table[ex_slot[e], pick[e], ex_trans[e]]
            tok = np.take_along_axis(lut[e], base.astype(np.int64), axis=1).astype(np.uint8)
            nz = np.flatnonzero(noisy[e])
            lim = side[ex_slot[e[nz]], pick[e[nz]]]
            r = (rng.random(len(nz)) * lim).astype(np.int64)
            c = (rng.random(len(nz)) * lim).astype(np.int64)
            tok[nz, r * CANVAS + c] = rng.integers(COLOR_OFFSET, COLOR_OFFSET + 10, size=len(nz))
            tok[empty[e]] = 0
            ex = e.astype(np.int64)
            if b0 + args.batch >= n:  # pad the last batch as the loader does
                pad = args.batch - len(e)
                ex = np.concatenate([ex, np.full(pad, -1)])
                tok = np.concatenate([tok, np.zeros((pad, tok.shape[1]), dtype=np.uint8)])
                qb = np.concatenate([q[e], np.zeros(pad, dtype=np.float32)])
            else:
                qb = q[e]
            batches.append((ex, tok, qb))
        setup = time.perf_counter() - t0
        print(f"setup (not timed): {setup:.2f} s, {args.tasks} tasks, {n} predictions in {len(batches)} batches")

        t0 = time.perf_counter()
        warm = ARCVoter(root)
        warm.add(*[x[:2] for x in batches[0]])
        compile_s = time.perf_counter() - t0
        del warm

        phases = {}
        t0 = time.perf_counter()
        voter = ARCVoter(root)
        phases["init"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for ex, tok, qb in batches:
            voter.add(ex, tok, qb)
        phases["add"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics, submission = voter.finalize(ranking=args.ranking)
        phases["finalize"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_submission(os.path.join(tmp, "submission.json"), submission)
        phases["write_submission"] = time.perf_counter() - t0
        total = sum(phases.values())

        t0 = time.perf_counter()
        problems = validate(submission, voter.tasks)
        validate_s = time.perf_counter() - t0

    print(f"cores: {len(os.sched_getaffinity(0))}; warm-up (init + first add, numba compile/cache load): {compile_s:.2f} s")
    for k, v in phases.items():
        print(f"{k:>17}: {v:7.3f} s")
    print(f"{'total':>17}: {total:7.3f} s   ({n / phases['add']:,.0f} predictions/s in add)")
    print(f"validate (untimed): {validate_s:.3f} s, problems: {len(problems)}")
    keys = (
        "ARC/pass@1",
        "ARC/pass@2",
        "ARC/kaggle_pass@1",
        "ARC/strict_pass@2",
        "ARC/views_per_input",
        "ARC/distinct_grids_per_input",
        "ARC/inputs_no_prediction",
        "ARC/predictions_no_grid",
    )
    print("  ".join(f"{k}={metrics[k]:.4g}" for k in keys))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
