"""Each concern in one home, each setting in one place (issue 23): the layers under the config
package import nothing above them."""

import subprocess
import sys

from conftest import ROOT

# Packages above the bottom layer (utils.errors, utils.schema) and the dataset loader.
ABOVE_THE_LOADER = ("models", "losses", "training", "evaluators", "pipelines", "pretrain", "utils.config")


def loaded_modules(*modules: str) -> list[str]:
    """The project modules above the loader that importing ``modules`` in a fresh interpreter loads."""
    code = (
        f"import sys, {', '.join(modules)}; print('\\n'.join(m for m in sys.modules if m.startswith({ABOVE_THE_LOADER!r})))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    return result.stdout.split()


def test_the_dataset_loader_and_the_error_types_load_no_config_model_or_loss():
    """The loader's ConfigError came from utils/config.py, which imports every model and loss."""
    assert loaded_modules("utils.errors", "utils.schema", "dataset.puzzle_dataset") == []


def test_the_run_schema_loads_no_model_or_loss():
    """Only utils.config.groups imports the model and loss packages (their family schemas)."""
    assert [m for m in loaded_modules("utils.config.schema") if not m.startswith("utils.config")] == []
