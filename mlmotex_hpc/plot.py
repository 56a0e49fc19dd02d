"""``mlmotex-hpc plot OUT/motex.h5 [--frame N ...] [-o DIR]``: the figures, structure files
and report of a finished run, again (after ``learn``, for other frames of a series, or
into another folder).

A single-frame run gets what ``run`` writes: the VESTA and CrystalMaker files, the five
figures and ``report.html``. A series gets the series figures and the report, and each
frame named with ``--frame`` its own files in ``frame_NNNNN/``. A serial program.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py

from .errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="the run's motex.h5")
    parser.add_argument("--frame", type=int, action="append", metavar="N",
                        help="a frame of a series to draw (0-based; repeat for more); "
                             "default: frame 0 of a single-frame run, none of a series")
    parser.add_argument("-o", "--out", help="output folder (default: the folder of motex.h5)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")


def plot(path: Path, frames: list[int] | None, out_dir: Path, log=print) -> list[Path]:
    """Write the outputs of the finished run in ``path``; the files written."""
    from .catalogue import MotifSpace
    from .output.plots import contributions_vs_frame, series_summary
    from .output.products import frame_products
    from .output.report import write_report
    from .refine import read_run, run_config

    run = read_run(path)
    config = run_config(run)
    space = MotifSpace.from_structure(run.structure, config.permute, config.bond_threshold)
    out_dir.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "r") as h5:
        if "atoms/contribution" not in h5 or "shap/values" not in h5:
            raise InputError(f"{path} holds no atom contributions yet (the run stopped before "
                             f"the explain stage): run `mlmotex-hpc learn {path}` first")
        n_frames = h5["frames/names"].shape[0]
        frames = frames if frames is not None else ([0] if n_frames == 1 else [])
        for f in frames:
            if not 0 <= f < n_frames:
                raise InputError(f"--frame {f}: {path} holds frames 0 to {n_frames - 1}")
        files: list[Path] = []
        series = []
        if n_frames > 1:
            log("drawing the series figures")
            series = [contributions_vs_frame(h5, out_dir / "contributions_vs_frame.png"),
                      series_summary(h5, out_dir / "series_summary.png")]
            files.extend(series)
        products = [frame_products(h5, config, run.structure, space, out_dir, f, log)
                    for f in dict.fromkeys(frames)]
        for done in products:
            files.extend(done.files)
        files.append(write_report(out_dir / "report.html", h5, run.structure, files,
                                  products[0] if products else None, series))
    return files


def main(args: argparse.Namespace) -> int:
    path = Path(args.results).resolve()
    out = Path(args.out).resolve() if args.out else path.parent
    log = (lambda m: None) if args.quiet else (lambda m: print(m, flush=True))
    files = plot(path, args.frame, out, log)
    log("files written:")
    for f in files:
        log(f"  {f}")
    return 0
