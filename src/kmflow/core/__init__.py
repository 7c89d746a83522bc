"""What every job shares: the model and its stored preprocessing, and (as they move here)
the split, evaluation, the sweep over k, drift statistics and the promotion rule.

Nothing here knows about images or tables: a job (:mod:`kmflow.jobs`) brings the data and
the preprocessing of its kind; the core and the kernels do the rest.
"""
