"""python -m benchmarks [--quick] [--sections abcde] [--train-args "..."]: see bench.py."""
import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.bench import QUICK, SHARED_TRAIN, Settings, default_train_args, recipe_epochs, run_all


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="Measure wbcnet against the issue's targets "
                                "and write a markdown report.")
    p.add_argument("--quick", action="store_true", help="smoke run of seconds: tiny sizes, numbers meaningless; "
                   "writes to a temporary folder unless --out is given")
    p.add_argument("--sections", default="abcde", help="which sections to run (default abcde)")
    p.add_argument("--out", help="report path (default benchmarks/RESULTS.md)")
    p.add_argument("--data", default=str(SHARED_TRAIN), help="ImageFolder the 575 px JPEGs are made from "
                   "(default ../shared/datasets/raabin-wbc-train; the bundled sample when missing)")
    p.add_argument("--n-jpeg", type=int, help="575 px JPEGs for (c) and (d) (default 4339, "
                   "Raabin-WBC's test-set size: the issue's `wbcnet predict` workload)")
    p.add_argument("--train-args", help="arguments of the `wbcnet train` run in (e) (default: the recipe "
                   "configs/raabin-wbc.yaml for 2 epochs)")
    p.add_argument("--full-epochs", type=int, help="epochs of a full training, for the projected wall time in (e) "
                   "(default: the recipe's)")
    args = p.parse_args(argv)

    s = QUICK if args.quick else Settings()
    if args.n_jpeg:
        s.n_jpeg = args.n_jpeg
    if args.out:
        out = Path(args.out)
    elif args.quick:  # never overwrite real results with smoke numbers
        out = Path(tempfile.gettempdir()) / "wbcnet-bench-quick" / "RESULTS.md"
    else:
        out = Path(__file__).parent / "RESULTS.md"
    train_args = args.train_args or default_train_args(args.quick)
    text = run_all(s, args.sections, Path(args.data), train_args, args.full_epochs or recipe_epochs(), out, argv)
    print("\n" + text)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
