"""Training machinery every loop shares: the loop itself, its schedule, optimizer, EMA, history and
run folder, and data-parallel processes (distributed.py). The tasks (training/, lab/) hand it their
pieces. Imports core, data and models.
"""
