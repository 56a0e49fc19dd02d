"""``mlmotex-hpc refine`` end to end: a small run, then srfit on its motifs as a user would."""

from __future__ import annotations

import re
import shutil

import h5py
import numpy as np
import pytest
import yaml

from mlmotex_hpc.catalogue import MotifSpace
from mlmotex_hpc.io.pdfdata import read_pdf_data
from mlmotex_hpc.io.pdfout import FGR_COLUMNS
from mlmotex_hpc.io.structure import Structure, read_xyz

from .conftest import KEGGIN_GR, KEGGIN_XYZ, keggin_config, run_cli

N_MOTIFS = 60


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A single-rank Keggin run of 60 motifs, all four steps."""
    tmp = tmp_path_factory.mktemp("refine")
    config = tmp / "keggin.yaml"
    config.write_text(yaml.safe_dump(keggin_config(tmp, catalogue={"size": N_MOTIFS})))
    proc = run_cli("run", str(config), "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp / "out"


def printed_rw(text: str) -> float:
    """The overall Rw of srfit's printed FitResults (its first ``Rw`` line)."""
    match = re.search(r"^Rw\s+(\S+)", text, flags=re.MULTILINE)
    assert match, text
    return float(match.group(1))


def motif_atoms(h5_path, mask: np.ndarray) -> np.ndarray:
    """Atom mask over the model for a mask over permutable atoms, as the run built it."""
    with h5py.File(h5_path) as h5:
        elements = tuple(e.decode() for e in h5["model/elements"][:])
        structure = Structure(elements, h5["model/xyz"][:])
    space = MotifSpace.from_structure(structure, ("W",), 2.6)
    return space.atom_masks(mask[None, :])[0]


def check_xyz(path, h5_path, atom_mask: np.ndarray) -> None:
    """The written motif: its atoms, the model's coordinates times one zoom in bounds."""
    motif = read_xyz(path)
    model = read_xyz(KEGGIN_XYZ)
    assert len(motif) == atom_mask.sum()
    assert motif.elements == tuple(np.array(model.elements)[atom_mask])
    zoom = motif.xyz / model.xyz[atom_mask]
    assert np.allclose(zoom, np.median(zoom), atol=2e-6)
    assert 0.99 - 1e-6 <= np.median(zoom) <= 1.01 + 1e-6


@pytest.mark.slow
def test_refine_best_motif(run_dir, tmp_path):
    h5_path = run_dir / "motex.h5"
    model_before = KEGGIN_XYZ.read_bytes()
    out = tmp_path / "best"
    proc = run_cli("refine", str(h5_path), "--motif", "best", "-o", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with h5py.File(h5_path) as h5:
        rw = h5["fits/rw"][0]
        best = int(np.nanargmin(rw))
        mask = h5["catalogue/mask"][best].astype(bool)
    # srfit frees Uiso and delta2 as well: it fits at least as well as the run's fit.
    assert printed_rw(proc.stdout) <= rw[best] + 1e-3
    assert f"motif {best} (best fit)" in proc.stdout
    assert (out / "refine_fit.png").stat().st_size > 10_000
    assert (out / "refine_fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    check_xyz(out / "refine_motif.xyz", h5_path, motif_atoms(h5_path, mask))
    assert printed_rw((out / "refine_results.txt").read_text()) == printed_rw(proc.stdout)
    assert KEGGIN_XYZ.read_bytes() == model_before
    # the same fit in PDFgui's format: Gcalc + Gdiff is the data, Rw recomputes
    lines = (out / "refine_fit.fgr").read_text().splitlines()
    start = lines.index("##### start data")
    assert "##### PDFgui fit" in lines[:start] and lines[start + 1] == FGR_COLUMNS
    meta = dict(line.split("=", 1) for line in lines[lines.index("# metadata") + 1:start])
    rows = np.loadtxt(lines[start + 2:])
    data = read_pdf_data(KEGGIN_GR)
    inside = (data.r >= rows[0, 0] - 1e-9) & (data.r <= rows[-1, 0] + 1e-9)
    assert np.allclose(rows[:, 1] + rows[:, 4], data.g[inside], atol=1e-6)
    rw = np.sqrt(np.sum(rows[:, 4] ** 2) / np.sum(data.g[inside] ** 2))
    assert float(meta["rw"]) == pytest.approx(rw, rel=1e-5)
    assert float(meta["rw"]) == pytest.approx(printed_rw(proc.stdout), abs=1e-6)
    assert meta["refined_by"] == "diffpy.srfit" and "delta2" in meta


def test_refine_extracted_and_index(run_dir):
    h5_path = run_dir / "motex.h5"
    with h5py.File(h5_path) as h5:
        in_motif = h5["atoms/in_motif"][0].astype(bool)
        rw7 = h5["fits/rw"][0, 7]
        mask7 = h5["catalogue/mask"][7].astype(bool)
    proc = run_cli("refine", str(h5_path))  # default: the extracted motif, next to motex.h5
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "extracted motif" in proc.stdout
    check_xyz(run_dir / "refine_motif.xyz", h5_path, motif_atoms(h5_path, in_motif))
    assert (run_dir / "refine_fit.png").is_file()
    assert 0 < printed_rw(proc.stdout) < 1

    proc = run_cli("refine", str(h5_path), "--motif", "7", "-o", str(run_dir / "seven"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert printed_rw(proc.stdout) <= rw7 + 1e-3
    check_xyz(run_dir / "seven" / "refine_motif.xyz", h5_path, motif_atoms(h5_path, mask7))


def copy_run(run_dir, tmp_path, edit) -> str:
    """A copy of the run's motex.h5 changed by ``edit(h5)``."""
    path = tmp_path / "motex.h5"
    shutil.copy(run_dir / "motex.h5", path)
    with h5py.File(path, "r+") as h5:
        edit(h5)
    return str(path)


def _no_fits(h5):
    h5["fits/rw"][...] = np.nan


def _fit_stage_only(h5):
    del h5["atoms"]


def _no_config(h5):
    del h5.attrs["config"]


def _relative_paths(h5):
    config = yaml.safe_load(h5.attrs["config"])
    config.update(structure=KEGGIN_XYZ.name, data=KEGGIN_GR.name)
    h5.attrs["config"] = yaml.safe_dump(config)


def _older_run_with_relative_paths(h5):
    """A run written before motex.h5 recorded the config's folder."""
    _relative_paths(h5)
    del h5.attrs["config_dir"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "no such file"),
        ("text", "is not an HDF5 file"),
        ("no-config", "is not the motex.h5 of an mlmotex-hpc run"),
        ("index", "holds fitted motifs 0 to"),
        ("negative-index", "holds fitted motifs 0 to"),
        ("word", "expected extracted, best or the index of a fitted motif"),
        ("frame", "--frame 3: the run has a single frame, 0"),
        ("no-fits", "holds no finished fits"),
        ("fit-only", "holds no extracted motif"),
        ("relative", "root attribute 'config_dir'"),
    ],
)
def test_bad_input_is_one_line(run_dir, tmp_path, case, message):
    h5 = str(run_dir / "motex.h5")
    args = {
        "missing": [str(tmp_path / "nothing.h5")],
        "index": [h5, "--motif", str(N_MOTIFS)],
        "negative-index": [h5, "--motif=-1"],
        "word": [h5, "--motif", "worst"],
        "frame": [h5, "--frame", "3"],
    }.get(case)
    if case == "text":
        (tmp_path / "notes.h5").write_text("not hdf5\n")
        args = [str(tmp_path / "notes.h5")]
    elif case == "no-config":
        args = [copy_run(run_dir, tmp_path, _no_config)]
    elif case == "no-fits":
        args = [copy_run(run_dir, tmp_path, _no_fits), "--motif", "best"]
    elif case == "fit-only":
        args = [copy_run(run_dir, tmp_path, _fit_stage_only)]
    elif case == "relative":
        args = [copy_run(run_dir, tmp_path, _older_run_with_relative_paths)]
    proc = run_cli("refine", *args, "-o", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlmotex-hpc: error: "), proc.stderr
    assert message in lines[0]
    assert not (tmp_path / "out" / "refine_motif.xyz").exists()


def test_relative_paths_resolve_against_config_dir(run_dir, tmp_path):
    """With the config's folder recorded, relative data paths are found."""

    def edit(h5):
        _relative_paths(h5)
        h5.attrs["config_dir"] = str(KEGGIN_GR.parent)

    path = copy_run(run_dir, tmp_path, edit)
    proc = run_cli("refine", path, "--motif", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "against DanMAX_AlphaKeggin.gr" in proc.stdout
