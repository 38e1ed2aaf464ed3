"""Chunks across ranks: chunk k on rank k % N, each alone; time budgets; SIGTERM; each chunk's
``result.json``; rank 0 collects them and merges one validated submission."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

import numpy as np

from dataset.sources import BadTask, Task
from evaluators.arc import write_submission
from evaluators.report import render_report
from evaluators.submission import fallback_answer, score_submission
from evaluators.validate_submission import validate
from pipelines.ttt_chunk import Setup, adapt_chunk
from pipelines.ttt_config import POLL_SECONDS, RESULT_FILE, TOTAL_GRACE_SECONDS, TTTConfig, TTTRunConfig
from utils.distributed import DistEnv, choose_device
from utils.errors import ConfigError
from utils.io import write_json_atomic

log = logging.getLogger("pipelines.test_time_training")  # one logger for the whole flow


def chunk_minutes(config: TTTConfig, elapsed: float, chunks_left: int, done: list[dict]) -> float | None:
    """Training minutes for the next chunk: ``ttt.minutes``, capped by its share of what is
    left of ``ttt.total_minutes`` less the build and evaluation time it will need (measured
    on earlier chunks; a quarter of the share before any)."""
    if config.total_minutes is None:
        return config.minutes
    share = (60 * config.total_minutes - elapsed) / chunks_left
    overhead = float(np.mean([c["seconds"] - c["train_seconds"] for c in done])) if done else 0.25 * share
    minutes = (share - overhead) / 60
    return minutes if config.minutes is None else min(minutes, config.minutes)


class Interrupted(BaseException):
    """SIGTERM arrived (torchrun stopping the ranks after one of them died, a cluster's time
    limit). A BaseException, like KeyboardInterrupt, so no ``except Exception`` on the way
    swallows it; the chunks left get the fallback and rank 0 still writes the submission."""


@dataclass
class Stop:
    """SIGTERM's state during a run: the first signal raises ``Interrupted`` in the main
    thread; after it (or once ``disarm``-ed for the merge) signals are only recorded."""

    armed: bool = True
    received: str | None = None  # the signal's name

    def handler(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if self.armed:
            self.armed, self.received = False, name
            raise Interrupted(name)
        log.warning("ttt: %s again; finishing the submission", name)

    def disarm(self) -> None:
        self.armed = False


@contextlib.contextmanager
def interruptible() -> Iterator[Stop]:
    """Turn SIGTERM into ``Interrupted`` for the block (main thread only; elsewhere a no-op)."""
    stop = Stop()
    try:
        previous = signal.signal(signal.SIGTERM, stop.handler)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield stop
        return
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def launch_env(device: str = "auto") -> DistEnv:
    """torchrun's rank and world size (RANK, WORLD_SIZE, LOCAL_RANK; one process without them)
    and this rank's device (``choose_device``), with no process group: ttt's ranks never talk
    (an initialised world would make SparseSignSGD gather the embedding updates of every
    rank's own chunk)."""
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return DistEnv(rank, world_size, local_rank, choose_device(device, local_rank, world_size))


def chunk_path(out: str, k: int) -> str:
    return os.path.join(out, "chunks", f"{k:03d}")


def fingerprint(config: TTTRunConfig, checkpoint: str, world_size: int, k: int, ids: list[str]) -> str:
    """What a chunk result must have been computed from to count (a result an earlier run
    left in the same output folder with other settings does not)."""
    key = {
        "config": asdict(config),
        "checkpoint": os.path.abspath(checkpoint),
        "world_size": world_size,
        "chunk": k,
        "tasks": ids,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def run_rank_chunks(
    setup: Setup,
    config: TTTRunConfig,
    tasks: dict[str, Task],
    chunks: list[list[str]],
    prints: list[str],
    out: str,
    env: DistEnv,
    started: float,
) -> None:
    """This rank's chunks (``k % world_size == rank``), each from the original checkpoint on
    a one-process DistEnv; every chunk ends as a ``result.json``: its answers (``done``) or,
    with the reason, none (``failed``: an exception; ``out_of_time``; ``interrupted``).
    A ConfigError (the user's to fix, and the same on every chunk) still ends the run."""
    cfg = config.ttt
    solo = replace(env, rank=0, world_size=1)
    mine = [k for k in range(len(chunks)) if k % env.world_size == env.rank]
    for k in mine:  # a result an earlier run left here is no answer of this one
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(chunk_path(out, k), RESULT_FILE))
    who = f"ttt rank {env.rank}/{env.world_size}" if env.distributed else "ttt"
    total = sum(len(chunks[k]) for k in mine)
    done: list[dict] = []
    written: set[int] = set()

    def write(k: int, status: str, reason: str | None = None, result: dict | None = None) -> None:
        answers = result.pop("submission") if result is not None else None
        write_json_atomic(
            os.path.join(chunk_path(out, k), RESULT_FILE),
            {
                "chunk": k,
                "rank": env.rank,
                "tasks": chunks[k],
                "status": status,
                "reason": reason,
                "fingerprint": prints[k],
                "record": result,
                "submission": answers,
            },
        )
        written.add(k)

    try:
        for j, k in enumerate(mine):
            ids = chunks[k]
            minutes = chunk_minutes(cfg, time.perf_counter() - started, len(mine) - j, done)
            if minutes is not None and minutes * 60 < 1:  # out of time: this and every later chunk
                for later in mine[j:]:
                    write(later, "out_of_time", "the time budget (ttt.total_minutes) was spent")
                break
            try:
                result = adapt_chunk(setup, {t: tasks[t] for t in ids}, chunk_path(out, k), minutes, solo)
            except ConfigError:
                raise
            except Exception as e:  # this chunk's tasks get the fallback; the next chunk starts afresh
                reason = f"{type(e).__name__}: {e}"
                log.warning(
                    "%s: chunk %d (%s) failed, its tasks get the fallback answer: %s",
                    who,
                    k,
                    ", ".join(ids),
                    reason,
                    exc_info=True,
                )
                write(k, "failed", reason)
                continue
            done.append(result)
            write(k, "done", result=dict(result))
            elapsed = time.perf_counter() - started
            adapted = sum(len(c["tasks"]) for c in done)
            left = (
                f"{cfg.total_minutes - elapsed / 60:.1f} of {cfg.total_minutes:g} min left"
                if cfg.total_minutes is not None
                else f"~{elapsed / adapted * (total - adapted) / 60:.1f} min to go at this pace"
            )
            log.info(
                "%s: %d/%d tasks adapted (chunk %d/%d), %.1f min elapsed, %s",
                who,
                adapted,
                total,
                j + 1,
                len(mine),
                elapsed / 60,
                left,
            )
    except Interrupted as e:
        log.warning("%s: %s: the chunks not finished get the fallback answer", who, e)
        for k in mine:
            if k not in written:
                write(k, "interrupted", f"{e} before the chunk finished")


def collect_results(
    config: TTTRunConfig, prints: list[str], out: str, env: DistEnv, started: float, stop: Stop
) -> dict[int, dict]:
    """Rank 0: every chunk's result that is (or, from another rank, becomes) readable, until
    all are in, no new one came for ``ttt.rank_timeout_minutes`` (with ``ttt.total_minutes``:
    at most a minute past the budget) or SIGTERM."""
    cfg = config.ttt
    results: dict[int, dict] = {}
    wanted = dict(enumerate(prints))
    last_news, waiting = time.monotonic(), False
    try:
        while True:
            for k in [k for k in wanted if k not in results]:
                try:
                    with open(os.path.join(chunk_path(out, k), RESULT_FILE)) as f:
                        result = json.load(f)
                except (OSError, ValueError):
                    continue
                if result.get("fingerprint") == wanted[k]:
                    results[k], last_news = result, time.monotonic()
            missing = [k for k in wanted if k not in results and k % env.world_size != env.rank]
            if not missing or stop.received:
                return results
            late = time.monotonic() - last_news > 60 * cfg.rank_timeout_minutes
            if cfg.total_minutes is not None:
                late = late or time.perf_counter() - started > 60 * cfg.total_minutes + TOTAL_GRACE_SECONDS
            if late:
                log.warning(
                    "ttt: no result from rank(s) %s for chunk(s) %s; their tasks get the fallback answer",
                    sorted({k % env.world_size for k in missing}),
                    missing,
                )
                return results
            if not waiting:
                log.info("ttt: waiting for chunk(s) %s of the other ranks", missing)
                waiting = True
            time.sleep(POLL_SECONDS)
    except Interrupted:
        return results


def merge(
    config: TTTRunConfig,
    setup: Setup,
    order: list[str],
    tasks: dict[str, Task],
    bad: dict[str, BadTask],
    oversized: list[str],
    chunks: list[list[str]],
    results: dict[int, dict],
    env: DistEnv,
    out: str,
    started: float,
    stop: Stop,
) -> dict:
    """Rank 0: one submission from the chunks' results, the fallback answer for every task
    without one; validated, written with metrics.json and report.png."""
    cfg = config.ttt
    raw = {t: tasks[t].raw if t in tasks else bad[t].raw for t in order}
    submission = {t: fallback_answer(raw[t]) for t in [*oversized, *bad]}
    done, out_of_time, failed = [], [], []
    for k, ids in enumerate(chunks):
        result = results.get(k)
        rank = k % env.world_size
        if result is None:
            reason = (
                f"{stop.received} before rank {rank} reported"
                if stop.received
                else f"no result from rank {rank} (crashed, hung or late: ttt.rank_timeout_minutes)"
            )
            result = {"status": "missing", "reason": reason}
        elif result.get("status") == "done":
            answers = result.get("submission") or {}
            problems = validate({t: answers.get(t) for t in ids}, {t: raw[t] for t in ids})
            if not problems:
                submission.update({t: answers[t] for t in ids})
                done.append(result["record"])
                continue
            result = {"status": "invalid", "reason": f"invalid answers: {'; '.join(problems[:5])}"}
        submission.update({t: fallback_answer(raw[t]) for t in ids})
        if result["status"] == "out_of_time":
            out_of_time += ids
        else:
            failed.append({"chunk": k, "rank": rank, "tasks": ids, "status": result["status"], "reason": result["reason"]})
    if out_of_time:
        log.info("ttt: out of time; %d tasks get the fallback answer", len(out_of_time))
    for f in failed:
        log.warning(
            "ttt: chunk %d (rank %d) %s: %d tasks get the fallback answer: %s",
            f["chunk"],
            f["rank"],
            f["status"],
            len(f["tasks"]),
            f["reason"],
        )

    submission = {t: submission[t] for t in order}  # the source's order
    problems = validate(submission, raw)
    if problems:
        raise RuntimeError(f"the merged submission is invalid: {'; '.join(problems[:10])}")
    write_submission(os.path.join(out, "submission.json"), submission)
    metrics, _ = score_submission(submission, raw, ks=(1, 2))
    seconds = time.perf_counter() - started
    report = {
        "checkpoint": setup.checkpoint,
        "tasks": cfg.tasks,
        "subset": cfg.subset,
        "ttt": asdict(cfg),
        "metrics": metrics,
        "seconds": seconds,
        "seconds_per_task": seconds / len(order),
        "world_size": env.world_size,
        "interrupted": stop.received,
        "bad_tasks": [{"task": t, "reason": b.reason} for t, b in bad.items()],
        "oversized": oversized,
        "out_of_time": out_of_time,
        "failed_chunks": failed,
        "chunks": done,
    }
    write_json_atomic(os.path.join(out, "metrics.json"), report, indent=1)
    scored = (
        ", ".join(f"{k} {metrics[f'ARC/{k}']:.3f}" for k in ("pass@1", "pass@2"))
        if "ARC/pass@2" in metrics
        else "unlabeled: no score"
    )
    title = f"test-time training ({cfg.mode}) on {cfg.subset}: {len(order)} tasks, {seconds / 60:.1f} min\n{scored}"
    drawn = {t: raw[t] for t in order if t in tasks}  # a malformed task has nothing to draw
    render_report(os.path.join(out, "report.png"), drawn, submission, max_tasks=setup.base.eval.report_tasks, title=title)
    log.info(title.replace("\n", "; "))
    log.info("wrote %s/: submission.json, metrics.json, report.png", out)
    return {**report, "output_dir": out}
