"""The compiled fitter with Uiso and delta2 free (fit/refining.py, fit/moments.py) against
the straightforward implementation (pdf/reference.py) and the general fitter."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.special import ive

from mlmotex_hpc.catalogue import MotifSpace, sample_masks
from mlmotex_hpc.config import load_config, pdf_settings
from mlmotex_hpc.errors import InputError
from mlmotex_hpc.fit import moments
from mlmotex_hpc.fit.fast import BatchFitter, Parent, _motif_pairs
from mlmotex_hpc.fit.fitter import (
    STATUS_AT_BOUND,
    STATUS_NO_PAIRS,
    FitSettings,
    fit_motif,
    scale_and_rw,
)
from mlmotex_hpc.fit.refining import (
    RefiningFitter,
    _motif_norm,
    check_delta2_bounds,
    supports_refinement,
)
from mlmotex_hpc.io.pdfdata import read_pdf_data
from mlmotex_hpc.io.structure import read_xyz
from mlmotex_hpc.pdf import make_calculator
from mlmotex_hpc.pdf.debye import debye_fq
from mlmotex_hpc.pdf.reference import reference_gr

from .conftest import ROOT

UISO = ("scale", "zoom", "uiso")
ALL = ("scale", "zoom", "uiso", "delta2")


def _case(config_name: str, n_motifs: int = 8, seed: int = 3, **pdf_changes):
    config = load_config(ROOT / "configs" / config_name)
    structure = read_xyz(config.structure)
    data = read_pdf_data(config.data[0])
    sl = data.fit_range(config.fit.rmin, config.fit.rmax)
    settings = dataclasses.replace(pdf_settings(config), **pdf_changes)
    calc = make_calculator(structure.elements, structure.xyz, settings, data.r[sl])
    space = MotifSpace.from_structure(structure, config.permute, config.bond_threshold)
    masks = space.atom_masks(sample_masks(space.size, n_motifs, seed))
    return config, structure, data.g[sl].copy(), calc, masks


@pytest.fixture(scope="module")
def keggin():
    """Keggin at the shipped settings (Debye, qbroad 0.01)."""
    return _case("keggin.yaml")


@pytest.fixture(scope="module")
def moox():
    """MoOx at the paper's settings (no qbroad): the delta2 case."""
    return _case("moox.yaml", n_motifs=6, seed=1)


def _settings(config, refine, **changes) -> FitSettings:
    base = FitSettings(refine=refine, zoom_bounds=config.fit.zoom_bounds,
                       uiso_elements=tuple(dict.fromkeys(read_xyz(config.structure).elements)))
    return dataclasses.replace(base, **changes)


def test_scaled_bessel_functions_match_scipy():
    out = np.empty(42)
    for a in (1e-9, 1e-3, 0.15, 1.0, 7.5, 30.0, 80.0):
        moments.scaled_bessel(a, 40, out)
        ref = ive(np.arange(41), a)
        keep = ref > 1e-250
        assert np.allclose(out[:41][keep], ref[keep], rtol=1e-12, atol=0), a


@pytest.mark.parametrize("mode,delta2,qbroad", [(0, 0.0, 0.01), (0, 1.2, 0.01), (0, 0.8, 0.0),
                                                (1, 0.0, 0.01), (1, 0.0, 0.0)])
def test_moments_give_the_debye_sum_at_any_uiso_and_delta2(keggin, mode, delta2, qbroad):
    """F(Q) assembled from one pass of moments equals the Debye kernel's at Uiso and delta2
    across their bounds, to the expansion's tolerance."""
    config, structure, _, calc, masks = keggin
    g = calc.grid
    ntypes = calc._type_a.size
    parent = Parent(*calc.pair_matrices(), calc._atom_type, calc._type_a, calc._type_b,
                    len(calc.elements))
    groups = moments.Groups(calc._type_a, calc._type_b, calc._ff)
    u_hi, d2_hi = 0.05, 2.5
    qmax = g.q0 + g.dq * (g.nq - 1)
    lam_max = 0.5 * 2 * u_hi * qmax**2
    zoom = 1.004
    rng = np.random.default_rng(0)
    for mask in masks[:3]:
        dist, seg, counts = _motif_pairs(mask, parent)
        ranges = np.empty((ntypes, 4))
        ex = moments.Expansion(g.q0, g.dq, g.kstart, g.nq, g.pair_rmin, g.pair_rmax, mode,
                               delta2, qbroad, lam_max, d2_hi if mode == 1 else 0.0)
        moments.coordinate_ranges(dist, seg, zoom, ex, ranges)
        if mode == 0:
            spread = 0.5 * np.max(ranges[:, 1] - ranges[:, 0])
            n1, n2 = moments.terms_needed(lam_max * spread), 1
        else:
            n1 = moments.terms_needed(lam_max * 0.5 * np.max(ranges[:, 1] - ranges[:, 0]))
            n2 = moments.terms_needed(lam_max * d2_hi * 0.5 * np.max(ranges[:, 3] - ranges[:, 2]))
        mom = np.empty((ntypes, n1 * n2, g.nq))
        n1, n2 = np.full(ntypes, n1), np.full(ntypes, n2)
        moments.pair_moments(dist, seg, zoom, ex, ranges, n1, n2, mom)
        norm = _motif_norm(counts, calc._f)
        for _ in range(4):
            u_el = rng.uniform(1e-4, u_hi, len(calc.elements))
            d2 = rng.uniform(0.0, d2_hi) if mode == 1 else delta2
            fq = np.empty(g.nq)
            moments.assemble(moments.Moments(mom, ranges, n1, n2), groups, ex, u_el, d2, norm,
                             0, fq, np.empty((3, g.nq)), np.empty((3, 3, g.nq)))
            u_type = u_el[calc._type_a] + u_el[calc._type_b]
            ref = debye_fq(dist, seg, calc._ff, u_type, norm, g.q0, g.dq, g.kstart, zoom, d2,
                           qbroad, g.pair_rmin, g.pair_rmax)
            assert np.abs(fq - ref).max() < 1e-6 * np.abs(ref).max()


def test_analytic_derivatives_match_finite_differences(keggin):
    config, structure, _, calc, masks = keggin
    g = calc.grid
    ntypes = calc._type_a.size
    parent = Parent(*calc.pair_matrices(), calc._atom_type, calc._type_a, calc._type_b, 2)
    dist, seg, counts = _motif_pairs(masks[0], parent)
    ranges = np.empty((ntypes, 4))
    ex = moments.Expansion(g.q0, g.dq, g.kstart, g.nq, g.pair_rmin, g.pair_rmax, 1, 0.0, 0.01,
                           1.0, 2.5)
    moments.coordinate_ranges(dist, seg, 1.0, ex, ranges)
    n1, n2 = np.full(ntypes, 5), np.full(ntypes, 14)
    mom = np.empty((ntypes, 5 * 14, g.nq))
    moments.pair_moments(dist, seg, 1.0, ex, ranges, n1, n2, mom)
    norm = _motif_norm(counts, calc._f)
    taken = moments.Moments(mom, ranges, n1, n2)
    groups = moments.Groups(calc._type_a, calc._type_b, calc._ff)

    def assemble(x, order):
        fq, jac, hess = np.empty(g.nq), np.empty((3, g.nq)), np.empty((3, 3, g.nq))
        moments.assemble(taken, groups, ex, x[:2], x[2], norm, order, fq, jac, hess)
        return fq, jac, hess

    x = np.array([0.007, 0.012, 0.6])
    _, jac, hess = assemble(x, 2)
    for i, step in enumerate((1e-6, 1e-6, 1e-5)):
        dx = np.zeros(3)
        dx[i] = step
        fd = (assemble(x + dx, 0)[0] - assemble(x - dx, 0)[0]) / (2 * step)
        assert np.abs(fd - jac[i]).max() < 1e-6 * np.abs(jac[i]).max()
        fd2 = (assemble(x + dx, 1)[1] - assemble(x - dx, 1)[1]) / (2 * step)
        assert np.abs(fd2 - hess[:, i]).max() < 1e-5 * np.abs(hess[:, i]).max()


@pytest.mark.parametrize("refine,calculator", [(UISO, "debye"), (ALL, "debye"),
                                               (UISO, "realspace"), (ALL, "realspace")])
def test_fits_match_the_general_fitter_and_report_exact_rw(keggin, moox, refine, calculator):
    """Rw no worse than the general fitter's by more than 1e-4 (Keggin for Uiso, MoOx for
    Uiso and delta2), and the reported Rw and scale are those of the reference G(r) at
    the reported zoom, Uiso and delta2, with either calculator."""
    config, structure, g_obs, calc, masks = keggin if refine == UISO else moox
    if calculator == "realspace":
        settings = dataclasses.replace(calc.settings, calculator="realspace")
        calc = make_calculator(structure.elements, structure.xyz, settings, calc.r)
    fs = _settings(config, refine)
    fitter = RefiningFitter(calc, fs, g_obs[None])
    out = fitter.fit(masks)
    for j, mask in enumerate(masks[:5]):
        general = fit_motif(calc, calc.prepare(mask), g_obs, fs, None, config.uiso)
        assert out["rw"][0, j] <= general.rw + 1e-4
        uiso = {el: out[f"uiso_{el}"][0, j] for el in calc.elements}
        for u in uiso.values():
            assert fs.uiso_bounds[0] <= u <= fs.uiso_bounds[1]
        delta2 = out["delta2"][0, j] if "delta2" in refine else calc.settings.delta2
        ref = reference_gr(calc, structure.xyz, mask, out["zoom"][0, j], uiso, delta2)
        scale, rw = scale_and_rw(g_obs, ref)
        assert out["rw"][0, j] == pytest.approx(rw, abs=1e-9)
        assert out["scale"][0, j] == pytest.approx(scale, rel=1e-8)


def test_parameters_that_end_on_a_bound_are_marked(keggin):
    config, structure, g_obs, calc, masks = keggin
    fs = _settings(config, UISO, uiso_bounds=(0.001, 0.002))
    out = RefiningFitter(calc, fs, g_obs[None]).fit(masks[:4])
    assert np.all(out["status"] == STATUS_AT_BOUND)
    assert np.all(np.isclose(out["uiso_W"], 0.002) | np.isclose(out["uiso_W"], 0.001))


def test_frames_are_fitted_as_alone_and_motifs_without_pairs_reported(keggin):
    config, structure, g_obs, calc, masks = keggin
    fs = _settings(config, ALL, delta2_bounds=(0.0, 1.0))
    frames = np.stack([g_obs, 0.5 * g_obs + 0.1 * np.sin(calc.r)])
    empty = np.zeros(calc.n_atoms, dtype=bool)
    empty[0] = True
    batch = np.vstack([masks[:3], empty])
    both = RefiningFitter(calc, fs, frames).fit(batch)
    for f in range(2):
        alone = RefiningFitter(calc, fs, frames[f:f + 1]).fit(batch)
        for name, values in alone.items():
            assert np.array_equal(both[name][f], values[0]), name
    assert np.all(both["status"][:, 3] == STATUS_NO_PAIRS)


def test_which_fitter_takes_which_refinement(keggin):
    config, structure, g_obs, calc, masks = keggin
    assert supports_refinement(calc, _settings(config, UISO))
    assert supports_refinement(calc, _settings(config, ("scale", "delta2")))
    assert not supports_refinement(calc, _settings(config, ("scale", "zoom")))
    real = make_calculator(structure.elements, structure.xyz,
                           dataclasses.replace(calc.settings, calculator="realspace"), calc.r)
    assert supports_refinement(real, _settings(config, UISO))
    assert not supports_refinement(real, _settings(config, ("scale", "zoom")))
    assert supports_refinement(real, _settings(config, ALL))
    with pytest.raises(ValueError):
        BatchFitter(calc, _settings(config, UISO), g_obs[None])


def test_a_delta2_bound_beyond_the_shortest_pair_is_refused(keggin):
    config, structure, g_obs, calc, masks = keggin
    with pytest.raises(InputError, match=r"fit\.delta2_bounds.*shortest pair"):
        check_delta2_bounds(calc, _settings(config, ALL, delta2_bounds=(0.0, 5.0)))
    check_delta2_bounds(calc, _settings(config, ALL))  # the default is fine


def test_shared_anchors_for_series(keggin):
    """zoom_search 'shared': each frame fitted alone gives the same bits as among others,
    and its Rw stays within 2e-5 of the exact search's (the anchors' blend)."""
    config, structure, g_obs, calc, masks = keggin
    fs = _settings(config, UISO)
    frames = np.stack([g_obs, 0.8 * g_obs + 0.05 * np.sin(3 * calc.r),
                       g_obs * (1 + 0.01 * calc.r)])
    shared = RefiningFitter(calc, fs, frames, zoom_search="shared").fit(masks)
    exact = RefiningFitter(calc, fs, frames, zoom_search="exact").fit(masks)
    assert np.abs(shared["rw"] - exact["rw"]).max() < 2e-5
    alone = RefiningFitter(calc, fs, frames[2:], zoom_search="shared").fit(masks)
    for name, values in alone.items():
        assert np.array_equal(shared[name][2], values[0]), name
