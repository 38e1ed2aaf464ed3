#!/usr/bin/env bash
# The learning tests (pytest -m learning) under every combination of CPU kernel, torch thread
# count and seed: they must pass whatever the kernels' rounding, not only on one machine.
#
#   tests/learning_matrix.sh                       # 3 kernels x 2 thread counts x 3 seeds
#   CAPS="native" THREADS="1" SEEDS="0 1 2" tests/learning_matrix.sh   # a part of it
#
# CAPS: values of ATEN_CPU_CAPABILITY ("native" leaves it unset: the machine's best, e.g.
# avx512); THREADS: ARCFORGE_TEST_THREADS (torch threads of the training tests, conftest.py);
# SEEDS: ARCFORGE_TEST_SEED (the runs' seed= and their data's). One line per combination,
# then a summary; pytest's output of each is kept under LOG_DIR. Exit status 1 if any failed.
#
# OMP_WAIT_POLICY=PASSIVE (the default here): idle OpenMP threads sleep instead of spinning.
# It changes no result, only the time: two threads of tiny-model training on a machine whose
# other core is busy spin against each other (78 s instead of 5 s measured for one run).
set -u
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

CAPS=${CAPS:-"default avx2 native"}
THREADS=${THREADS:-"1 2"}
SEEDS=${SEEDS:-"0 1 2"}
PYTHON=${PYTHON:-python}
LOG_DIR=${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/learning_matrix.XXXXXX")}
mkdir -p "$LOG_DIR"

count() {  # count KIND LOG: the number pytest's summary line gives for KIND (passed, failed, ...)
    tail -n 1 "$2" | grep -oE "[0-9]+ $1" | grep -oE "^[0-9]+" || echo 0
}

echo "learning matrix: caps [$CAPS] x threads [$THREADS] x seeds [$SEEDS]; logs in $LOG_DIR"
printf "%-16s %7s %4s %6s %6s %6s %8s\n" capability threads seed passed failed errors seconds
total=0 bad=0 failed_runs=""
for cap in $CAPS; do
    if [ "$cap" = native ]; then cap_env=(env -u ATEN_CPU_CAPABILITY); else cap_env=(env ATEN_CPU_CAPABILITY="$cap"); fi
    used=$("${cap_env[@]}" "$PYTHON" -c "import torch; print(torch.backends.cpu.get_cpu_capability())" 2>/dev/null)
    label="$cap"
    [ "$cap" = native ] && label="native($used)"
    for threads in $THREADS; do
        for seed in $SEEDS; do
            log="$LOG_DIR/${cap}-t${threads}-s${seed}.log"
            start=$(date +%s)
            "${cap_env[@]}" WANDB_MODE=disabled ARCFORGE_TEST_THREADS="$threads" ARCFORGE_TEST_SEED="$seed" \
                "$PYTHON" -m pytest -q -m learning -p no:cacheprovider >"$log" 2>&1
            rc=$?
            seconds=$(($(date +%s) - start))
            passed=$(count passed "$log") failed=$(count failed "$log") errors=$(count error "$log")
            total=$((total + 1))
            if [ "$rc" -ne 0 ] || [ "$passed" -eq 0 ]; then
                bad=$((bad + 1))
                failed_runs="$failed_runs $label/t$threads/s$seed"
            fi
            printf "%-16s %7s %4s %6s %6s %6s %8s\n" "$label" "$threads" "$seed" "$passed" "$failed" "$errors" "$seconds"
        done
    done
done
echo "summary: $((total - bad))/$total combinations passed every learning test"
if [ "$bad" -ne 0 ]; then
    echo "failed:$failed_runs (see $LOG_DIR)"
    exit 1
fi
