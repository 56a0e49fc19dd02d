"""PDF calculators: the Debye equation (default) and DiffPy's real-space method.

>>> calc = make_calculator(elements, xyz, PDFSettings(), r)   # doctest: +SKIP
>>> motif = calc.prepare(mask)                                # doctest: +SKIP
>>> g = calc.gr(motif, zoom=1.005)                            # doctest: +SKIP

The names below load on first use (PEP 562), so that reading ``pdf.settings`` (the
command line's defaults) does not compile or load the numba kernels.
"""

from importlib import import_module

_WHERE = {
    "DebyeCalculator": "calculator",
    "Motif": "calculator",
    "PDFCalculator": "calculator",
    "RealSpaceCalculator": "calculator",
    "make_calculator": "calculator",
    "PDFSettings": "settings",
    "uiso_from_biso": "settings",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
