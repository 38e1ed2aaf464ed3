"""The builder's settings (``BuildConfig``: every flag of ``python -m dataset.build_arc_dataset``)
and its constants."""

from __future__ import annotations

from dataclasses import dataclass, field

from dataset.common import (
    ARC_MAX_GRID_SIZE,
)

# TRM tries up to 5x num_aug random augmentations per task before giving up on filling it.
AUGMENT_RETRIES_FACTOR = 5


SET_NAME = "all"


DEFAULT_CHUNK_EXAMPLES = 32768


ARC_BUCKETS = (8, 12, 16, 20, 25, 30)


@dataclass
class BuildConfig:
    input_file_prefix: str
    output_dir: str
    subsets: list[str]
    test_set_name: str
    test_set_name2: str = "your_test_set"
    seed: int = 42
    num_aug: int = 1000
    puzzle_identifiers_start: int = 1
    max_grid_size: int = ARC_MAX_GRID_SIZE
    skip_oversized: bool = False
    fail_on_leakage: bool = False
    allow_test_leakage: bool = False
    holdout_test_pairs: int = 0
    task_split_frac: float = 0.0
    task_split_seed: int = 0
    chunk_examples: int = DEFAULT_CHUNK_EXAMPLES
    canvas_buckets: list[int] = field(default_factory=list)  # empty: one canvas of max_grid_size

    @property
    def largest_canvas(self) -> int:
        return max(self.canvas_buckets) if self.canvas_buckets else self.max_grid_size

    def validate(self) -> None:
        if not self.subsets:
            raise ValueError("--subsets: name at least one subset")
        if len(set(self.subsets)) != len(self.subsets):
            raise ValueError(f"--subsets: a subset is listed twice: {self.subsets}")
        if self.test_set_name not in self.subsets:
            raise ValueError(f"--test-set-name '{self.test_set_name}' is not one of --subsets {self.subsets}")
        if self.num_aug < 0:
            raise ValueError(f"--num-aug must be >= 0, got {self.num_aug}")
        if not 1 <= self.max_grid_size <= ARC_MAX_GRID_SIZE:
            raise ValueError(f"--max-grid-size must be in 1..{ARC_MAX_GRID_SIZE}, got {self.max_grid_size}")
        if self.puzzle_identifiers_start < 1:
            raise ValueError(f"--puzzle-identifiers-start must be >= 1 (0 is <blank>), got {self.puzzle_identifiers_start}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"--seed must be in [0, 2**32), got {self.seed}")
        if self.holdout_test_pairs < 0:
            raise ValueError(f"--holdout-test-pairs must be >= 0, got {self.holdout_test_pairs}")
        if not 0.0 <= self.task_split_frac < 1.0:
            raise ValueError(f"--task-split-frac must be in [0, 1), got {self.task_split_frac}")
        if self.task_split_seed < 0:
            raise ValueError(f"--task-split-seed must be >= 0, got {self.task_split_seed}")
        if self.allow_test_leakage and self.fail_on_leakage:
            raise ValueError("--allow-test-leakage and --fail-on-leakage contradict each other: pass one")
        buckets = self.canvas_buckets
        if buckets and (sorted(set(buckets)) != list(buckets) or not 2 <= buckets[0] or buckets[-1] > self.max_grid_size):
            raise ValueError(
                f"--canvas-buckets must be increasing sides in 2..--max-grid-size ({self.max_grid_size}), got {buckets}"
            )
