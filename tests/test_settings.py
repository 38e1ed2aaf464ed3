"""Each concern in one home, each setting in one place (issue 23): the layers under the config
package import nothing above them."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from train_helpers import compose_config

import pipelines.diffusion
import pipelines.iterative
import pipelines.test_time_training  # noqa: F401  (the pipelines register their schemas on import)
from pipelines.iterative import IterativeConfig
from pipelines.ttt_config import TTTConfig
from runconfig.groups import register_configs
from runconfig.help import DOCS_TABLES, docs_with_key_table, key_rows
from utils.config.resume import flatten
from utils.errors import ConfigError
from utils.schema import Choice, key_doc, plain_dict

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
    """Only runconfig.groups imports the model and loss packages (their family schemas)."""
    assert [m for m in loaded_modules("utils.config.schema") if not m.startswith("utils.config")] == []


# --- string choices: typed, checked by one mechanism ---------------------------------------

CHOICES = {
    "precision": "fp32, bf16, fp16",
    "lr_schedule": "cosine, cosine_restarts",
    "device": "auto, cpu, cuda, mps",
    "wandb.mode": "offline, online, disabled",
    "eval.ranking": "vote, count, noisy_or",
    "callbacks.mode": "min, max",
}
PIPELINE_CHOICES = {
    ("ttt", "ttt.mode"): "embeddings, embeddings_then_all, all",
    ("iterative", "iterative.sampling_strategy"): "uniform, accuracy_weighted, loss_weighted",
    ("iterative", "iterative.objective_type"): "min, max",
}


@pytest.mark.parametrize("key", CHOICES)
def test_a_string_choice_outside_its_values_is_one_line_naming_the_key_and_the_values(key):
    expected = f"invalid config values: {key}='bogus' (one of {CHOICES[key]})"
    with pytest.raises(ConfigError) as composed:
        compose_config([f"{key}=bogus"])
    assert str(composed.value) == expected
    config = compose_config([])  # a value set in code, as the pipelines derive their runs, is refused alike
    section, _, name = key.rpartition(".")
    setattr(getattr(config, section) if section else config, name, "bogus")
    with pytest.raises(ValueError) as validated:
        config.validate()
    assert str(validated.value) == expected


@pytest.mark.parametrize("config_name,key", PIPELINE_CHOICES)
def test_a_pipeline_choice_outside_its_values_is_the_same_line(config_name, key):
    with pytest.raises(ConfigError) as composed:
        compose_config([f"{key}=bogus"], config_name)
    assert str(composed.value) == f"invalid config values: {key}='bogus' (one of {PIPELINE_CHOICES[config_name, key]})"


def test_a_choice_is_its_string_everywhere_a_config_goes(tmp_path):
    """Compared, formatted and serialized as its value; a checkpoint's config holds plain strings
    (torch.load with weights_only refuses any class of ours)."""
    config = compose_config(["precision=bf16", "eval.ranking=noisy_or"])
    assert config.precision == "bf16" and f"{config.precision}" == "bf16" and {"bf16": 1}[config.precision] == 1
    assert json.loads(json.dumps(dataclasses.asdict(config)))["eval"]["ranking"] == "noisy_or"
    torch.save({"config": plain_dict(config)}, tmp_path / "state.pt")
    saved = torch.load(tmp_path / "state.pt", weights_only=True)["config"]
    assert type(saved["precision"]) is str and saved["eval"]["ranking"] == "noisy_or"


def test_every_choice_is_named_by_its_value():
    """OmegaConf reads an override by the member's name, everything else by its value."""
    choices = Choice.__subclasses__()
    assert len(choices) >= 6
    for choice in choices:
        assert [m.name for m in choice] == list(choice.values()), choice


# --- defaults: written once, in the dataclasses -------------------------------------------


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "conf").glob("*.yaml")))
def test_no_primary_config_repeats_a_default_of_its_schema(name):
    """conf/<name>.yaml chooses the groups and sets what differs from its schema's defaults; a
    value equal to the default is a second copy of it (conf/config.yaml held all 26 of TrainConfig's)."""
    register_configs()
    raw = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / f"{name}.yaml"))
    schema = OmegaConf.get_type(ConfigStore.instance().load(f"{raw.pop('defaults')[0]}.yaml").node)
    defaults = flatten(dataclasses.asdict(schema()))
    repeated = [key for key, value in flatten(raw).items() if key in defaults and defaults[key] == value]
    assert not repeated, f"conf/{name}.yaml repeats its schema's defaults: {repeated}"


@pytest.mark.parametrize("table", DOCS_TABLES, ids=lambda t: t.path.name)
def test_the_key_tables_of_the_docs_are_generated_from_the_schemas(table):
    """docs/training.md (TrainConfig), docs/ttt.md (TTTConfig) and docs/iterative.md
    (IterativeConfig): regenerate with python -m runconfig.help (it rewrites the tables in place)."""
    text = table.path.read_text()
    page = f"docs/{table.path.name}"
    assert docs_with_key_table(text, table) == text, f"{page}'s key table is stale: run python -m runconfig.help {page}"


PIPELINE_SECTIONS = {"ttt.py": ("ttt", TTTConfig), "run_iterative_training.py": ("iterative", IterativeConfig)}


@pytest.mark.parametrize("schema", [TTTConfig, IterativeConfig], ids=lambda s: s.__name__)
def test_every_pipeline_key_has_a_description(schema):
    missing = [f.name for f in dataclasses.fields(schema) if not key_doc(f)]
    assert not missing, f"{schema.__name__}: declare {missing} with setting(..., doc=...)"


@pytest.mark.parametrize("script", PIPELINE_SECTIONS)
def test_a_pipeline_help_lists_its_keys_with_their_defaults_and_descriptions(script):
    """The generated key table, not Hydra's generic help screen."""
    section, schema = PIPELINE_SECTIONS[script]
    result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Powered by Hydra" not in result.stdout and "schema/" not in result.stdout
    assert f"docs/{section}.md" in result.stdout
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith(f"  {section}.")}
    for key, default, about in key_rows(schema(), f"{section}."):
        assert f"{key}={default}" in lines, f"{script} --help does not list {key}={default}"
        assert about in lines[f"{key}={default}"], lines[f"{key}={default}"]


# --- the diffusion pipeline's keys: one dataclass, the flags derived ------------------------


def test_run_full_pipeline_has_a_flag_per_pipeline_key_with_the_dataclass_default_and_description():
    import run_full_pipeline
    from pipelines.diffusion import DiffusionOptions
    from utils.schema import key_doc

    result = subprocess.run(
        [sys.executable, "run_full_pipeline.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    parsed = run_full_pipeline.parse_args(["diffusion_cpu"])
    for option in dataclasses.fields(DiffusionOptions):
        if option.name in run_full_pipeline.FLAGLESS:  # set by the JSON config or a preset only
            continue
        assert not hasattr(parsed, option.name)  # left out: the CONFIG's value, else the dataclass default, stands
        flag = "--" + option.name.replace("_", "-").removesuffix("s")
        assert flag in text and key_doc(option) in text, f"no {flag} with its description in --help"
    assert "evaluate the first N test tasks (0: all of them) (default 5)" in text


def test_a_pipeline_value_out_of_range_is_one_line_naming_the_key(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "run_full_pipeline.py"), "diffusion_cpu", "--eval-limit", "-1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == "error: invalid config values: pipeline.eval_limit=-1 (must be >= 0)\n"
