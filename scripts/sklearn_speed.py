"""fastbp.sklearn.MLPClassifier against scikit-learn's MLPClassifier: same hyper-parameters, same data, same run.

For each data set and dtype the two fits alternate (ours, theirs, ours, theirs, ...) and the medians are reported,
with the per-epoch time (the number of epochs can differ only through rounding; it is printed) and the test
accuracy. Data: scikit-learn's digits (embedded) and make_classification(n_samples=50000, n_features=100,
n_informative=50, n_classes=10), standardised, 20% held out; hidden layers (256, 128); scikit-learn's defaults
otherwise (adam, batch_size='auto' = 200, tol, n_iter_no_change), random_state=0. The large set runs a fixed
``--max-iter`` epochs (default 10) to keep the run short; digits runs to scikit-learn's own stopping rule.

    python scripts/sklearn_speed.py [--rounds 3] [--max-iter 10] [--json PATH]
"""

import argparse
import json
import statistics
import time
import warnings

import numpy as np
from sklearn import neural_network as skl
from sklearn.datasets import load_digits, make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from fastbp import bench
from fastbp import sklearn as fsk


def datasets(max_iter):
    X, y = load_digits(return_X_y=True)
    yield "digits", X, y, {}
    X, y = make_classification(n_samples=50000, n_features=100, n_informative=50, n_classes=10, random_state=0)
    yield "classification-50k", X, y, {"max_iter": max_iter}


def fit(cls, X, y, params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        model = cls(**params).fit(X, y)
        return model, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-iter", type=int, default=10, help="epochs on the large data set")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    rows = []
    print(bench.machine())
    for name, X, y, extra in datasets(args.max_iter):
        X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
        scaler = StandardScaler().fit(X_train)
        X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
        for dtype in ("float64", "float32"):
            Xtr, Xte = X_train.astype(dtype), X_test.astype(dtype)
            params = {"hidden_layer_sizes": (256, 128), "random_state": 0, **extra}
            fit(fsk.MLPClassifier, Xtr[:50], y_train[:50], {**params, "max_iter": 1})  # load the compiled kernels
            times = {"fastbp": [], "sklearn": []}
            for _ in range(args.rounds):
                ours, t = fit(fsk.MLPClassifier, Xtr, y_train, params)
                times["fastbp"].append(t)
                theirs, t = fit(skl.MLPClassifier, Xtr, y_train, params)
                times["sklearn"].append(t)
            row = {
                "data": name,
                "dtype": dtype,
                "n_train": Xtr.shape[0],
                "epochs_fastbp": ours.n_iter_,
                "epochs_sklearn": theirs.n_iter_,
                "fit_s_fastbp": statistics.median(times["fastbp"]),
                "fit_s_sklearn": statistics.median(times["sklearn"]),
                "accuracy_fastbp": float(ours.score(Xte, y_test)),
                "accuracy_sklearn": float(theirs.score(Xte, y_test)),
                "times": times,
            }
            row["speedup"] = row["fit_s_sklearn"] / row["fit_s_fastbp"]
            row["speedup_per_epoch"] = (row["fit_s_sklearn"] / theirs.n_iter_) / (row["fit_s_fastbp"] / ours.n_iter_)
            rows.append(row)
            print(
                f"{name:20s} {dtype}: fastbp {row['fit_s_fastbp']:.3f} s ({ours.n_iter_} epochs), scikit-learn "
                f"{row['fit_s_sklearn']:.3f} s ({theirs.n_iter_} epochs): {row['speedup']:.2f}x faster "
                f"({row['speedup_per_epoch']:.2f}x per epoch); test accuracy {row['accuracy_fastbp']:.4f} vs "
                f"{row['accuracy_sklearn']:.4f}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": bench.machine(), "date": time.strftime("%Y-%m-%d"), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
