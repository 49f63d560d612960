"""Grids: pure maths on tensors between a fine grid (spacing h) and a coarse one (2h).

Restriction/prolongation families and the Galerkin stencil map (``operators``), the one table of how
each layer type moves between grids (``transfer``), the Galerkin condition fitted on data
(``datafit``) and spectra of conv operators with polynomial roots (``spectrum``).  The lowest wing:
it may import torch, numpy, scipy and :mod:`mres.errors` only.
"""
