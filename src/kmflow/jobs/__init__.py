"""The jobs: one package per product, each built on :mod:`kmflow.core` and the kernels.

- :mod:`kmflow.jobs.palette`: color quantization of image collections (pixels → palettes);
- :mod:`kmflow.jobs.segments`: segmentation of tables (records → segments, profiles, a
  classifier per segment).

A job prepares its inputs, fits, evaluates and applies; it never imports Prefect (the flows
and tasks wire jobs into runs).
"""
