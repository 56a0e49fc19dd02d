"""The subcommands of ``mlmotex-hpc``, one module each: ``add_arguments`` and ``main``.

Each module imports only the standard library at its top, so that building the parser
(``mlmotex-hpc --help``) loads neither numba, nor h5py, nor MPI; ``main`` imports the
stages it runs. Only ``run`` (without ``--dry-run``), ``screen``, ``learn`` and ``convergence``
start MPI; the others
are serial programs, and under ``mpirun`` the ranks other than 0 do nothing.

===========  ==============================================================
init         a commented starting config: every key, its default and meaning
run          the four ML-MotEx steps from a YAML config (``--dry-run``: cost)
screen       rank structure files against the data (candidate clusters)
cut          a finite cluster cut from a crystal (cookie-cutter)
learn        steps 3-4 again on the finished fits of a run
convergence  from an exhaustive run: how many motifs ML-MotEx needs
merge        join the files of a job array's tasks
plot         the figures, structure files and report of a finished run again
refine       refine one motif with diffpy.srfit
pdf          the PDF of a structure model
info         the software stack
===========  ==============================================================
"""

from __future__ import annotations

import os

#: Subcommands in the order ``--help`` lists them.
COMMANDS = ("init", "run", "screen", "cut", "pdf", "refine", "learn", "convergence", "merge",
            "plot", "info")

_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID")


def launcher_rank() -> int:
    """This process's rank as the MPI launcher announced it (0 outside MPI).

    Read from the environment, so that errors found before MPI starts (or in commands
    that never start it) are printed by one rank only.
    """
    for name in _RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value.isdigit():
            return int(value)
    return 0
