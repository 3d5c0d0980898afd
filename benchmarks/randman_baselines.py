"""Non-spiking baselines on the random-manifold task of ``examples/randman.py``: how much of it a linear classifier
and an MLP read from the spike times, for the README's examples table.

On the example's splits (5000 training, 1000 test samples; seeds 1 and 2, task ``manifold_seed`` 0, 10 classes, 20
channels, spike times in [0, 50] ms) at each ``--dims`` manifold dimension, with the spike times / 50 as features:
scikit-learn's ``LogisticRegression(max_iter=3000)`` and ``MLPClassifier((128,), max_iter=1000)`` (one hidden
layer of 128 ReLU units, Adam) with ``random_state`` 0 and 1. Writes JSON stamped with the commit.

    python benchmarks/randman_baselines.py --output benchmarks/results/randman_baselines.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _stamp import stamp, write_json  # noqa: E402
from spikescan.datasets import randman  # noqa: E402

SPLITS = dict(train=(5000, 1), test=(1000, 2))  # samples, seed: examples/randman.py's
TASK = dict(manifold_seed=0, n_classes=10, n_channels=20, duration=50.0)


def run(dims, n_train=SPLITS["train"][0], n_test=SPLITS["test"][0], mlp_seeds=(0, 1), max_iter=1000):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    entries = []
    for dim in dims:
        start = time.perf_counter()
        train = randman(n_train, seed=SPLITS["train"][1], dim_manifold=dim, **TASK)
        test = randman(n_test, seed=SPLITS["test"][1], dim_manifold=dim, **TASK)
        x, xt = (d.times.reshape(len(d.labels), -1).astype("float64") / TASK["duration"] for d in (train, test))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            linear = LogisticRegression(max_iter=3000).fit(x, train.labels).score(xt, test.labels)
            mlp = [MLPClassifier((128,), max_iter=max_iter, random_state=s).fit(x, train.labels).score(xt, test.labels)
                   for s in mlp_seeds]
        entries.append(dict(dim_manifold=dim, n_train=n_train, n_test=n_test, logistic_regression=float(linear),
                            mlp=[float(a) for a in mlp], seconds=round(time.perf_counter() - start, 1)))
    return entries


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--output", default=None)
    p.add_argument("--quick", action="store_true", help="200 / 100 samples, one MLP seed (smoke test)")
    args = p.parse_args(argv)
    kw = dict(n_train=200, n_test=100, mlp_seeds=(0,), max_iter=50) if args.quick else {}
    report = dict(benchmark="randman_baselines", task=TASK, splits=SPLITS, entries=run(args.dims, **kw),
                  quick=args.quick)
    report["stamp"] = stamp()
    for e in report["entries"]:
        print(f"dim {e['dim_manifold']}: logistic regression {e['logistic_regression']:.1%}, MLP "
              + ", ".join(f"{a:.1%}" for a in e["mlp"]))
    if args.output:
        write_json(report, args.output)
    return report


if __name__ == "__main__":
    main()
