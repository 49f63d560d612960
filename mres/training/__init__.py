"""Training: one model on one grid.

Data held as tensors (``data``), the loop (``fit``) with its features attached as hooks (``hooks``),
one optimizer step (``steps``), CG-Steihaug (``optim``), atomic checkpoints (``checkpoint``) and
torchrun glue (``distributed``).  May import :mod:`mres.grids`, :mod:`mres.models`,
:mod:`mres.recipe`, :mod:`mres.strategies` and :mod:`mres.errors`; never analysis, c2f or cli.
"""
