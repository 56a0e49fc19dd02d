"""A bridge to diffpy.srfit, the refinement framework of DiffPy-CMI.

A chemist checks a motif with the tool the field knows: a ``FitRecipe`` whose single
``FitContribution`` computes ``scale * motif`` on the data's fit range, where ``motif`` is
a :class:`MotifPDFGenerator`, an srfit ``ProfileGenerator`` that evaluates this project's
PDF calculator with srfit Parameters for zoom, Uiso per element and delta2.

The recipe is refined as srfit users do: ``scipy.optimize.least_squares`` over
``recipe.residual`` from ``recipe.values``, with the variables' bounds from
``recipe.getBounds2()``. Zoom bounds are narrow (±1 % by default) and G(r) oscillates in
zoom, so one start can end in a local minimum; :func:`refine_recipe` starts from several
zooms across the bounds and keeps the lowest chi², which needs no knowledge of the fast
fitter's answer.

srfit's ``FitResults.rw`` is ``sqrt(sum((y - ycalc)/dy)^2 / sum(y/dy)^2)``, that is
``sqrt(sum w (Gobs - Gcalc)^2 / sum w Gobs^2)`` with ``w = 1/dy^2``: the same Rw as
:func:`mlmotex_hpc.fit.fitter.rw` when ``dy`` is dG (``fit.weights: dG``) or one (unit
weights), which is what :func:`motif_recipe` sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from diffpy.srfit.fitbase import (
    FitContribution,
    FitRecipe,
    FitResults,
    Profile,
    ProfileGenerator,
)
from scipy import optimize

from ..config import DELTA2_BOUNDS, UISO_BOUNDS
from .fitter import scale_and_rw

#: Names of the contribution in the recipe and of the generator in its equation
#: ``scale*motif``: ``recipe.pdf.motif`` is the generator.
CONTRIBUTION_NAME = "pdf"
GENERATOR_NAME = "motif"

#: A refined variable closer to a bound than this fraction of its range is on the bound.
BOUND_RTOL = 1e-8


class MotifPDFGenerator(ProfileGenerator):
    """G(r) of one prepared motif, from this project's calculator, as an srfit generator.

    Parameters (srfit ``Parameter`` objects, attributes of the generator)
    ----------------------------------------------------------------------
    zoom
        Isotropic expansion of the structure (1 = as built).
    uiso_<El>
        Uiso (Å²) of element El, for each element the motif holds; starts at the
        calculator's setting.
    delta2
        Correlated-motion sharpening (Å²); starts at the calculator's setting.

    Parameters
    ----------
    calc
        A calculator from :func:`mlmotex_hpc.pdf.make_calculator`; the profile's points
        must be its r grid.
    motif
        ``calc.prepare(mask)`` of the motif.
    name : str
        The generator's name in the contribution's equation.
    """

    def __init__(self, calc, motif, name: str = GENERATOR_NAME) -> None:
        ProfileGenerator.__init__(self, name)
        self.calc = calc
        self.motif = motif
        # Only elements with atoms in the motif change G(r): a Uiso of an absent element
        # would be a variable without effect and make srfit's covariance singular.
        self.elements = tuple(
            el for el, n in zip(calc.elements, motif.counts, strict=True) if n > 0
        )
        self.newParameter("zoom", 1.0)
        for el in self.elements:
            self.newParameter(f"uiso_{el}", calc.settings.uiso_of(el))
        self.newParameter("delta2", calc.settings.delta2)

    def uiso(self) -> dict[str, float]:
        """Current Uiso (Å²) per element of the motif."""
        return {el: float(self.get(f"uiso_{el}").value) for el in self.elements}

    def __call__(self, r: np.ndarray) -> np.ndarray:
        r = np.asarray(r)
        grid = self.calc.r
        if r.shape != grid.shape or not np.allclose(r, grid, rtol=0.0, atol=1e-8):
            raise ValueError(
                f"{type(self).__name__} evaluates on its calculator's r grid "
                f"({grid.size} points, {grid[0]:g}-{grid[-1]:g} Å); the profile asks for "
                f"{r.size} points"
            )
        return self.calc.gr(
            self.motif, zoom=float(self.zoom.value), uiso=self.uiso(),
            delta2=float(self.delta2.value),
        )


def motif_recipe(
    calc,
    motif,
    r: np.ndarray,
    g: np.ndarray,
    dg: np.ndarray | None = None,
    *,
    refine: Sequence[str] = ("scale", "zoom"),
    zoom_bounds: tuple[float, float] = (0.99, 1.01),
    uiso_bounds: tuple[float, float] = UISO_BOUNDS,
    delta2_bounds: tuple[float, float] = DELTA2_BOUNDS,
) -> FitRecipe:
    """A FitRecipe fitting ``scale * G_motif(r)`` to measured data.

    Parameters
    ----------
    calc
        The PDF calculator; its r grid is the fit range and must be a run of points of
        ``r`` (build it on the data's fit range).
    motif
        ``calc.prepare(mask)`` of the motif.
    r, g : ndarray
        The measured PDF (Å, Å⁻²), the whole file or its fit range.
    dg : ndarray, optional
        Uncertainties of ``g``: srfit weighs the residual by 1/dG (w = 1/dG² in Rw). Unit
        weights when omitted.
    refine : sequence of str
        Free variables among ``scale``, ``zoom``, ``uiso``, ``delta2``; the others stay at
        their starting values (zoom 1, the calculator's Uiso and delta2) as fixed variables.
    zoom_bounds, uiso_bounds, delta2_bounds : (float, float)
        Bounds of zoom, freed Uiso (every element) and freed delta2; the defaults are
        the config's (``fit.uiso_bounds``, ``fit.delta2_bounds``).

    Returns
    -------
    FitRecipe
        With variables ``scale``, ``zoom``, ``uiso_<El>`` and ``delta2``; scale starts at
        its closed-form optimum for the starting values of the others.
    """
    profile = Profile()
    profile.setObservedProfile(np.asarray(r, float), np.asarray(g, float),
                               None if dg is None else np.asarray(dg, float))
    profile.setCalculationRange(xmin=float(calc.r[0]), xmax=float(calc.r[-1]))
    if profile.x.shape != calc.r.shape or not np.allclose(profile.x, calc.r, rtol=0, atol=1e-8):
        raise ValueError(
            "the calculator's r grid is not a run of the data's points: build it on the "
            "data's fit range"
        )
    generator = MotifPDFGenerator(calc, motif)
    contribution = FitContribution(CONTRIBUTION_NAME)
    contribution.setProfile(profile, xname="r")
    contribution.addProfileGenerator(generator)
    contribution.setEquation(f"scale*{generator.name}")

    recipe = FitRecipe("mlmotex")
    recipe.clearFitHooks()  # no progress printing on every residual call
    recipe.addContribution(contribution)
    free = set(refine)
    scale0, _ = scale_and_rw(profile.y, generator(profile.x), _weights(profile.dy))
    recipe.addVar(contribution.scale, scale0, name="scale", fixed="scale" not in free)
    recipe.addVar(generator.zoom, 1.0, fixed="zoom" not in free).boundRange(*zoom_bounds)
    for el in generator.elements:
        par = generator.get(f"uiso_{el}")
        recipe.addVar(par, tag="uiso", fixed="uiso" not in free).boundRange(*uiso_bounds)
    recipe.addVar(generator.delta2, fixed="delta2" not in free).boundRange(*delta2_bounds)
    return recipe


def _weights(dy: np.ndarray) -> np.ndarray:
    return 1.0 / np.asarray(dy, float) ** 2


@dataclass(frozen=True)
class SrfitRefinement:
    """The outcome of :func:`refine_recipe`.

    Attributes
    ----------
    results : FitResults
        srfit's results at the best start (``results.rw``, ``printResults()``).
    rw : float
        ``results.rw``.
    values : dict of str to float
        Every variable of the recipe, free or fixed, at the refined point.
    starts : tuple of (float, float, bool)
        For each start: its zoom, the chi² it reached, and whether least_squares
        reported convergence.
    at_bound : tuple of str
        Free variables that ended on a bound; they are fixed there in the recipe and in
        ``results`` (srfit's uncertainty of a variable on a bound is not defined).
    """

    results: FitResults
    rw: float
    values: dict[str, float]
    starts: tuple[tuple[float, float, bool], ...]
    at_bound: tuple[str, ...] = ()

    @property
    def converged(self) -> bool:
        """Whether least_squares converged from the start that was kept."""
        best = min(self.starts, key=lambda s: s[1])
        return best[2]


def start_zooms(zoom_bounds: tuple[float, float], count: int = 3) -> tuple[float, ...]:
    """``count`` starting zooms spread evenly over the bounds, ends included."""
    lo, hi = zoom_bounds
    if count < 2 or hi <= lo:
        return (min(max(1.0, lo), hi),)
    return tuple(float(z) for z in np.linspace(lo, hi, count))


def refine_recipe(
    recipe: FitRecipe, zooms: Sequence[float] | None = None, *, max_nfev: int | None = None
) -> SrfitRefinement:
    """Refine a recipe from :func:`motif_recipe` with ``scipy.optimize.least_squares``.

    Each start sets zoom to one of ``zooms`` (when zoom is free), the other variables to
    the recipe's starting values and scale to its closed-form optimum there, then runs
    least_squares (trust-region reflective, bounds from ``recipe.getBounds2()``). The
    start that reaches the lowest chi² is kept and the recipe left at its solution, with
    the variables that ended on a bound fixed there (see ``SrfitRefinement.at_bound``).

    Parameters
    ----------
    recipe : FitRecipe
        From :func:`motif_recipe`.
    zooms : sequence of float, optional
        Starting zooms; :func:`start_zooms` of zoom's bounds (3 starts) when omitted.
    max_nfev : int, optional
        Limit of residual evaluations per start (least_squares' default when omitted).

    Returns
    -------
    SrfitRefinement
    """
    names = recipe.getNames()
    initial = dict(zip(names, recipe.getValues(), strict=True))
    lower, upper = recipe.getBounds2()
    if "zoom" not in names:
        zooms = (float(recipe.zoom.value),)  # fixed: a single start
    elif zooms is None:
        zooms = start_zooms(tuple(recipe.zoom.bounds))
    contribution = recipe.get(CONTRIBUTION_NAME)
    generator = contribution.get(GENERATOR_NAME)
    best = None
    starts = []
    for zoom in zooms:
        x0 = np.array([initial[n] for n in names], dtype=float)
        if "zoom" in names:
            x0[names.index("zoom")] = zoom
        if "scale" in names:
            # scale is linear: start it at its optimum for this start's other values
            recipe.residual(x0)
            profile = contribution.profile
            scale0, _ = scale_and_rw(profile.y, generator(profile.x), _weights(profile.dy))
            x0[names.index("scale")] = scale0
        x0 = np.clip(x0, lower, upper)
        res = optimize.least_squares(
            recipe.residual, x0, bounds=(lower, upper), x_scale="jac", max_nfev=max_nfev,
        )
        starts.append((float(zoom), float(2.0 * res.cost), bool(res.success)))
        if best is None or res.cost < best.cost:
            best = res
    recipe.residual(best.x)  # leave the recipe at the best solution
    # srfit's uncertainties come from a central difference with a step relative to the
    # value, undefined at 0 and meaningless on a bound: fix variables that ended there.
    span = upper - lower
    at_bound = tuple(
        name for name, x, lo, hi, d in zip(names, best.x, lower, upper, span, strict=True)
        if np.isfinite(d) and min(x - lo, hi - x) <= BOUND_RTOL * d
    )
    if at_bound:
        recipe.fix(*at_bound)
    with np.errstate(divide="ignore", invalid="ignore"):
        results = FitResults(recipe)
    values = {
        **dict(zip(results.fixednames, map(float, results.fixedvals), strict=True)),
        **dict(zip(results.varnames, map(float, results.varvals), strict=True)),
    }
    return SrfitRefinement(results, float(results.rw), values, tuple(starts), at_bound)
