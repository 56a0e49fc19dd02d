"""Figures written from a finished ``motex.h5`` (matplotlib, Agg, PNG).

Each function reads what it needs from the open run (a
:class:`~mlmotex_hpc.store.RunFile`) and returns the path it wrote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.structure import site_labels
from ..store import RunFile

#: Fraction of the motifs of a frame whose sizes describe "the best fits".
BEST_FRACTION = 0.01


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def frame_axis(run: RunFile) -> tuple[np.ndarray, str]:
    """The series' x values and label: times when the config gave them, else frames."""
    times = run.times()
    if times is not None:
        return times[0], f"time ({times[1]})"
    return np.arange(run.n_frames, dtype=float), "frame"


def atom_order(acv: np.ndarray) -> np.ndarray:
    """An order of the atoms (columns of the F × N ``acv``) that puts atoms with similar
    histories side by side: hierarchical clustering with optimal leaf ordering."""
    from scipy.cluster.hierarchy import leaves_list, linkage

    finite = np.nan_to_num(acv.T)
    if finite.shape[0] < 3:
        return np.arange(finite.shape[0])
    return leaves_list(linkage(finite, method="average", optimal_ordering=True))


def contributions_vs_frame(run: RunFile, path: Path) -> Path:
    """``contributions_vs_frame.png``: frame × atom heat map of the atom contributions."""
    plt = _pyplot()
    from matplotlib.colors import TwoSlopeNorm

    acv = run.atoms("contribution")
    index = run.atoms("index")
    elements = run.elements()
    x, xlabel = frame_axis(run)
    order = atom_order(acv)
    data = acv[:, order].T  # atoms down, frames across
    n_atoms, n_frames = data.shape
    limit = float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 1.0
    limit = limit if limit > 0 else 1.0
    height = min(14.0, max(4.0, 0.12 * n_atoms + 1.5))
    fig, ax = plt.subplots(figsize=(9.0, height), constrained_layout=True)
    edges = _edges(x)
    mesh = ax.pcolormesh(edges, np.arange(n_atoms + 1), data, cmap="RdBu_r",
                         norm=TwoSlopeNorm(0.0, -limit, limit), shading="flat")
    bar = fig.colorbar(mesh, ax=ax, fraction=0.05, pad=0.02)
    bar.set_label("atom contribution value, ACV (Rw)\nnegative: in the motif")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"permutable atom ({n_atoms}, grouped by similar history)")
    labels = [f"{elements[index[i]]}{index[i]}" for i in order]
    step = max(1, int(np.ceil(n_atoms / 60)))  # at most ~60 readable labels
    ticks = np.arange(0, n_atoms, step)
    ax.set_yticks(ticks + 0.5)
    ax.set_yticklabels([labels[t] for t in ticks], fontsize=7 if step == 1 else 8)
    ax.invert_yaxis()
    ax.set_title(f"Atom contributions over {n_frames} frames")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _edges(x: np.ndarray) -> np.ndarray:
    """Cell edges around the points ``x`` (monotonic), for pcolormesh."""
    if x.size == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = 0.5 * (x[1:] + x[:-1])
    return np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])


def series_summary(run: RunFile, path: Path) -> Path:
    """``series_summary.png``: best Rw, the size of the best motifs and the test R²
    against frame (or time)."""
    plt = _pyplot()
    rw = run.fits("rw")
    size = run.sizes()
    n_frames, n_motifs = rw.shape
    x, xlabel = frame_axis(run)
    best_rw = np.full(n_frames, np.nan)
    best_size = np.full(n_frames, np.nan)
    top_mean = np.full(n_frames, np.nan)
    top_lo = np.full(n_frames, np.nan)
    top_hi = np.full(n_frames, np.nan)
    n_top = max(1, int(round(BEST_FRACTION * n_motifs)))
    for f in range(n_frames):
        ok = np.flatnonzero(np.isfinite(rw[f]))
        if ok.size == 0:
            continue
        ranked = ok[np.argsort(rw[f, ok], kind="stable")]
        best_rw[f] = rw[f, ranked[0]]
        best_size[f] = size[ranked[0]]
        top = size[ranked[:n_top]]
        top_mean[f], top_lo[f], top_hi[f] = top.mean(), np.percentile(top, 10), \
            np.percentile(top, 90)
    ml = run.ml()
    r2 = np.atleast_1d(ml["test_r2"]) if "test_r2" in ml else np.full(n_frames, np.nan)
    fig, axes = plt.subplots(3, 1, figsize=(8.0, 8.0), sharex=True, constrained_layout=True)
    ax = axes[0]
    ax.plot(x, best_rw, "o-", ms=3, color="C0")
    ax.set_ylabel("best Rw")
    ax.set_title(f"{n_frames} frames, {n_motifs} motifs each")
    ax = axes[1]
    ax.fill_between(x, top_lo, top_hi, color="C1", alpha=0.25,
                    label=f"best {n_top} motifs: 10–90 %")
    ax.plot(x, top_mean, "-", color="C1", label=f"best {n_top} motifs: mean")
    ax.plot(x, best_size, "o", ms=3, color="C3", label="best motif")
    ax.set_ylabel("motif size\n(permutable atoms)")
    ax.legend(loc="best", fontsize=8)
    ax = axes[2]
    ax.plot(x, r2, "o-", ms=3, color="C2", label="test R²")
    ax.axhline(0.5, color="0.4", ls="--", lw=1, label="0.5: contributions not to be trusted below")
    ax.set_ylabel("model test R²")
    ax.set_xlabel(xlabel)
    ax.legend(loc="best", fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- one frame's figures ---------------------------------------------------------------------

#: Most motifs drawn as single points; more are binned (hexbin) or sampled.
MAX_POINTS = 5000
#: Blue for atoms that lower Rw (the motif), red for atoms that raise it: as in the
#: structure files and the heat map (RdBu_r).
MOTIF_BLUE = "#2166ac"
REST_RED = "#b2182b"


def frame_metric(ml, name: str, frame: int) -> float:
    """A frame's value of an ``/ml`` metric (scalar in single-frame files; NaN if absent)."""
    if name not in ml:
        return float("nan")
    value = np.atleast_1d(ml[name])
    return float(value[frame] if value.size > 1 else value[0])


def atom_labels(run: RunFile) -> list[str]:
    """Each permutable atom's label (``W1``, ``O18``...: element and 1-based index in the
    starting model), as the CSV's ``label`` and the .vesta and .cmtx files name it."""
    labels = site_labels(run.elements())
    return [labels[i] for i in run.permutable()]


def _frame_title(run: RunFile, frame: int) -> str:
    names = run.frame_names()
    if len(names) == 1:
        return ""
    return f" — frame {frame} ({names[frame]})"


def shap_summary(run: RunFile, path: Path, frame: int = 0, max_display: int = 20,
                 seed: int = 0) -> Path:
    """``shap_summary.png``: shap's beeswarm of the features (atoms kept or removed, and
    the motif size) of up to :data:`MAX_POINTS` motifs drawn at random."""
    plt = _pyplot()
    import shap

    n_motifs = run.n_motifs
    rows = run.explained(frame)
    n_explained = rows.size
    if rows.size > MAX_POINTS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_POINTS, replace=False))
    phi, base = run.shap(frame, rows)
    phi = phi.astype(np.float64)
    masks = run.masks(rows).astype(np.float64)
    data = np.column_stack([masks, masks.sum(axis=1)])
    names = atom_labels(run) + ["motif size"]
    explanation = shap.Explanation(values=phi, base_values=base, data=data,
                                   feature_names=names)
    plt.figure(figsize=(8.0, 0.32 * min(max_display, len(names)) + 2.0))
    shap.plots.beeswarm(explanation, max_display=max_display, show=False,
                        color_bar_label="feature value (atom: 1 kept, 0 removed)")
    fig = plt.gcf()
    ax = fig.axes[0]
    ax.set_xlabel("SHAP value: change of the predicted Rw")
    shown = "" if len(rows) == n_motifs else f", {len(rows)} of {n_motifs} motifs drawn"
    if n_explained < n_motifs and len(rows) == n_explained:
        shown = f", the {n_explained} of {n_motifs} motifs explained"
    ax.set_title(f"Features that move the predicted Rw most{_frame_title(run, frame)}{shown}",
                 fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def atom_contributions(run: RunFile, path: Path, frame: int = 0, max_atoms: int = 300) -> Path:
    """``atom_contributions.png``: each permutable atom's ACV with ± σ bars, blue when
    negative (the atom lowers Rw: motif), red when positive; pale when |ACV| < σ."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    acv = run.atoms("contribution", frame)
    sigma = run.atoms("uncertainty", frame)
    labels = np.array(atom_labels(run))
    order = np.arange(acv.size)
    note = ""
    if acv.size > max_atoms:  # readable labels: the atoms that matter most
        order = np.sort(np.argsort(-np.abs(np.nan_to_num(acv)), kind="stable")[:max_atoms])
        note = f" ({max_atoms} of {acv.size} atoms with the largest |ACV|)"
    a, s = acv[order], sigma[order]
    confident = np.abs(a) >= s
    colours = np.where(a < 0, MOTIF_BLUE, REST_RED)
    x = np.arange(order.size)
    width = float(np.clip(0.16 * order.size + 2.5, 7.0, 48.0))
    fig, ax = plt.subplots(figsize=(width, 4.8), constrained_layout=True)
    for keep, alpha in ((confident, 0.95), (~confident, 0.35)):
        ax.bar(x[keep], a[keep], color=colours[keep], alpha=alpha, width=0.8)
    ax.errorbar(x, a, yerr=s, fmt="none", ecolor="0.25", elinewidth=0.8, capsize=1.5)
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels[order], rotation=90, fontsize=7)
    ax.set_xlim(-0.7, order.size - 0.3)
    ax.set_xlabel("permutable atom (element and index in the starting model)")
    ax.set_ylabel("atom contribution value, ACV (Rw)")
    ax.set_title(f"Atom contributions ± σ{_frame_title(run, frame)}{note}", fontsize=10,
                 pad=24)
    ax.legend(handles=[  # above the bars, never over them
        Patch(color=MOTIF_BLUE, label="ACV < 0: lowers Rw (in the motif)"),
        Patch(color=REST_RED, label="ACV > 0: raises Rw"),
        Patch(color="0.6", alpha=0.4, label="pale: |ACV| < σ (not significant)"),
    ], fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parity(run: RunFile, path: Path, frame: int = 0) -> Path:
    """``parity.png``: the model's predicted Rw against the fitted Rw of the test motifs
    (never seen in training), with MAE, RMSE, R² and the mean-predictor baseline."""
    plt = _pyplot()
    predicted = run.test_predicted(frame)
    fitted = run.fits("rw", frame)
    test = np.isfinite(predicted) & np.isfinite(fitted)
    x, y = fitted[test], predicted[test]
    ml = run.ml()

    fig, ax = plt.subplots(figsize=(5.6, 5.2), constrained_layout=True)
    lo = float(min(x.min(), y.min())) if x.size else 0.0
    hi = float(max(x.max(), y.max())) if x.size else 1.0
    pad = 0.03 * (hi - lo or 1.0)
    if x.size > MAX_POINTS:
        art = ax.hexbin(x, y, gridsize=60, bins="log", cmap="viridis", mincnt=1,
                        extent=(lo - pad, hi + pad, lo - pad, hi + pad))
        fig.colorbar(art, ax=ax, label="test motifs per bin")
    else:
        ax.plot(x, y, "o", ms=3, alpha=0.5, color="C0", label=f"{x.size} test motifs")
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "-", color="0.3", lw=1,
            label="predicted = fitted")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    ax.set_xlabel("fitted Rw (test motifs)")
    ax.set_ylabel("Rw predicted by the model")
    r2 = frame_metric(ml, "test_r2", frame)
    # the numbers go above the axes, where they cannot hide any point
    mae, rmse, base = (frame_metric(ml, k, frame) for k in ("test_mae", "test_rmse",
                                                             "baseline_mae"))
    text = (f"MAE {mae:.4f}   RMSE {rmse:.4f}   R² {r2:.3f}\n"
            f"baseline (predicting the mean): MAE {base:.4f}")
    if r2 < 0.5:
        text += "\nR² < 0.5: the atom contributions are not to be trusted"
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.set_title(f"Model of Rw on the test set{_frame_title(run, frame)}\n{text}", fontsize=9,
                 color="firebrick" if r2 < 0.5 else "black")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def best_fit(path: Path, r: np.ndarray, g: np.ndarray, curves: list[tuple[str, np.ndarray, float]],
             title: str = "") -> Path:
    """``best_fit.png``: the data and each ``(label, G_calc, Rw)`` curve, with their
    difference curves stacked below."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10.5, 5.6), constrained_layout=True)
    ax.plot(r, g, "o", ms=2.5, mfc="none", color="0.2", label="data")
    colours = ("C3", "C0", "C2", "C1")
    span = float(np.ptp(g)) or 1.0
    base = float(np.min(g)) - 0.15 * span
    for k, (label, calc, rw) in enumerate(curves):
        colour = colours[k % len(colours)]
        ax.plot(r, calc, "-", lw=1.3, color=colour, label=f"{label}: Rw = {rw:.4f}")
        diff = g - calc
        offset = base - np.max(diff)
        ax.plot(r, diff + offset, "-", lw=0.9, color=colour, label=f"difference, {label}")
        ax.axhline(offset, color="0.7", lw=0.6)
        base = offset + np.min(diff) - 0.08 * span
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("G(r) (Å⁻²)")
    ax.set_title(title or "Fits to the data", fontsize=10)
    # beside the axes: curves of any shape stay uncovered
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rw_vs_size(run: RunFile, path: Path, frame: int = 0,
               marks: list[tuple[str, float, float]] = ()) -> Path:
    """``rw_vs_size.png``: fitted Rw of every motif against its size, the best Rw per
    size, and ``marks`` ``(label, size, Rw)`` such as the extracted motif."""
    plt = _pyplot()
    rw = run.fits("rw", frame)
    size = run.sizes().astype(float)
    ok = np.isfinite(rw)
    x, y = size[ok], rw[ok]
    fig, ax = plt.subplots(figsize=(7.0, 4.8), constrained_layout=True)
    if x.size > MAX_POINTS:
        art = ax.hexbin(x, y, gridsize=(min(80, int(np.ptp(x)) + 1), 60), bins="log",
                        cmap="Greys", mincnt=1)
        fig.colorbar(art, ax=ax, label="motifs per bin")
    else:
        ax.plot(x, y, "o", ms=2.5, alpha=0.35, color="0.35", label=f"{x.size} motifs")
    sizes = np.unique(x)
    best = [y[x == s].min() for s in sizes]
    ax.plot(sizes, best, "-", color="C0", lw=1.2, label="best Rw of each size")
    for (label, s, value), marker, colour in zip(marks, "*Dsv", ("C3", MOTIF_BLUE, "C2", "C1"),
                                                 strict=False):
        ax.plot([s], [value], marker, ms=11, color=colour, mec="k", label=label)
    ax.set_xlabel("motif size (permutable atoms kept)")
    ax.set_ylabel("fitted Rw")
    ax.set_title(f"Fit quality against motif size{_frame_title(run, frame)}", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def convergence_figure(path: Path, table: np.ndarray, fields: tuple[str, ...]) -> Path:
    """``convergence.png``: against the catalogue size, how often the ACV signs agree
    with the exact Shapley values (random catalogues also with the signs of their plain
    main effects), and how far the catalogue's best Rw lies above the global optimum;
    each seed a dot, the mean a line; random and adaptive catalogues apart."""
    plt = _pyplot()
    col = {name: table[:, k] for k, name in enumerate(fields)}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11.0, 4.4), constrained_layout=True)
    curves = [(0, "sign_agreement", "C0", "-", "random: ACV (XGBoost + SHAP)"),
              (0, "mean_sign_agreement", "C1", ":", "random: main effect of the sample"),
              (1, "sign_agreement", "C3", "-", "adaptive: ACV of its uniform motifs")]
    gap = col["best_rw"] - col["global_rw"]
    for strategy, name, colour, style, label in curves:
        at = col["strategy"] == strategy
        if not at.any():
            continue
        sizes = np.unique(col["size"][at])
        ax.plot(col["size"][at], 100 * col[name][at], "o", ms=4, alpha=0.5, color=colour)
        ax.plot(sizes, [100 * np.mean(col[name][at & (col["size"] == s)]) for s in sizes],
                style, color=colour, label=label)
        if name == "sign_agreement":
            bx.plot(col["size"][at], gap[at], "o", ms=4, alpha=0.5, color=colour)
            bx.plot(sizes, [np.mean(gap[at & (col["size"] == s)]) for s in sizes], style,
                    color=colour, label=label.split(":")[0])
    for axes, ylabel, title, corner in (
            (ax, "atoms with the exact Shapley value's sign (%)",
             "Atom labels against the exact Shapley values", "lower right"),
            (bx, "best Rw in the catalogue − global best Rw",
             f"Best motif found (global best Rw {col['global_rw'][0]:.4f})", "upper right")):
        axes.set_xscale("log")
        axes.set(xlabel="motifs in the catalogue (fits)", ylabel=ylabel)
        axes.set_title(title, fontsize=10)
        axes.legend(fontsize=8, loc=corner)
        axes.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
