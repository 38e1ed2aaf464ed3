#!/usr/bin/env bash
# One-GPU readiness check of ARCForge (numerics, speed, a torchrun run): prints one markdown
# table, exit status 1 when a check FAILED. Under 8 minutes on one H100/H200.
#
#   bash bench/gpu_check.sh            # GPU sizes (needs CUDA)
#   bash bench/gpu_check.sh --cpu      # the same checks at toy sizes on CPU
#   bash bench/gpu_check.sh --help     # every flag and what each row means (bench/gpu_check.py)
#
# Python: $PYTHON if set, else the project's venv ($ARCFORGE_VENV or .venv, as
# container-onstart.sh makes it), else python3.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
elif [[ -x "${ARCFORGE_VENV:-.venv}/bin/python" ]]; then
  py="${ARCFORGE_VENV:-.venv}/bin/python"
else
  py=python3
fi
export WANDB_MODE="${WANDB_MODE:-disabled}" TQDM_DISABLE=1
exec "$py" bench/gpu_check.py "$@"
