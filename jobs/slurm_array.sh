#!/bin/bash
# A long time series under SLURM as a job array: each array task fits, learns and explains
# one block of frames (`mlmotex-hpc run CONFIG --frames I/N`, N = the number of tasks),
# writing output.dir/frames_START-STOP/motex.h5; a last job, started when every task has
# succeeded, joins them into output.dir/motex.h5 with the series' CSV and plots:
#
#   jid=$(sbatch --parsable --array=0-7 jobs/slurm_array.sh CONFIG.yaml)
#   sbatch --dependency=afterok:$jid --ntasks=1 --ntasks-per-node=1 jobs/slurm_array.sh --merge CONFIG.yaml
#
# The merge is one process: --ntasks-per-node=1 as well as --ntasks=1, since SLURM refuses
# --ntasks=1 beside this script's --ntasks-per-node=64 on nodes of fewer cores.
# Array indices must run 0..N-1 (a throttle such as --array=0-31%8 is fine); N may be
# anything up to the number of frames, and every task gets 1/N of them, give or take one.
# Each task's catalogue is the same (it is built from the config's seed), every frame's
# results are those of a single run of the whole series. A task is resumable: it runs
# with --resume, so resubmitting a failed or timed-out task (sbatch --array=5 ...) fits
# only what it had not finished. `--merge` checks that the tasks' files belong to one
# config and cover every frame once; run it again after fixing a missing task.
# Modules, set-up and every environment variable: jobs/template_header.sh.
#SBATCH --job-name=mlmotex-series
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=64
#SBATCH --cpus-per-task=1
#SBATCH --time=02:00:00
#SBATCH --output=mlmotex-%A_%a.log
set -euo pipefail

merge=0
if [ "${1-}" = "--merge" ]; then
    merge=1
    shift
fi
if [ $# -lt 1 ]; then
    echo "usage: sbatch --array=0-N jobs/slurm_array.sh CONFIG.yaml [mlmotex-hpc run arguments]" >&2
    echo "       sbatch --dependency=afterok:JOBID jobs/slurm_array.sh --merge CONFIG.yaml" >&2
    exit 2
fi
CONFIG=$1
shift

modules=${MLMOTEX_MODULES-openmpi hdf5/parallel}
if [ -n "$modules" ]; then set +u; module load $modules; set -u; fi
VENV=${MLMOTEX_VENV:-$PWD/.venv}
source "$VENV/bin/activate"
export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-$VENV/numba-cache}

if [ "$merge" = 1 ]; then
    # Serial: one process reads the tasks' files and writes the merged one.
    exec mlmotex-hpc merge "$CONFIG" "$@"
fi

if [ -z "${SLURM_ARRAY_TASK_ID-}" ]; then
    echo "slurm_array.sh: not an array task: submit with sbatch --array=0-N (or use --merge)" >&2
    exit 2
fi
task=$(( SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0} ))
tasks=${SLURM_ARRAY_TASK_COUNT:?SLURM_ARRAY_TASK_COUNT unset: SLURM older than 18.08?}
echo "mlmotex array task $task of $tasks (job ${SLURM_ARRAY_JOB_ID-?})"
srun --nodes=1 --ntasks=1 mlmotex-hpc info --short
srun --ntasks="$SLURM_NTASKS" --cpu-bind=none \
    mlmotex-hpc run "$CONFIG" --frames "$task/$tasks" --resume "$@" ${MLMOTEX_ARGS-}
