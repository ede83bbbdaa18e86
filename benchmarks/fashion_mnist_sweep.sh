#!/usr/bin/env bash
# The parameter sweep of benchmarks/RESULTS.md ("Accuracy per parameter"): every family at about
# 15K, 40K and 100K parameters (matched within 2% by benchmarks/fashion_mnist.py --match-head),
# full Fashion-MNIST, 10 epochs, no augmentation; rows in benchmarks/results/fashion_mnist_sweep.json.
# Resumable: a run with a row is skipped, an interrupted run continues from its checkpoint.
#
#   bash benchmarks/fashion_mnist_sweep.sh                      # every family, seeds 0-2
#   FAMILIES=opteq,deq SEEDS=0 bash benchmarks/fashion_mnist_sweep.sh
#   TARGETS=40000 bash benchmarks/fashion_mnist_sweep.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
FAMILIES=${FAMILIES:-explicit,opteq,deq,deep_opteq,mondeq}
SEEDS=${SEEDS:-0 1 2}
TARGETS=${TARGETS:-15000 40000 100000}
for seed in ${SEEDS//,/ }; do
    for target in ${TARGETS//,/ }; do
        "$PY" benchmarks/fashion_mnist.py --kind conv --target "$target" --match-head \
            --augment-crop 0 --no-augment-flip --families "$FAMILIES" --seeds "$seed" \
            --results benchmarks/results/fashion_mnist_sweep.json --resume "$@"
    done
done
