"""The ``fastbp`` command line: ``train``, ``predict``, ``bench``, ``info``, ``gradcheck``, ``diagnose``.

Exit codes: 0 success, 1 failure (a clear message on stderr), 2 usage error (argparse's, or a combination of
options that cannot work with the data, such as ``--residual`` when no hidden layer keeps its width: one line).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

OPTIMIZER_CHOICES = ("sgd", "momentum", "nesterov", "adam", "adamw")


def _layers(text):
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated hidden layer sizes like 128,64, got {text!r}"
        ) from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return sizes


class UsageError(ValueError):
    """A combination of options that cannot work, found once the data is known (exit code 2, one line on stderr)."""

    # Every rank of `fastbp train --distributed` finds it alike (same options, same data): rank 0 reports it once,
    # no rank is aborted (fastbp.distributed.run_cli).
    agreed_across_ranks = True


def _int_at_least(minimum):
    """argparse type: an integer >= minimum, else a usage error."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _bounded_float(low, high, low_open=False, high_open=True):
    """argparse type: a finite float in [low, high) (open or closed ends as given), else a usage error."""

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = np.isfinite(value) and (value > low if low_open else value >= low)
        ok = ok and (value < high if high_open else value <= high)
        if not ok:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            raise argparse.ArgumentTypeError(f"must be in {left}{low:g}, {high:g}{right}, got {text}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)
_positive_float = _bounded_float(0.0, np.inf, low_open=True)
_fraction = _bounded_float(0.0, 1.0, low_open=True)


def build_parser():
    parser = argparse.ArgumentParser(prog="fastbp", description="Fast CPU backpropagation for dense networks.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train an MLP (default: digits, 64-128-10 relu, Adam)",
        description="Train an MLP. With no arguments: scikit-learn's digits (embedded), one "
        "hidden layer of 128 relu units, Adam, 20% held out for the test accuracy.",
    )
    train.add_argument(
        "--data",
        help="data file: .npz (arrays X, y), .csv (label in the last column), or IDX "
        "images (with --labels); default: the embedded digits",
    )
    train.add_argument("--labels", help="IDX labels file, with IDX images in --data")
    train.add_argument("--layers", type=_layers, default=[128], help="hidden layer sizes, e.g. 256,128 (default 128)")
    train.add_argument(
        "--activation", default="relu", choices=("relu", "leaky_relu", "tanh", "sigmoid", "logistic", "identity")
    )
    train.add_argument(
        "--norm",
        choices=("batch", "layer"),
        help="normalize every hidden layer's pre-activations: batch norm (running statistics for evaluation and "
        "fastbp predict) or layer norm (default: none)",
    )
    train.add_argument(
        "--residual",
        action="store_true",
        help="a residual connection (the layer's input added to its output) on every hidden layer that keeps its "
        "width, i.e. whose input size equals its size: with --layers 128,128,128 on 64 features, hidden layers 2 and "
        "3, not layer 1 (64 to 128); an error when no hidden layer keeps its width",
    )
    train.add_argument(
        "--dropout",
        type=_bounded_float(0.0, 1.0),
        default=0.0,
        metavar="P",
        help="dropout rate of every hidden layer's output in training, in [0, 1) (default 0)",
    )
    train.add_argument("--optimizer", default="adam", choices=OPTIMIZER_CHOICES)
    train.add_argument("--lr", type=_positive_float, help="learning rate (default 1e-3 for adam/adamw, 0.05 for sgd)")
    train.add_argument(
        "--momentum", type=_bounded_float(0.0, 1.0), default=0.9, help="for momentum/nesterov (default 0.9)"
    )
    train.add_argument(
        "--l2", type=_bounded_float(0.0, np.inf), default=0.0, help="L2 penalty l2/2 sum W^2 (default 0)"
    )
    train.add_argument("--clip-norm", type=_positive_float, help="clip gradients to this global L2 norm")
    train.add_argument("--schedule", default="constant", choices=("constant", "cosine", "invscaling"))
    train.add_argument("--epochs", type=_positive_int, default=40)
    train.add_argument("--batch-size", type=_positive_int, default=32)
    train.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    train.add_argument(
        "--matmul-precision",
        default="float32",
        choices=("float32", "bfloat16"),
        help="precision of the matrix products (bfloat16: float32 networks on CPUs with AVX512_BF16 or AMX, with "
        "the bf16 extra; default float32)",
    )
    train.add_argument("--threads", type=_positive_int, help="threads for BLAS and Numba (default: all)")
    train.add_argument("--test-size", type=_fraction, default=0.2, help="fraction held out for testing")
    train.add_argument(
        "--val-split",
        type=_bounded_float(0.0, 1.0),
        default=0.0,
        help="fraction of the training part used for validation each epoch (default 0: none)",
    )
    train.add_argument("--seed", type=_non_negative_int, default=0)
    train.add_argument(
        "--output", "-o", default="fastbp-model.npz", help="checkpoint path (default fastbp-model.npz; 'none' to skip)"
    )
    train.add_argument("--plot", help="write training curves to this PNG (needs matplotlib: fastbp[plot])")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--json", help="write the history and results to this JSON file")
    train.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel training over MPI ranks: run as mpiexec -n K fastbp train --distributed ... "
        "(needs fastbp[mpi])",
    )

    predict = sub.add_parser(
        "predict",
        help="predict with a saved checkpoint",
        description="Predict with a checkpoint; prints class labels (or outputs), one per "
        "line, and the accuracy (on stderr) when the data has labels. Inputs are standardised "
        "as fastbp train did.",
    )
    predict.add_argument("model", help="checkpoint written by fastbp train")
    predict.add_argument("--data", help="data file as for train (default: the embedded digits)")
    predict.add_argument("--labels", help="IDX labels file, with IDX images in --data")
    predict.add_argument(
        "--no-labels", action="store_true", help="the data file has no labels (a CSV: every column is a feature)"
    )
    predict.add_argument("--output", "-o", help="write predictions to this .npy file instead of printing them")

    bench = sub.add_parser(
        "bench",
        help="time training steps against NumPy, PyTorch, JAX and scikit-learn",
        description="Time one training step (forward, backward, SGD update; relu, softmax + cross-entropy) of "
        "fastbp and every installed peer, interleaved in one run, on the shapes of docs/benchmarks.md; and whole fits "
        "against scikit-learn's MLPClassifier.",
    )
    bench.add_argument("--quick", action="store_true", help="S and M in float32, fewer rounds (under 2 minutes)")
    bench.add_argument(
        "--shapes",
        help="comma-separated among S,M,L,XL,D (D: 784-256x4-10 with batch norm, residual connections and dropout "
        "0.1; default: the full matrix)",
    )
    bench.add_argument(
        "--dtypes",
        help="comma-separated among float32,float64,bfloat16 (with --shapes; bfloat16: bfloat16 matmul precision)",
    )
    bench.add_argument("--rounds", type=_positive_int, help="interleaved rounds (default 5, quick 3)")
    bench.add_argument("--min-time", type=_positive_float, help="seconds per timed loop (default 0.2, quick 0.1)")
    bench.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn fit comparison")
    bench.add_argument("--json", help="write all results to this JSON file")
    bench.add_argument("--plot", help="write a bar chart PNG (needs matplotlib)")
    bench.add_argument(
        "--profile",
        action="store_true",
        help="instead of the comparison, show where fastbp's step goes: each GEMM alone, all of them in sequence, "
        "and the work around them, against the whole step (default shapes S,M,L,XL)",
    )

    sub.add_parser(
        "info",
        help="versions, BLAS library and threads, Numba threading layer, cache directory",
        description="Print what fastbp runs on.",
    )
    _add_gradcheck_parser(sub)
    _add_diagnose_parser(sub)
    return parser


def _add_gradcheck_parser(sub):
    check = sub.add_parser(
        "gradcheck",
        help="check the analytic gradient against central finite differences",
        description="Build a network on random data, compare its gradient (the compiled kernels, on a float64 copy) "
        "with central finite differences, and print per layer the norm-wise relative error ||analytic - numeric|| "
        "/ max(||analytic||, ||numeric||, noise / threshold), where noise is the estimated error of the finite "
        "differences themselves; a layer whose gradient is within that noise is reported as unresolved. A float32 "
        "network's own float32 gradient is also compared with the float64 one (reported separately). Exit code 1 "
        "when an error exceeds its threshold or a layer is unresolved.",
    )
    check.add_argument("--inputs", type=_positive_int, default=10, help="input size (default 10)")
    check.add_argument("--layers", type=_layers, default=[16, 16], help="hidden layer sizes (default 16,16)")
    check.add_argument("--outputs", type=_positive_int, default=4, help="output size (default 4)")
    check.add_argument("--activation", default="tanh", choices=("tanh", "sigmoid", "relu", "leaky_relu", "identity"))
    check.add_argument("--output", default="softmax", choices=("softmax", "sigmoid", "identity"))
    check.add_argument("--l2", type=_bounded_float(0.0, np.inf), default=0.01, help="L2 penalty (default 0.01)")
    check.add_argument("--samples", type=_positive_int, default=8, help="batch size (default 8)")
    check.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "float64"),
        help="the network's dtype (default float32: the finite differences check the float64 kernels on a float64 "
        "copy, and the network's own float32 gradient is compared with the float64 one)",
    )
    check.add_argument("--eps", type=_positive_float, default=1e-5, help="finite-difference step (default 1e-5)")
    check.add_argument(
        "--threshold",
        type=_positive_float,
        default=1e-6,
        help="largest accepted relative error against finite differences (default 1e-6)",
    )
    check.add_argument(
        "--threshold-float32",
        type=_positive_float,
        default=1e-4,
        help="largest accepted relative error of a float32 network's gradient against float64 (default 1e-4)",
    )
    check.add_argument(
        "--max-coords", type=_positive_int, default=256, help="coordinates checked per layer, W and b (default 256)"
    )
    check.add_argument("--seed", type=_non_negative_int, default=0)


def _add_diagnose_parser(sub):
    diag = sub.add_parser(
        "diagnose",
        help="vanishing and exploding gradients in a deep network, and their remedies (per-layer norms and a plot)",
        description="The vanishing and exploding gradient experiment (docs/background.md) on the digits: the same deep "
        "network with sigmoid, tanh and relu "
        "from a plain initialisation W ~ N(0, 1/fan_in); per-layer norms of the weight gradients and of delta, a "
        "short SGD training, then the exploding case (weights --gain times larger) without and with clipping, then "
        "the remedies: the deep sigmoid network plain, with batch norm and with residual connections, the same "
        "weights, SGD, epochs and seed, side by side (gradient norms per layer, test accuracy).",
    )
    diag.add_argument("--depth", type=_positive_int, default=10, help="hidden layers (default 10)")
    diag.add_argument("--width", type=_positive_int, default=64, help="units per hidden layer (default 64)")
    diag.add_argument(
        "--samples", type=_positive_int, default=256, help="training rows for the norms at initialisation (default 256)"
    )
    diag.add_argument("--epochs", type=_positive_int, default=10, help="SGD epochs per network (default 10)")
    diag.add_argument("--lr", type=_positive_float, default=0.1, help="SGD learning rate (default 0.1)")
    diag.add_argument("--batch-size", type=_positive_int, default=32, help="(default 32)")
    diag.add_argument(
        "--gain", type=_positive_float, default=2.0, help="weight scale of the exploding case (default 2)"
    )
    diag.add_argument(
        "--clip-norm", type=_positive_float, default=1.0, help="clip_norm of the exploding case (default 1)"
    )
    diag.add_argument("--seed", type=_non_negative_int, default=0)
    diag.add_argument("--plot", default="diagnose.png", help="PNG to write (default diagnose.png; 'none' to skip)")
    diag.add_argument("--json", help="write the numbers to this JSON file")


def _check_output_dirs(*options):
    """Raise ValueError for an output path (option, path or None; 'none' skips) whose directory does not exist:
    checked before the work, not after it."""
    for option, path in options:
        if path and path.lower() != "none" and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ValueError(f"{option} {path}: the directory does not exist")


def _version():
    from . import __version__

    return __version__


def _load_data(path, labels, require_y=True, no_labels=False):
    from . import data

    if path is None:
        return data.load_digits()
    if no_labels and path.lower().endswith((".csv", ".txt")):
        return data.load_csv(path, label_column=None)
    return data.load_file(path, labels, require_y=require_y and not no_labels)


def _residuals(sizes):
    """``fastbp train --residual``: a residual connection on each hidden layer of ``sizes`` that keeps its width; a
    UsageError naming the layers when none does."""
    residual = [sizes[i] == sizes[i + 1] for i in range(len(sizes) - 2)]
    if not any(residual):
        changes = ", ".join(f"layer {i + 1} maps {sizes[i]} to {sizes[i + 1]} units" for i in range(len(residual)))
        raise UsageError(
            f"--residual needs a hidden layer that keeps its width (a residual connection adds the layer's input to "
            f"its output), but every hidden layer of {'-'.join(map(str, sizes))} changes it: "
            f"{changes}; repeat a width, e.g. --layers {sizes[1]},{sizes[1]}"
        )
    return residual


def _describe_options(net):
    """The hidden layers' options of ``net`` for the summary line (', batch norm, residual on hidden layers 2,3,
    dropout 0.1'), or ''."""
    parts = []
    norms = {k for k in net.norms[:-1] if k}
    if norms:
        parts.append(" and ".join(f"{k} norm" for k in sorted(norms)))
    layers = [str(i + 1) for i, r in enumerate(net.residuals) if r]
    if layers:
        parts.append(f"residual on hidden layer{'s' if len(layers) > 1 else ''} {','.join(layers)}")
    rates = {p for p in net.dropouts[:-1] if p}
    if rates:
        parts.append("dropout " + "/".join(f"{p:g}" for p in sorted(rates)))
    return "".join(f", {part}" for part in parts)


def _make_optimizer(args):
    from . import optim

    schedule = {"constant": None, "cosine": optim.Cosine(), "invscaling": optim.InverseScaling()}[args.schedule]
    if args.optimizer in ("adam", "adamw"):
        cls = optim.Adam if args.optimizer == "adam" else optim.AdamW
        return cls(lr=args.lr or 1e-3, schedule=schedule, clip_norm=args.clip_norm)
    momentum = 0.0 if args.optimizer == "sgd" else args.momentum
    return optim.SGD(
        lr=args.lr or 0.05,
        momentum=momentum,
        nesterov=args.optimizer == "nesterov",
        schedule=schedule,
        clip_norm=args.clip_norm,
    )


def cmd_train(args):
    if args.distributed:
        from . import distributed

        try:
            distributed._mpi()
        except ImportError as err:  # one line from main, not a traceback
            raise RuntimeError(str(err)) from None
        return distributed.run_cli(_train, args)
    return _train(args)


def _train(args, trainer_cls=None):
    start = time.perf_counter()
    import fastbp

    if args.threads:
        fastbp.set_num_threads(args.threads)
    _check_output_dirs(("--output", args.output), ("--plot", args.plot), ("--json", args.json))
    X, y = _load_data(args.data, args.labels)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(
            "fastbp train expects integer class labels (one per row); got labels of dtype "
            f"{y.dtype} and shape {y.shape}"
        )
    X_train, X_test, y_train, y_test, scaler = fastbp.data.prepare(
        X, y, test_size=args.test_size, seed=args.seed, return_scaler=True
    )
    classes = np.unique(y)
    if classes.min() < 0:
        raise ValueError("class labels must be >= 0")
    n_classes = int(classes.max()) + 1
    sizes = [X.shape[1], *args.layers, n_classes]
    net = fastbp.MLP(
        sizes,
        activation=args.activation,
        output="softmax",
        l2=args.l2,
        dtype=args.dtype,
        seed=args.seed,
        matmul_precision=args.matmul_precision,
        norm=args.norm,
        residual=_residuals(sizes) if args.residual else False,
        dropout=args.dropout,
    )
    trainer = (trainer_cls or fastbp.Trainer)(
        net, _make_optimizer(args), batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress
    )
    print(
        f"data: {X.shape[0]} samples, {X.shape[1]} features, {n_classes} classes "
        f"({'digits' if args.data is None else args.data}); train {len(y_train)}, test {len(y_test)}"
    )
    print(
        f"model: {'-'.join(map(str, sizes))} {args.activation}{_describe_options(net)}, softmax, {args.dtype}"
        f"{', bfloat16 matmul precision' if net.matmul_precision == 'bfloat16' else ''}; "
        f"optimizer {trainer.optimizer!r}; {args.epochs} epochs of batch {args.batch_size}"
    )
    fit_start = time.perf_counter()
    history = trainer.fit(
        X_train, y_train, epochs=args.epochs, validation_split=args.val_split if args.val_split else 0.0
    )
    fit_time = time.perf_counter() - fit_start
    result = trainer.evaluate(X_test, y_test)
    print(
        f"train loss {history['loss'][-1]:.4f}; test loss {result['loss']:.4f}; test accuracy {result['accuracy']:.4f}"
    )
    steps = trainer.optimizer.t
    print(
        f"time: fit {fit_time:.2f} s ({steps} steps, {1e6 * sum(history['epoch_time']) / steps:.0f} us per "
        f"step incl. first-epoch compilation if any); total {time.perf_counter() - start:.2f} s"
    )
    if args.output and args.output.lower() != "none":
        trainer.save(args.output, extras={"x_mean": scaler.mean_, "x_scale": scaler.scale_})
        print(f"checkpoint: {args.output}")
    if args.plot:
        from .plot import training_curves

        training_curves(history, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            options = {"norm": list(net.norms[:-1]), "residual": list(net.residuals[:-1])}
            options["dropout"] = list(net.dropouts[:-1])
            report = {"history": history, "test": result, "layers": sizes, **options, "fit_time": fit_time}
            json.dump(report, f, indent=1)
    return 0


def cmd_predict(args):
    import fastbp

    net = fastbp.load(args.model)
    X, y = _load_data(args.data, args.labels, require_y=False, no_labels=args.no_labels)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != net.n_in:
        raise ValueError(
            f"the data has {X.shape[-1]} feature columns but the model takes {net.n_in}"
            + (" (a CSV without a label column needs --no-labels)" if X.ndim == 2 else "")
        )
    if "x_mean" in net.extras:  # the standardisation fastbp train fitted on its training split
        X = (X - net.extras["x_mean"]) / net.extras["x_scale"]
    outputs = net.predict(X)
    predictions = outputs.argmax(axis=1) if net.output == "softmax" else outputs
    if args.output:
        np.save(args.output, predictions)
        print(f"predictions: {args.output} ({len(predictions)} rows)")
    else:
        np.savetxt(sys.stdout, predictions, fmt="%d" if predictions.ndim == 1 else "%.6g")
    if net.output == "softmax" and y is not None and y.ndim == 1 and y.dtype.kind in "iu":
        print(f"accuracy {np.mean(predictions == y):.4f} on {len(y)} labelled samples", file=sys.stderr)
    return 0


def cmd_bench(args):
    from . import bench

    if args.shapes:
        shapes = args.shapes.split(",")
        known = [*bench.SHAPES, *bench.DEEP]
        unknown = [s for s in shapes if s not in known]
        if unknown:
            raise ValueError(f"unknown shape {unknown[0]!r}; expected some of {known}")
        dtypes = (args.dtypes or "float32").split(",")
        unknown = [d for d in dtypes if d not in ("float32", "float64", "bfloat16")]
        if unknown:
            raise ValueError(f"unknown dtype {unknown[0]!r}; expected some of float32, float64, bfloat16")
        if "bfloat16" in dtypes:
            from . import _onednn

            _onednn.bf16_gemm()  # raises, saying why, where bfloat16 is not available
        cells = [(s, d) for s in shapes for d in dtypes]
    elif args.profile:
        cells = [(s, "float32") for s in bench.SHAPES]
    else:
        cells = bench.matrix(quick=args.quick)
    rounds = args.rounds or (3 if args.quick else 5)
    min_time = args.min_time or (0.1 if args.quick else 0.2)
    print(f"fastbp bench, {time.strftime('%Y-%m-%d')}: {bench.machine()}")
    if os.environ.get("OPENBLAS_CORETYPE"):
        print(
            f"note: OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} is set, so OpenBLAS (fastbp's and NumPy's "
            "GEMMs) uses that CPU's kernels, named above, whatever this CPU supports; JAX and PyTorch bring their own "
            "GEMMs and are not affected. The table of docs/benchmarks.md is measured with the variable unset."
        )
    if args.profile:
        return _bench_profile(cells, rounds, min_time)
    results = bench.run(cells, rounds=rounds, min_time=min_time, with_sklearn=not args.no_sklearn)
    print()
    print(bench.table(results))
    print()
    print(bench.targets_table(results))
    if args.json:
        bench.save_json(results, args.json)
        print(f"json: {args.json}")
    if args.plot:
        bench.plot(results, args.plot)
        print(f"plot: {args.plot}")
    return 0


def _bench_profile(cells, rounds, min_time):
    from . import bench, breakdown

    peaks = {}
    for shape, dtype in cells:
        peak = bench.best_peak(peaks, dtype)
        print(f"\nGEMM peak ({dtype}, 2048 x 2048, the best measured so far in this run): {peak:.0f} GFLOP/s\n")
        print(breakdown.profile_table(breakdown.profile(shape, dtype, rounds, min_time), peak))
    print(f"\nMedians over {rounds} rounds; every part timed alone from compiled code, on the step's shapes.")
    return 0


def cmd_info(args):
    import numba
    import scipy
    import sklearn

    import fastbp
    from fastbp import _config, _onednn

    print(
        f"fastbp {fastbp.__version__}  python {sys.version.split()[0]}  numpy {np.__version__}  "
        f"numba {numba.__version__}  scipy {scipy.__version__}  scikit-learn {sklearn.__version__}"
    )
    print(
        f"cpu cores: {os.cpu_count()}  numba threads: {numba.get_num_threads()} "
        f"(NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS})"
    )
    print(f"numba threading layer: {_threading_layer()}")
    for info in fastbp.blas_info():
        print(
            f"blas: {info.get('internal_api')} {info.get('version')} ({info.get('architecture')}), "
            f"{info.get('num_threads')} threads, {info.get('threading_layer')}: {info.get('filepath')}"
        )
    bf16 = _onednn.info()
    if not bf16["installed"]:
        print(f"bfloat16 matmul precision: not available: {bf16['reason']}")
    else:
        state = "accelerated" if bf16["accelerated"] else f"not available: {bf16['reason']}"
        print(f"bfloat16 matmul precision: {state} (oneDNN {bf16['version']}, {bf16['isa']}: {bf16['path']})")
    print(f"fastmath flags: {sorted(_config.FASTMATH)}")
    cache = numba.config.CACHE_DIR or os.path.join(os.path.dirname(fastbp.__file__), "kernels", "__pycache__")
    print(f"numba cache: {cache}")
    return 0


def cmd_gradcheck(args):
    import fastbp

    sizes = [args.inputs, *args.layers, args.outputs]
    net = fastbp.MLP(sizes, args.activation, args.output, l2=args.l2, dtype=args.dtype, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    X = rng.standard_normal((args.samples, args.inputs))
    if args.output == "softmax":
        Y = rng.integers(0, args.outputs, args.samples)
    elif args.output == "sigmoid":
        Y = rng.random((args.samples, args.outputs))
    else:
        Y = rng.standard_normal((args.samples, args.outputs))
    print(
        f"gradcheck: {'-'.join(map(str, sizes))} {args.activation}, {net.output} + {net.loss}, l2 {args.l2:g}, "
        f"{args.samples} random samples, {args.dtype} network\n"
        f"central differences (eps {args.eps:g}) on a float64 copy, checking the float64 kernels; error per layer "
        "||analytic - numeric|| / max(||analytic||, ||numeric||, noise / threshold)"
    )
    if args.dtype == "float32":
        print(
            "and the network's own float32 gradient against the float64 one (f32 columns): ||g32 - g64|| / "
            "max(||g32||, ||g64||, size of the summed terms)"
        )
    result = fastbp.gradcheck(
        net,
        X,
        Y,
        eps=args.eps,
        threshold=args.threshold,
        max_coords=args.max_coords,
        seed=args.seed,
        threshold_float32=args.threshold_float32,
    )
    print(result)
    problems = []
    if result.unresolved:
        parts = ", ".join(f"layer {layer + 1} {part}" for layer, part in result.unresolved)
        problems.append(f"{parts} unresolved (gradient within the finite-difference noise; try a larger --eps)")
    if not result.worst <= args.threshold:
        problems.append(f"the worst relative error {result.worst:.3g} exceeds {args.threshold:g}")
    if not result.passed_float32:
        problems.append(
            f"the float32 gradient's worst relative error {result.worst_float32:.3g} exceeds {args.threshold_float32:g}"
        )
    if problems:
        print(f"fastbp gradcheck: {'; '.join(problems)}", file=sys.stderr)
        return 1
    return 0


def cmd_diagnose(args):
    from . import diagnose

    _check_output_dirs(("--plot", args.plot), ("--json", args.json))
    result = diagnose.run(
        depth=args.depth,
        width=args.width,
        samples=args.samples,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        gain=args.gain,
        clip_norm=args.clip_norm,
        seed=args.seed,
    )
    print(diagnose.report(result))
    if args.plot and args.plot.lower() != "none":
        diagnose.plot(result, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"json: {args.json}")
    return 0


def _threading_layer():
    import numba

    @numba.njit(parallel=True)
    def touch(n):
        total = 0
        for i in numba.prange(n):
            total += i
        return total

    try:
        touch(2)
        return numba.threading_layer()
    except Exception as err:  # no threading layer available
        return f"unavailable ({err})"


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "labels", None) and not getattr(args, "data", None):
        parser.error("--labels (an IDX labels file) needs --data (the IDX images)")
    handlers = {
        "train": cmd_train,
        "predict": cmd_predict,
        "bench": cmd_bench,
        "info": cmd_info,
        "gradcheck": cmd_gradcheck,
        "diagnose": cmd_diagnose,
    }
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("fastbp: interrupted", file=sys.stderr)
        return 1
    except UsageError as err:
        print(f"fastbp {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, RuntimeError, EOFError) as err:
        print(f"fastbp {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
