import os
import subprocess

from conftest import ROOT

SCRIPT = ROOT / "container-onstart.sh"


def run(*args, env=None):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_dry_run_prints_steps_and_changes_nothing(tmp_path):
    venv = tmp_path / "venv"
    res = run("--dry-run", "--venv", str(venv), env={"WANDB_API_KEY": "secret-key-123"})
    assert res.returncode == 0, res.stderr
    assert "install --upgrade 'torch" in res.stdout
    assert "-e '.[gpu,sweep,dev]'" in res.stdout
    assert "wandb login" in res.stdout
    assert "secret-key-123" not in res.stdout + res.stderr  # never echo secrets
    assert not venv.exists()


def test_no_wandb_login_without_key():
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    res = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and "wandb login" not in res.stdout and "WANDB_API_KEY not set" in res.stdout


def test_unknown_option_fails():
    res = run("--bogus")
    assert res.returncode == 2 and "unknown option '--bogus'" in res.stderr
