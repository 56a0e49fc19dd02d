"""The compiled fitters of two checkouts in one process, timed alternately.

    git worktree add /tmp/before HEAD~1      # the code before a change
    python benchmarks/bench_before_after.py /tmp/before [--motifs 2000] [--repeat 7]

Separate benchmark processes on a shared machine differ by 10 % from one run to the next,
more than a kernel change is allowed to cost (5 %). Here the other checkout's package is
copied under another name (``mlmotex_before``: its imports are relative), both fitters are
built for the same Keggin case (bench_refine.py's: the original ML-MotEx settings, one
core) and timed in turn, ``--repeat`` times each; the best time of each is compared. It
also checks that both give the same results, bit for bit.

Run it twice: the copy is kept (under the temporary folder, named by the checkout's path)
with its numba cache, and a kernel compiled in the process that runs it differs from the
same kernel loaded from the cache in the last bits (fastmath), so only a run in which both
were loaded from their caches compares results fairly.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "keggin_original.yaml"
PATHS = {"scale, zoom": ("scale", "zoom"), "scale, zoom, uiso": ("scale", "zoom", "uiso"),
         "scale, zoom, uiso, delta2": ("scale", "zoom", "uiso", "delta2")}


def build(package: str, calculator: str, refine: tuple[str, ...], n: int):
    """The compiled fitter of ``package`` for the Keggin case, and its motifs."""
    def mod(name):
        return importlib.import_module(f"{package}.{name}")

    config = mod("config").load_config(CONFIG)
    config = dataclasses.replace(config, fit=dataclasses.replace(config.fit, refine=refine),
                                 pdf=dataclasses.replace(config.pdf, calculator=calculator))
    structure = mod("io.structure").read_xyz(config.structure)
    data = mod("io.pdfdata").read_pdf_data(config.data[0])
    sl = data.fit_range(config.fit.rmin, config.fit.rmax)
    calc = mod("pdf").make_calculator(structure.elements, structure.xyz,
                                      mod("config").pdf_settings(config), data.r[sl])
    cat = mod("catalogue")
    space = cat.MotifSpace.from_structure(structure, config.permute, config.bond_threshold)
    settings = mod("fit.batch").fit_settings(config, structure)
    refining = mod("fit.refining")
    kind = (refining.RefiningFitter if refining.supports_refinement(calc, settings)
            else mod("fit.fast").BatchFitter)
    fitter = kind(calc, settings, data.g[sl][None])
    masks = space.atom_masks(cat.sample_masks(space.size, n, 0))
    fitter.fit(masks[:2])  # compile, or load the numba cache
    return fitter, masks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="the other checkout (its mlmotex_hpc/)")
    parser.add_argument("--motifs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    source = args.before.resolve() / "mlmotex_hpc"
    lot = Path(tempfile.gettempdir()) / (
        "mlmotex-before-" + hashlib.sha256(str(source).encode()).hexdigest()[:12])
    # copy2 keeps the files' times, so the copy's numba cache stays valid from run to run
    shutil.copytree(source, lot / "mlmotex_before", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(lot))
    packages = ("mlmotex_before", "mlmotex_hpc")
    print(f"{'refine':27s} {'calculator':10s} {'before':>8s} {'after':>8s}  after/before "
          "(fits per core-second, best of each)")
    for label, refine in PATHS.items():
        for calculator in ("debye", "realspace"):
            fitters = {p: build(p, calculator, refine, args.motifs) for p in packages}
            best = dict.fromkeys(packages, np.inf)
            outs = {}
            for _ in range(args.repeat):
                for p, (fitter, masks) in fitters.items():
                    start = time.process_time()
                    outs[p] = fitter.fit(masks)
                    best[p] = min(best[p], time.process_time() - start)
            same = all(np.array_equal(outs[packages[0]][k], outs[packages[1]][k])
                       for k in outs[packages[0]])
            before, after = (args.motifs / best[p] for p in packages)
            print(f"{label:27s} {calculator:10s} {before:8.0f} {after:8.0f}  {after / before:5.3f}"
                  f"{'' if same else '  results differ (on a second run too?)'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
