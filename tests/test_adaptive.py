"""The adaptive catalogue and the extract stage end to end, under mpirun.

Keggin 109725 (the shipped data): the answer with a budget of 1,000 fits; rounds
recorded; a kill in a round, between rounds or while polishing resumes (on another rank
count) to the same result; a model that holds one complete cage and a translated
fragment of the other gives the complete cage; bad combinations are refused in one line.
"""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import yaml

from mlmotex_hpc.catalogue import MotifSpace
from mlmotex_hpc.config import load_config
from mlmotex_hpc.errors import InputError
from mlmotex_hpc.io.structure import Structure, read_xyz, write_xyz
from mlmotex_hpc.store.run_layout import undescribed

from .conftest import KEGGIN_MOTIF_W, KEGGIN_XYZ, keggin_config, run_cli
from .test_resume import kill_when

pytestmark = pytest.mark.mpi

#: The paper's learning settings are not needed here: the defaults (a fast search).
LEARN = {"cv_folds": 3, "search_iterations": 12, "seed": 0, "params": {}}
COMPARED = ("catalogue/mask", "catalogue/round", "catalogue/origin", "fits/rw",
            "atoms/contribution", "atoms/contribution_se", "atoms/label", "atoms/in_motif",
            "polish/mask", "polish/rw")


def _adaptive(tmp_path, size=1000, name="out", **overrides):
    raw = keggin_config(tmp_path, catalogue={"size": size, "seed": 0, "batch_size": 32,
                                             "strategy": "adaptive"},
                        learn=LEARN, **overrides)
    raw["output"]["dir"] = str(tmp_path / name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, tmp_path / name / "motex.h5"


def _read(h5, names=COMPARED):
    with h5py.File(h5) as f:
        assert f.attrs["complete"]
        return {name: f[name][()] for name in names}


@pytest.fixture(scope="module")
def adaptive_run(tmp_path_factory):
    # numba's freshly compiled and cache-loaded fastmath kernels may differ in the last
    # bit (see test_series): compile once, so that every run below loads the cache
    warm, _ = _adaptive(tmp_path_factory.mktemp("warm"), size=60)
    proc = run_cli("run", str(warm), "--until", "fit", "--quiet", ranks=1)
    assert proc.returncode == 0, proc.stderr
    tmp = tmp_path_factory.mktemp("adaptive")
    cfg, h5 = _adaptive(tmp)
    proc = run_cli("run", str(cfg), ranks=2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return cfg, h5, proc.stdout


@pytest.mark.slow
def test_keggin_answer_with_a_budget_of_1000_fits(adaptive_run):
    _, h5, stdout = adaptive_run
    with h5py.File(h5) as f:
        assert not undescribed(f)  # an adaptive catalogue's file
        in_motif = f["atoms/in_motif"][0].astype(bool)
        n_rows = f["catalogue/mask"].shape[0]
        n_cat = int(f["catalogue"].attrs["n_catalogue"])
        rounds = f["catalogue/round"][()]
        origin = f["catalogue/origin"][()]
        stopped = f["catalogue"].attrs["stopped"]
        se = f["atoms/contribution_se"][0]
        polished = f["polish/mask"][0].astype(bool)
        polish_rw = f["polish/rw"][0]
        explained = f["shap/explained"][0].astype(bool)
    assert np.flatnonzero(in_motif).tolist() == list(KEGGIN_MOTIF_W)
    np.testing.assert_array_equal(polished, in_motif)
    assert 0 < polish_rw < 1 and np.all(se > 0)
    assert n_rows <= 1000  # every fit of the run, polishing included
    # rounds: 0 first, then 1, 2, ... in order; the extract stage's rows are round -1
    assert rounds[0] == 0 and np.all(np.diff(rounds[:n_cat]) >= 0) and rounds.max() >= 1
    assert np.all(rounds[n_cat:] == -1) and np.all(origin[n_cat:] == 2)
    for r in range(1, rounds.max() + 1):  # each later round: some uniform, some adaptive
        mine = origin[:n_cat][rounds[:n_cat] == r]
        assert (mine == 0).any() and (mine == 1).any(), r
    # the contributions are read from the uniform motifs only
    assert not explained[origin[:n_cat] == 1].any()
    assert stopped and "adaptive catalogue:" in stdout


@pytest.mark.slow
def test_a_kill_in_any_round_resumes_to_the_same_result(adaptive_run, tmp_path):
    _, _, _ = adaptive_run
    reference = _read(adaptive_run[1])
    for marker in ("round 1: fitting", "round 1 learned", "polish step 1"):
        folder = tmp_path / marker.replace(" ", "_").replace(":", "")
        folder.mkdir()
        cfg, h5 = _adaptive(folder)
        pause = "learn:30" if marker.startswith("polish") else "fit:0.2"
        if marker.startswith("polish"):
            pause = "extract:30"
        kill_when(cfg, marker, ranks=2, pause=pause)
        assert h5.exists()
        proc = run_cli("run", str(cfg), ranks=3)  # resumes, on another rank count
        assert proc.returncode == 0, proc.stdout + proc.stderr
        got = _read(h5)
        for name in COMPARED:
            np.testing.assert_array_equal(got[name], reference[name],
                                          err_msg=f"{marker}: {name}")


def _cage_and_fragment(path):
    """One complete α-Keggin cage of 109725 (its even W and their O) and, 9 Å away, the
    5 W of the other cage nearest its first W with their O: 17 permutable W."""
    model = read_xyz(KEGGIN_XYZ)
    space = MotifSpace.from_structure(model, ("W",), 2.6)
    cage = np.zeros(24, dtype=bool)
    cage[list(KEGGIN_MOTIF_W)] = True
    other = np.flatnonzero(~cage)
    xyz_w = model.xyz[space.permutable]
    near = other[np.argsort(np.linalg.norm(xyz_w[other] - xyz_w[other[0]], axis=1))[:5]]
    fragment = np.zeros(24, dtype=bool)
    fragment[near] = True
    keep_cage = space.atom_masks(cage[None])[0]
    keep_frag = space.atom_masks(fragment[None])[0]
    shift = np.array([0.0, 0.0, 9.0]) + np.ptp(model.xyz[keep_cage], axis=0) * [0, 0, 1]
    elements = [e for e, k in zip(model.elements, keep_cage, strict=True) if k]
    elements += [e for e, k in zip(model.elements, keep_frag, strict=True) if k]
    xyz = np.concatenate([model.xyz[keep_cage], model.xyz[keep_frag] + shift])
    write_xyz(path, Structure(tuple(elements), xyz, "Keggin cage + translated fragment"))
    return int(keep_cage.sum())


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["random", "adaptive"])
def test_one_complete_cage_beside_a_fragment(tmp_path, strategy):
    model = tmp_path / "cage_fragment.xyz"
    n_cage_atoms = _cage_and_fragment(model)
    raw = keggin_config(tmp_path, structure=str(model), learn=LEARN,
                        catalogue={"size": 1000, "seed": 0, "batch_size": 32,
                                   "strategy": strategy})
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    proc = run_cli("run", str(cfg), ranks=2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with h5py.File(tmp_path / "out" / "motex.h5") as f:
        in_motif = f["atoms/in_motif"][0].astype(bool)
        permutable = f["catalogue/permutable"][()]
    cage = permutable < n_cage_atoms  # the cage's W come first in the model
    assert cage.sum() == 12 and (~cage).sum() == 5
    missing, stray = int((cage & ~in_motif).sum()), int((~cage & in_motif).sum())
    assert missing + stray <= 2, (strategy, np.flatnonzero(in_motif))


@pytest.mark.slow
def test_bad_combinations_are_refused(tmp_path, write_config):
    masks = tmp_path / "masks.txt"
    masks.write_text("\n".join("1" * 24 for _ in range(1)) + "\n")
    raw = keggin_config(tmp_path, catalogue={"strategy": "adaptive", "masks_file": str(masks)})
    with pytest.raises(InputError, match="cannot be combined with catalogue.masks_file"):
        load_config(write_config(raw))
    frames = [tmp_path / f"frame_{k}.gr" for k in range(2)]
    for frame in frames:
        shutil.copy(KEGGIN_XYZ.with_name("DanMAX_AlphaKeggin.gr"), frame)
    raw = keggin_config(tmp_path, catalogue={"strategy": "adaptive"},
                        data=[str(p) for p in frames])
    with pytest.raises(InputError, match="is for one data set"):
        load_config(write_config(raw))
    raw = keggin_config(tmp_path, catalogue={"size": 100}, extract={"polish_fits": 95})
    proc = run_cli("run", str(write_config(raw)), ranks=2)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mlmotex-hpc: error:")]
    assert len(lines) == 1 and "extract.polish_fits" in lines[0], proc.stderr


@pytest.mark.slow
def test_new_extract_settings_redo_only_the_extract_stage(tmp_path):
    """Other extract settings on the same fits: the fits are kept, the answer is redone
    on 2 ranks (parallel HDF5 rewrites the stage's records of another size)."""
    raw = keggin_config(tmp_path, catalogue={"size": 200, "seed": 2, "batch_size": 16})
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert run_cli("run", str(cfg), "--quiet", ranks=2).returncode == 0
    h5 = tmp_path / "out" / "motex.h5"
    with h5py.File(h5) as f:
        n_cat = int(f["catalogue"].attrs["n_catalogue"])
        rw = f["fits/rw"][0, :n_cat]
    raw["extract"] = {"polish_tolerance": 0.0125, "label_z": 30.0, "polish_starts": 1}
    cfg.write_text(yaml.safe_dump(raw))
    proc = run_cli("run", str(cfg), ranks=2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "only the learn settings changed" in proc.stdout
    with h5py.File(h5) as f:
        np.testing.assert_array_equal(f["fits/rw"][0, :n_cat], rw)
        assert '"label_z": 30.0' in f["atoms/answer"][()].decode()
        assert (f["atoms/label"][0] == 2).any()  # 30 standard errors: some uncertain
