"""The compiled batch fitter against the straightforward implementation (pdf/reference.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mlmotex_hpc.catalogue import MotifSpace, sample_masks
from mlmotex_hpc.config import load_config, pdf_settings
from mlmotex_hpc.fit.fast import BatchFitter, supports
from mlmotex_hpc.fit.fitter import STATUS_NO_PAIRS, STATUS_OK, FitSettings, fit_motif
from mlmotex_hpc.io.pdfdata import read_pdf_data
from mlmotex_hpc.io.structure import read_xyz
from mlmotex_hpc.pdf import make_calculator
from mlmotex_hpc.pdf.reference import reference_fit, reference_gr

from .conftest import ROOT

CONFIGS = {
    "debye": ROOT / "configs" / "keggin.yaml",
    "realspace": ROOT / "configs" / "keggin_original.yaml",
}


def _case(name: str, **pdf_changes):
    config = load_config(CONFIGS[name])
    structure = read_xyz(config.structure)
    data = read_pdf_data(config.data[0])
    sl = data.fit_range(config.fit.rmin, config.fit.rmax)
    settings = dataclasses.replace(pdf_settings(config), **pdf_changes)
    calc = make_calculator(structure.elements, structure.xyz, settings, data.r[sl])
    space = MotifSpace.from_structure(structure, config.permute, config.bond_threshold)
    masks = space.atom_masks(sample_masks(space.size, 12, 7))
    fsettings = FitSettings(refine=("scale", "zoom"), zoom_bounds=config.fit.zoom_bounds)
    return structure, data.g[sl].copy(), calc, masks, fsettings


CASES = {
    "debye": {},
    "debye-delta2": {"delta2": 1.5},
    "debye-offgrid-qmin": {"qstep": 0.2},
    "realspace": {},
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    name = request.param.split("-")[0]
    return _case(name, **CASES[request.param])


def test_model_matches_the_straightforward_implementation(case):
    structure, g_obs, calc, masks, fsettings = case
    fitter = BatchFitter(calc, fsettings, g_obs[None])
    for mask in masks[:6]:
        for zoom in (0.991, 1.0, 1.0063):
            fast = fitter.model(mask, zoom)
            ref = reference_gr(calc, structure.xyz, mask, zoom)
            assert np.max(np.abs(fast - ref)) <= 1e-6 * np.max(np.abs(ref))


@pytest.mark.slow
def test_fitted_rw_matches_a_bounded_search_on_exact_pdfs(case):
    structure, g_obs, calc, masks, fsettings = case
    out = BatchFitter(calc, fsettings, g_obs[None]).fit(masks)
    assert np.all(out["status"] == STATUS_OK)
    lo, hi = fsettings.zoom_bounds
    assert np.all((out["zoom"] >= lo) & (out["zoom"] <= hi))
    for j, mask in enumerate(masks[:6]):
        rw, scale, zoom = reference_fit(calc, structure.xyz, mask, g_obs, fsettings.zoom_bounds)
        assert out["rw"][0, j] == pytest.approx(rw, abs=1e-4)
        # the reported Rw and scale are the exact ones at the reported zoom
        gc = reference_gr(calc, structure.xyz, mask, out["zoom"][0, j])
        s = np.dot(g_obs, gc) / np.dot(gc, gc)
        assert out["scale"][0, j] == pytest.approx(s, rel=1e-8)
        exact = np.sqrt(np.sum((g_obs - s * gc) ** 2) / np.sum(g_obs**2))
        assert out["rw"][0, j] == pytest.approx(exact, abs=1e-10)


def test_agrees_with_the_general_fitter():
    structure, g_obs, calc, masks, fsettings = _case("debye")
    out = BatchFitter(calc, fsettings, g_obs[None]).fit(masks)
    for j, mask in enumerate(masks):
        res = fit_motif(calc, calc.prepare(mask), g_obs, fsettings)
        assert out["rw"][0, j] == pytest.approx(res.rw, abs=1e-4)


def test_weights_and_several_frames_at_once():
    structure, g_obs, calc, masks, fsettings = _case("debye")
    rng = np.random.default_rng(3)
    weights = 1.0 / rng.uniform(0.5, 2.0, size=g_obs.size) ** 2
    second = g_obs * 0.7 + 0.05 * np.sin(calc.r)
    both = BatchFitter(calc, fsettings, np.stack([g_obs, second]),
                       np.stack([weights, np.ones_like(weights)])).fit(masks)
    one = BatchFitter(calc, fsettings, g_obs[None], weights[None]).fit(masks)
    two = BatchFitter(calc, fsettings, second[None]).fit(masks)
    for name in ("rw", "scale", "zoom"):
        np.testing.assert_array_equal(both[name][0], one[name][0])
        np.testing.assert_array_equal(both[name][1], two[name][0])
    for j, mask in enumerate(masks[:4]):
        gc = reference_gr(calc, structure.xyz, mask, one["zoom"][0, j])
        s = np.sum(weights * g_obs * gc) / np.sum(weights * gc * gc)
        exact = np.sqrt(np.sum(weights * (g_obs - s * gc) ** 2) / np.sum(weights * g_obs**2))
        assert one["rw"][0, j] == pytest.approx(exact, abs=1e-10)
        unweighted = BatchFitter(calc, fsettings, g_obs[None]).fit(mask[None])
        assert abs(unweighted["rw"][0, 0] - one["rw"][0, j]) > 1e-4


def test_scale_only_and_motifs_without_pairs():
    structure, g_obs, calc, masks, _ = _case("debye")
    fitter = BatchFitter(calc, FitSettings(refine=("scale",)), g_obs[None])
    lone = np.zeros(calc.n_atoms, dtype=bool)
    lone[0] = True
    out = fitter.fit(np.stack([masks[0], lone]))
    assert out["zoom"][0, 0] == 1.0
    gc = reference_gr(calc, structure.xyz, masks[0], 1.0)
    s = np.dot(g_obs, gc) / np.dot(gc, gc)
    assert out["rw"][0, 0] == pytest.approx(
        np.sqrt(np.sum((g_obs - s * gc) ** 2) / np.sum(g_obs**2)), abs=1e-10
    )
    assert out["status"][0, 1] == STATUS_NO_PAIRS and out["rw"][0, 1] == 1.0


def test_the_scale_and_zoom_fitter_takes_nothing_else():
    _, _, calc, _, _ = _case("debye")
    assert supports(calc, FitSettings(refine=("scale", "zoom")))
    assert not supports(calc, FitSettings(refine=("scale", "zoom", "uiso"), uiso_elements=("W",)))
    with pytest.raises(ValueError):
        BatchFitter(calc, FitSettings(refine=("scale", "delta2")), np.zeros((1, calc.r.size)))
