"""Figures written from a finished ``motex.h5`` (matplotlib, Agg, PNG).

Each function reads what it needs from the open file and returns the path it wrote.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

#: Fraction of the motifs of a frame whose sizes describe "the best fits".
BEST_FRACTION = 0.01


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def frame_axis(h5: h5py.File) -> tuple[np.ndarray, str]:
    """The series' x values and label: times when the config gave them, else frames."""
    if "frames/time" in h5:
        unit = h5["frames/time"].attrs.get("unit", "s")
        return h5["frames/time"][:], f"time ({unit})"
    n = h5["frames/names"].shape[0]
    return np.arange(n, dtype=float), "frame"


def atom_order(acv: np.ndarray) -> np.ndarray:
    """An order of the atoms (columns of the F × N ``acv``) that puts atoms with similar
    histories side by side: hierarchical clustering with optimal leaf ordering."""
    from scipy.cluster.hierarchy import leaves_list, linkage

    finite = np.nan_to_num(acv.T)
    if finite.shape[0] < 3:
        return np.arange(finite.shape[0])
    return leaves_list(linkage(finite, method="average", optimal_ordering=True))


def contributions_vs_frame(h5: h5py.File, path: Path) -> Path:
    """``contributions_vs_frame.png``: frame × atom heat map of the atom contributions."""
    plt = _pyplot()
    from matplotlib.colors import TwoSlopeNorm

    acv = h5["atoms/contribution"][:]
    index = h5["atoms/index"][:]
    elements = [e.decode() for e in h5["model/elements"][:]]
    x, xlabel = frame_axis(h5)
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


def series_summary(h5: h5py.File, path: Path) -> Path:
    """``series_summary.png``: best Rw, the size of the best motifs and the test R²
    against frame (or time)."""
    plt = _pyplot()
    rw = h5["fits/rw"][:]
    size = h5["catalogue/size"][:]
    n_frames, n_motifs = rw.shape
    x, xlabel = frame_axis(h5)
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
    r2 = np.atleast_1d(h5["ml"].attrs["test_r2"]) if "ml" in h5 else np.full(n_frames, np.nan)
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
