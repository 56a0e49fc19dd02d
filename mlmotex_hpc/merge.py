"""``mlmotex-hpc merge PART.h5 ... | CONFIG.yaml [-o DIR]``: join a job array's files.

Each task of a job array (``jobs/slurm_array.sh``) runs ``mlmotex-hpc run CONFIG
--frames START:STOP`` and writes ``output.dir/frames_START-STOP/motex.h5`` with the
same catalogue, fitted and learned for its own frames. ``merge`` checks that the parts
belong to one config, cover consecutive frames once each and are finished, then writes
one ``motex.h5`` with every frame, as a single run of the whole series would have, and
the series outputs (CSV, motifs, plots). Given the config instead of the parts, it takes
every ``output.dir/frames_*/motex.h5`` and requires them to cover the whole series. A
serial program: run it without ``mpirun`` (under it, ranks other than 0 do nothing).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np

from .errors import InputError

#: Datasets with a leading frame axis, joined along it.
FRAME_DATASETS = ("fits/rw", "fits/scale", "fits/zoom", "fits/status",
                  "atoms/contribution", "atoms/uncertainty", "atoms/confidence",
                  "atoms/kept_mean", "atoms/removed_mean", "atoms/in_motif",
                  "shap/values", "shap/base_value", "ml/test_predicted")
#: Datasets every part holds identically; copied from the first.
SHARED = ("model", "catalogue", "atoms/index")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("parts", nargs="+", metavar="PART.h5|CONFIG.yaml",
                        help="the tasks' motex.h5 files (any order); or the config alone: "
                             "every output.dir/frames_*/motex.h5, which must cover the "
                             "whole series")
    parser.add_argument("-o", "--out", help="folder of the merged motex.h5 and outputs "
                        "(default: the folder holding the parts' folders)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing merged motex.h5")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")


def _part(path: Path) -> dict:
    """What merging needs to know of one part (errors are InputError)."""
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
            if frame_range is None:
                frame_range = (0, h5["fits/rw"].shape[0])
            return {"path": path, "hash": h5.attrs["config_hash"],
                    "range": tuple(int(v) for v in frame_range),
                    "mask": h5["catalogue/mask"][:], "shap": "shap/values" in h5}
    except OSError as exc:
        raise InputError(f"cannot read {path} as HDF5 ({exc})") from None


def check_parts(paths: list[Path]) -> list[dict]:
    """The parts in frame order, checked to belong together (errors are InputError)."""
    parts = sorted((_part(p) for p in paths), key=lambda p: p["range"])
    first = parts[0]
    for part in parts[1:]:
        if part["hash"] != first["hash"]:
            raise InputError(f"{part['path']} is a run of another config than "
                             f"{first['path']}: only tasks of one config can be merged")
        if not np.array_equal(part["mask"], first["mask"]):
            raise InputError(f"{part['path']} has another catalogue than {first['path']}")
        if part["shap"] != first["shap"]:
            raise InputError(f"{part['path']} and {first['path']} stopped at different "
                             "stages (one has SHAP values, the other not)")
    for a, b in zip(parts, parts[1:], strict=False):
        if b["range"][0] < a["range"][1]:
            raise InputError(f"{a['path']} (frames {a['range'][0]}:{a['range'][1]}) and "
                             f"{b['path']} (frames {b['range'][0]}:{b['range'][1]}) overlap")
        if b["range"][0] > a["range"][1]:
            raise InputError(f"frames {a['range'][1]}:{b['range'][0]} are in no part: is "
                             "that task finished, and is its motex.h5 among the parts?")
    return parts


def _per_frame(value, n: int) -> list:
    """A part's ``/ml`` value as one entry per frame (1-frame runs store scalars)."""
    if isinstance(value, (str, bytes)):
        loaded = json.loads(value)
        return loaded if n > 1 else [loaded]
    return list(np.atleast_1d(value))


def merge(paths: list[Path], out_dir: Path, overwrite: bool = False, log=print) -> dict:
    """Merge the parts into ``out_dir/motex.h5`` and write the outputs; the summary."""
    from .catalogue import MotifSpace
    from .output.results import write_outputs
    from .parallel.store import open_results
    from .refine import read_run, run_config

    t0 = time.perf_counter()
    parts = check_parts(paths)
    target = out_dir / "motex.h5"
    if any(p["path"].resolve() == target.resolve() for p in parts):
        raise InputError(f"{target} is one of the parts: choose another output folder (-o)")
    if target.exists() and not overwrite:
        raise InputError(f"{target} exists: use --overwrite to replace it, or -o")
    out_dir.mkdir(parents=True, exist_ok=True)
    start, stop = parts[0]["range"][0], parts[-1]["range"][1]
    log(f"mlmotex-hpc merge: {len(parts)} parts, frames {start}:{stop}")
    tmp = target.with_name(target.name + ".merging")
    sources = [h5py.File(p["path"], "r") for p in parts]
    try:
        with h5py.File(tmp, "w") as out:
            _merge_into(out, sources, parts, start, stop)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        for src in sources:
            src.close()
    tmp.replace(target)
    run = read_run(target)
    config = run_config(run)
    space = MotifSpace.from_structure(run.structure, config.permute, config.bond_threshold)
    with open_results(target, "r+") as h5:
        timings = {k: float(v) for k, v in h5["timings"].attrs.items()
                   if k not in ("ranks", "note")}
        return write_outputs(h5, SimpleNamespace(structure=run.structure, space=space),
                             out_dir, until="explain" if parts[0]["shap"] else "learn",
                             timings=timings, n_ranks=int(h5["timings"].attrs["ranks"]),
                             t_start=t0, log=log, config=config)


def _merge_into(out: h5py.File, sources: list[h5py.File], parts: list[dict], start: int,
                stop: int) -> None:
    first = sources[0]
    n_frames = stop - start
    for key, value in first.attrs.items():
        if key not in ("frame_range", "complete"):
            out.attrs[key] = value
    n_series = _series_length(first)
    if (start, stop) != (0, n_series):
        out.attrs["frame_range"] = np.array([start, stop])
    out.attrs["merged_from"] = json.dumps([str(p["path"]) for p in parts])
    for name in SHARED:
        if name in first:
            first.copy(first[name], out, name=name)
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
    for name in FRAME_DATASETS:
        if name not in first:
            continue
        ds0 = first[name]
        ds = out.create_dataset(name, (n_frames, *ds0.shape[1:]), dtype=ds0.dtype,
                                chunks=ds0.chunks, fillvalue=ds0.fillvalue)
        for key, value in ds0.attrs.items():
            ds.attrs[key] = value
        row = 0
        for src in sources:
            for f in range(src[name].shape[0]):
                ds[row] = src[name][f]
                row += 1
    for group in ("fits", "atoms"):
        for key, value in first[group].attrs.items():
            out[group].attrs[key] = value
    batches = first["fits/batch_done"].shape[0]
    out.create_dataset("fits/batch_done", data=np.ones((batches, 1), dtype="u1"))
    out["fits"].attrs["frame_block"] = n_frames
    # learning: per-frame attributes joined in frame order
    ml = out.require_group("ml")
    for key in first["ml"].attrs:
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
    for key in ("catalogue", "fit", "learn", "explain", "total"):
        timings.attrs[key] = float(sum(s["timings"].attrs.get(key, 0.0) for s in sources))
    fits = sum(s["timings"].attrs.get("fits_per_second", 0.0) * s["timings"].attrs.get("fit", 0.0)
               for s in sources)
    timings.attrs["fits_per_second"] = fits / max(timings.attrs["fit"], 1e-9)
    timings.attrs["ranks"] = int(max(s["timings"].attrs.get("ranks", 1) for s in sources))
    timings.attrs["note"] = "summed over the merged parts (they ran as separate jobs)"
    out.attrs["complete"] = True


def _series_length(h5: h5py.File) -> int:
    """Frames in the config's whole series (every part's config lists them all)."""
    from .config import parse_config
    from .refine import read_run

    run = read_run(h5.filename)
    return len(parse_config(run.config_text, run.config_dir or Path.cwd()).data)


def parts_of_config(path: Path) -> tuple[list[Path], Path]:
    """A config's task files (``output.dir/frames_*/motex.h5``) and its output folder;
    the tasks must cover its whole series (errors are InputError)."""
    from .config import load_config

    config = load_config(path)
    out = config.output.dir
    found = sorted(out.glob("frames_*/motex.h5"))
    if not found:
        raise InputError(f"no task results in {out} (expected frames_START-STOP/motex.h5 "
                         f"from `mlmotex-hpc run {path} --frames ...`)")
    parts = check_parts(found)
    covered = (parts[0]["range"][0], parts[-1]["range"][1])
    if covered != (0, len(config.data)):
        raise InputError(f"the tasks in {out} hold frames {covered[0]}:{covered[1]} of "
                         f"{len(config.data)}: is every task finished?")
    return found, out


def main(args: argparse.Namespace) -> int:
    paths = [Path(p).resolve() for p in args.parts]
    if len(paths) == 1 and paths[0].suffix in (".yaml", ".yml"):
        paths, out = parts_of_config(paths[0])
    else:
        out = paths[0].parent.parent
    if args.out:
        out = Path(args.out).resolve()
    merge(paths, out, overwrite=args.overwrite,
          log=(lambda m: None) if args.quiet else (lambda m: print(m, flush=True)))
    return 0
