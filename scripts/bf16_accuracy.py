"""bfloat16 matmul precision against float32, same seeds: test accuracy on digits (``fastbp train``'s defaults) and
on a 50 000 x 100, 10-class synthetic set (hidden layers 256-128, 10 epochs), and the relative error of the gradient
against the float64 one, per hidden activation (the worst over output/loss pairs, depths 1-5 and seeds).

    python scripts/bf16_accuracy.py [--skip-gradients]
"""

import argparse
import time

import numpy as np

import fastbp
from fastbp import reference


def _accuracy(X_train, X_test, y_train, y_test, sizes, epochs, batch_size, precision):
    def make():
        net = fastbp.MLP(sizes, seed=0, matmul_precision=precision)
        return fastbp.Trainer(net, fastbp.Adam(1e-3), batch_size=batch_size, seed=0, progress=False)

    make().fit(X_train[: 2 * batch_size], y_train[: 2 * batch_size], epochs=1)  # compile outside the timing
    trainer = make()
    start = time.perf_counter()
    trainer.fit(X_train, y_train, epochs=epochs)
    seconds = time.perf_counter() - start
    return trainer.evaluate(X_test, y_test)["accuracy"], seconds


def accuracies():
    from sklearn.datasets import make_classification

    X, y = fastbp.data.load_digits()
    digits = fastbp.data.prepare(X, y, test_size=0.2, seed=0)
    X, y = make_classification(
        n_samples=50_000, n_features=100, n_informative=40, n_classes=10, n_clusters_per_class=2, random_state=0
    )
    synthetic = fastbp.data.prepare(X, y, test_size=0.2, seed=0)
    runs = [
        ("digits, 64-128-10, 40 epochs, batch 32", digits, [64, 128, 10], 40, 32),
        ("synthetic 50000 x 100, 100-256-128-10, 10 epochs, batch 200", synthetic, [100, 256, 128, 10], 10, 200),
    ]
    print("| data | float32 test accuracy | bfloat16 test accuracy | points apart | fit seconds (float32 / bfloat16) |")
    print("|---|---|---|---|---|")
    for name, data, sizes, epochs, batch in runs:
        a32, t32 = _accuracy(*data, sizes, epochs, batch, "float32")
        a16, t16 = _accuracy(*data, sizes, epochs, batch, "bfloat16")
        print(f"| {name} | {a32:.4f} | {a16:.4f} | {100 * abs(a16 - a32):.2f} | {t32:.2f} / {t16:.2f} |")


def gradient_errors(seeds=3):
    pairs = [
        ("softmax", "cross_entropy"),
        ("sigmoid", "binary_cross_entropy"),
        ("identity", "squared_error"),
        ("tanh", "squared_error"),
        ("relu", "squared_error"),
        ("leaky_relu", "squared_error"),
    ]
    rng = np.random.default_rng(0)
    print("\n| hidden activation | gradient vs float64: median | worst | worst case (output, loss, depth) |")
    print("|---|---|---|---|")
    for activation in ("identity", "sigmoid", "tanh", "relu", "leaky_relu"):
        errors = []
        for output, loss in pairs:
            for depth in range(5):
                for seed in range(seeds):
                    hidden = [48, 40, 56, 32][:depth]
                    n_out = 10 if output == "softmax" else 4
                    sizes = [32, *hidden, n_out]
                    net = fastbp.MLP(sizes, activation, output, loss, seed=seed, matmul_precision="bfloat16")
                    X = rng.standard_normal((128, 32))
                    Y = rng.integers(0, n_out, 128) if output == "softmax" else rng.random((128, n_out))
                    exact = fastbp.MLP(sizes, activation, output, loss, dtype="float64")
                    exact.params[:] = net.params
                    g = net.value_and_grad(X, Y)[1]
                    g64 = reference.value_and_grad(exact, X, Y)[1]
                    errors.append((np.linalg.norm(g - g64) / np.linalg.norm(g64), output, loss, depth + 1))
        worst = max(errors)
        median = float(np.median([e[0] for e in errors]))
        print(f"| {activation} | {median:.1e} | {worst[0]:.1e} | {worst[1]}, {worst[2]}, depth {worst[3]} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-gradients", action="store_true")
    args = parser.parse_args()
    accuracies()
    if not args.skip_gradients:
        gradient_errors()


if __name__ == "__main__":
    main()
