"""The stage order, without MPI of its own: it calls ``parallel/`` for what spans ranks.

``inputs``  rank 0: every input checked, the catalogue, memory/disk preflight, resume
``run``     ``run(config, comm)``: inputs -> fit -> learn -> explain -> outputs; ``learn``
``dryrun``  the cost of a run, measured on a sample (serial, no MPI)
``merge``   a job array's files joined into one (serial, no MPI)
"""
