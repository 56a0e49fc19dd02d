#!/bin/bash
#PBS -N mlmotex
#PBS -l select=2:ncpus=64:mpiprocs=64
#PBS -l walltime=02:00:00
#PBS -j oe
#PBS -o mlmotex.log
# mlmotex-hpc under PBS Pro or Torque, one MPI rank per core of every node.
#
#   qsub -v MLMOTEX_CONFIG=CONFIG.yaml jobs/pbs.sh          (PBS Pro)
#   qsub -F "CONFIG.yaml [mlmotex-hpc run arguments]" jobs/pbs.sh    (Torque)
#
# select=2:ncpus=64:mpiprocs=64 is 2 nodes of 64 cores with 64 ranks each (Torque:
# `#PBS -l nodes=2:ppn=64`); $PBS_NODEFILE has one line per rank. The output folder must
# be on a file system every node sees (see slurm_multi_node.sh). Keep the #PBS lines
# first: qsub ignores any that come after a command.
# Modules, set-up and every environment variable: jobs/template_header.sh.
set -euo pipefail

CONFIG=${1:-${MLMOTEX_CONFIG:-}}
if [ -z "$CONFIG" ]; then
    echo "usage: qsub -v MLMOTEX_CONFIG=CONFIG.yaml jobs/pbs.sh" >&2
    echo "   or: qsub -F \"CONFIG.yaml [mlmotex-hpc run arguments]\" jobs/pbs.sh" >&2
    exit 2
fi
if [ $# -gt 0 ]; then shift; fi
cd "$PBS_O_WORKDIR"         # PBS starts in $HOME; relative paths mean the submit folder

# The MPI and parallel HDF5 the venv was built against (your site's names: `module avail`).
modules=${MLMOTEX_MODULES-openmpi hdf5/parallel}
if [ -n "$modules" ]; then set +u; module load $modules; set -u; fi
VENV=${MLMOTEX_VENV:-$PWD/.venv}
source "$VENV/bin/activate"
export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1        # the ranks are the parallelism
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-$VENV/numba-cache}

# Open MPI's options; MPICH and Intel MPI: -f "$PBS_NODEFILE" -bind-to none.
# --bind-to none leaves rank 0 free to use every core of its node for XGBoost.
NRANKS=$(wc -l < "$PBS_NODEFILE")
mpiexec -n 1 mlmotex-hpc info --short
mpiexec -n "$NRANKS" --hostfile "$PBS_NODEFILE" --bind-to none \
    mlmotex-hpc run "$CONFIG" "$@" ${MLMOTEX_ARGS-}
