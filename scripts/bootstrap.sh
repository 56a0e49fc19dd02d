#!/usr/bin/env bash
# Set up everything mlmotex-hpc needs in .venv/ at the repository root.
# Idempotent: each step checks first and is skipped when already satisfied.
#
#   * Debian as root: Open MPI + parallel HDF5 from Debian's packages when missing.
#   * Cluster (no root): uses the MPI / HDF5 already on PATH (load your modules first).
#   * mpi4py: always the binary wheel (never built from source).
#   * h5py: built against parallel HDF5 when an MPI-enabled HDF5 is found; otherwise
#     the serial wheel, and mlmotex-hpc announces its serial-HDF5 fallback at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
say() { printf '[bootstrap] %s\n' "$*"; }
# pip's own output (setuptools' build notes, resolver chatter) goes to a log; a failure
# prints its end.
LOG=${BOOTSTRAP_LOG:-$PWD/bootstrap.log}
: > "$LOG"
pip_install() {
  if ! "$PY" -m pip install -q "$@" >>"$LOG" 2>&1; then
    say "pip install $* failed; the end of $LOG:"
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}

have_parallel_hdf5() { pkg-config --exists hdf5-openmpi 2>/dev/null || command -v h5pcc >/dev/null 2>&1; }

# 1. System MPI and parallel HDF5 (Debian, root only).
if ! { command -v mpirun >/dev/null && have_parallel_hdf5; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Open MPI and parallel HDF5 from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq libhdf5-openmpi-dev openmpi-bin pkg-config >/dev/null
  else
    say "no MPI/parallel HDF5 found and not root on Debian: using what is on PATH"
  fi
fi

# 2. Virtual environment with the build tools h5py needs.
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
say "installing the build tools (pip, setuptools, Cython, numpy, numba)"
pip_install --upgrade pip "setuptools>=77" wheel
pip_install Cython pkgconfig numpy numba  # numba pins the numpy it supports

# 3. mpi4py: binary wheel only (it loads the system libmpi at run time).
if ! "$PY" -c 'import mpi4py' 2>/dev/null; then
  say "installing the mpi4py binary wheel"
  pip_install --only-binary=mpi4py mpi4py
fi

# 4. h5py against parallel HDF5 when possible.
if ! "$PY" -c 'import h5py, sys; sys.exit(0 if h5py.get_config().mpi else 1)' 2>/dev/null; then
  if pkg-config --exists hdf5-openmpi 2>/dev/null && command -v mpicc.openmpi >/dev/null; then
    say "building h5py against parallel HDF5 (a few minutes)"
    CC=mpicc.openmpi HDF5_MPI=ON HDF5_PKGCONFIG_NAME=hdf5-openmpi \
      pip_install --force-reinstall --no-deps --no-binary=h5py --no-build-isolation h5py
  elif command -v h5pcc >/dev/null 2>&1 && command -v mpicc >/dev/null; then
    say "building h5py against the parallel HDF5 on PATH (h5pcc)"
    HDF5_DIR=${HDF5_DIR:-$(dirname "$(dirname "$(command -v h5pcc)")")}
    CC=mpicc HDF5_MPI=ON HDF5_DIR="$HDF5_DIR" \
      pip_install --force-reinstall --no-deps --no-binary=h5py --no-build-isolation h5py
  elif ! "$PY" -c 'import h5py' 2>/dev/null; then
    say "no parallel HDF5 available: installing serial h5py (serial-HDF5 fallback)"
    pip_install h5py
  fi
fi

# 5. The package itself with its dependencies (editable) and the test tools.
say "installing mlmotex-hpc and its dependencies"
pip_install -e ".[test]"
"$VENV/bin/mlmotex-hpc" info --short || true
say "done"
