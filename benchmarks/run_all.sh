#!/usr/bin/env bash
# Runs every benchmark with its default (CPU) settings, one after another, and refreshes the
# generated all-reduce section of BENCHMARKS.md. Results go to benchmarks/results/*.json,
# the console output to benchmarks/results/run_all-<UTC time>.log.
#
#   bash benchmarks/run_all.sh                        # everything
#   bash benchmarks/run_all.sh bench_scaling allreduce_model   # only these (names without .py)
#
# Benchmarks are timed side by side inside each script; a shared or busy machine slows them
# all, so note the load (uptime) with the results. The PyTorch peer needs the `bench` extra
# (pip install -e ".[bench]", CPU wheel of torch==2.13.0) and is skipped without it.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
mkdir -p benchmarks/results
log="benchmarks/results/run_all-$(date -u +%Y%m%dT%H%M%SZ).log"

if (($#)); then
  names=("$@")
else
  names=(allreduce_model)
  for f in benchmarks/bench_*.py; do names+=("$(basename "$f" .py)"); done
fi

status=0
for name in "${names[@]}"; do
  script="benchmarks/${name}.py"
  [[ -f "$script" ]] || { echo "run_all: no $script" | tee -a "$log"; status=1; continue; }
  args=()
  case "$name" in
    allreduce_model) args=(--write-md) ;;
    bench_peer_pytorch)
      if ! "$PY" -c "import torch" 2>/dev/null; then
        echo "run_all: skipping $name (torch not installed: pip install -e '.[bench]')" | tee -a "$log"
        continue
      fi ;;
  esac
  echo "=== $name ($(date -u +%H:%M:%S) UTC, load: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null))" | tee -a "$log"
  if ! "$PY" "$script" "${args[@]}" 2>&1 | tee -a "$log"; then
    echo "run_all: $name FAILED" | tee -a "$log"
    status=1
  fi
done
echo "run_all: log in $log"
exit $status
