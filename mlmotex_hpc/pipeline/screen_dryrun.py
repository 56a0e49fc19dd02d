"""``mlmotex-hpc screen CONFIG --dry-run``: what a screen would cost, measured, before it runs.

On one process, the dry run does what a screen's rank 0 does first: it reads the data,
sets the radii, reads and cuts every template (timed: a database screen parses every
file), keeps each distinct cluster once, and checks the output folder and any
``screen.h5`` already there, so it refuses with the screen's own line whatever the screen
would refuse. It then probes a sample of the candidates with the real kernels, chosen
across the range of sizes (the smallest first, untimed, to compile or load the numba
cache), and prints:

* templates, candidates, skipped templates and the time to read and cut one template;
* the fits a probe makes and its CPU time per candidate, so the fits and the walltime of
  the whole screen on ``--ranks`` ranks;
* the same projected to a database of :data:`DATABASE` templates on :data:`DATABASE_RANKS`
  ranks, with as many candidates per template as here.

It writes nothing. The walltime is the reading and cutting, shared by the ranks, rank 0's
keeping each cluster once, and the probes shared by the ranks. The extractions
(``screen.extract``) are whole runs: ``mlmotex-hpc run extract_k/run.yaml --dry-run``
gives their cost once the screen has written them. At database scale, every rank holds
the whole candidate list: the projection says how large it would be.
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np

from ..config import ScreenConfig
from .dryrun import _bytes, _duration, walltime_line
from .inputs import check_output_dir
from .screen import (
    SCREEN_FILE,
    collect,
    cut_templates,
    previous_state,
    probe_candidate,
    recutter,
    rows_of,
    screen_setup,
)

#: Candidates probed to measure the probe's cost (besides the untimed first).
SAMPLE = 6
#: The projection: a database of this many templates on this many ranks.
DATABASE = 100_000
DATABASE_RANKS = 256


class _Notes(list):
    """What the screen would log, kept for the report."""

    def __call__(self, message: str) -> None:
        self.append(message)

    def warning(self, message: str) -> None:
        self.append(f"warning: {message}")


def sample_of(sizes: np.ndarray, k: int = SAMPLE) -> np.ndarray:
    """``k`` candidate indices spread over the range of ``sizes`` (sorted, each once)."""
    order = np.argsort(sizes, kind="stable")
    picks = np.unique(np.round(np.linspace(0, len(order) - 1, min(k, len(order)))))
    return np.sort(order[picks.astype(int)])


def screen_dry_run(config: ScreenConfig, ranks: int, out_dir: Path | None = None, *,
                   overwrite: bool = False) -> str:
    """The dry-run report of a screen (see the module notes)."""
    out_dir = Path(out_dir or config.output.dir)
    notes = _Notes()
    check_output_dir(out_dir, create=False)
    setup = screen_setup(config, notes)
    t0 = time.perf_counter()
    cuts = cut_templates(config, setup, range(len(setup.templates)))
    t1 = time.perf_counter()
    found = collect(setup, cuts, t1 - t0, notes)
    keep_once = time.perf_counter() - t1
    held = len(pickle.dumps([c.reference() for c in found.candidates],
                            protocol=pickle.HIGHEST_PROTOCOL))
    path = out_dir / SCREEN_FILE
    rows = rows_of(found)
    done = previous_state(config, path, rows, overwrite, notes)
    cands = found.candidates
    n, n_templates = len(cands), len(found.setup.templates)
    sizes = np.array([len(c.structure) for c in cands])
    permuted = np.array([row["permuted"] for row in rows])
    recut = recutter(config)
    probe_candidate(config, cands[int(np.argmin(sizes))], found.frames, recut)  # compile
    sample = sample_of(sizes)
    cpu, fits = [], []
    for index in sample:
        start = time.process_time()
        score = probe_candidate(config, cands[int(index)], found.frames, recut)
        cpu.append(time.process_time() - start)
        fits.append(score.fits)
    per_candidate, fits_per = float(np.mean(cpu)), float(np.mean(fits))
    per_template = found.seconds / max(n_templates, 1)
    todo = n if done is None else int((~done).sum())
    reading = found.seconds / ranks + keep_once
    wall = reading + todo * per_candidate / ranks
    state = (f"{path}: new" if done is None else
             f"{path}: resumes, {int(done.sum())} of {done.size} candidates done")
    per_db_template = n / max(n_templates, 1)
    scale = DATABASE / max(n_templates, 1)
    db_read = DATABASE * per_template / DATABASE_RANKS + keep_once * scale
    db_probe = DATABASE * per_db_template * per_candidate / DATABASE_RANKS
    radii = ", ".join(f"{r:g}" for r in found.setup.radii)
    lines = [
        f"templates       {n_templates} files, {found.skipped_whole} skipped, "
        f"{len(found.skipped) - found.skipped_whole} with cuts left out"
        + (f" (first: {Path(found.skipped[0][0]).name}: {found.skipped[0][1]})"
           if found.skipped else ""),
        f"reading         {per_template * 1e3:.1f} ms per template to read and cut "
        f"(measured on all {n_templates}; shared by the ranks), then {keep_once:.2f} s on "
        "rank 0 to keep each cluster once",
        f"candidates      {n} distinct of {found.cut} cut (radii {radii} Å), "
        f"{sizes.min()}-{sizes.max()} atoms, {permuted.min()}-{permuted.max()} permuted; "
        f"{len(found.frames)} frame(s)",
        f"probe           {fits_per:,.0f} fits and {per_candidate:.2f} CPU-s per candidate "
        f"(whole, leave-one-out, {config.screen.random} random, {config.screen.starts} × "
        f"{config.screen.steps} polishing steps; measured on {len(sample)} candidates of "
        f"{sizes[sample].min()}-{sizes[sample].max()} atoms)",
        f"screen          {todo:,} candidates to probe, about {todo * fits_per:,.0f} fits: "
        f"{_duration(wall)} on {ranks} rank(s) ({_duration(reading)} reading, then "
        f"{_duration(todo * per_candidate / ranks)} probing)",
        f"extraction      {config.screen.extract} best candidate(s), each a whole run "
        f"afterwards on its sphere grown by {found.setup.margin:g} Å (its cost: "
        "mlmotex-hpc run extract_k/run.yaml --dry-run)"
        if config.screen.extract else "extraction      none (screen.extract: 0)",
        f"projection      {DATABASE:,} templates on {DATABASE_RANKS} ranks, "
        f"{per_db_template:.1f} candidates each as here: {_duration(db_read + db_probe)} "
        f"({_duration(db_read)} reading, {_duration(db_probe)} probing); every rank "
        f"holds the candidate list: {_bytes(held)} here, about {_bytes(held * scale)} there",
        f"output          {state}",
        walltime_line(wall),
    ]
    return "\n".join(notes + lines)
