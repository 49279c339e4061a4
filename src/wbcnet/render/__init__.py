"""Showing what was computed: records (core/results.py) -> CSV, JSON, pictures and HTML pages.

    tables.py        CSV and JSON files, written atomically
    draw.py          PALETTE (a colour per class) and draw_field (a field with its boxes)
    count.py         a count's folder: cells.csv, differential.csv/.json, truth.json, fields/,
                     count.html and count.json, appearing together (CountOutput)
    count_report.py  count.html
    evaluation.py    an evaluation's folder: metrics.json, predictions.csv, the plots, report.html;
                     the summary table of several sets
    report.py        report.html

The computing modules (results, predict, count, inference, metrics, shift, data/, models/) never
import this package (tests/test_imports.py checks it); it never computes a number again, only
reads records' attributes and their to_row/to_dict.
"""
