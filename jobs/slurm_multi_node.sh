#!/bin/bash
# mlmotex-hpc on several SLURM nodes: srun starts one MPI rank per core.
#
#   sbatch jobs/slurm_multi_node.sh CONFIG.yaml --out /scratch/$USER/run1
#
# The output folder (--out, or output.dir of the config) must be on a shared parallel file
# system that every node sees (Lustre, GPFS, BeeGFS), never node-local /tmp: every rank
# writes its own batches into one motex.h5 through MPI-IO. On Lustre, stripe the folder
# before the first run (files created in it inherit the striping):
#   mkdir -p /scratch/$USER/run1 && lfs setstripe -c 8 -S 4M /scratch/$USER/run1
# (ROMIO-based MPIs also take striping_factor / striping_unit from a file named by
# ROMIO_HINTS, applied when the file is created.)
# Modules, set-up and every environment variable: jobs/template_header.sh.
#
# 4 nodes x 64 cores = 256 ranks; --ntasks-per-node: the nodes' core count.
#SBATCH --job-name=mlmotex
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=64
#SBATCH --cpus-per-task=1
#SBATCH --exclusive
#SBATCH --time=02:00:00
#SBATCH --output=mlmotex-%j.log
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: sbatch jobs/slurm_multi_node.sh CONFIG.yaml [mlmotex-hpc run arguments]" >&2
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
# Only if opening motex.h5 fails with "unable to lock file" (a Lustre, GPFS or NFS mount
# without flock support):
# export HDF5_USE_FILE_LOCKING=FALSE

# srun needs the PMI your MPI was built for. Plain srun uses the site default (MpiDefault);
# `srun --mpi=list` shows the choices: pmix for Open MPI 4/5, pmi2 for MPICH and Intel MPI.
# Set it with `export SLURM_MPI_TYPE=pmix` (same as srun --mpi=pmix). A wrong one shows as
# every rank being "rank 0 of 1" or as MPI_Init failing.
# --cpu-bind=none leaves rank 0 free to use every core of its node for XGBoost.
srun --nodes=1 --ntasks=1 mlmotex-hpc info --short
srun --ntasks="$SLURM_NTASKS" --cpu-bind=none mlmotex-hpc run "$CONFIG" "$@" ${MLMOTEX_ARGS-}
