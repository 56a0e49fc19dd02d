"""Adaptive against random catalogues at equal fit budgets, on the shipped cases.

For each case and budget, two full runs (``mlmotex-hpc run`` under mpirun, defaults
otherwise): ``catalogue.strategy: random`` and ``adaptive``. Reported per run: the fits
used (every fit of the run, the extract stage's included), the answer (``in_motif``:
polished, connected) and the plain ACV < 0 labels against the known answer where there
is one, the answer's Rw, and the wall time. The adaptive runs' rounds give the labels and
the best Rw against the fits so far. Appends a table to
benchmarks/results/adaptive_<date>.txt and draws labels_vs_fits.png there.

    python benchmarks/bench_adaptive.py [--cases keggin,cage,c60,moox,bi] [--np 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_adaptive import _cage_and_fragment  # noqa: E402 - the test's own model

C60_BALL = [*range(8, 16), *range(24, 32), *range(40, 48), *range(56, 64), *range(72, 80),
            *range(88, 96), *range(100, 104), *range(108, 112), *range(116, 120)]
#: case: (config, budgets, known answer as 0-based permutable positions or None)
CASES = {
    "keggin": ("configs/keggin.yaml", [250, 500, 1000, 2000], list(range(0, 24, 2))),
    "cage": (None, [500, 1000, 2000], list(range(12))),
    "c60": ("configs/c60.yaml", [2000, 5000, 10000, 20000], C60_BALL),
    "moox": ("configs/moox.yaml", [2000, 10000], None),
    "bi": ("configs/bi.yaml", [2000, 10000], None),
}


def _config(case: str, work: Path, budget: int, strategy: str) -> Path:
    path, _, _ = CASES[case]
    if case == "cage":
        model = work / "cage_fragment.xyz"
        _cage_and_fragment(model)
        raw = yaml.safe_load((ROOT / "configs/keggin.yaml").read_text())
        raw["structure"] = str(model)
        base = ROOT / "configs"
    else:
        raw = yaml.safe_load((ROOT / path).read_text())
        base = (ROOT / path).parent
    for key in ("structure", "data"):
        if isinstance(raw[key], str) and not Path(raw[key]).is_absolute():
            raw[key] = str((base / raw[key]).resolve())
    raw["catalogue"] = {**raw.get("catalogue", {}), "size": budget, "strategy": strategy}
    raw["output"] = {"dir": str(work / f"{strategy}_{budget}")}
    out = work / f"{strategy}_{budget}.yaml"
    out.write_text(yaml.safe_dump(raw))
    return out


def _run(config: Path, ranks: int) -> float:
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    cli = Path(sys.executable).with_name("mlmotex-hpc")
    t0 = time.perf_counter()
    proc = subprocess.run(["mpirun", "--bind-to", "none", "-n", str(ranks), str(cli), "run",
                           str(config), "--overwrite", "--quiet"], env=env, text=True,
                          capture_output=True)
    if proc.returncode:
        raise SystemExit(f"{config}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def _score(mask: np.ndarray, known: list[int] | None) -> str:
    if known is None:
        return "-"
    truth = np.zeros(mask.size, dtype=bool)
    truth[known] = True
    return f"{int((mask == truth).sum())}/{mask.size}"


def _measure(h5: Path, known) -> dict:
    with h5py.File(h5) as f:
        n_cat = int(f["catalogue"].attrs["n_catalogue"])
        rw = f["fits/rw"][0]
        out = {"fits": int(f["catalogue/mask"].shape[0]), "catalogue": n_cat,
               "answer": f["atoms/in_motif"][0].astype(bool),
               "acv": f["atoms/acv_negative"][0].astype(bool),
               "answer_rw": float(f["polish/rw"][0]) if "polish" in f else float("nan"),
               "best_catalogue_rw": float(np.nanmin(rw[:n_cat])),
               "labels": f["atoms/label"][0]}
        rounds = f["catalogue/round"][:n_cat]
        labels = f["catalogue/round_labels"][()]
        curve = []
        if known is not None and rounds.max() > 0:
            truth = np.zeros(f["catalogue/mask"].shape[1], dtype=bool)
            truth[known] = True
            for r in range(rounds.max() + 1):
                if r >= len(labels) or labels[r][0] < 0:
                    break
                upto = int(np.flatnonzero(rounds <= r)[-1]) + 1
                right = float(np.mean((labels[r] == 1) == truth))
                curve.append((upto, right, float(np.nanmin(rw[:upto]))))
        out["curve"] = curve
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="keggin,cage,c60,moox,bi")
    parser.add_argument("--np", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench_adaptive")
    args = parser.parse_args()
    results_dir = ROOT / "benchmarks" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    report = results_dir / f"adaptive_{time.strftime('%Y-%m-%d')}.txt"
    head = (f"# bench_adaptive.py on {os.uname().nodename}, {os.cpu_count()} cores, "
            f"{args.np} ranks, {time.strftime('%Y-%m-%dT%H:%M:%S')}, commit "
            + subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True).stdout.strip())
    lines = [head, "case budget strategy fits answer(right) acv<0(right) answer_atoms "
             "answer_Rw best_catalogue_Rw wall_s"]
    print("\n".join(lines), flush=True)
    curves: dict[str, dict] = {}
    for case in args.cases.split(","):
        _, budgets, known = CASES[case]
        work = args.work / case
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        for budget in budgets:
            for strategy in ("random", "adaptive"):
                cfg = _config(case, work, budget, strategy)
                wall = _run(cfg, args.np)
                m = _measure(work / f"{strategy}_{budget}" / "motex.h5", known)
                line = (f"{case} {budget} {strategy} {m['fits']} {_score(m['answer'], known)} "
                        f"{_score(m['acv'], known)} {int(m['answer'].sum())} "
                        f"{m['answer_rw']:.4f} {m['best_catalogue_rw']:.4f} {wall:.1f}")
                print(line, flush=True)
                lines.append(line)
                if known is not None:
                    truth = np.zeros(m["acv"].size, dtype=bool)
                    truth[known] = True
                    point = (m["fits"], float(np.mean(m["acv"] == truth)),
                             float(np.mean(m["answer"] == truth)), m["best_catalogue_rw"])
                    curves.setdefault(case, {}).setdefault(strategy, []).append(point)
                    if strategy == "adaptive" and budget == budgets[-1]:
                        curves[case]["rounds"] = m["curve"]
    with report.open("a") as fh:
        fh.write("\n".join(lines) + "\n\n")
    if curves:
        _figure(curves, results_dir / "labels_vs_fits.png")
    print(f"appended to {report}")


def _figure(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(curves), figsize=(4.2 * len(curves), 6.5), squeeze=False)
    for k, (case, data) in enumerate(curves.items()):
        top, bottom = axes[0, k], axes[1, k]
        for strategy, colour in (("random", "tab:red"), ("adaptive", "tab:blue")):
            pts = sorted(data.get(strategy, []))
            if not pts:
                continue
            fits = [p[0] for p in pts]
            top.plot(fits, [p[1] for p in pts], "o--", color=colour,
                     label=f"{strategy}: ACV < 0 labels")
            top.plot(fits, [p[2] for p in pts], "s-", color=colour,
                     label=f"{strategy}: answer")
            bottom.plot(fits, [p[3] for p in pts], "o-", color=colour, label=strategy)
        if data.get("rounds"):
            fits, right, best = zip(*data["rounds"], strict=True)
            top.plot(fits, right, ":", color="tab:cyan", label="adaptive rounds (labels)")
            bottom.plot(fits, best, ":", color="tab:cyan", label="adaptive rounds")
        top.set_title(case)
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        top.set_ylabel("atoms labelled right")
        bottom.set_ylabel("best catalogue Rw")
        bottom.set_xlabel("fits (the run's every fit)")
        top.legend(fontsize=7)
        bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
