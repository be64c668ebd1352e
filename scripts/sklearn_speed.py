"""fastbp.sklearn.MLPClassifier against scikit-learn's MLPClassifier: same hyper-parameters, same data, same run.

For each data set and dtype the two fits alternate (ours, theirs, ours, theirs, ...) and the medians are reported,
with the per-epoch time (the number of epochs can differ only through rounding; it is printed) and the test
accuracy. Data: scikit-learn's digits (embedded) and make_classification(n_samples=50000, n_features=100,
n_informative=50, n_classes=10), standardised, 20% held out; hidden layers (256, 128); scikit-learn's defaults
otherwise (adam, batch_size='auto' = 200, tol, n_iter_no_change), random_state=0. The large set runs a fixed
``--max-iter`` epochs (default 10) to keep the run short; digits runs to scikit-learn's own stopping rule.

    python scripts/sklearn_speed.py [--rounds 3] [--max-iter 10] [--json PATH]

It ends with a profile of one fastbp step of each shape (batch 200): the whole step against its GEMMs alone (the
same GEMMs scikit-learn's NumPy code calls), which shows how much of the step any implementation must spend there,
and the ceiling that puts on the speed-up: the measured per-epoch ratio divided by that share, the ratio fastbp
would reach if nothing but those GEMMs took time (a share and a ratio each measured in one phase of the run, as the
ceilings in docs/measurements.md; the machine's load can differ between the phases).
"""

import argparse
import json
import time

import numpy as np
from sklearn.datasets import load_digits, make_classification
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from fastbp import bench, breakdown
from fastbp.cli import _positive_int  # the command line's argparse type of counts


def datasets(max_iter):
    X, y = load_digits(return_X_y=True)
    yield "digits", X, y, {}
    X, y = make_classification(n_samples=50000, n_features=100, n_informative=50, n_classes=10, random_state=0)
    yield "classification-50k", X, y, {"max_iter": max_iter}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=_positive_int, default=3)
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
            row = {"data": name, "n_train": Xtr.shape[0]}
            row.update(bench.compare_fit(Xtr, y_train, Xte, y_test, params, args.rounds))
            row["speedup"] = row["sklearn_fit_s"] / row["fastbp_fit_s"]
            print(
                f"{name:20s} {dtype}: fastbp {row['fastbp_fit_s']:.3f} s ({row['epochs_fastbp']} epochs), "
                f"scikit-learn {row['sklearn_fit_s']:.3f} s ({row['epochs_sklearn']} epochs): {row['speedup']:.2f}x "
                f"faster ({row['ratio']:.2f}x per epoch); test accuracy {row['fastbp_accuracy']:.4f} vs "
                f"{row['sklearn_accuracy']:.4f}",
                flush=True,
            )
            rows.append(row)
    for name, n_features in (("digits", 64), ("classification-50k", 100)):
        sizes = [n_features, 256, 128, 10]
        for dtype in ("float64", "float32"):
            result = breakdown.profile((sizes, 200), dtype, rounds=3)
            t_step, t_gemm = result["step"], breakdown.gemms_alone(result)
            fit = next(r for r in rows if r.get("data") == name and r["dtype"] == dtype)
            ceiling = fit["ratio"] / (t_gemm / t_step)
            print(
                f"profile {name} {dtype}: fastbp step {t_step * 1e6:.0f} us, its GEMMs alone {t_gemm * 1e6:.0f} us "
                f"({100 * t_gemm / t_step:.0f}%); ceiling of the speed-up over scikit-learn {ceiling:.1f}x"
            )
            rows.append({"profile": name, "dtype": dtype, "step_s": t_step, "gemm_s": t_gemm, "ceiling": ceiling})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": bench.machine(), "date": time.strftime("%Y-%m-%d"), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
