"""Step 2: the fitter recovers known parameters; Rw is DiffPy's definition."""

import numpy as np
import pytest

from mlmotex_hpc.fit.fitter import (
    STATUS_NO_PAIRS,
    STATUS_OK,
    FitSettings,
    fit_motif,
    rw,
    scale_and_rw,
)


class PeaksModel:
    """A stand-in calculator: Gaussian peaks at fixed distances, expanded by zoom and
    broadened by a per-element Uiso; its exact parameters are known to the test."""

    def __init__(self, r, distances):
        self.r = r
        self.distances = np.asarray(distances)

    def prepare(self, mask):
        return self.distances[np.asarray(mask, bool)]

    def gr(self, motif, zoom=1.0, uiso=None, delta2=None):
        u = (uiso or {}).get("X", 0.005)
        sigma = np.sqrt(2 * u) * (1 + (delta2 or 0.0))
        g = np.zeros_like(self.r)
        for d in motif:
            g += np.exp(-0.5 * ((self.r - zoom * d) / sigma) ** 2) / (zoom * d)
        return g


@pytest.fixture
def model():
    return PeaksModel(np.arange(1.0, 10.0, 0.01), [1.9, 2.6, 3.3, 3.7, 5.2, 6.8])


def test_scale_and_rw_closed_form():
    rng = np.random.default_rng(0)
    g_calc = rng.normal(size=200)
    g_obs = 3.0 * g_calc + 0.1 * rng.normal(size=200)
    scale, r = scale_and_rw(g_obs, g_calc)
    # The closed-form scale is the least-squares optimum: nearby scales are worse.
    for s in (scale * 0.999, scale * 1.001):
        assert rw(g_obs, s * g_calc) > r
    assert r == pytest.approx(rw(g_obs, scale * g_calc), rel=1e-10)
    w = rng.uniform(0.5, 2, size=200)
    scale_w, r_w = scale_and_rw(g_obs, g_calc, w)
    assert r_w == pytest.approx(
        np.sqrt(np.sum(w * (g_obs - scale_w * g_calc) ** 2) / np.sum(w * g_obs**2)), rel=1e-10
    )


def test_fit_recovers_scale_and_zoom(model):
    mask = np.ones(6, bool)
    g_obs = 2.5 * model.gr(model.prepare(mask), zoom=1.0063)
    res = fit_motif(model, model.prepare(mask), g_obs, FitSettings())
    assert res.status == STATUS_OK
    assert res.zoom == pytest.approx(1.0063, abs=2e-5)
    assert res.scale == pytest.approx(2.5, rel=1e-3)
    assert res.rw < 5e-3


def test_zoom_stays_within_bounds(model):
    mask = np.ones(6, bool)
    g_obs = model.gr(model.prepare(mask), zoom=1.03)
    res = fit_motif(model, model.prepare(mask), g_obs, FitSettings(zoom_bounds=(0.99, 1.01)))
    assert 0.99 <= res.zoom <= 1.01
    assert res.zoom == pytest.approx(1.01, abs=1e-4)


def test_wrong_motif_fits_worse(model):
    full = np.ones(6, bool)
    g_obs = model.gr(model.prepare(full))
    part = np.array([1, 0, 1, 0, 0, 1], bool)
    good = fit_motif(model, model.prepare(full), g_obs, FitSettings())
    bad = fit_motif(model, model.prepare(part), g_obs, FitSettings())
    assert good.rw < 1e-3 < 0.2 < bad.rw


def test_freed_uiso_is_refined(model):
    mask = np.ones(6, bool)
    g_obs = 1.7 * model.gr(model.prepare(mask), zoom=0.996, uiso={"X": 0.009})
    settings = FitSettings(refine=("scale", "zoom", "uiso"), uiso_elements=("X",))
    res = fit_motif(model, model.prepare(mask), g_obs, settings, base_uiso={"X": 0.005})
    assert res.uiso["X"] == pytest.approx(0.009, rel=2e-2)
    assert res.zoom == pytest.approx(0.996, abs=2e-4)
    assert res.rw < 1e-2


def test_motif_without_pairs_is_reported(model):
    res = fit_motif(model, model.prepare(np.zeros(6, bool)), np.ones_like(model.r), FitSettings())
    assert res.status == STATUS_NO_PAIRS and res.rw == 1.0 and res.scale == 0.0
