"""Scoring a model against labels: metrics, bootstrap intervals, the evaluation folder, and the
finder's recall and precision on boxed fields.
"""
