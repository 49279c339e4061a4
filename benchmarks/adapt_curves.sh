#!/usr/bin/env bash
# Issue 19's curves: adapting to a lab with labelled cells, unlabelled cells, or both, and with
# random or suggested cells labelled. One `wbcnet adapt --shots` command per curve; results in
# runs/adapt/*/learning_curve.md, figures by benchmarks/adapt_curve.py. About an hour on 2 cores.
#   bash benchmarks/adapt_curves.sh            (needs runs/raabin-only: wbcnet train --config configs/raabin-only.yaml --out runs/raabin-only)
set -euo pipefail
PBC=../shared/datasets/pbc-5class
BCCD=../shared/datasets/bccd-wbc-crops
A="wbcnet adapt --no-progress --overwrite --repeats 2"
# Raabin-only -> PBC
$A --checkpoint runs/raabin-only --data $PBC --shots 5,10,25 --out runs/adapt/raabin-pbc-labels
$A --checkpoint runs/raabin-only --data $PBC --shots 10 --shots-unlabelled --out runs/adapt/raabin-pbc-semi
$A --checkpoint runs/raabin-only --data $PBC --shots 10 --shots-unlabelled --pick suggested --out runs/adapt/raabin-pbc-semi-suggested
$A --checkpoint runs/raabin-only --data $PBC --shots 10 --pick suggested --out runs/adapt/raabin-pbc-suggested
$A --checkpoint runs/raabin-only --data $PBC --shots 10 --pick any --out runs/adapt/raabin-pbc-any
# the shipped model -> BCCD (3 basophils: a class with fewer than 2 in the adapting half is left out)
$A --data $BCCD --shots 5 --out runs/adapt/shipped-bccd-labels
$A --data $BCCD --shots 5 --shots-unlabelled --out runs/adapt/shipped-bccd-semi
$A --data $BCCD --shots 5 --shots-unlabelled --pick suggested --out runs/adapt/shipped-bccd-semi-suggested
python -m benchmarks.adapt_curve runs/adapt/raabin-pbc-labels runs/adapt/raabin-pbc-any runs/adapt/raabin-pbc-suggested runs/adapt/raabin-pbc-semi \
    runs/adapt/raabin-pbc-semi-suggested --out docs/adapt/raabin-only-to-pbc-semi --title "Raabin-WBC-only model -> PBC"
python -m benchmarks.adapt_curve runs/adapt/shipped-bccd-labels runs/adapt/shipped-bccd-semi \
    runs/adapt/shipped-bccd-semi-suggested --out docs/adapt/shipped-to-bccd-semi --title "Shipped model -> BCCD"
