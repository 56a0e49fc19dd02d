"""Fit rate and quality of every refinement path, with the answers checked.

    python benchmarks/bench_refine.py [--motifs 2000] [--compared 200] [--srfit 10] [--repeat 1]

The Keggin case at the original ML-MotEx settings (109725.xyz against
DanMAX_AlphaKeggin.gr, r 1.6-10 Å on the data's 0.01 Å grid, qmin 0.7, qmax 20, qdamp
0.05, qbroad 0.01, Uiso 0.00507 Å² to start), one core, kernels compiled, for
``fit.refine``:

* ``[scale, zoom]``                  the compiled batch fitter (fit/fast.py);
* ``[scale, zoom, uiso]``            the compiled refining fitter (fit/refining.py);
* ``[scale, zoom, uiso, delta2]``    the same, delta2 in [0, 2.5] Å².

For each path and calculator it prints fits per core-second, and, measured in the same
run on the same motifs, the rate of the general fitter (fit/fitter.py: SciPy driving
the same PDF calculator from Python) and their ratio. Quality, on ``--compared`` random
motifs: the largest amount by which the compiled path's Rw exceeds the general fitter's
(must be <= 1e-4 for the motifs the general fitter fits below Rw 0.9; the excess over all
motifs is printed beside it) and how often it finds a lower minimum (by more than 1e-6);
against a
diffpy.srfit FitRecipe (``--srfit`` motifs, tests/test_srfit.py style) the same. Exactness:
the reported Rw against that of the straightforward implementation (pdf/reference.py)
at the reported parameters (must be <= 1e-8). A failed check exits with code 1. Results
go to ``benchmarks/results/refine.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from mlmotex_hpc.catalogue import MotifSpace, sample_masks
from mlmotex_hpc.config import load_config, pdf_settings
from mlmotex_hpc.fit.batch import fit_settings
from mlmotex_hpc.fit.fast import BatchFitter
from mlmotex_hpc.fit.fitter import STATUS_NAMES, fit_motif, scale_and_rw
from mlmotex_hpc.fit.refining import RefiningFitter, supports_refinement
from mlmotex_hpc.fit.srfit import motif_recipe, refine_recipe, start_zooms
from mlmotex_hpc.io.pdfdata import read_pdf_data
from mlmotex_hpc.io.structure import read_xyz
from mlmotex_hpc.pdf import make_calculator
from mlmotex_hpc.pdf.reference import reference_gr

ROOT = Path(__file__).resolve().parents[1]
ORIGINAL = ROOT / "configs" / "keggin_original.yaml"
RESULTS = ROOT / "benchmarks" / "results"
PATHS = {
    "scale, zoom": ("scale", "zoom"),
    "scale, zoom, uiso": ("scale", "zoom", "uiso"),
    "scale, zoom, uiso, delta2": ("scale", "zoom", "uiso", "delta2"),
}
#: Largest Rw excess over the general fitter and largest error of a reported Rw allowed.
RW_WORSE, RW_EXACT = 1e-4, 1e-8
#: Motifs whose general-fitter Rw is above this explain next to nothing of the data; their
#: Rw surfaces have several minima of nearly equal depth, so which one a search ends in
#: is chance. The quality check applies below it; the excess above it is printed too.
MEANINGFUL = 0.9


def setup(calculator: str, refine: tuple[str, ...]):
    config = load_config(ORIGINAL)
    config = dataclasses.replace(
        config, fit=dataclasses.replace(config.fit, refine=refine),
        pdf=dataclasses.replace(config.pdf, calculator=calculator))
    structure = read_xyz(config.structure)
    data = read_pdf_data(config.data[0])
    sl = data.fit_range(config.fit.rmin, config.fit.rmax)
    calc = make_calculator(structure.elements, structure.xyz, pdf_settings(config), data.r[sl])
    space = MotifSpace.from_structure(structure, config.permute, config.bond_threshold)
    return config, structure, data, sl, calc, space, fit_settings(config, structure)


def compiled_fitter(calc, fs, g):
    kind = RefiningFitter if supports_refinement(calc, fs) else BatchFitter
    return kind(calc, fs, g[None]) if kind.accepts(calc, fs) else None


def rate(fitter, masks, repeat: int = 1) -> tuple[float, dict]:
    """Fits per core-second, the best of ``repeat`` timings (the least disturbed)."""
    fitter.fit(masks[:2])  # compile, or load the numba cache
    best = np.inf
    for _ in range(repeat):
        start = time.process_time()
        out = fitter.fit(masks)
        best = min(best, time.process_time() - start)
    return len(masks) / best, out


def general(calc, fs, g, masks, base_uiso) -> tuple[float, list]:
    start = time.process_time()
    results = [fit_motif(calc, calc.prepare(m), g, fs, None, base_uiso) for m in masks]
    return len(masks) / (time.process_time() - start), results


def reported_error(calc, structure, g, masks, out, refine) -> float:
    """Largest |reported Rw − Rw of the reference G at the reported parameters|."""
    err = 0.0
    for j, mask in enumerate(masks):
        uiso = {el: out[f"uiso_{el}"][0, j] for el in calc.elements} if "uiso" in refine \
            else None
        delta2 = out["delta2"][0, j] if "delta2" in refine else None
        ref = reference_gr(calc, structure.xyz, mask, out["zoom"][0, j], uiso, delta2)
        err = max(err, abs(scale_and_rw(g, ref)[1] - out["rw"][0, j]))
    return err


def srfit_rw(calc, data, mask, fs) -> float:
    recipe = motif_recipe(calc, calc.prepare(mask), data.r, data.g, refine=fs.refine,
                          zoom_bounds=fs.zoom_bounds, uiso_bounds=fs.uiso_bounds,
                          delta2_bounds=fs.delta2_bounds)
    return refine_recipe(recipe, zooms=start_zooms(fs.zoom_bounds)).rw


def bench_path(label, refine, calculator, args, failures) -> dict:
    config, structure, data, sl, calc, space, fs = setup(calculator, refine)
    g = data.g[sl]
    masks = space.atom_masks(sample_masks(space.size, args.motifs, 0))
    row = {"path": label, "calculator": calculator, "motifs": args.motifs}
    fitter = compiled_fitter(calc, fs, g)
    compared = masks[: args.compared]
    n_general = min(args.compared, args.general)
    if fitter is None:
        row["compiled"] = None
        general_rate, _ = general(calc, fs, g, compared[:n_general], config.uiso)
        row.update(general_rate=general_rate)
        return row
    fast_rate, out = rate(fitter, masks, args.repeat)
    general_rate, results = general(calc, fs, g, compared[:n_general], config.uiso)
    # quality on the compared motifs (the general fitter is slow: ``--general`` of them
    # were timed, the rest only fitted)
    results += [fit_motif(calc, calc.prepare(m), g, fs, None, config.uiso)
                for m in compared[n_general:]]
    general_rw = np.array([r.rw for r in results])
    diff = out["rw"][0, : len(compared)] - general_rw
    meaningful = general_rw < MEANINGFUL
    statuses = np.bincount(out["status"][0], minlength=4)
    row.update(
        compiled=fast_rate, general_rate=general_rate, ratio=fast_rate / general_rate,
        worse_max=float(max(diff[meaningful].max(initial=0.0), 0.0)),
        worse_max_all=float(max(diff.max(), 0.0)), n_meaningless=int((~meaningful).sum()),
        lower_fraction=float(np.mean(diff < -1e-6)),
        equal_fraction=float(np.mean(np.abs(diff) <= 1e-6)), compared=len(compared),
        exact_err=reported_error(calc, structure, g, masks[:10], out, refine),
        statuses={STATUS_NAMES[k]: int(v) for k, v in enumerate(statuses) if v},
    )
    if getattr(fitter, "last_work", None) is not None:
        row["moment_passes"] = float(fitter.last_work[0, :, 0].mean())
        row["rw_evaluations"] = float(fitter.last_work[0, :, 1].mean())
    if args.srfit:
        theirs = np.array([srfit_rw(calc, data, m, fs) for m in masks[: args.srfit]])
        d = out["rw"][0, : args.srfit] - theirs
        row.update(srfit_worse_max=float(max(d.max(), 0.0)),
                   srfit_lower_fraction=float(np.mean(d < -1e-6)), srfit_motifs=args.srfit)
        if d.max() > RW_WORSE:
            failures.append(f"{label} ({calculator}): Rw above srfit's by {d.max():.1e}")
    if row["worse_max"] > RW_WORSE:
        failures.append(f"{label} ({calculator}): Rw above the general fitter's by "
                        f"{row['worse_max']:.1e}")
    if row["exact_err"] > RW_EXACT:
        failures.append(f"{label} ({calculator}): reported Rw off by {row['exact_err']:.1e}")
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--motifs", type=int, default=2000, help="motifs timed per path")
    parser.add_argument("--compared", type=int, default=200,
                        help="motifs compared with the general fitter")
    parser.add_argument("--general", type=int, default=40,
                        help="of those, how many time the general fitter")
    parser.add_argument("--srfit", type=int, default=10, help="motifs compared with srfit")
    parser.add_argument("--repeat", type=int, default=1,
                        help="timings per path, the best reported (for before/after checks)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; one core, kernels compiled")
    print("Keggin, original settings (r 1.6-10 Å step 0.01, qmax 20, qbroad 0.01); "
          f"{args.motifs} motifs timed, {args.compared} compared\n")
    failures: list[str] = []
    rows = []
    head = (f"{'refine':27s} {'calculator':10s} {'fits/core-s':>11s} {'general':>8s} "
            f"{'ratio':>6s} {'worse max':>9s} {'(Rw>0.9)':>9s} {'lower':>6s} {'|ΔRw| ref':>9s} "
            f"{'srfit worse':>11s}  statuses")
    print(head)
    for label, refine in PATHS.items():
        for calculator in ("debye", "realspace"):
            row = bench_path(label, refine, calculator, args, failures)
            rows.append(row)
            if row["compiled"] is None:
                print(f"{label:27s} {calculator:10s} {'-':>11s} {row['general_rate']:8.1f}  "
                      "(no compiled path: the general fitter)")
                continue
            print(f"{label:27s} {calculator:10s} {row['compiled']:11,.0f} "
                  f"{row['general_rate']:8.1f} {row['ratio']:6.0f} {row['worse_max']:9.1e} "
                  f"{row['worse_max_all']:9.1e} "
                  f"{100 * row['lower_fraction']:5.1f}% {row['exact_err']:9.1e} "
                  f"{row.get('srfit_worse_max', float('nan')):11.1e}  {row['statuses']}")
            sys.stdout.flush()
    debye = {r["path"]: r for r in rows if r["calculator"] == "debye"}
    print("\nreal-space rate / Debye rate:", ", ".join(
        f"{r['path']}: {r['compiled'] / debye[r['path']]['compiled']:.2f}"
        if r["compiled"] else f"{r['path']}: general fitter only"
        for r in rows if r["calculator"] == "realspace"))
    (RESULTS / "refine.json").write_text(json.dumps(rows, indent=1))
    if failures:
        print("\nFAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    print("\nanswers checked (Rw within 1e-4 of the general fitter's for every motif it fits "
          "below Rw 0.9, and of srfit's; reported Rw exact to 1e-8): ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
