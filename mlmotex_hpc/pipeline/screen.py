"""``mlmotex-hpc screen``: the stage order of a screen (issue 29).

1. Rank 0 reads the data and sets the radii (given, or ``auto`` from the first frame's
   signal). Every rank reads and cuts its share of the templates into candidates
   (:mod:`mlmotex_hpc.candidates`; a database screen parses every file), and rank 0 keeps
   each distinct cluster once and makes or reopens ``screen.h5``. A file of the same
   config and the same candidates resumes with the candidates not yet done; another one
   is refused unless ``--overwrite``.
2. Every rank probes candidates handed out on demand
   (:func:`mlmotex_hpc.parallel.screening.score_everywhere`), and rank 0 writes each row.
3. Rank 0 ranks them by the best Rw found (frame mean; ties by candidate order) and writes
   ``screen.csv``: the candidates ranked, then the skipped templates with their reasons.
4. ``screen.extract: K``: the whole pipeline (:func:`mlmotex_hpc.pipeline.run.run`) on
   each of the K best, in ``extract_1``, ``extract_2``, ..., on the same ranks.

``--dry-run`` is :mod:`mlmotex_hpc.pipeline.screen_dryrun`.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import yaml

from ..candidates import (
    Candidate,
    Recutter,
    auto_radii,
    fingerprint,
    formula,
    grown,
    template_candidates,
    template_files,
    unique_candidates,
)
from ..config import Config, ScreenConfig, candidate_config, load_config
from ..errors import InputError
from ..fit.batch import Frame, fit_plan
from ..fit.screening import ProbePlan, Score, best_curve, score_candidate
from ..io.defaults import with_file_defaults
from ..io.folders import make_folder
from ..io.pdfdata import read_pdf_data
from ..io.structure import write_xyz
from ..output.screen_report import write_screen_report
from ..parallel.comm import gather_to_root, get_comm, my_tasks, on_root
from ..parallel.exits import agreed, root_then_bcast
from ..parallel.log import Log
from ..parallel.screening import score_everywhere
from ..store import RunLock, ScreenFile, config_hash
from .inputs import read_frame

SCREEN_FILE = "screen.h5"
SCREEN_CSV = "screen.csv"
CSV_COLUMNS = ("rank", "template", "centre", "radius", "atoms", "formula", "rw_whole",
               "rw_best", "best_size", "permuted", "copies", "reason")


@dataclasses.dataclass(frozen=True, eq=False)
class ScreenPlan:
    """What every rank needs: the frames, the candidates, which are still to score."""

    frames: list[Frame]
    candidates: list[Candidate]
    pending: np.ndarray
    path: Path
    margin: float  # Å an extraction's model grows beyond its candidate's sphere
    notes: list[str]  # how the candidates were made, for the report


def screen(config: ScreenConfig, comm=None, *, out_dir: Path | None = None,
           overwrite: bool = False, quiet: bool = False) -> dict | None:
    """Run a screen on every rank of ``comm``; on rank 0 the summary."""
    comm = get_comm(comm)
    log = Log(comm, quiet=quiet)
    t0 = time.perf_counter()
    out_dir = Path(out_dir or config.output.dir)
    path = out_dir / SCREEN_FILE
    lock = RunLock(path)
    try:
        setup = root_then_bcast(lambda: _begin(config, path, lock, log), comm)
        t_cut = time.perf_counter()
        with agreed(comm):  # the templates read and cut on every rank
            mine = cut_templates(config, setup, my_tasks(len(setup.templates), comm))
        cuts = gather_to_root(mine, comm)
        plan = root_then_bcast(lambda: _prepare(
            config, path, overwrite, collect(setup, cuts, time.perf_counter() - t_cut, log),
            log), comm)
        writer = None
        with agreed(comm):  # a file rank 0 cannot open ends every rank, not only rank 0
            writer = on_root(lambda: ScreenFile.read(path, "r+"), comm)
        try:
            recut = recutter(config)

            def score(index: int) -> Score:
                return probe_candidate(config, plan.candidates[index], plan.frames, recut)

            def write(index: int, result: Score) -> None:
                writer.write_score(index, rw_whole=result.rw_whole, rw_best=result.rw_best,
                                   best_mask=result.best_mask, fits=result.fits)

            log(f"probing {plan.pending.size} of {len(plan.candidates)} candidates on "
                f"{comm.size} rank(s)")
            fits = score_everywhere(plan.pending, score, write if writer else None, comm, log)
            summary = root_then_bcast(lambda: _finish(writer, out_dir, log), comm)
        finally:
            if writer is not None:
                writer.close()
        summary.update(fits=fits, seconds=time.perf_counter() - t0, ranks=comm.size)
        log(f"{fits:,} fits in {summary['seconds']:.1f} s; {out_dir / SCREEN_CSV}")
    finally:
        lock.release()
    summary["extracted"] = [
        _extract(config, plan.candidates[int(index)], plan.margin, out_dir / f"extract_{k}",
                 comm, quiet, overwrite, log)
        for k, index in enumerate(summary["order"][:config.screen.extract], start=1)]
    summary["report"] = root_then_bcast(lambda: _report(config, plan, out_dir, summary),
                                        comm)
    log(f"screen report: {summary['report']}")
    return summary


#: Candidates whose best motif the report draws over the data.
TOP_CURVES = 3


def _report(config: ScreenConfig, plan: ScreenPlan, out_dir: Path, summary: dict) -> Path:
    """Rank 0: ``report.html``, the best motifs of the top candidates refitted to the first
    frame (:func:`~mlmotex_hpc.fit.screening.best_curve`)."""
    recut = recutter(config)
    order = summary["order"]
    frame = plan.frames[0]
    with ScreenFile.read(plan.path) as screen_file:
        masks = screen_file.scores()["best_mask"]
        curves = []
        for rank, index in enumerate(order[:TOP_CURVES], start=1):
            cand = plan.candidates[int(index)]
            structure = recut(cand)
            run_config = candidate_config(config, cand.template, cand.permute)
            g_calc, rw = best_curve(structure, frame, fit_plan(run_config, structure),
                                    cand.permute, config.bond_threshold, masks[0, index])
            curves.append((f"#{rank} {cand.name}", frame.r, frame.g, g_calc, rw))
        notes = [*plan.notes,
                 f"{summary['fits']:,} fits on {summary['ranks']} rank(s) in "
                 f"{summary['seconds']:.1f} s"]
        return write_screen_report(
            out_dir, screen_file, order, curves,
            [out_dir / f"extract_{k}" for k in range(1, config.screen.extract + 1)], notes)


def recutter(config: ScreenConfig) -> Recutter:
    """What cuts a candidate's cluster again where it is needed, as the screen cut it."""
    return Recutter(config.screen.tolerance, config.screen.elements, config.bond_threshold)


def probe_candidate(config: ScreenConfig, cand: Candidate, frames: list[Frame],
                    recut: Recutter) -> Score:
    """One candidate's probe (:func:`~mlmotex_hpc.fit.screening.score_candidate`) with the
    screen's settings, its cluster cut again by ``recut`` when ``cand`` is a reference."""
    structure = recut(cand)
    run_config = candidate_config(config, cand.template, cand.permute)
    probe = ProbePlan(random=config.screen.random, starts=config.screen.starts,
                      steps=config.screen.steps, seed=config.screen.seed)
    return score_candidate(structure, frames, fit_plan(run_config, structure),
                           cand.permute, config.bond_threshold, probe)


def _extract(config: ScreenConfig, cand: Candidate, margin: float, folder: Path, comm,
             quiet: bool, overwrite: bool, log: Log) -> dict | None:
    """The whole pipeline on one candidate, in ``folder``, on every rank: its model
    (``candidate.xyz``: the candidate grown by ``margin``, :func:`grown`) and its run
    config (``run.yaml``) written first, so the folder is an ordinary run that ``plot``,
    ``refine`` or ``run`` itself can take up again. A finished one is kept, unless the
    screen is run with ``--overwrite``; an interrupted one resumes."""
    from .run import run

    run_config = root_then_bcast(
        lambda: _run_config(config, cand, margin, folder, cand.permute, log), comm)
    return run(run_config, comm, out_dir=folder, quiet=quiet, overwrite=overwrite)


def _run_config(config: ScreenConfig, cand: Candidate, margin: float, folder: Path,
                permute, log: Log) -> Config:
    """Rank 0: ``folder/candidate.xyz`` and ``folder/run.yaml`` (the screen's sections,
    this model, its data by absolute path), read back as a run's config."""
    make_folder(folder)
    model = folder / "candidate.xyz"
    recut = recutter(config)
    cand = dataclasses.replace(cand, structure=recut(cand))
    structure, what = grown(cand, margin, permute, config.screen.tolerance,
                            config.screen.elements, config.bond_threshold)
    log(f"extracting from {what}, into {folder}")
    write_xyz(model, structure, f"{what} ({formula(structure.elements)}), from a screen")
    raw = yaml.safe_load(config.source) or {}
    for key in ("templates", "screen"):
        raw.pop(key, None)
    raw.update(structure=str(model), permute=list(permute),
               data=[str(p) for p in config.data], output={"dir": str(folder)})
    path = folder / "run.yaml"
    path.write_text(f"# the run of {cand.name}, the screen's config with this model\n"
                    + yaml.safe_dump(raw, sort_keys=False))
    return with_file_defaults(load_config(path))


@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
    """What a screen reads before it cuts: the frames, the radii, the margin an
    extraction's model grows by, and the template files."""

    frames: list[Frame]
    radii: list[float]
    margin: float
    templates: list[Path]
    how: list[str]  # how the radii and the margin were set


@dataclasses.dataclass(frozen=True, eq=False)
class Candidates:
    """Every template cut: each distinct cluster once, and the templates skipped."""

    setup: Setup
    candidates: list[Candidate]
    skipped: list[tuple[str, str]]  # templates skipped, or with cuts left out
    skipped_whole: int  # of those, the templates that gave no candidate
    cut: int  # candidates cut, before the same cluster was kept once
    seconds: float  # reading and cutting the templates (wall)

    @property
    def frames(self) -> list[Frame]:
        return self.setup.frames

    def notes(self) -> list[str]:
        """How the candidates were made, in a few lines (the report's)."""
        setup = self.setup
        return [*setup.how,
                f"{len(setup.templates)} templates read and cut in {self.seconds:.1f} s: "
                f"{self.cut} candidates, {len(self.candidates)} distinct; "
                f"{len(self.skipped)} templates skipped or with cuts left out",
                f"an extraction's model: its candidate's sphere grown by {setup.margin:g} Å"]


#: One template cut: its index in ``Setup.templates``, its candidates, their fingerprints
#: (made where they were cut), and why it was skipped.
TemplateCut = tuple[int, list[Candidate], list[tuple], tuple[str, str] | None]


def screen_setup(config: ScreenConfig, log: Log) -> Setup:
    """The frames, the radii (given, or ``auto``), the margin, and the template files."""
    frames = [read_frame(path, config.fit) for path in config.data]
    radii, margin = config.screen.radii, config.screen.grow
    said = []
    if radii is None or margin is None:
        first = read_pdf_data(config.data[0])
        auto, how = auto_radii(first.r, first.g)
        if radii is None:
            radii = auto
            said.append(f"radii auto: {how}")
        if margin is None:
            margin = auto[0]
            said.append(f"screen.grow auto: {margin:g} Å, the radius read from the data")
    for line in said:
        log(line)
    templates = template_files(config.templates, config.base or Path("."))
    return Setup(frames, list(radii), float(margin), templates, said)


def cut_templates(config: ScreenConfig, setup: Setup, indices: Iterable[int]) -> list[TemplateCut]:
    """The templates ``indices`` cut into candidates (a template that cannot be used is
    skipped with its reason)."""
    out = []
    for k in indices:
        made, skip = template_candidates(setup.templates[k], setup.radii, config.permute,
                                         config.screen.tolerance, config.screen.elements,
                                         config.bond_threshold)
        out.append((k, made, [fingerprint(c.structure) for c in made],
                    None if skip is None else (str(skip.template), skip.reason)))
    return out


def collect(setup: Setup, cuts: list[TemplateCut], seconds: float, log: Log) -> Candidates:
    """The cuts of every template, in template order: each distinct cluster once."""
    cuts = sorted(cuts, key=lambda cut: cut[0])
    cands = [c for _, made, _, _ in cuts for c in made]
    skipped = [skip for _, _, _, skip in cuts if skip is not None]
    unique = unique_candidates(cands, [key for _, _, keys, _ in cuts for key in keys])
    if not unique:
        raise InputError(f"no template of {len(setup.templates)} gave a candidate (the "
                         f"first skipped: {skipped[0][0]}: {skipped[0][1]})" if skipped
                         else "no candidate to screen")
    whole = sum(1 for _, made, _, skip in cuts if skip is not None and not made)
    log(f"mlmotex-hpc screen: {len(setup.templates)} templates, {len(unique)} distinct "
        f"candidates (radii {', '.join(f'{r:g}' for r in setup.radii)} Å), {whole} "
        f"skipped, {len(skipped) - whole} with cuts left out, {len(setup.frames)} frame(s)")
    return Candidates(setup, unique, skipped, whole, len(cands), seconds)


def rows_of(found: Candidates) -> list[dict]:
    """``screen.h5``'s candidate rows."""
    return [_row(c) for c in found.candidates]


def previous_state(config: ScreenConfig, path: Path, rows: list[dict], overwrite: bool,
                   log: Log) -> np.ndarray | None:
    """The done flags of an existing ``screen.h5`` this screen resumes, or None when it is
    made anew; one that another config or other candidates made is refused unless
    ``overwrite``."""
    old = _previous(path, log) if path.exists() and not overwrite else None
    if old is None:
        return None
    old_hash, old_names, done = old
    if old_hash != config_hash(config.source):
        raise InputError(f"{path} was made by another config: use --overwrite to "
                         "replace it")
    if old_names != [_name(r["template"], r["centre"], r["radius"]) for r in rows]:
        raise InputError(f"{path}: the templates give other candidates than when it "
                         "was made (files added, removed or changed): use "
                         "--overwrite to screen them anew")
    return done


def _begin(config: ScreenConfig, path: Path, lock: RunLock, log: Log) -> Setup:
    """Rank 0: the output folder made, the screen's lock taken, the inputs read."""
    make_folder(path.parent)
    lock.acquire()
    return screen_setup(config, log)


def _prepare(config: ScreenConfig, path: Path, overwrite: bool, found: Candidates,
             log: Log) -> ScreenPlan:
    """Rank 0: ``screen.h5`` made, or reopened to resume."""
    rows = rows_of(found)
    done = previous_state(config, path, rows, overwrite, log)
    if done is not None:
        log(f"resuming {path}: {int(done.sum())} of {done.size} candidates done")
    else:
        ScreenFile.create(path, config_text=config.source,
                          frame_names=[f.name for f in found.frames], candidates=rows,
                          skipped=found.skipped,
                          max_permuted=max(r["permuted"] for r in rows)).close()
        done = np.zeros(len(rows), bool)
    return ScreenPlan(found.frames, [c.reference() for c in found.candidates],
                      np.flatnonzero(~done), path, found.setup.margin, found.notes())


def _name(template, centre, radius) -> str:
    return f"{template}|{centre}|{float(radius)!r}"


def _previous(path: Path, log: Log) -> tuple[str, list[str], np.ndarray] | None:
    """What an existing ``screen.h5`` says (its config hash, candidates, done flags), or
    None when a kill left it unreadable (it is then made anew, with a warning)."""
    try:
        with ScreenFile.read(path) as old:
            table = old.candidates()
            names = [_name(t, c, r) for t, c, r in zip(table["template"], table["centre"],
                                                       table["radius"], strict=True)]
            return old.config_hash, names, old.done()
    except InputError as exc:
        if "is not the screen.h5" in str(exc) or "layout version" in str(exc):
            raise
        log.warning(f"{path} cannot be read ({exc}): it is screened anew")
        return None


def _row(cand: Candidate) -> dict:
    return {"template": str(cand.template), "centre": cand.centre, "radius": cand.radius,
            "atoms": len(cand.structure), "formula": cand.formula, "copies": cand.copies,
            "permuted": int(np.isin(cand.structure.elements, cand.permute).sum())}


def ranking(rw_best: np.ndarray) -> np.ndarray:
    """Candidate indices, best first: by the best Rw averaged over the frames (NaN last),
    ties by candidate order, so a resumed screen ranks as an uninterrupted one."""
    values = np.nanmean(rw_best, axis=0) if rw_best.size else rw_best
    key = np.where(np.isfinite(values), values, np.inf)
    return np.lexsort((np.arange(key.size), key))


def _finish(screen_file: ScreenFile, out_dir: Path, log: Log) -> dict:
    """Rank 0: the file marked complete, ``screen.csv`` from it; the summary."""
    screen_file.mark_complete()
    cands = screen_file.candidates()
    scores = screen_file.scores()
    order = ranking(scores["rw_best"])
    csv_path = out_dir / SCREEN_CSV
    with open(csv_path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(CSV_COLUMNS)
        for rank, i in enumerate(order, start=1):
            radius = cands["radius"][i]  # NaN: a cluster file taken whole
            out.writerow([rank, cands["template"][i], cands["centre"][i],
                          f"{radius:g}" if np.isfinite(radius) else "", int(cands["atoms"][i]),
                          cands["formula"][i],
                          f"{np.nanmean(scores['rw_whole'][:, i]):.6f}",
                          f"{np.nanmean(scores['rw_best'][:, i]):.6f}",
                          int(scores["best_size"][0, i]), int(cands["permuted"][i]),
                          ";".join(cands["copies"][i]), ""])
        for template, reason in screen_file.skipped():
            out.writerow(["", template, "", "", "", "", "", "", "", "", "", reason])
    best = int(order[0])
    where = (f"{cands['centre'][best]} {cands['radius'][best]:g} Å"
             if cands["centre"][best] else "(the whole file)")
    log(f"best: {Path(cands['template'][best]).name} {where}, "
        f"Rw {np.nanmean(scores['rw_best'][:, best]):.4f} with "
        f"{int(scores['best_size'][0, best])} of {int(cands['permuted'][best])} permuted "
        "atoms")
    return {"candidates": len(order), "best": best, "csv": csv_path, "order": order,
            "best_rw": float(np.nanmean(scores["rw_best"][:, best]))}
