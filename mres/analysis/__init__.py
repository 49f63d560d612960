"""Analysis: looking at trained models.

Loss-landscape slices (``landscape``), propagated feature maps (``features``), what Poly-MgNet's
polynomial coefficients do (``sensitivity``) and the runner that applies them to checkpoints
(``runner``).  May import :mod:`mres.training`, :mod:`mres.grids`, :mod:`mres.models`,
:mod:`mres.strategies`, :mod:`mres.recipe` and :mod:`mres.errors`; never c2f or cli.
"""
