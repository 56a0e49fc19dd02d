"""Parse time per crystal file: what a database screen pays for each of 10⁵ CIFs.

    python benchmarks/bench_cif.py [FOLDER] [--repeat 5]

Reads every ``*.cif`` of FOLDER (default: the 24 shipped in ``mlmotex_hpc/examples/cif``)
as a starting model's cell (:func:`mlmotex_hpc.io.structure.read_structure`: gemmi, the
file's own operators, partial sites kept) and, in the same run, with diffpy.structure's
``loadStructure`` (its own operator tables), the best of ``--repeat`` passes each. Prints
milliseconds per CIF and the files each reader refuses or misreads (atoms closer than
0.5 Å).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from mlmotex_hpc.errors import InputError
from mlmotex_hpc.io.structure import read_structure

ROOT = Path(__file__).resolve().parents[1]


def ours(path: Path):
    try:
        return read_structure(path, partial="keep").xyz
    except InputError:
        return None


def diffpy(path: Path):
    from diffpy.structure import loadStructure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.array(loadStructure(str(path), eps=1e-3).xyz_cartn)
    except Exception:  # noqa: BLE001 - any failure of the other reader is a refusal here
        return None


def timed(reader, files, repeat):
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        out = [reader(f) for f in files]
        best = min(best, time.perf_counter() - start)
    return best / len(files), out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path,
                        default=ROOT / "mlmotex_hpc" / "examples" / "cif")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    files = sorted(args.folder.glob("*.cif"))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{len(files)} CIFs from {args.folder}, best of {args.repeat}")
    for name, reader in (("gemmi (io/cif.py)", ours), ("diffpy.structure", diffpy)):
        per, cells = timed(reader, files, args.repeat)
        refused = [f.stem for f, c in zip(files, cells, strict=True) if c is None]
        close = [f.stem for f, c in zip(files, cells, strict=True)
                 if c is not None and len(c) > 1 and cKDTree(c).query_pairs(0.5)]
        print(f"{name:18s} {1e3 * per:7.2f} ms per CIF; refused: {', '.join(refused) or '-'}; "
              f"atoms closer than 0.5 Å: {', '.join(close) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
