"""Datasets: what is in a folder of cells or fields, split, decoded once, and augmented for training.

    scan.py, sources.py  class folders and CSV lists -> samples; several labs in one run
    split.py             train/val/test by group, written beside the run
    cache.py             decode + find + crop once (threaded), cached on disk
    near_duplicates.py   the same cell under two names (kept on one side of a split)
    stats.py             the channel mean and std a model's inputs are normalised with
    augment.py           batched training augmentation (kornia), its settings in augment_config.py
    fields.py            whole fields with boxed cells: the finder's training and scoring data
    audit.py             `wbcnet audit`'s findings about a folder (render/audit.py draws the page)
Imports core and cells.
"""
