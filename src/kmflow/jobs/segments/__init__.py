"""The records job: segmentation of tables (customers, any rows) with k-means.

:mod:`kmflow.jobs.segments.prepare` decides which columns are features and fits the stored
preprocessing that maps raw records to the space of the centers.
"""
