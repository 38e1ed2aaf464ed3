"""Whole-state checkpoints: one folder per step, written atomically, checked before use,
loaded without running code. One module per concern: ``errors``; ``files`` (the names below,
step folders, RNG states); ``manifest`` (what is complete, which checkpoint to take);
``write`` (the atomic, rank-coordinated write, its failures, pruning); ``load`` (files,
weights and exports, without running code; ``resume``); ``export`` (safetensors); ``lock``
(one writer per run folder). The names most callers use are here too.

    <checkpoint_path>/
        .lock              the run writing here: host and pid (run_lock)
        step_00001234/
            state.pt       model, optimizers, EMA, step, data position, resolved config,
                           identifiers hash, world size (rank 0 writes it)
            rank<r>.pt     that rank's carry (``model.carry_state``: a recursive model's examples
                           in flight; None for the others) and RNG states
            score.json     the monitored evaluation metric, when one was given (callbacks)
            manifest.json  each file above with its size and sha256; written last
"""

from utils.checkpoint.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointWriteError,
    RunFolderError,
    RunLockError,
    UnsafeCheckpointError,
)
from utils.checkpoint.export import write_export
from utils.checkpoint.files import (
    CHECKPOINT_FORMAT,
    COMPLETE,
    EXPORT_CONFIG,
    EXPORT_INFO,
    EXPORT_WEIGHTS,
    INCOMPLETE,
    LOCK_FILE,
    MANIFEST,
    METRICS_FILE,
    SCORE_FILE,
    STATE_FILE,
    identifiers_hash,
    list_checkpoints,
    rng_state,
    set_rng_state,
)
from utils.checkpoint.load import load_export, load_file, load_rank, load_shared, load_weights, resolve_resume
from utils.checkpoint.lock import RunLock, run_lock
from utils.checkpoint.manifest import checkpoint_status, newest_checkpoint
from utils.checkpoint.write import checkpoint_score, prune_checkpoints, save_checkpoint, write_failure

__all__ = [
    "CHECKPOINT_FORMAT",
    "COMPLETE",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointWriteError",
    "EXPORT_CONFIG",
    "EXPORT_INFO",
    "EXPORT_WEIGHTS",
    "INCOMPLETE",
    "LOCK_FILE",
    "MANIFEST",
    "METRICS_FILE",
    "RunFolderError",
    "RunLock",
    "RunLockError",
    "SCORE_FILE",
    "STATE_FILE",
    "UnsafeCheckpointError",
    "checkpoint_score",
    "checkpoint_status",
    "identifiers_hash",
    "list_checkpoints",
    "load_export",
    "load_file",
    "load_rank",
    "load_shared",
    "load_weights",
    "newest_checkpoint",
    "prune_checkpoints",
    "resolve_resume",
    "rng_state",
    "run_lock",
    "save_checkpoint",
    "set_rng_state",
    "write_export",
    "write_failure",
]
