"""Kept from the reference project: `python evaluate.py [flags]` is `wbcnet evaluate [flags]`.

    python evaluate.py --data DIR --out OUT [--checkpoint RUN_DIR]   (no checkpoint: the shipped model)
"""
import sys

from wbcnet.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["evaluate"] + sys.argv[1:]))
