#!/bin/bash
# Data-free prototypes of every starter-zoo model synthesised with the encoder term at weight W, in a copy of
# the zoo; the index built and calibrated on the development part; the selection evaluated on that part.
# usage (from the checkout): docs/examples/data-free-encoder-guide/run_weight.sh W WORK
# writes WORK/zoo_wW (the zoo copy) and WORK/dev_wW (evaluate-selection's output); W=0 leaves the term out.
set -euo pipefail
W=$1
WORK=$2
MS=${MODELSELECTOR:-.venv/bin/modelselector}  # the checkout's environment unless told otherwise
Z=$WORK/zoo_w$W
rm -rf "$Z" && mkdir -p "$WORK" && cp -r Resources/zoo "$Z"
"$MS" prototypes --zoo "$Z" --all --data-free 4 --encoder-weight "$W" --threads 1
"$MS" index build --zoo "$Z" --data ../shared/data  # calibrated on the development part
"$MS" evaluate-selection --zoo "$Z" --data ../shared/data --part dev --out "$WORK/dev_w$W"
