"""Kept from the reference project: `python evaluate.py [flags]` is `wbcnet evaluate [flags]`.

With no flags it evaluates the newest run in runs/ on its own test split's images."""
import sys

from wbcnet.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate"] + sys.argv[1:]))
