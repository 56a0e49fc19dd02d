"""Joining a job array's files (the ``merge`` command), serially.

Each task of a job array (``jobs/slurm_array.sh``) runs ``mlmotex-hpc run CONFIG
--frames START:STOP`` and writes ``output.dir/frames_START-STOP/motex.h5`` with the
same catalogue, fitted and learned for its own frames. :func:`merge` checks that the
parts belong to one config, cover consecutive frames once each and are finished, then
writes one ``motex.h5`` with every frame, as a single run of the whole series would
have (:func:`mlmotex_hpc.store.merge_parts`), and the series outputs.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..catalogue import MotifSpace
from ..config import load_config
from ..errors import InputError
from ..io.folders import make_folder
from ..store import Part, RunFile, RunLock, merge_parts, read_part


def check_parts(paths: list[Path]) -> list[Part]:
    """The parts in frame order, checked to belong together (errors are InputError)."""
    parts = sorted((read_part(p) for p in paths), key=lambda p: p.frame_range)
    whole = next((p for p in parts if p.whole), None)
    if whole is not None:
        raise InputError(f"{whole.path} is a whole run's file (frames "
                         f"{whole.frame_range[0]}:{whole.frame_range[1]}), not a job-array "
                         "task's (run ... --frames START:STOP): there is nothing to merge")
    first = parts[0]
    for part in parts[1:]:
        if part.config_hash != first.config_hash:
            raise InputError(f"{part.path} is a run of another config than "
                             f"{first.path}: only tasks of one config can be merged")
        if not np.array_equal(part.masks, first.masks):
            raise InputError(f"{part.path} has another catalogue than {first.path}")
        if part.has_shap != first.has_shap:
            raise InputError(f"{part.path} and {first.path} stopped at different "
                             "stages (one has SHAP values, the other not)")
    for a, b in zip(parts, parts[1:], strict=False):
        if b.frame_range[0] < a.frame_range[1]:
            raise InputError(f"{a.path} (frames {a.frame_range[0]}:{a.frame_range[1]}) and "
                             f"{b.path} (frames {b.frame_range[0]}:{b.frame_range[1]}) overlap")
        if b.frame_range[0] > a.frame_range[1]:
            raise InputError(f"frames {a.frame_range[1]}:{b.frame_range[0]} are in no part: "
                             "is that task finished, and is its motex.h5 among the parts?")
    return parts


def parts_of_config(path: Path) -> tuple[list[Path], Path]:
    """A config's task files (``output.dir/frames_*/motex.h5``) and its output folder;
    the tasks must cover its whole series (errors are InputError)."""
    config = load_config(path)
    out = config.output.dir
    found = sorted(out.glob("frames_*/motex.h5"))
    if not found:
        raise InputError(f"no task results in {out} (expected frames_START-STOP/motex.h5 "
                         f"from `mlmotex-hpc run {path} --frames ...`)")
    parts = check_parts(found)
    covered = (parts[0].frame_range[0], parts[-1].frame_range[1])
    if covered != (0, len(config.data)):
        raise InputError(f"the tasks in {out} hold frames {covered[0]}:{covered[1]} of "
                         f"{len(config.data)}: is every task finished?")
    return found, out


def merge(paths: list[Path], out_dir: Path, overwrite: bool = False, log=print) -> dict:
    """Merge the parts into ``out_dir/motex.h5`` and write the outputs; the summary."""
    t0 = time.perf_counter()
    parts = check_parts(paths)
    target = out_dir / "motex.h5"
    if any(p.path.resolve() == target.resolve() for p in parts):
        raise InputError(f"{target} is one of the parts: choose another output folder (-o)")
    if target.exists() and not overwrite:
        raise InputError(f"{target} exists: use --overwrite to replace it, or -o")
    make_folder(out_dir)
    lock = RunLock(target)
    lock.acquire()
    try:
        return _merge(parts, target, out_dir, t0, log)
    finally:
        lock.release()


def _merge(parts: list[Part], target: Path, out_dir: Path, t0: float, log) -> dict:
    from ..output.products import output_plan
    from ..output.summary import write_outputs

    start, stop = parts[0].frame_range[0], parts[-1].frame_range[1]
    log(f"mlmotex-hpc merge: {len(parts)} parts, frames {start}:{stop}")
    with RunFile.read(parts[0].path) as first:
        n_series = first.series_length()
    extracted: dict[str, float] = {}

    def extract_again(path: Path) -> None:
        """The extract stage on the joined frames, as a single run of them has it (one
        budget, each motif fitted to every frame), serially: no MPI is started."""
        if not parts[0].has_shap:  # the parts stopped before the explain stage
            return
        from ..parallel.comm import SoloComm
        from .extract import extract_plan, extract_stage
        from .inputs import load_inputs

        with RunFile.read(path, "r+") as run:
            config = run.config()  # its input files checked against the parts'
            inputs = load_inputs(config)
            log("the extract stage on the joined frames (as a single run has it)")
            extract_stage(run, extract_plan(config, inputs), inputs, SoloComm(), log,
                          extracted)
            run.write_timings({"extract": extracted["extract"]}, int(run.timings()["ranks"]))

    merge_parts(target, parts, n_series, extract_again)
    with RunFile.read(target, "r+") as run:
        config = run.config()
        structure = run.structure()
        space = MotifSpace.from_structure(structure, config.permute, config.bond_threshold)
        timings = {k: float(v) for k, v in run.timings().items() if k not in ("ranks", "note")}
        return write_outputs(run, output_plan(config, structure), structure, space, out_dir,
                             until="explain" if parts[0].has_shap else "learn",
                             timings=timings, n_ranks=int(run.timings()["ranks"]),
                             t_start=t0, log=log)
