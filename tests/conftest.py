import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

# wandb online with no network hangs ~100 s; tests never log anywhere.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")
# numba's OpenMP layer resets torch's thread count to all cores at its first parallel call
# (builder, voter); the workqueue layer leaves it alone.
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout; tests that need it skip cleanly without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def random_grid(rng: np.random.Generator, max_side: int = 8, colors: int = 10) -> list[list[int]]:
    h, w = rng.integers(1, max_side + 1, size=2)
    return rng.integers(0, colors, size=(h, w)).tolist()


def random_task(rng: np.random.Generator, n_train: int = 3, n_test: int = 1, max_side: int = 8) -> dict:
    def pair():
        return {"input": random_grid(rng, max_side), "output": random_grid(rng, max_side)}

    return {"train": [pair() for _ in range(n_train)], "test": [pair() for _ in range(n_test)]}


def write_folder_source(root: Path, subsets: dict[str, dict[str, dict]]) -> Path:
    """A folder source: root/<subset>/<task id>.json."""
    for subset, tasks in subsets.items():
        (root / subset).mkdir(parents=True, exist_ok=True)
        for task_id, task in tasks.items():
            (root / subset / f"{task_id}.json").write_text(json.dumps(task))
    return root


def write_kaggle_source(root: Path, subsets: dict[str, dict[str, dict]], with_solutions: bool = True) -> str:
    """A Kaggle prefix: <root>/arc_<subset>_challenges.json (+ _solutions.json)."""
    root.mkdir(parents=True, exist_ok=True)
    prefix = str(root / "arc")
    for subset, tasks in subsets.items():
        challenges = {
            tid: {"train": t["train"], "test": [{"input": p["input"]} for p in t["test"]]} for tid, t in tasks.items()
        }
        Path(f"{prefix}_{subset}_challenges.json").write_text(json.dumps(challenges))
        if with_solutions:
            solutions = {tid: [p["output"] for p in t["test"]] for tid, t in tasks.items()}
            Path(f"{prefix}_{subset}_solutions.json").write_text(json.dumps(solutions))
    return prefix


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (a gloo test's MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def learning_seed() -> int:
    """The seed of the learning tests (``-m learning``): ``ARCFORGE_TEST_SEED``, default 0.
    They pass it as the run's ``seed=`` (and to their data where the data is random), so
    tests/learning_matrix.sh can show that they pass for more than one draw."""
    return int(os.environ.get("ARCFORGE_TEST_SEED", "0"))


def torch_threads() -> int:
    """Torch intra-op threads for tiny-model training: ``ARCFORGE_TEST_THREADS``, default 1."""
    return int(os.environ.get("ARCFORGE_TEST_THREADS", "1"))


def use_test_threads() -> None:
    """Set torch's thread count to ``torch_threads()``; also after a numba parallel call,
    which may reset it to all cores."""
    torch.set_num_threads(torch_threads())


@pytest.fixture(scope="module")
def one_torch_thread():
    """``torch_threads()`` torch threads (default one) for a module of tiny-model training:
    on a busy 2-core machine two intra-op threads on tiny tensors wait on each other (10-50x
    slower measured here). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``; ARCFORGE_TEST_THREADS=2
    runs them with two (tests/learning_matrix.sh)."""
    threads = torch.get_num_threads()
    use_test_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    """A random 1-layer Qwen2 saved offline, without tokenizer files (fixed symbol ids): the
    EFE agent's language model in tests, nothing downloaded."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        vocab_size=32,
    )
    path = tmp_path_factory.mktemp("qwen")
    transformers.Qwen2ForCausalLM(config).save_pretrained(path)
    return path
