#!/usr/bin/env bash
# Bootstrap a GPU pod for ARCForge: system packages, a venv (uv when available), CUDA torch,
# this project with the [gpu,sweep] extras, and `wandb login` when WANDB_API_KEY is set.
# Safe to run twice. `--dry-run` prints the steps without running them.
#
#   bash container-onstart.sh [--dry-run] [--venv DIR]
set -euo pipefail

DRY_RUN=0
VENV_DIR="${ARCFORGE_VENV:-.venv}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --venv) VENV_DIR="$2"; shift ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "container-onstart.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")"

step() {  # print a step; run it unless --dry-run
  echo "+ $*"
  if [[ $DRY_RUN -eq 0 ]]; then eval "$@"; fi
}

SUDO=""
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null; then SUDO="sudo"; fi

# 1. System packages (skipped when already present, so a second run does nothing here).
missing=()
for pkg in git build-essential python3-venv python3-dev ninja-build; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]] && command -v apt-get >/dev/null; then
  step "$SUDO apt-get update -qq"
  step "$SUDO apt-get install -y -qq ${missing[*]}"
fi

# 2. A virtual environment (uv when available: it resolves the CUDA wheels much faster).
if command -v uv >/dev/null; then
  PIP="uv pip"
  [[ -d "$VENV_DIR" ]] || step "uv venv '$VENV_DIR'"
else
  PIP="python -m pip"
  [[ -d "$VENV_DIR" ]] || step "python3 -m venv '$VENV_DIR'"
fi
step "source '$VENV_DIR/bin/activate'"

# 3. CUDA torch (PyPI's Linux wheels are CUDA builds), then the project with GPU extras.
#    flash-attn compiles against the installed torch, hence --no-build-isolation.
step "$PIP install --upgrade 'torch>=2.4,<2.15'"
step "$PIP install packaging ninja wheel setuptools"
step "$PIP install --no-build-isolation -e '.[gpu,sweep,dev]'"

# 4. wandb: log in only with a key in the environment; the key is never printed.
if [[ -n "${WANDB_API_KEY:-}" ]]; then
  step 'wandb login --relogin "$WANDB_API_KEY" >/dev/null'
else
  echo "# WANDB_API_KEY not set: wandb stays offline (runs sync later with 'wandb sync')."
fi

step "python -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.cuda.is_available())'"
