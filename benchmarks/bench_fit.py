"""Fit throughput of step 2, with its answers checked.

    python benchmarks/bench_fit.py [--motifs 4000] [--ranks 2] [--no-mpi]

Prints, for the Keggin case at the original ML-MotEx settings (109725.xyz against
DanMAX_AlphaKeggin.gr, r 1.6-10 Å on the data's 0.01 Å grid, qmax 20, scale and zoom
free), fits per core-second of the compiled batch fitter with both calculators; the
per-motif cost against the motif's pair count for three parent models (104, 132 and 456
atoms), with a plot; the memory of the fitter's tables and the process's peak; and the
fit stage of real ``mlmotex-hpc run`` jobs on 1 and 2 MPI ranks (parallel efficiency).

Every case is checked against the straightforward implementation of
:mod:`mlmotex_hpc.pdf.reference`: the model G(r) to 1e-6 relative and each fitted Rw to
1e-4 of a bounded search on exact PDFs. A failed check ends the run with exit code 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

from mlmotex_hpc.catalogue import MotifSpace, sample_masks
from mlmotex_hpc.config import load_config, pdf_settings
from mlmotex_hpc.fit.fast import BatchFitter
from mlmotex_hpc.fit.fitter import FitSettings
from mlmotex_hpc.io.pdfdata import read_pdf_data
from mlmotex_hpc.io.structure import read_xyz
from mlmotex_hpc.pdf import PDFSettings, make_calculator
from mlmotex_hpc.pdf.reference import reference_fit, reference_gr

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "mlmotex_hpc" / "examples"
ORIGINAL = ROOT / "configs" / "keggin_original.yaml"
RESULTS = ROOT / "benchmarks" / "results"
N_CHECKED = 20


@dataclasses.dataclass
class Case:
    name: str
    structure: object
    r: np.ndarray
    g: np.ndarray
    settings: PDFSettings
    permute: tuple[str, ...]
    bond_threshold: float


def keggin(calculator: str) -> Case:
    config = load_config(ORIGINAL)
    data = read_pdf_data(config.data[0])
    sl = data.fit_range(config.fit.rmin, config.fit.rmax)
    settings = dataclasses.replace(pdf_settings(config), calculator=calculator)
    return Case(f"keggin-{calculator}", read_xyz(config.structure), data.r[sl], data.g[sl],
                settings, config.permute, config.bond_threshold)


def other(name: str, xyz: Path, gr: Path, qmin: float, qmax: float, permute) -> Case:
    data = read_pdf_data(gr)
    sl = data.fit_range(1.6, 10.0)
    settings = PDFSettings(qmin=qmin, qmax=qmax, qdamp=0.04, default_uiso=0.005)
    return Case(name, read_xyz(xyz), data.r[sl], data.g[sl], settings, permute, 2.5)


def build(case: Case):
    s = case.structure
    calc = make_calculator(s.elements, s.xyz, case.settings, case.r)
    fitter = BatchFitter(calc, FitSettings(refine=("scale", "zoom"), zoom_bounds=(0.99, 1.01)),
                         case.g[None])
    space = MotifSpace.from_structure(s, case.permute, case.bond_threshold)
    return calc, fitter, space


def check(case: Case, calc, fitter, masks, out: dict, n_checked: int) -> tuple[float, float]:
    """Largest relative G(r) error and largest |Rw - Rw_reference| over the first motifs."""
    g_err = rw_err = 0.0
    for j, mask in enumerate(masks[:n_checked]):
        zoom = out["zoom"][0, j]
        ref = reference_gr(calc, case.structure.xyz, mask, zoom)
        g_err = max(g_err, np.abs(fitter.model(mask, zoom) - ref).max() / np.abs(ref).max())
        rw, _, _ = reference_fit(calc, case.structure.xyz, mask, case.g, (0.99, 1.01))
        rw_err = max(rw_err, abs(out["rw"][0, j] - rw))
    return g_err, rw_err


def throughput(case: Case, n_motifs: int, seed: int = 0, n_checked: int = N_CHECKED) -> dict:
    calc, fitter, space = build(case)
    masks = space.atom_masks(sample_masks(space.size, n_motifs, seed))
    fitter.fit(masks[:4])  # compile (or load the cache)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    out = fitter.fit(masks)
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    g_err, rw_err = check(case, calc, fitter, masks, out, n_checked)
    return {
        "case": case.name, "atoms": calc.n_atoms, "motifs": n_motifs,
        "fits_per_core_s": n_motifs / cpu, "fits_per_s": n_motifs / wall,
        "g_rel_err": g_err, "rw_err": rw_err, "fitter_MiB": fitter.memory_bytes() / 2**20,
    }


def cost_vs_pairs(case: Case, n_motifs: int, bins: int = 8) -> list[tuple[float, float]]:
    """(mean pairs, µs per fit) for motifs grouped by pair count."""
    calc, fitter, space = build(case)
    masks = space.atom_masks(sample_masks(space.size, n_motifs, 1))
    fitter.fit(masks[:4])
    pairs = np.array([calc.prepare(m).n_pairs for m in masks])
    order = np.argsort(pairs)
    points = []
    for group in np.array_split(order, bins):
        start = time.process_time()
        fitter.fit(masks[group])
        cost = (time.process_time() - start) / group.size
        points.append((float(pairs[group].mean()), 1e6 * cost))
    return points


def mpi_fit_stage(n_motifs: int, ranks: int, workdir: Path) -> float:
    """Seconds of the fit stage of ``mlmotex-hpc run --until fit`` on ``ranks`` ranks."""
    raw = yaml.safe_load(ORIGINAL.read_text())
    raw["structure"] = str((ORIGINAL.parent / raw["structure"]).resolve())
    raw["data"] = str((ORIGINAL.parent / raw["data"]).resolve())
    raw["pdf"]["calculator"] = "debye"
    raw["catalogue"] = {"size": n_motifs, "seed": 0, "batch_size": 64}
    raw["output"] = {"dir": str(workdir / f"out{ranks}")}
    cfg = workdir / f"bench{ranks}.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    exe = shutil.which("mlmotex-hpc") or str(Path(sys.executable).with_name("mlmotex-hpc"))
    cmd = ["mpirun", "--bind-to", "core", "-n", str(ranks), exe, "run", str(cfg),
           "--until", "fit", "--quiet"]
    subprocess.run(cmd, check=True, env=env)
    with h5py.File(workdir / f"out{ranks}" / "motex.h5") as h5:
        return float(h5["timings"].attrs["fit"])


def _solo_rate(n_motifs: int) -> float:
    """Fits per second of one plain process (no MPI) fitting Keggin motifs."""
    case = keggin("debye")
    _, fitter, space = build(case)
    masks = space.atom_masks(sample_masks(space.size, n_motifs, 0))
    fitter.fit(masks[:4])
    start = time.perf_counter()
    fitter.fit(masks)
    return n_motifs / (time.perf_counter() - start)


def machine_ceiling(processes: int, n_motifs: int = 6000) -> float:
    """Summed rate of ``processes`` independent, concurrent copies over ``processes``
    times the rate of one copy alone: the best parallel efficiency this machine allows
    for this kernel, whatever the MPI layer does."""
    cmd = [sys.executable, __file__, "--solo", str(n_motifs)]
    alone = float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    together = sum(float(p.communicate()[0]) for p in procs)
    return together / (processes * alone)


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, points in curves.items():
        x, y = zip(*points, strict=True)
        ax.loglog(x, y, "o-", label=name)
    x = np.array([100, 60000])
    ax.loglog(x, 0.1 * x, "k:", label="∝ pairs")
    ax.set_xlabel("pairs in the motif")
    ax.set_ylabel("µs per fit (one core)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--motifs", type=int, default=4000, help="Keggin motifs per run")
    parser.add_argument("--ranks", type=int, default=2, help="ranks of the MPI comparison")
    parser.add_argument("--mpi-motifs", type=int, default=32000,
                        help="motifs of the mpirun comparison")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the mpirun runs")
    parser.add_argument("--no-mpi", action="store_true", help="skip the mpirun comparison")
    parser.add_argument("--solo", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.solo:
        print(_solo_rate(args.solo))
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")

    failures = []
    rows = [throughput(keggin("debye"), args.motifs), throughput(keggin("realspace"),
                                                                  args.motifs // 4)]
    print("\nKeggin, original settings (r 1.6-10 Å step 0.01, qmax 20, scale + zoom free)")
    print(f"{'calculator':12s} {'fits/core-s':>12s} {'max |ΔG|/max|G|':>17s} {'max |ΔRw|':>10s}")
    for row in rows:
        print(f"{row['case'][7:]:12s} {row['fits_per_core_s']:12,.0f} {row['g_rel_err']:17.1e} "
              f"{row['rw_err']:10.1e}")
        if row["g_rel_err"] > 1e-6 or row["rw_err"] > 1e-4:
            failures.append(row["case"])

    cases = {
        "109725.xyz (104 atoms)": keggin("debye"),
        "C60 supercell (132 C)": other(
            "c60", EXAMPLES / "c60" / "C60_111_supercell.xyz",
            EXAMPLES / "c60" / "C60_simulated.gr", 0.5, 24.0, ("C",)),
        "35643-ICSD 2x2x2 (456 atoms)": other(
            "fe2o3", EXAMPLES / "fe2o3_insitu" / "35643-ICSD_222unitcell.xyz",
            EXAMPLES / "fe2o3_insitu" / "frames" / "Fe2O3_3204M_150.gr", 1.0, 17.0, ("Fe",)),
    }
    curves = {}
    print("\nPer-motif cost against pair count (Debye, one core)")
    for label, case in cases.items():
        points = cost_vs_pairs(case, 400)
        curves[label] = points
        x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
        slope = np.polyfit(x, y, 1)[0]
        big = throughput(case, 200, n_checked=3)
        print(f"  {label:30s} {points[0][0]:8.0f} pairs {points[0][1]:8.0f} µs ... "
              f"{points[-1][0]:8.0f} pairs {points[-1][1]:8.0f} µs   log-log slope {slope:.2f}"
              f"   fitter tables {big['fitter_MiB']:.1f} MiB   check ΔRw {big['rw_err']:.1e}")
        if big["g_rel_err"] > 1e-6 or big["rw_err"] > 1e-4:
            failures.append(big["case"])
    plot(curves, RESULTS / "cost_vs_pairs.png")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  plot: {RESULTS / 'cost_vs_pairs.png'}")
    print(f"\nPeak memory of this process (all cases, 456-atom parent included): {peak:.0f} MiB")

    summary = {"rows": rows, "curves": curves, "peak_MiB": peak}
    if not args.no_mpi:
        n = args.mpi_motifs
        with tempfile.TemporaryDirectory() as tmp:
            mpi_fit_stage(200, 1, Path(tmp))  # warm the compile cache
            # interleaved repeats, best of each: a shared or virtual machine's noise
            # only ever adds time
            t1, tn = math.inf, math.inf
            for _ in range(args.repeats):
                t1 = min(t1, mpi_fit_stage(n, 1, Path(tmp)))
                tn = min(tn, mpi_fit_stage(n, args.ranks, Path(tmp)))
            ceiling = max(machine_ceiling(args.ranks) for _ in range(args.repeats))
        eff = t1 / (args.ranks * tn)
        print(f"\nmlmotex-hpc run --until fit, {n} Keggin motifs (Debye, HDF5 writes included):")
        print(f"  1 rank {n / t1:,.0f} fits/s; {args.ranks} ranks {n / tn:,.0f} fits/s; "
              f"parallel efficiency {100 * eff:.0f} %")
        print(f"  {args.ranks} independent non-MPI processes on this machine reach "
              f"{100 * ceiling:.0f} % (the hardware's ceiling for this kernel): MPI costs "
              f"{100 * (1 - eff / ceiling):.1f} % of it")
        summary["mpi"] = {"motifs": n, "t1": t1, "tn": tn, "ranks": args.ranks, "eff": eff,
                          "ceiling": ceiling}
    (RESULTS / "bench_fit.json").write_text(json.dumps(summary, indent=1))
    if failures:
        print(f"\nFAILED answer checks: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("\nanswers checked against mlmotex_hpc.pdf.reference: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
