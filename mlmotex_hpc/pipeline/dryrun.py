"""``mlmotex-hpc run CONFIG --dry-run``: what a run would cost, measured, before it runs.

Reads and checks every input exactly as a run does, builds the catalogue, then fits a
short sample of its motifs with the real compiled kernels (which also fills the numba
cache for the job to come) and prints the catalogue size, the pairs per motif, the fits
per core-second, the memory estimate and the fit stage's walltime on ``--ranks`` ranks.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ..config import Config
from ..errors import InputError
from ..fit.batch import fit_plan, make_fit_groups
from ..fit.fitter import fit_motif
from ..io import runfile
from .inputs import load_inputs, memory_estimate, node_memory

SAMPLE = 200


def _sample_rate(inputs, config: Config, sample: np.ndarray) -> tuple[float, list[int]]:
    """Fits per core-second on ``sample`` (motif indices), and each motif's pair count."""
    plan = fit_plan(config, inputs.structure)
    fsettings = plan.fit
    groups = make_fit_groups(inputs, plan.pdf, fsettings)
    masks = inputs.space.atom_masks(np.concatenate([inputs.masks(i, i + 1) for i in sample]))
    pairs = [groups[0].calc.prepare(m).n_pairs for m in masks]
    cpu, fits = 0.0, 0
    for group in groups:
        if group.fast is not None:
            group.fast.fit(masks[:2])  # compile, or load the numba cache
            start = time.process_time()
            group.fast.fit(masks)
            fits += len(masks) * len(group.frames)
        else:
            few = masks[: max(2, len(masks) // 10)]
            start = time.process_time()
            for mask in few:
                motif = group.calc.prepare(mask)
                for f in group.frames:
                    frame = inputs.frames[f]
                    fit_motif(group.calc, motif, frame.g, fsettings, frame.weights, config.uiso)
            fits += len(few) * len(group.frames)
        cpu += time.process_time() - start
    return fits / max(cpu, 1e-9), pairs


def dry_run(config: Config, ranks: int, out_dir: Path | None = None) -> str:
    """The dry-run report (rank 0)."""
    out_dir = Path(out_dir or config.output.dir)
    inputs = load_inputs(config, None)
    n_motifs, n_frames = inputs.n_motifs, len(inputs.frames)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(n_motifs, size=min(SAMPLE, n_motifs), replace=False))
    rate, pairs = _sample_rate(inputs, config, sample)
    fits = n_motifs * n_frames
    wall = fits / (rate * ranks)
    mem = memory_estimate(n_motifs, inputs.space.size, len(inputs.structure.elements),
                          n_frames, max(len(f.r) for f in inputs.frames))
    gib = 2**30
    lines = [
        f"catalogue       {n_motifs} distinct motifs over N = {inputs.space.size} permutable "
        f"atoms ({len(inputs.structure.elements)} atoms in the model)",
        f"frames          {n_frames}, so {fits:,} fits",
        f"pairs per motif min {min(pairs):,}, mean {np.mean(pairs):,.0f}, max {max(pairs):,} "
        f"(sample of {len(sample)})",
        f"fit speed       {rate:,.0f} fits per core-second ({config.pdf.calculator}, "
        f"refine {', '.join(config.fit.refine)}; measured on the sample)",
        f"fit walltime    {_duration(wall)} on {ranks} rank(s) "
        f"(batches of {config.catalogue.batch_size}: "
        f"{math.ceil(n_motifs / config.catalogue.batch_size):,} batches)",
        f"memory          {mem['fit_rank'] / gib:.2f} GiB per rank while fitting, "
        f"{mem['rank0'] / gib:.2f} GiB on rank 0 while learning "
        f"({node_memory() / gib:.1f} GiB available here)",
        f"output          {out_dir / 'motex.h5'}: {_existing(out_dir / 'motex.h5')}",
        "not included    steps 3-4 (XGBoost, SHAP) on rank 0, which scale with motifs × "
        "search iterations × folds",
    ]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _existing(path: Path) -> str:
    if not path.exists():
        return "new run"
    try:
        found = runfile.probe(path)
    except InputError:
        return "exists but is not a readable motex.h5"
    if found.complete:
        return "complete (a run would do nothing; --overwrite redoes it)"
    if found.batch_done is None:
        return "exists but is not a readable motex.h5"
    done = found.batch_done
    return f"exists, {int(done.sum())} of {done.size} batches done (a run resumes it)"
