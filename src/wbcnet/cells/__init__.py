"""Finding white cells and cutting them out: the step between a picture and a model input.

    locate.py    the one seam: every command finds cells through it (learned finder, else classic)
    classic.py   the threshold finder (nucleus stain) and the crop helpers
    finder/      the learned finder: its network (net.py) and where the shipped one lives (paths.py)
    preprocess.py the crop and normalisation a checkpoint carries (Preprocess), for one picture
    stain.py     stain maths in optical density (nucleus reference stain)
    cellbox.py   CellBox, a found cell
Imports core only.
"""
