#!/bin/bash
# mlmotex-hpc on one SLURM node, one MPI rank per core.
#
#   sbatch jobs/slurm_single_node.sh CONFIG.yaml [more `mlmotex-hpc run` arguments]
#
# Ask for the walltime that `mlmotex-hpc run CONFIG.yaml --dry-run --ranks 32` prints.
# Modules, set-up and every environment variable: jobs/template_header.sh.
#
# --ntasks-per-node: the node's core count. --exclusive: after the fits, rank 0 trains
# XGBoost on every core of the node while the other ranks sleep.
#SBATCH --job-name=mlmotex
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=32
#SBATCH --cpus-per-task=1
#SBATCH --exclusive
#SBATCH --time=01:00:00
#SBATCH --output=mlmotex-%j.log
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: sbatch jobs/slurm_single_node.sh CONFIG.yaml [mlmotex-hpc run arguments]" >&2
    exit 2
fi
CONFIG=$1
shift

# The MPI and parallel HDF5 the venv was built against (your site's names: `module avail`).
modules=${MLMOTEX_MODULES-openmpi hdf5/parallel}
if [ -n "$modules" ]; then set +u; module load $modules; set -u; fi
VENV=${MLMOTEX_VENV:-$PWD/.venv}
source "$VENV/bin/activate"
export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1        # the ranks are the parallelism
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-$VENV/numba-cache}

# mpirun takes the node list from SLURM and needs no PMI set-up (srun: see
# slurm_multi_node.sh). --bind-to none leaves rank 0 free to use every core for XGBoost.
mpirun -n 1 mlmotex-hpc info --short
mpirun -n "$SLURM_NTASKS" --bind-to none mlmotex-hpc run "$CONFIG" "$@" ${MLMOTEX_ARGS-}
