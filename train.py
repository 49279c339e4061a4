"""Kept from the reference project: `python train.py [flags]` is `wbcnet train [flags]`.

With no --data it trains on ../shared/datasets/raabin-wbc-train when that folder exists."""
import sys
from pathlib import Path

from wbcnet.cli.main import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    default = Path(__file__).resolve().parent.parent / "shared" / "datasets" / "raabin-wbc-train"
    if "--data" not in argv and "--resume" not in argv and "--config" not in argv and default.is_dir():
        argv = ["--data", str(default)] + argv
    sys.exit(main(["train"] + argv))
