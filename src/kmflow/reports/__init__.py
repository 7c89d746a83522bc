"""Figures and pages of every report; matplotlib (Agg) PNGs and one self-contained HTML page.

No Prefect here: the functions take arrays and return PNG bytes or pixels.


- :func:`contingency_heatmap`: the classes x clusters table as a PNG, clusters in the order
  of the Hungarian matching (:func:`diagonal_order`), so a good clustering shows a diagonal
- :func:`contact_sheet`: images composed into one RGB grid; :func:`cluster_sheet`: a
  cluster's nearest-to-center images, then a few random members, under a caption
- :func:`encode_png`: RGB pixels as a PNG file

A model version's report (``kmflow report``, and the report step of every training flow):

- :mod:`kmflow.reports.plots`: its figures (sweep, silhouette per cluster, PCA scatter, RGB
  cube and swatches for palettes, sizes, standardised centers, drift history), each a
  :class:`~kmflow.reports.plots.Picture` with the values it marks
- :mod:`kmflow.reports.build`: :func:`~kmflow.reports.build.build_report` from the registry
  alone and :func:`~kmflow.reports.build.write_report` (the page and the PNGs)
- :mod:`kmflow.reports.html`: the self-contained page, and the same as markdown for Prefect

Every figure is drawn on its own :class:`matplotlib.figure.Figure` with the Agg canvas (never
``pyplot``): no display, no global figure state, safe to call from several threads.
"""

from __future__ import annotations

from kmflow.reports.figures import (
    CAPTION_HEIGHT,
    cluster_sheet,
    contact_sheet,
    contingency_heatmap,
    diagonal_order,
    encode_png,
)

__all__ = [
    "CAPTION_HEIGHT",
    "cluster_sheet",
    "contact_sheet",
    "contingency_heatmap",
    "diagonal_order",
    "encode_png",
]
