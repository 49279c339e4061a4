"""A lab's own cells: adapting a model to them (adapt.py, semi.py), choosing which to label
(suggest.py), and teaching the finder a lab's fields (finder.py).
"""
