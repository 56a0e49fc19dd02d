"""Cost of a time series against one frame (issue 7), with the shared search checked.

    python benchmarks/bench_series.py [--motifs 10000] [--checked 100]

The fit stage of ``configs/fe2o3_insitu.yaml`` (456-atom Fe2O3 model, Fe permuted, r
1.5-12 Å, zoom 0.98-1.02) on one core, as the driver runs it (batches of
``catalogue.batch_size`` motifs, one compiled fitter per r grid):

* 1 frame: what a single-frame run does (``zoom_search: auto`` -> exact);
* all 151 frames: what the series run does (``auto`` -> anchor zooms shared by the frames).

It prints seconds per motif, the ratio (issue 7 asks < 15x), and how far the shared
search's Rw lies from the exact search's on the first ``--checked`` motifs of every
frame. Results also go to ``benchmarks/results/series.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from mlmotex_hpc.config import load_config, pdf_settings, zoom_search
from mlmotex_hpc.fit.batch import fit_settings, make_fit_groups
from mlmotex_hpc.pipeline.inputs import load_inputs

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fe2o3_insitu.yaml"
RESULTS = ROOT / "benchmarks" / "results"


def fit_stage(inputs, groups, batch: int, stop: int) -> tuple[float, np.ndarray]:
    """Seconds to fit motifs 0..stop to the groups' frames; Rw (frames × motifs)."""
    n_frames = sum(len(g.frames) for g in groups)
    rw = np.empty((n_frames, stop))
    t0 = time.perf_counter()
    for start in range(0, stop, batch):
        atom_masks = inputs.space.atom_masks(inputs.masks(start, min(stop, start + batch)))
        for group in groups:
            rw[group.frames, start:start + len(atom_masks)] = group.fast.fit(atom_masks)["rw"]
    return time.perf_counter() - t0, rw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--motifs", type=int, default=10_000)
    parser.add_argument("--checked", type=int, default=100,
                        help="motifs whose shared-search Rw is compared with the exact one")
    parser.add_argument("--refine", default="scale,zoom",
                        help="fit.refine, comma-separated (e.g. scale,zoom,uiso,delta2)")
    args = parser.parse_args()

    config = load_config(CONFIG)
    config = dataclasses.replace(
        config, catalogue=dataclasses.replace(config.catalogue, size=args.motifs),
        fit=dataclasses.replace(config.fit, refine=tuple(args.refine.split(","))))
    inputs = load_inputs(config)
    settings, fsettings = pdf_settings(config), fit_settings(config, inputs.structure)
    batch = config.catalogue.batch_size
    n_frames = len(inputs.frames)
    search = zoom_search(config)
    one = make_fit_groups(inputs, settings, fsettings, range(1), "exact")
    series = make_fit_groups(inputs, settings, fsettings, None, search)
    print(f"{CONFIG.name}: {args.motifs} motifs of {len(inputs.structure)} atoms, "
          f"{n_frames} frames on {len(series)} r grid(s), batches of {batch}, one core, "
          f"refine {args.refine}")
    for groups in (one, series):  # compile (or load the numba cache) before timing
        fit_stage(inputs, groups, batch, batch)

    t_one, _ = fit_stage(inputs, one, batch, args.motifs)
    print(f"1 frame (exact search):      {t_one:8.1f} s  {1e3 * t_one / args.motifs:7.2f} ms/motif")
    t_series, rw_shared = fit_stage(inputs, series, batch, args.motifs)
    ratio = t_series / t_one
    print(f"{n_frames} frames ({search} search): {t_series:8.1f} s  "
          f"{1e3 * t_series / args.motifs:7.2f} ms/motif")
    print(f"ratio {ratio:.1f}x for {n_frames}x the frames (issue 7: < 15x); "
          f"{n_frames / ratio:.0f}x cheaper than {n_frames} single-frame runs")

    exact = make_fit_groups(inputs, settings, fsettings, None, "exact")
    _, rw_exact = fit_stage(inputs, exact, batch, args.checked)
    diff = rw_shared[:, :args.checked] - rw_exact
    worse = diff[diff > 0]
    print(f"shared vs exact Rw, {args.checked} motifs x {n_frames} frames: median |d| "
          f"{np.median(np.abs(diff)):.1e}, 99th percentile {np.percentile(np.abs(diff), 99):.1e}, "
          f"max worse {worse.max() if worse.size else 0:.1e}, max better "
          f"{-diff.min() if diff.min() < 0 else 0:.1e}")
    RESULTS.mkdir(exist_ok=True)
    record = {
        "host": platform.node(), "cpu_count": os.cpu_count(), "config": CONFIG.name,
        "motifs": args.motifs, "frames": n_frames, "refine": args.refine,
        "atoms": len(inputs.structure),
        "seconds_1_frame": t_one, "seconds_all_frames": t_series, "ratio": ratio,
        "search": search, "checked_motifs": args.checked,
        "rw_abs_diff_median": float(np.median(np.abs(diff))),
        "rw_abs_diff_p99": float(np.percentile(np.abs(diff), 99)),
        "rw_max_worse": float(worse.max()) if worse.size else 0.0,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    name = "series.json" if args.refine == "scale,zoom" else \
        f"series_{args.refine.replace(',', '_')}.json"
    (RESULTS / name).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
