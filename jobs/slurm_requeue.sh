#!/bin/bash
# mlmotex-hpc under SLURM, for runs longer than one walltime: 5 minutes before the limit
# SLURM signals this script (USR1), which puts the job back in the queue; when it starts
# again, `mlmotex-hpc run CONFIG --resume` skips every batch already in motex.h5 and fits
# the rest. Submit once and let it requeue itself until the run is done:
#
#   sbatch jobs/slurm_requeue.sh CONFIG.yaml [more `mlmotex-hpc run` arguments]
#
# What a stop costs: a batch is marked done in motex.h5 only after its results are written
# and flushed, so a killed run (this requeue, a failed node, scancel) loses at most the
# batches in flight, one per rank. A requeued job keeps its id and appends to its log;
# SLURM counts the restarts in SLURM_RESTART_COUNT. A run that cannot get further within
# one walltime would requeue for ever: MLMOTEX_MAX_REQUEUES (default 10) caps the restarts.
# Modules, set-up and every environment variable: jobs/template_header.sh.
#SBATCH --job-name=mlmotex
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=64
#SBATCH --cpus-per-task=1
#SBATCH --exclusive
#SBATCH --time=04:00:00
#SBATCH --output=mlmotex-%j.log
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: sbatch jobs/slurm_requeue.sh CONFIG.yaml [mlmotex-hpc run arguments]" >&2
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

requeue() {
    echo "mlmotex job: USR1 (the walltime is nearly over), requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
}
restarts=${SLURM_RESTART_COUNT:-0}
if [ "$restarts" -lt "${MLMOTEX_MAX_REQUEUES:-10}" ]; then
    trap requeue USR1
else
    echo "mlmotex job: restarted $restarts times (MLMOTEX_MAX_REQUEUES), last attempt" >&2
    trap '' USR1
fi

# srun options: see slurm_multi_node.sh. The run goes to the background because bash runs
# a trap only between commands; `wait` is the one command the signal interrupts.
srun --nodes=1 --ntasks=1 mlmotex-hpc info --short
srun --ntasks="$SLURM_NTASKS" --cpu-bind=none \
    mlmotex-hpc run "$CONFIG" --resume "$@" ${MLMOTEX_ARGS-} &
wait $!
