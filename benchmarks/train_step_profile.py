"""Profile of one compiled training step of convolutional OptEq classifiers, and designs that
train at CPU speed, side by side in one run.

    .venv/bin/python benchmarks/train_step_profile.py                  # profile of "current"
    .venv/bin/python benchmarks/train_step_profile.py --design opteq14_certified
    .venv/bin/python benchmarks/train_step_profile.py --table          # every design, one table
    .venv/bin/python benchmarks/train_step_profile.py --train deep14_7_certified --epochs 1
    .venv/bin/python benchmarks/train_step_profile.py --table dense_before,dense_after

``dense_before`` / ``dense_after`` are the dense OptEq classifier of the Fashion-MNIST dense
comparison (W of 138 x 69 on a dense injection of the flattened image) with the landed and the
current training defaults.

A design is ``image -> stem (plain strided convolutions, relu) -> injection (a linear
convolution) -> equilibrium -> average pooling -> dense head``, built from the core only:
:class:`optjax.OptEqProblem` with a :class:`~optjax.linalg.convolution.Conv2D` weight (``W`` kept at
``||W|| <= rho`` by one power-iteration step per call, as the layers do in training, and, with
``certify``, rescaled by the certified FFT norm), or :class:`optjax.families.deep.DeepProblem` with
:class:`~optjax.linalg.convolution.StridedConv2D` / ``Conv2D`` couplings (normalised by
:func:`optjax.deep.normalize` with their certified norms, or power-iteration estimates).
``current_as_is`` is today's ``ImplicitClassifier("opteq", "conv", width=32)`` trained with the
:class:`~optjax.train.config.TrainConfig` defaults (nesterov, tol 1e-3, 50 steps, GMRES 30
steps, certify; the norm's gradient stopped at the norm, as ``OptEqConv`` does); ``current`` stops
it at the weight. Every design runs in float32 with one BLAS thread, as the ``optjax`` command.

**Profile** (``--design``): after ``--warm-steps`` training steps (real Fashion-MNIST if its IDX
files are in ``/usr/share/datasets/fashion-mnist``, else random data of that shape), the median
time of one compiled training step (batch 64) and of compiled sub-functions at the same point,
each as a ratio to one evaluation of T (the batched equilibrium map; for a deep chain, one
sweep): the forward solve (no certificate), the norm (power step; certified norm when the design
certifies) and the certificate, the backward solve ``(I - J^T) v = g``, the parameter VJP
``(dS/dtheta)^T v``, the stem and head (forward and backward) and the optimiser update; with the
forward and backward step counts. The parts are timed separately, so their sum differs from the
step by what XLA fuses or overlaps.

**Table** (``--table``): every design's parameters, step time, its ratio to ``current``'s
(measured in this run), forward / backward steps (mean / max over the batch) and the epoch time
(937 steps of 64) estimated from the step time. Times are wall-clock on a shared machine:
compare ratios, never absolute times across runs.

**Train** (``--train``): the full training loop (AdamW, warm-up then cosine decay, gradient clip
1, learning rate ``--lr``) for ``--epochs`` epochs on the real data; prints the epoch time, then
the test accuracy with certified solves (the exact FFT norms, as the layers in evaluation mode).
"""

from __future__ import annotations

import argparse

import jax

import optjax
from optjax.linalg.lapack import single_threaded
from _profile_designs import BATCH, DESIGNS  # benchmarks/ is on sys.path when a script runs
from _profile_parts import load_data, print_profile, profile, table, train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--design", default="current", choices=sorted(DESIGNS))
    parser.add_argument("--table", nargs="?", const="all",
                        help="comma-separated design names, or all")
    parser.add_argument("--train", default=None, choices=sorted(DESIGNS))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warm-steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    with single_threaded():  # as the optjax command: one BLAS thread for the LAPACK calls
        run(args)


def run(args):
    data, source = load_data()
    print(f"optjax {optjax.__version__}, jax {jax.__version__} on {jax.default_backend()}, "
          f"{jax.device_count()} device(s); data: {source}; batch {BATCH}, float32")
    if args.train:
        train(args.train, data, epochs=args.epochs, lr=args.lr)
    elif args.table:
        names = list(DESIGNS) if args.table == "all" else args.table.split(",")
        table(names, data, warm_steps=args.warm_steps, reps=args.reps)
    else:
        print_profile(profile(DESIGNS[args.design], data, warm_steps=args.warm_steps,
                              reps=args.reps))


if __name__ == "__main__":
    main()
