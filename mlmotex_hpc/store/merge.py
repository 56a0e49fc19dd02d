"""A job array's parts joined into one ``motex.h5``, as a single run of their frames would
have written it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np

from ..config import parse_config
from ..errors import InputError
from ..io.digests import times_digest
from .hdf5 import _per_frame, _text
from .run_layout import (
    FIT_FIELDS,
    FRAME_DATASETS,
    SHARED_DATASETS,
)


@dataclasses.dataclass(frozen=True, eq=False)
class Part:
    """What merging needs to know of one task's file."""

    path: Path
    config_hash: str
    frame_range: tuple[int, int]
    masks: np.ndarray
    has_shap: bool
    #: A whole run's file (no ``frame_range``), not a job-array task's.
    whole: bool = False


def read_part(path: Path) -> Part:
    """One task's finished file (errors are :class:`InputError`)."""
    if not path.is_file():
        raise InputError(f"no such file: {path} (expected a task's motex.h5)")
    try:
        with h5py.File(path, "r") as h5:
            if "config_hash" not in h5.attrs or "fits/rw" not in h5:
                raise InputError(f"{path} is not the motex.h5 of an mlmotex-hpc run")
            if not h5.attrs.get("complete", False) or "atoms/contribution" not in h5:
                raise InputError(f"{path} is not finished (no learned contributions yet): "
                                 "let its task finish, or rerun it with --resume")
            frame_range = h5.attrs.get("frame_range")
            whole = frame_range is None
            if whole:
                frame_range = (0, h5["fits/rw"].shape[0])
            n_cat = int(h5["catalogue"].attrs.get("n_catalogue", h5["catalogue/mask"].shape[0]))
            return Part(path, _text(h5.attrs["config_hash"]),
                        tuple(int(v) for v in frame_range), h5["catalogue/mask"][:n_cat],
                        "shap/values" in h5, whole)
    except OSError as exc:
        raise InputError(f"cannot read {path} as HDF5 ({exc})") from None


def merge_parts(target: Path, parts: Sequence[Part], n_series: int,
                finish: Callable[[Path], None] | None = None) -> None:
    """Write ``target`` holding the frames of ``parts`` (in frame order, consecutive,
    checked by the caller) as one run of those frames would have written it.

    The parts' catalogue, fits and learning are joined; the rows each part's extract
    stage appended are not (a single run's extract stage shares one budget over every
    frame and fits each motif to all of them): ``finish(path)`` runs that stage again on
    the joined file. ``n_series`` is the length of the config's whole series: a merge
    that covers it records no ``frame_range``. Built under a temporary name, renamed
    when complete (``finish`` included).
    """
    tmp = target.with_name(target.name + ".merging")
    sources = [h5py.File(p.path, "r") for p in parts]
    try:
        try:
            with h5py.File(tmp, "w") as out:
                _merge_into(out, sources, parts, n_series)
        finally:
            for src in sources:
                src.close()
        if finish is not None:
            finish(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(target)


def _merge_into(out: h5py.File, sources: list[h5py.File], parts: Sequence[Part],
                n_series: int) -> None:
    first = sources[0]
    start, stop = parts[0].frame_range[0], parts[-1].frame_range[1]
    n_frames = stop - start
    for key, value in first.attrs.items():
        if key not in ("frame_range", "complete"):
            out.attrs[key] = value
    if (start, stop) != (0, n_series):
        out.attrs["frame_range"] = np.array([start, stop])
    out.attrs["merged_from"] = json.dumps([str(p.path) for p in parts])
    if all("input_digests" in src.attrs for src in sources):  # every part's data files
        digests: dict[str, str] = {}
        for src in sources:
            digests.update(json.loads(_text(src.attrs["input_digests"])))
        if "frames.time" in digests:  # each part hashed its own times: hash the series'
            series = parse_config(_text(first.attrs["config"]),
                                  Path(_text(first.attrs.get("config_dir", "."))))
            digests["frames.time"] = times_digest(series.frames.time[start:stop])
        out.attrs["input_digests"] = json.dumps(digests, sort_keys=True)
    n_cat = int(first["catalogue"].attrs.get("n_catalogue", first["catalogue/mask"].shape[0]))
    for name in SHARED_DATASETS:
        if name in first and name != "catalogue":
            first.copy(first[name], out, name=name)
    # each part's extract stage added its own rows: the merged file keeps the catalogue's
    # (the parts' polished motifs and Rw are kept per frame in /polish)
    cat = out.create_group("catalogue")
    cat.attrs.update(first["catalogue"].attrs)
    for key, ds in first["catalogue"].items():
        rows = ds.ndim and key not in ("permutable", "round_labels")
        if rows:  # resizable as a run's: the extract stage appends its rows
            copied = cat.create_dataset(key, data=ds[:n_cat], maxshape=ds.maxshape,
                                        chunks=ds.chunks, fillvalue=ds.fillvalue)
        else:
            copied = cat.create_dataset(key, data=ds[()])
        copied.attrs.update(ds.attrs)
    # frames: names, times, data renumbered
    names = np.concatenate([src["frames/names"][:] for src in sources])
    out.create_dataset("frames/names", data=names.astype(f"S{max(len(n) for n in names)}"))
    if "frames/time" in first:
        times = out.create_dataset("frames/time",
                                   data=np.concatenate([s["frames/time"][:] for s in sources]))
        times.attrs["unit"] = first["frames/time"].attrs.get("unit", "s")
    k = 0
    for src in sources:
        for f in range(src["frames/names"].shape[0]):
            src.copy(src[f"data/{f:05d}"], out, name=f"data/{k:05d}")
            k += 1
    # per-frame datasets, one part's rows at a time
    freed = [f"fits/{k}" for k in first["fits"] if k not in ("batch_done", *FIT_FIELDS,
                                                              "status")]
    for name in (*FRAME_DATASETS, *freed):  # freed: uiso_<El>, delta2 (fit.refine)
        if name not in first:
            continue
        ds0 = first[name]
        shape = (n_frames, *ds0.shape[1:])
        cols = slice(None)
        maxshape = None
        if name.startswith("fits/"):
            shape, cols = (n_frames, n_cat), slice(0, n_cat)
            maxshape = (None if ds0.maxshape[0] is None else n_frames, *ds0.maxshape[1:])
        ds = out.create_dataset(name, shape, dtype=ds0.dtype, maxshape=maxshape,
                                chunks=ds0.chunks, fillvalue=ds0.fillvalue)
        for key, value in ds0.attrs.items():
            ds.attrs[key] = value
        row = 0
        for src in sources:
            for f in range(src[name].shape[0]):
                ds[row] = src[name][f, cols] if cols != slice(None) else src[name][f]
                row += 1
    for group in ("fits", "atoms", "shap", "polish"):
        for key, value in (first[group].attrs.items() if group in first else ()):
            out[group].attrs[key] = value
    if "shap" in first and "n_explained" in first["shap"].attrs:
        out["shap"].attrs["n_explained"] = np.concatenate(
            [np.atleast_1d(s["shap"].attrs["n_explained"]) for s in sources])
    # the work units of a single run of these frames: its frame blocks, every one done
    series = parse_config(_text(first.attrs["config"]),
                          Path(_text(first.attrs.get("config_dir", "."))))
    block = series.frames.block or n_frames
    batches = first["fits/batch_done"].shape[0]
    out.create_dataset("fits/batch_done",
                       data=np.ones((batches, -(-n_frames // block)), dtype="u1"))
    out["fits"].attrs["frame_block"] = block
    # learning: per-frame attributes joined in frame order
    ml = out.require_group("ml")
    for key in first["ml"].attrs:
        if key == "searched_frames":  # each part's own search, in merged frame numbers
            ml.attrs[key] = np.concatenate(
                [np.asarray(s["ml"].attrs[key]) + p.frame_range[0] - start
                 for s, p in zip(sources, parts, strict=True) if key in s["ml"].attrs])
            continue
        values = []
        for src in sources:
            values += _per_frame(src["ml"].attrs[key], src["frames/names"].shape[0])
        if key in ("params", "history"):
            ml.attrs[key] = json.dumps(values if n_frames > 1 else values[0], default=str)
        elif key == "settings":
            ml.attrs[key] = first["ml"].attrs[key]
        else:
            ml.attrs[key] = np.array(values) if n_frames > 1 else values[0]
    timings = out.create_group("timings")
    for key in ("catalogue", "fit", "learn", "explain", "extract", "outputs", "total"):
        timings.attrs[key] = float(sum(s["timings"].attrs.get(key, 0.0) for s in sources))
    fits = sum(s["timings"].attrs.get("fits_per_second", 0.0) * s["timings"].attrs.get("fit", 0.0)
               for s in sources)
    timings.attrs["fits_per_second"] = fits / max(timings.attrs["fit"], 1e-9)
    timings.attrs["ranks"] = int(max(s["timings"].attrs.get("ranks", 1) for s in sources))
    timings.attrs["note"] = "summed over the merged parts (they ran as separate jobs)"
    out.attrs["complete"] = True


