"""Step 2 for a batch of motifs: the run's inputs, its fit groups and :func:`fit_batch`.

The bridge between a config and the fitters: :class:`Inputs` is what the inputs stage
validated (the same on every rank), :func:`make_fit_groups` builds one calculator per r
grid with the compiled batch fitter where it applies, and :func:`fit_batch` fits motifs
to frames, arrays in, arrays out. No communicator and no file here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..catalogue import MotifSpace, code_masks
from ..config import Config, pdf_settings, zoom_search
from ..io.structure import Structure
from ..pdf import PDFSettings, make_calculator
from .fast import BatchFitter
from .fitter import FitSettings, fit_motif
from .refining import RefiningFitter, supports_refinement


@dataclass(frozen=True, eq=False)
class Frame:
    """One measured PDF restricted to the fit range."""

    name: str
    r: np.ndarray
    g: np.ndarray
    weights: np.ndarray | None


@dataclass(frozen=True, eq=False)
class Inputs:
    """Everything the inputs stage validated, as every rank holds it."""

    structure: Structure
    space: MotifSpace
    frames: list[Frame]
    packed_masks: np.ndarray
    n_permutable: int
    #: SHA-256 of every input's content, by what it is ("structure", "data <name>",
    #: "catalogue.masks_file", "frames.time"): a run's identity beside its config
    digests: dict[str, str] = field(default_factory=dict)
    #: Every non-empty motif, row r the one of binary code r + 1 (``packed_masks`` is
    #: then empty: the masks are made from their row numbers, a batch at a time).
    exhaustive: bool = False
    #: A fits table's Rw, one per motif (``config.fits``): nothing is fitted.
    table_rw: np.ndarray | None = None

    @property
    def n_motifs(self) -> int:
        if self.exhaustive:
            return 2**self.n_permutable - 1
        return int(self.packed_masks.shape[0])

    def masks(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Motif masks ``start:stop`` (bool, N columns). Ranks keep the catalogue packed,
        8 motif atoms a byte, and unpack one batch at a time; an exhaustive catalogue is
        never held at all."""
        if self.exhaustive:
            stop = self.n_motifs if stop is None else min(stop, self.n_motifs)
            return code_masks(start, stop, self.n_permutable)
        return np.unpackbits(
            self.packed_masks[start:stop], axis=1, count=self.n_permutable
        ).astype(bool)


def fit_settings(config: Config, structure: Structure) -> FitSettings:
    """What ``fit.refine`` frees and within which bounds, for this model's elements."""
    return FitSettings(
        refine=config.fit.refine,
        zoom_bounds=config.fit.zoom_bounds,
        uiso_elements=tuple(dict.fromkeys(structure.elements)),
        uiso_bounds=config.fit.uiso_bounds,
        delta2_bounds=config.fit.delta2_bounds,
    )


def refined_extra(config: Config, structure: Structure) -> tuple[str, ...]:
    """Names of the extra fit results for freed Uiso and delta2."""
    extra: tuple[str, ...] = ()
    if "uiso" in config.fit.refine:
        extra += tuple(f"uiso_{el}" for el in dict.fromkeys(structure.elements))
    if "delta2" in config.fit.refine:
        extra += ("delta2",)
    return extra


@dataclass(frozen=True, eq=False)
class FitPlan:
    """How a run fits, read from its config once: everything step 2 needs besides the
    inputs."""

    pdf: PDFSettings
    fit: FitSettings
    base_uiso: dict[str, float]
    extra: tuple[str, ...]  # names of the freed Uiso / delta2 results
    zoom_search: str  # "exact" or "shared"
    batch_size: int
    frame_block: int  # frames per work unit (0: all)


def fit_plan(config: Config, structure: Structure) -> FitPlan:
    """The :class:`FitPlan` of a config for this model."""
    return FitPlan(
        pdf=pdf_settings(config), fit=fit_settings(config, structure), base_uiso=config.uiso,
        extra=refined_extra(config, structure), zoom_search=zoom_search(config),
        batch_size=work_unit(config, int(np.isin(structure.elements, config.permute).sum())),
        frame_block=config.frames.block,
    )


#: Motifs per work unit of an exhaustive run, at least: 2^N motifs in units of 64 would
#: spend more on the bookkeeping of each unit than on its fits.
EXHAUSTIVE_UNIT = 2048


def work_unit(config: Config, n_permutable: int) -> int:
    """Motifs per work unit: ``catalogue.batch_size``; at least :data:`EXHAUSTIVE_UNIT`
    in an exhaustive run."""
    from ..config import exhaustive

    batch = config.catalogue.batch_size
    return max(batch, EXHAUSTIVE_UNIT) if exhaustive(config, n_permutable) else batch


@dataclass(frozen=True, eq=False)
class FitGroup:
    """The frames that share one r grid, their calculator and (when it applies) the
    compiled batch fitter that fits all of them at once: :class:`BatchFitter` for scale
    and zoom, :class:`RefiningFitter` when Uiso or delta2 are free."""

    calc: object
    frames: list[int]
    fast: BatchFitter | None


def make_fit_groups(inputs: Inputs, settings: PDFSettings, fsettings: FitSettings,
                    frames: range | None = None, search: str = "exact") -> list[FitGroup]:
    """One calculator per distinct r grid among ``frames`` (all by default), with a
    compiled fitter where it applies."""
    by_grid: dict[bytes, list[int]] = {}
    for f in frames if frames is not None else range(len(inputs.frames)):
        by_grid.setdefault(inputs.frames[f].r.tobytes(), []).append(f)
    groups = []
    for indices in by_grid.values():
        members = [inputs.frames[f] for f in indices]
        calc = make_calculator(
            inputs.structure.elements, inputs.structure.xyz, settings, members[0].r
        )
        fast = None
        kind = RefiningFitter if supports_refinement(calc, fsettings) else BatchFitter
        if kind.accepts(calc, fsettings):
            g_obs = np.stack([frame.g for frame in members])
            weights = np.stack(
                [np.ones_like(frame.g) if frame.weights is None else frame.weights
                 for frame in members]
            )
            fast = kind(calc, fsettings, g_obs, weights, zoom_search=search)
        groups.append(FitGroup(calc, indices, fast))
    return groups


def frame_blocks(n_frames: int, block: int) -> list[range]:
    """The frame blocks of the work units (``frames.block``; 0: one block of all)."""
    block = block or n_frames
    return [range(f, min(n_frames, f + block)) for f in range(0, n_frames, block)]


def fit_batch(
    masks: np.ndarray,
    space: MotifSpace,
    groups: list[FitGroup],
    frames: list[Frame],
    settings: FitSettings,
    base_uiso: dict[str, float],
    extra: tuple[str, ...],
    block: range | None = None,
) -> dict[str, np.ndarray]:
    """Fit every motif of a batch to the frames of ``block`` (all by default): arrays
    of shape (frames in the block, batch). ``groups`` cover exactly those frames."""
    block = block if block is not None else range(len(frames))
    n_frames, count = len(block), len(masks)
    out = {name: np.empty((n_frames, count)) for name in ("rw", "scale", "zoom") + extra}
    out["status"] = np.empty((n_frames, count), dtype=np.int8)
    atom_masks = space.atom_masks(masks)
    for group in groups:
        if group.fast is not None:
            results = group.fast.fit(atom_masks)
            rows = [f - block.start for f in group.frames]
            for name, values in results.items():
                out[name][rows] = values
            continue
        for j, atom_mask in enumerate(atom_masks):
            motif = group.calc.prepare(atom_mask)  # reused by every frame of the group
            for f in group.frames:
                frame, row = frames[f], f - block.start
                res = fit_motif(group.calc, motif, frame.g, settings, frame.weights, base_uiso)
                out["rw"][row, j], out["scale"][row, j], out["zoom"][row, j] = (
                    res.rw, res.scale, res.zoom
                )
                out["status"][row, j] = res.status
                for name in extra:
                    if name == "delta2":
                        out[name][row, j] = np.nan if res.delta2 is None else res.delta2
                    else:
                        out[name][row, j] = res.uiso.get(name[5:], np.nan)
    return out
