"""Everything that knows ranks; the only package that imports mpi4py.

``comm``      the communicator facade: ``get_comm``, static splits, broadcasts, a sleeping
              barrier, ranks and cores per node, the test hooks
``exits``     the exit policy: how an error on one rank or on all of them ends the job
``log``       rank-0 log lines and the progress/ETA helper
``fitting``   step 2: work units on demand (one-sided counter), the serial-HDF5 fallback
``learning``  steps 3-4: frame groups, the spread search, SHAP shares, block-ordered sums

MPI starts when a communicator is first asked for (``get_comm``), not on import, so a
serial command (``merge``) can run a stage with ``SoloComm`` and never start MPI.
"""
