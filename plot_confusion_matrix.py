"""Kept from the reference project: `python plot_confusion_matrix.py [RUN_OR_METRICS]` is
`wbcnet plot-confusion`, defaulting to the newest run in runs/."""
import sys
from pathlib import Path

from wbcnet.cli.main import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not argv:
        runs = sorted(Path("runs").glob("*/test/metrics.json"), key=lambda p: p.stat().st_mtime)
        if not runs:
            sys.exit("plot_confusion_matrix.py: no runs/*/test/metrics.json yet; run python train.py first")
        argv = [str(runs[-1])]
    sys.exit(main(["plot-confusion"] + argv))
