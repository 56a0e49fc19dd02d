#!/usr/bin/env bash
# mlmotex-hpc on one SLURM node: one MPI rank per core.
#   sbatch jobs/slurm_single_node.sh configs/keggin.yaml
#SBATCH --job-name=mlmotex
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=32
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --output=mlmotex-%j.log
set -euo pipefail
CONFIG=${1:?usage: sbatch $0 CONFIG.yaml}
# Load the site's MPI and parallel HDF5 first, e.g.:  module load openmpi hdf5/parallel
# then set up once with:  bash scripts/bootstrap.sh   (creates .venv/ with h5py against them)
source "${MLMOTEX_HOME:-$PWD}/.venv/bin/activate"
export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1   # ranks give the parallelism
srun mlmotex-hpc run "$CONFIG"
