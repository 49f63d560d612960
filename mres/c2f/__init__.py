"""Coarse-to-fine: the main job — train coarse, transfer with every strategy, train fine, report.

The job (``job``), its phases and learning-rate plans (``phases``), multilevel training in weight
space (``multilevel``), summary maths (``summary``), time to accuracy (``tta``), statistics
(``stats``) and the report (``report``).  May import every wing below it (grids, models, training,
analysis) and the top-level modules; never cli.
"""
