"""mlmotex-hpc: ML-MotEx structural motif extraction from PDF data, at HPC scale.

The four stages, each a sub-package a reader can name:

``io``         reading structure models and measured PDFs
``catalogue``  sampling candidate motifs (masks over the permutable atoms)
``pdf``        Debye and real-space PDF calculators (numba kernels)
``fit``        fitting each motif's PDF to the data (scale, zoom, ...)
``parallel``   the MPI driver and its HDF5 results store
``learn``      XGBoost regression of Rw on the masks, and SHAP atom contributions
``output``     CSV tables, structure files and the printed summary
``cli``        the ``mlmotex-hpc`` command line
"""

__version__ = "0.1.0"
