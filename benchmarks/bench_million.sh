#!/usr/bin/env bash
# The 10^6-motif benchmark (issue 6): fit, learn and explain 10^6 C60 motifs on NP ranks
# (default 2), from scratch, with each rank's peak memory measured by GNU time.
# Takes about 35 min on a 2-core machine. Writes benchmarks/results/million_<NP>ranks.txt.
#   bash benchmarks/bench_million.sh [NP]
set -euo pipefail
cd "$(dirname "$0")/.."
NP=${1:-2}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
export MLMOTEX_PROGRESS_INTERVAL=${MLMOTEX_PROGRESS_INTERVAL:-60}
out=benchmarks/results/million_${NP}ranks.txt
mkdir -p benchmarks/results out/c60_million
{
  echo "# bench_million.sh on $(hostname), $(nproc) cores, $(date -Is), commit $(git rev-parse --short HEAD)"
  start=$(date +%s)
  # GNU time wraps each rank: "Maximum resident set size" is that rank's peak
  mpirun --bind-to none -n "$NP" /usr/bin/time -f "rank peak RSS %M kB, wall %e s" \
    .venv/bin/mlmotex-hpc run benchmarks/configs/c60_million.yaml --overwrite
  echo "total wall $(( $(date +%s) - start )) s"
} 2>&1 | tee "$out"
