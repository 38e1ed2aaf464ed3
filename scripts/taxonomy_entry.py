"""The ARC taxonomy ablation's three commands (``python scripts/train_decoder_only.py``,
``train_encoder_decoder.py``, ``train_champion.py``; docs/seeds.md) as thin entry points: each
runs ``python pretrain.py experiment=taxonomy_<model>`` (the same Hydra main, the same
trainer), with the ARCForge ``key=value`` overrides typed after it, and says so once. The
originals took no flags: any ``--flag`` is refused by name. Nothing in the library imports
this folder."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "pretrain.py"


def run(script: str, preset: str, argv: list[str] | None = None) -> None:
    """Run ``pretrain.py experiment=<preset> ARGV`` as its own ``__main__`` (its help, checks,
    exit statuses and Hydra run folder), after refusing any flag and announcing the mapping."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from runconfig.seed_grammar import announce_mapping
    from utils.errors import exit_with_error

    args = sys.argv[1:] if argv is None else argv
    flags = [a for a in args if a.startswith("-")]
    if flags:
        name = flags[0].split("=")[0]
        exit_with_error(
            f"scripts/{script}: {name} is not an option: the original takes no flags; "
            f"pass ARCForge key=value overrides (python pretrain.py --help lists the keys)"
        )
    mapped = [f"experiment={preset}", *args]
    announce_mapping("taxonomy", ["python", f"scripts/{script}", *args], "python pretrain.py", mapped)
    sys.argv = [str(PRETRAIN), *mapped]
    runpy.run_path(str(PRETRAIN), run_name="__main__")
