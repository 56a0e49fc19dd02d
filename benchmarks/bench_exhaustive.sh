#!/usr/bin/env bash
# Issue 18's benchmark: every motif of 109725.xyz (N = 24, 16,777,215 fits) on NP ranks
# (default 2) from scratch under GNU time, then `mlmotex-hpc convergence` on the table.
# About 40 min on a 2-core machine. Writes benchmarks/results/exhaustive_<NP>ranks.txt;
# the run's files (report.html, convergence.png) are in out/keggin_all.
#   bash benchmarks/bench_exhaustive.sh [NP]
set -euo pipefail
cd "$(dirname "$0")/.."
NP=${1:-2}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
export MLMOTEX_PROGRESS_INTERVAL=${MLMOTEX_PROGRESS_INTERVAL:-60}
config=benchmarks/configs/keggin_all.yaml
out=benchmarks/results/exhaustive_${NP}ranks.txt
mkdir -p benchmarks/results
{
  echo "# bench_exhaustive.sh on $(hostname), $(nproc) cores, $(date -Is), commit $(git rev-parse --short HEAD)"
  .venv/bin/mlmotex-hpc run "$config" --dry-run --ranks "$NP"
  start=$(date +%s)
  mpirun --bind-to none -n "$NP" /usr/bin/time -f "rank peak RSS %M kB, wall %e s" \
    .venv/bin/mlmotex-hpc run "$config" --overwrite
  echo "run wall $(( $(date +%s) - start )) s"
  ls -l out/keggin_all/motex.h5
  start=$(date +%s)
  mpirun --bind-to none -n "$NP" .venv/bin/mlmotex-hpc convergence out/keggin_all/motex.h5 \
    --sizes 100,1000,2000,10000,100000 --seeds 3
  echo "convergence wall $(( $(date +%s) - start )) s"
} 2>&1 | tee "$out"
