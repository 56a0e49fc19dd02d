"""Steps 3-4 against ML-MotEx's settings, on the same fits, side by side (issue 16).

For each case the catalogue is fitted once (``run --until fit``); then a copy of that
``motex.h5`` learns and explains twice: ``run`` with only the ``learn:`` section changed
(a run whose fits are done keeps them and learns again) and ``mlmotex-hpc learn``:

* ``old``: ML-MotEx's search, as every release before this one did by default
  (``search: full``, 50 evaluations × 5-fold CV, SHAP on every motif);
* ``new``: the defaults (fast search: early-stopped trees, racing, warm start, a 4,000-motif
  search sample; SHAP on a growing sample until every ACV's SE < 1 % of the largest |ACV|).

It prints the stage times from ``/timings``, the ratio, the test MAE and R² and whether the
atom labels (ACV < 0) agree, and for Keggin whether the 12 W of the α-Keggin are found.

    python benchmarks/bench_learn.py [--cases keggin,moox,bi,c60,c60_1e5,fe2o3] [--np 2]
                                     [--noise] [--work DIR [--reuse]]

``fe2o3`` (151 frames) runs only the new settings (one search for the series) against
today's shipped demo, whose hyperparameters are fixed by hand, and reports the whole run
against the fit stage. Results go to ``benchmarks/results/learn_<date>.txt``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXE = ROOT / ".venv" / "bin" / "mlmotex-hpc"
OLD = {"search": "full", "search_iterations": 50, "cv_folds": 5, "shap": "all", "seed": 0}
NEW = {"seed": 0}
#: case -> (config, catalogue size, learn settings of the "old" run or None)
CASES = {
    "keggin": ("configs/keggin.yaml", 10_000, OLD),
    "moox": ("configs/moox.yaml", 10_000, OLD),
    "bi": ("configs/bi.yaml", 10_000, OLD),
    "c60": ("configs/c60.yaml", 10_000, OLD),
    "c60_1e5": ("benchmarks/configs/c60_million.yaml", 100_000, OLD),
    "fe2o3": ("configs/fe2o3_insitu.yaml", 10_000,
              {"seed": 0, "shap": "all",
               "params": {"n_estimators": 200, "max_depth": 4, "learning_rate": 0.1,
                          "subsample": 0.8}}),
}
KEGGIN_ANSWER = np.arange(24) % 2 == 0


def _config(case: str, folder: Path, learn: dict, name: str) -> Path:
    path, size, _ = CASES[case]
    source = ROOT / path
    config = yaml.safe_load(source.read_text())
    for key in ("structure", "data"):
        config[key] = str((source.parent / config[key]).resolve())
    config["catalogue"] = {**config.get("catalogue", {}), "size": size}
    config["learn"] = learn
    config["output"] = {"dir": str(folder)}
    folder.parent.mkdir(parents=True, exist_ok=True)
    out = folder.parent / f"{name}.yaml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def _run(np_: int, config: Path, *args: str, command: str = "run") -> None:
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", MLMOTEX_PROGRESS_INTERVAL="60")
    cmd = [str(EXE), command, str(config), *args]
    if "--dry-run" not in args:  # a dry run is one serial process
        cmd = ["mpirun", "--bind-to", "none", "-n", str(np_), *cmd, "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")


def _read(h5: Path) -> dict:
    with h5py.File(h5) as f:
        t = dict(f["timings"].attrs)
        ml = f["ml"].attrs
        return {"learn": float(t["learn"]), "explain": float(t["explain"]),
                "total": float(t["total"]),
                "mae": np.atleast_1d(ml["test_mae"]).astype(float),
                "r2": np.atleast_1d(ml["test_r2"]).astype(float),
                "labels": f["atoms/in_motif"][()].astype(bool),
                "explained": np.atleast_1d(f["shap"].attrs.get("n_explained", [-1]))}


def bench(case: str, np_: int, work: Path, lines: list[str], noise: bool,
          reuse: bool) -> None:
    learn_old = CASES[case][2]
    folder = work / case / "out"  # one output folder: the fits' identity includes it
    fitted = folder.parent / "fitted.h5"
    if not (reuse and fitted.exists()):
        fit_config = _config(case, folder, NEW, "fit")
        _run(np_, fit_config, "--dry-run")  # compiles the kernels: the fit is timed warm
        _run(np_, fit_config, "--until", "fit")
        shutil.copy(folder / "motex.h5", fitted)
    with h5py.File(fitted) as f:
        fit_time = float(f["timings"].attrs["fit"])
    res = {}
    variants = [("old", learn_old), ("new", NEW)]
    if noise:  # the old method's own label noise: the same search, another seed
        variants.append(("old_seed1", {**learn_old, "seed": 1}))
    for name, learn in variants:
        kept = folder.parent / f"{name}.h5"
        if reuse and name != "new" and kept.exists():  # an earlier run of the same work
            res[name] = _read(kept)
            continue
        shutil.copy(fitted, folder / "motex.h5")  # the same fits, learned again
        if learn == NEW:  # the fits' own config: `learn` learns (a `run` would stop)
            _run(np_, folder / "motex.h5", command="learn")
        else:  # only the learn section differs: `run` keeps the fits and learns
            _run(np_, _config(case, folder, learn, name))
        res[name] = _read(folder / "motex.h5")
        shutil.copy(folder / "motex.h5", folder.parent / f"{name}.h5")
    old, new = res["old"], res["new"]
    t_old, t_new = old["learn"] + old["explain"], new["learn"] + new["explain"]
    same = (old["labels"] == new["labels"])
    frames = old["labels"].shape[0]
    agree = f"{int(same.sum())}/{same.size} atoms"
    if frames > 1:
        agree = (f"{100 * same.mean():.1f} % of atom labels "
                 f"({int(same.all(axis=1).sum())}/{frames} frames all alike)")
    line = (f"| {case} | {CASES[case][1]:,} × {frames} | {fit_time:.1f} s | "
            f"{old['learn']:.1f} + {old['explain']:.1f} = {t_old:.1f} s | "
            f"{new['learn']:.1f} + {new['explain']:.1f} = {t_new:.1f} s | "
            f"**{t_old / t_new:.1f}×** | {np.mean(old['mae']):.4f} / {np.mean(new['mae']):.4f} | "
            f"{np.mean(old['r2']):.3f} / {np.mean(new['r2']):.3f} | {agree} | "
            f"{int(np.mean(new['explained'])):,} | {new['total']:.1f} s |")
    if noise:
        again = res["old_seed1"]["labels"] == old["labels"]
        line += (f" old seed 0 vs seed 1: {int(again.sum())}/{again.size} labels agree, "
                 f"test MAE {np.mean(res['old_seed1']['mae']):.4f};")
    if case == "keggin":
        right = int((new["labels"][0] == KEGGIN_ANSWER).sum())
        right_old = int((old["labels"][0] == KEGGIN_ANSWER).sum())
        line += f" W right: {right_old}/24 old, {right}/24 new"
    if frames > 1:
        whole = fit_time + new["total"]
        line += f" whole run {whole:.0f} s = {whole / fit_time:.1f}× the fit stage"
        diff = np.flatnonzero(~same.all(axis=1))
        line += f"; frames whose labels differ: {diff.tolist()[:20]}"
    print(line, flush=True)
    lines.append(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="keggin,moox,bi,c60,c60_1e5,fe2o3")
    parser.add_argument("--np", type=int, default=2)
    parser.add_argument("--noise", action="store_true",
                        help="also run the old settings with seed 1: their own label noise")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the fits and old runs found in --work (only new reruns)")
    parser.add_argument("--work", type=Path, default=None, help="folder (default: a temp one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_learn_"))
    header = [f"# bench_learn.py on {socket.gethostname()}, {os.cpu_count()} cores, "
              f"{args.np} ranks, {datetime.datetime.now().isoformat(timespec='seconds')}",
              "| case | motifs × frames | fit stage | old: learn + explain | new: learn + "
              "explain | speed-up | test MAE old / new | R² old / new | labels agree | "
              "motifs explained (new) | new: learn, explain, outputs |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(header), flush=True)
    lines = list(header)
    for case in args.cases.split(","):
        bench(case, args.np, work, lines, args.noise, args.reuse)
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    out = results / f"learn_{datetime.date.today().isoformat()}.txt"
    with open(out, "a") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
