#!/bin/bash
# Template for an mlmotex-hpc job script, and the reference for the modules and environment
# variables every script in jobs/ uses. For a scheduler or site the other scripts do not
# cover: copy it, put the scheduler's directives right below the first line, edit the
# launch line at the end. As it is, it runs on the machine it is started on:
#
#   MLMOTEX_MODULES= MLMOTEX_RANKS=8 bash jobs/template_header.sh CONFIG.yaml [run arguments]
#
# ---- Set-up, once, on a login node ------------------------------------------------------
#   module load openmpi hdf5/parallel python/3.11   # your site's names: module avail / spider
#   bash scripts/bootstrap.sh                        # see README.md, "Two commands"
# bootstrap.sh creates .venv/ (VENV=DIR picks another folder, PYTHON=python3.11 the
# interpreter). With the modules loaded it finds the parallel HDF5 through `h5pcc` on PATH
# and builds h5py against it with mpicc (HDF5_DIR: the folder above h5pcc's bin/; set it
# when that guess is wrong). mpi4py is the binary wheel, which loads the module's libmpi at
# run time, so every job must load the same modules as the set-up. Check with
#   .venv/bin/mlmotex-hpc info     # the module's MPI library, and "h5py parallel (MPI)"
# An h5py without MPI still works: the serial-HDF5 fallback, where rank 0 writes everything.
# Before a big job, `mlmotex-hpc run CONFIG --dry-run --ranks N` prints the catalogue size,
# the fits per core-second and the walltime to ask for.
#
# ---- Environment variables --------------------------------------------------------------
# Read by mlmotex-hpc:
#   MLMOTEX_SERIAL_HDF5=1     the serial-HDF5 fallback even when h5py has MPI (same file
#                             content): for file systems where MPI-IO is missing or broken,
#                             such as NFS home folders.
#   MLMOTEX_FAULT=STAGE:RANK  test hook: an error on that rank in that stage (e.g. fit:1),
#                             to check that one rank's fault ends the job. Never in real runs.
#   OMPI_COMM_WORLD_RANK, PMIX_RANK, PMI_RANK, SLURM_PROCID
#                             set by the launcher; read so that only rank 0 reports an
#                             argument error.
# Read by the scripts in jobs/:
#   MLMOTEX_VENV              the virtual environment (default: $PWD/.venv)
#   MLMOTEX_MODULES           the modules to load (default "openmpi hdf5/parallel"; "": none)
#   MLMOTEX_ARGS              more `mlmotex-hpc run` arguments, e.g. "--out DIR --quiet"
#   MLMOTEX_CONFIG            pbs.sh: the config, where qsub passes no arguments
#   MLMOTEX_RANKS             this template: the rank count (default: every core, nproc)
#   MLMOTEX_MAX_REQUEUES      slurm_requeue.sh: restarts before it gives up (default 10)
#   SLURM_NTASKS, SLURM_JOB_ID, SLURM_RESTART_COUNT, PBS_O_WORKDIR, PBS_NODEFILE
#                             set by the scheduler
# Threads, numba, MPI, HDF5:
#   OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1
#                             one rank per core is the parallelism; a thread pool (OpenMP,
#                             BLAS, numba) in every rank would put dozens of threads on each
#                             core. Rank 0's XGBoost gets an explicit thread count, the cores
#                             it may run on, which these do not cap: learning still uses the
#                             whole node unless the launcher pins each rank to one core
#                             (hence mpirun --bind-to none, srun --cpu-bind=none).
#   NUMBA_CACHE_DIR           where numba keeps the compiled PDF and fit kernels (default
#                             here: $MLMOTEX_VENV/numba-cache; the Makefile uses a folder in
#                             .venv/ too). Compiling takes tens of seconds per process. With
#                             one folder on the shared file system, all ranks of all jobs
#                             reuse one compilation instead of each rank of each job
#                             compiling again, and numba never has to write next to a
#                             read-only install. Entries are per CPU model, so partitions
#                             with different CPUs can share it. numba misses some source
#                             changes (a jitted function calling one in another file):
#                             empty the folder after updating mlmotex-hpc.
#   HDF5_USE_FILE_LOCKING=FALSE
#                             only if opening motex.h5 fails with "unable to lock file": a
#                             Lustre, GPFS or NFS mount without flock support.
#   SLURM_MPI_TYPE=pmix       srun's PMI, the same as srun --mpi=pmix: slurm_multi_node.sh
#   ROMIO_HINTS=FILE          MPI-IO hints (Lustre striping) for ROMIO: slurm_multi_node.sh
#   OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
#                             Open MPI refuses to run as root without both (containers, CI;
#                             the Makefile and the tests set them). Not for a user account.
#   OMPI_MCA_rmaps_base_oversubscribe=1
#                             Open MPI: more ranks than cores (tests; slow for real runs).
#   OMPI_MCA_io=romio321      Open MPI's other MPI-IO layer (`ompi_info | grep romio` names
#                             it), if writing motex.h5 fails or crawls with the default one.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: bash jobs/template_header.sh CONFIG.yaml [mlmotex-hpc run arguments]" >&2
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
# export HDF5_USE_FILE_LOCKING=FALSE
# export MLMOTEX_SERIAL_HDF5=1

# The launch line: your scheduler's launcher and its rank count.
mpirun -n 1 mlmotex-hpc info --short
mpirun -n "${MLMOTEX_RANKS:-$(nproc)}" --bind-to none \
    mlmotex-hpc run "$CONFIG" "$@" ${MLMOTEX_ARGS-}
