"""The ``fastbp`` command line: ``train``, ``predict``, ``bench``, ``info``, ``gradcheck``, ``diagnose``.

Exit codes: 0 success, 1 failure, 2 usage error: an option's value argparse refuses, an option that does not apply
(``--labels`` with a CSV, ``--momentum`` with Adam, ...), or a combination of options that cannot work with the data
(``--residual`` when no hidden layer keeps its width). Every error is one line on stderr, ``fastbp COMMAND: error:
...``, naming the input and what to do, with the values it echoes shortened; warnings are one line each, ``fastbp
COMMAND: warning: ...``; no traceback.
"""

import argparse
import contextlib
import functools
import io
import math
import os
import re
import reprlib
import sys
import time
import warnings

import numpy as np

from . import _onednn  # loaded with the package already (network.py)

OPTIMIZER_CHOICES = ("sgd", "momentum", "nesterov", "adam", "adamw")
#: The longest error or warning line the command line prints (the middle of a longer one is cut).
MAX_LINE = 600
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def _short(value):
    """repr(value), cut in the middle when long: what an error message echoes of a value the user gave."""
    return _REPR.repr(value)


def _count(n, noun, plural=None):
    """``n`` and the noun, plural unless n is 1: "1 epoch", "2 epochs" (plural: the noun's plural when not noun + s)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _path(path, limit=120):
    """A file name as an error message echoes it: as given, its middle cut when long."""
    return _one_line(path, limit)


def _one_line(text, limit=MAX_LINE):
    """``text`` on one line (runs of white space, newlines included, made one space), cut in the middle to about
    ``limit`` characters."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    head, tail = max(limit - 60, 20), 40
    return f"{text[:head]} ...[{len(text) - head - tail} characters cut]... {text[-tail:]}"


def _layers(text):
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated hidden layer sizes like 128,64, got {_short(text)}"
        ) from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {_short(text)}")
    return sizes


class UsageError(ValueError):
    """An option that does not apply, or a combination of options that cannot work, found after argparse (exit code
    2, one line on stderr)."""

    exit_code = 2
    # Every rank of `fastbp train --distributed` finds it alike (same options, same data): rank 0 reports it once,
    # no rank is aborted (fastbp.distributed.run_cli).
    agreed_across_ranks = True


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``fastbp train: error: argument --epochs: ... (see fastbp train --help)``,
    the values it echoes shortened; exit code 2. An option's help gives its default where its text does not."""

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        text = action.help or ""
        given = not any(action.default is v for v in (None, False, argparse.SUPPRESS))  # 0 is a default to show
        if action.option_strings and given and "default" not in text:
            action.help = f"{text} (default {action.default})".strip()
        return action

    def error(self, message):
        message = re.sub(r"'([^']{60,})'", lambda m: _short(m.group(1)), message)
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _int_at_least(minimum):
    """argparse type: an integer >= minimum, else a usage error."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {_short(text)}") from None
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
            raise argparse.ArgumentTypeError(f"expected a number, got {_short(text)}") from None
        ok = np.isfinite(value) and (value > low if low_open else value >= low)
        ok = ok and (value < high if high_open else value <= high)
        if not ok:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            raise argparse.ArgumentTypeError(f"must be in {left}{low:g}, {high:g}{right}, got {_short(text)}")
        return value

    return parse


def _column(text):
    """argparse type of --label-column: a column name or index, kept as text (fastbp.data.resolve_column tries it as
    a name of the header first, then as an index)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a column name or index, got an empty value")
    return text


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)
_positive_float = _bounded_float(0.0, np.inf, low_open=True)
_fraction = _bounded_float(0.0, 1.0, low_open=True)


def build_parser():
    parser = _Parser(prog="fastbp", description="Fast CPU backpropagation for dense networks.")
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
        help="data file: .npz (arrays X, y), .csv (the label in the last column, or the one --label-column names; a "
        "header line detected), or IDX images (with --labels); default: the embedded digits",
    )
    train.add_argument("--labels", help="IDX labels file, with IDX images in --data")
    train.add_argument(
        "--label-column",
        type=_column,
        metavar="COL",
        help="the label column of a --data CSV: its name in the header line, or its index from 0 (negative from the "
        "end; default -1, the last). Labels may be any numbers or strings: each distinct value is a class",
    )
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
        "--momentum",
        type=_bounded_float(0.0, 1.0, high_open=False),
        help="for --optimizer momentum or nesterov, in [0, 1] (default 0.9)",
    )
    train.add_argument(
        "--weight-decay",
        type=_bounded_float(0.0, np.inf),
        help="the optimizer's weight decay on the weights: decoupled for adamw (default 0.01), weight_decay * W added "
        "to the gradient for the others (default 0)",
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
    train.add_argument(
        "--plot", help="write training curves to this file (PNG, PDF, SVG, ...: by its extension; needs fastbp[plot])"
    )
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
    predict.add_argument(
        "--data",
        help="data file as for train (default: the held-out rows of the embedded digits that fastbp train recorded, "
        "for a checkpoint trained on them)",
    )
    predict.add_argument("--labels", help="IDX labels file, with IDX images in --data")
    predict.add_argument(
        "--label-column",
        type=_column,
        metavar="COL",
        help="the label column of a --data CSV, name or index (default: the one fastbp train read)",
    )
    predict.add_argument(
        "--no-labels", action="store_true", help="the --data CSV has no label column: every column is a feature"
    )
    predict.add_argument(
        "--output", "-o", help="write predictions to this .npy file instead of printing them (.npy appended if missing)"
    )

    bench = sub.add_parser(
        "bench",
        help="time training steps against NumPy, PyTorch, JAX and scikit-learn",
        description="Time one training step (forward, backward, SGD update; relu, softmax + cross-entropy) of "
        "fastbp and every installed peer, interleaved in one run, on the shapes of docs/benchmarks.md; and whole fits "
        "against scikit-learn's MLPClassifier.",
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="S and M in float32 (and M in bfloat16 where available), fewer rounds (under 2 minutes); with "
        "--shapes, the shapes given with the fewer rounds",
    )
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
    bench.add_argument(
        "--plot", help="write a bar chart to this file (PNG, PDF, SVG, ...: by its extension; needs matplotlib)"
    )
    bench.add_argument(
        "--profile",
        action="store_true",
        help="instead of the comparison, show where fastbp's step goes: each GEMM alone, all of them in sequence, "
        "and the work around them, against the whole step (default shapes S,M,L,XL; with --quick S,M)",
    )

    sub.add_parser(
        "info",
        help="versions, BLAS library and threads, Numba threading layer, cache directory",
        description="Print what fastbp runs on.",
    )
    _add_gradcheck_parser(sub)
    _add_diagnose_parser(sub)
    parser.commands = sub.choices  # name -> the command's parser
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
    check.add_argument(
        "--activation", default="tanh", choices=("tanh", "sigmoid", "logistic", "relu", "leaky_relu", "identity")
    )
    check.add_argument(
        "--output",
        default="softmax",
        choices=("softmax", "sigmoid", "identity", "exp"),
        help="output activation with its canonical loss (exp: Poisson, on random counts; default softmax)",
    )
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
        help="largest accepted relative error against finite differences, where they resolve it (below their noise, "
        "a difference larger than the noise fails; default 1e-6)",
    )
    check.add_argument(
        "--threshold-float32",
        type=_positive_float,
        help="largest accepted relative error of a float32 network's gradient against float64 (--dtype float32; "
        "default 1e-4)",
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
        "--samples",
        type=_int_at_least(2),
        default=256,
        help="training rows for the norms at initialisation (default 256; at least 2: batch norm's batch variance)",
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
    diag.add_argument(
        "--plot",
        default="diagnose.png",
        help="figure to write, PNG, PDF, SVG, ... by its extension (default diagnose.png; 'none' to skip)",
    )
    diag.add_argument("--json", help="write the numbers to this JSON file")


def _wanted(path):
    """An output option's value asks for a file (not None, not 'none')."""
    return bool(path) and path.lower() != "none"


def _check_outputs(*options, inputs=(), names_only=False):
    """Raise OSError naming the option for an output path (pairs of option and path; None and 'none' skip) that
    cannot be written (a missing or unwritable directory, a directory in its place), a UsageError for an empty path,
    two outputs that name one file or an output that names an input file (``inputs``: pairs of option and path),
    and RuntimeError for a --plot without matplotlib: before the work, not after. ``names_only``: the checks of the
    names alone, not of the file system (every rank of an MPI run makes them; rank 0 alone writes)."""
    from . import _files

    seen = {}
    for option, path in [*inputs, *options]:
        if path == "" and (option, path) in options:
            raise UsageError(f"{option} is an empty file name: give a name, or none to write no file")
        if not _wanted(path):
            continue
        name = os.fsdecode(path)
        if option == "--plot" and not os.path.splitext(name)[1]:
            name += ".png"  # as _files.save_figure writes it
        key = os.path.realpath(name)
        if key in seen and (option, path) in options:
            other = seen[key]
            if other not in dict(inputs):
                what = f"names the same file as {other}"
            else:
                what = f"would overwrite {'the input ' if other.startswith('--') else ''}{other}"
            raise UsageError(f"{option} {_path(path)} {what}: give each output its own file")
        seen[key] = option
    for option, path in options:
        if _wanted(path):
            if not names_only:
                _files.check_writable(path, what=option)
            if option == "--plot":  # matplotlib (the plot extra) is there and writes this format: said now
                from .plot import pyplot

                pyplot()
                from matplotlib.backend_bases import FigureCanvasBase

                formats = set(FigureCanvasBase.get_supported_filetypes()) - {"pgf"}  # pgf needs a TeX install
                ext = os.path.splitext(os.fsdecode(path))[1][1:].lower() or "png"  # as _files.save_figure
                if ext not in formats:
                    raise UsageError(
                        f"--plot {path}: matplotlib cannot write .{ext} files; give a name ending in one of "
                        + ", ".join(f".{f}" for f in sorted(formats))
                    )


def _version():
    from . import __version__

    return __version__


def _data_kind(path, labels):
    """What ``--data`` names, from its extension: "digits" (no --data), "npz", "csv", "idx" (with --labels) or
    "unknown"."""
    if path is None:
        return "digits"
    lower = path.lower()
    if lower.endswith(".npz"):
        return "npz"
    if lower.endswith((".csv", ".txt")):
        return "csv"
    return "idx" if labels else "unknown"


_KIND_NAMES = {
    "digits": "the embedded digits (no --data)",
    "npz": "an .npz file (its labels are its array y)",
    "idx": "IDX images (their labels are the --labels file)",
    "unknown": "a file without a .csv, .txt or .npz name (read by its content: an .npz file or IDX images)",
}


def _check_usage(args):
    """UsageError for an option that does not apply given the others (argparse checks each value alone)."""
    command = args.command
    if command in ("train", "predict"):
        kind = _data_kind(args.data, args.labels)
        if args.labels and args.data is None:
            raise UsageError("--labels (an IDX labels file) needs --data (the IDX images)")
        if args.labels and kind in ("npz", "csv"):
            raise UsageError(
                f"--labels applies to IDX images, but --data {_path(args.data)} is a {kind.upper()} file, which holds "
                f"its labels itself{'; name its label column with --label-column' if kind == 'csv' else ''}"
            )
        if args.label_column is not None and kind != "csv":
            raise UsageError(f"--label-column applies to a CSV --data file, not to {_KIND_NAMES[kind]}")
        if command == "train" and kind == "unknown":
            from .data import _idx_ndim

            ndim = _idx_ndim(args.data)
            if ndim == 1:  # the labels given as the data
                raise UsageError(
                    f"--data {_path(args.data)} holds IDX labels (one dimension): give the images as --data and this "
                    "file as --labels"
                )
            if ndim is not None:  # IDX images whose --labels were forgotten
                raise UsageError(f"--data {_path(args.data)} holds IDX images: give their labels file with --labels")
    if command == "train":
        if args.momentum is not None and args.optimizer not in ("momentum", "nesterov"):
            raise UsageError(
                f"--momentum applies to --optimizer momentum and nesterov, not {args.optimizer}: drop it, or choose "
                "one of those"
            )
        if args.optimizer == "nesterov" and args.momentum == 0.0:
            raise UsageError(
                "--optimizer nesterov needs --momentum > 0 (with 0 it is plain sgd: choose --optimizer sgd)"
            )
        if args.matmul_precision == "bfloat16" and args.dtype != "float32":
            raise UsageError("--matmul-precision bfloat16 needs --dtype float32 (the float32 master weights)")
        if args.matmul_precision == "bfloat16":
            reason = _onednn.info()["reason"]
            if reason is not None:
                raise UsageError(f"--matmul-precision bfloat16 is not available here: {reason}; use float32")
        if args.distributed and args.norm == "batch":
            raise UsageError(
                "--norm batch does not apply to --distributed: batch statistics would have to be summed over the "
                "ranks inside the forward pass; use --norm layer (per-row statistics), or train without --distributed"
            )
    elif command == "predict":
        kind = _data_kind(args.data, args.labels)
        if args.no_labels and kind != "csv":
            hint = "; IDX images without --labels are predicted unlabelled" if kind in ("idx", "unknown") else ""
            raise UsageError(
                "--no-labels applies to a CSV --data file (every column then a feature), not to "
                f"{_KIND_NAMES[kind]}{hint}"
            )
        if args.no_labels and args.label_column is not None:
            raise UsageError("--no-labels says the CSV has no label column and --label-column names one: give one")
    elif command == "bench":
        _check_bench_usage(args)
    elif command == "gradcheck":
        if args.threshold_float32 is not None and args.dtype != "float32":
            raise UsageError("--threshold-float32 applies to --dtype float32 (the float32 gradient's own check)")
        if args.output == "softmax" and args.outputs < 2:
            raise UsageError("--output softmax needs --outputs 2 or more; for one output, use --output sigmoid")


def _check_bench_usage(args):
    from . import bench

    if args.shapes is not None:
        known = [*bench.SHAPES, *bench.DEEP]
        unknown = [s for s in args.shapes.split(",") if s not in known]
        if unknown:
            raise UsageError(f"--shapes: unknown shape {_short(unknown[0])}; expected some of {','.join(known)}")
    if args.dtypes is not None:
        if args.shapes is None:
            raise UsageError("--dtypes applies with --shapes (the default matrix has its own dtypes)")
        unknown = [d for d in args.dtypes.split(",") if d not in ("float32", "float64", "bfloat16")]
        if unknown:
            raise UsageError(f"--dtypes: unknown dtype {_short(unknown[0])}; expected some of float32,float64,bfloat16")
    if args.profile:
        if args.dtypes is not None and args.dtypes != "float32":
            raise UsageError("--profile times float32 steps only: drop --dtypes, or give --dtypes float32")
        for option, value in (("--json", args.json), ("--plot", args.plot), ("--no-sklearn", args.no_sklearn)):
            if value:
                raise UsageError(f"{option} does not apply to --profile, which prints its breakdown only")
        deep = [s for s in (args.shapes or "").split(",") if s in bench.DEEP]
        if deep:
            raise UsageError(
                f"--profile covers the shapes of 2 or 3 layers ({','.join(bench.SHAPES)}), not {deep[0]}; "
                f"time {deep[0]} with fastbp bench --shapes {deep[0]}"
            )


def _input_error(path, err, labels=None):
    """The error ``err`` of reading ``--data path`` (and ``--labels labels``), naming the option and the file, as
    the exception to raise: a FileNotFoundError that says to check the path, else a ValueError."""
    option, name = "--data", path
    if labels is not None and getattr(err, "filename", None) == labels:
        option, name = "--labels", labels
    if isinstance(err, FileNotFoundError):
        return FileNotFoundError(f"{option} {_path(name)}: no such file; check the path")
    if isinstance(err, OSError) and err.strerror:
        text = f"{name}: {err.strerror[:1].lower()}{err.strerror[1:]}"
    else:
        text = str(err)
    return ValueError(f"{option} {text if text.startswith(name) else f'{name}: {text}'}")


def _load_data(path, labels, require_y=True):
    """(X, y) of --data (the embedded digits without it), not a CSV file (``_load_csv``); errors name the option
    and the file."""
    from . import data

    if path is None:
        return data.load_digits()
    try:
        return data.load_file(path, labels, require_y=require_y)
    except (OSError, ValueError) as err:
        raise _input_error(path, err, labels) from None


def _load_csv(path, label_column, given=True, n_in=None):
    """(X, y, the header's names or None, the label's column or None, ``_features``'s position) of a CSV --data file
    whose labels are ``label_column`` (None: none; ``given``: by --label-column, else by the model, which takes
    ``n_in`` features); errors name the option and the file, a column the file does not have is a usage error."""
    from . import data

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            X, y, names, label = data.load_csv(path, label_column=label_column, return_names=True)
    except data._ColumnError as err:
        if given:
            raise UsageError(f"--label-column {_short(label_column)}: {err}") from None
        columns = data._csv_format(os.fsdecode(path), ",", None)[2]
        hint = "; if the file has no label column, add --no-labels" if columns == n_in else ""
        raise UsageError(f"--data {err} (the label column the model was trained with){hint}") from None
    except (OSError, ValueError) as err:
        if not isinstance(err, OSError):  # load_csv's advice in the command line's terms
            text = re.sub(r"give label_column=(-?\d+)", r"give --label-column \1", str(err))
            text = re.sub(r"give delimiter='[^']*'", "the command line reads comma-separated files", text)
            err = ValueError(text)
        raise _input_error(path, err) from None
    for warning in caught:  # load_csv's advice, without its Python argument, which the command line does not have
        text = str(warning.message).replace(", remove the line, or give skip_header=1", " or remove the line")
        warnings.warn(text.replace(", or give skip_header=1", ""), warning.category, stacklevel=2)
    return X, y, names, label, _csv_position(path, label)


def _features(X, where, position=None):
    """X as a 2-D float64 array of finite numbers; ValueError naming ``where`` otherwise, and the first bad value's
    place: ``position(row, column)``, or its index in X."""
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{where}: the features must be numbers, got an array of dtype {X.dtype}")
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{where}: the features must be a non-empty 2-D array (rows x columns), got shape {X.shape}")
    X = X.astype(np.float64)
    bad = np.argwhere(~np.isfinite(X))
    if bad.size:
        row, col = (int(i) for i in bad[0])
        place = f"X[{row}, {col}]" if position is None else position(row, col)
        raise ValueError(
            f"{where}: the features hold NaN or infinite values ({len(bad)} in all, the first at {place}); fill or "
            "drop them"
        )
    return X


def _csv_position(path, label):
    """``_features``'s ``position`` for the features of a CSV file whose label is column ``label`` (None: none): the
    line (from 1) and the index of the file's column (from 0, as --label-column counts)."""
    from . import data

    def position(row, column):
        column += label is not None and column >= label
        return f"line {data._csv_line(path, row)}, column index {column}"

    return position


def _label_source(args, names=None, index=None):
    """Where ``fastbp train``'s labels come from, for messages, and what to do when they are wrong."""
    if args.data is None:
        return "the digits' labels", ""
    kind = _data_kind(args.data, args.labels)
    if kind == "csv":
        name = f", {_short(names[index])}" if names else ""
        return (
            f"the label column of --data {_path(args.data)} (column {index}{name})",
            "; if the label is another column, name it with --label-column",
        )
    if kind == "npz":
        return f"array 'y' of --data {_path(args.data)}", "; y must hold one class label per row"
    return f"--labels {_path(args.labels)}", ""


def _training_data(args):
    """fastbp train's data: (X float64, y, where, hint, column, features): where and hint tell where the labels come
    from and what to do when they are wrong; errors name the option. column: for a CSV file, the label column as the
    checkpoint records it, (its name in the header or None, its place from the end or None when it was given by
    name), else None; features: the header's names of X's columns (None without a header)."""
    from . import data

    names = index = position = None
    if _data_kind(args.data, args.labels) == "csv":
        X, y, names, index, position = _load_csv(args.data, -1 if args.label_column is None else args.label_column)
    else:
        X, y = _load_data(args.data, args.labels)
    where, hint = _label_source(args, names, index)
    X = _features(X, "--data " + _path(args.data) if args.data else "the digits", position)
    if y is None or np.ndim(y) == 0 or len(y) != X.shape[0]:
        raise ValueError(f"{where}: expected one label per row of the {X.shape[0]} rows")
    column = features = None
    if index is not None:  # the place counted from the end (a file without labels then has too few columns)
        by_name = data.names_column(args.label_column, names)
        column = (names[index] if names is not None else None, None if by_name else index - X.shape[1] - 1)
        features = _feature_names(names, index)
    return X, y, where, hint, column, features


def _feature_names(names, label):
    """The header's names of the feature columns (all but column ``label``, None: no label column), or None without
    a header or when two columns share a name (then columns are matched by place)."""
    if names is None or len(set(names)) != len(names):
        return None
    return [name for i, name in enumerate(names) if i != label]


def _by_name(X, names, label, stored, position, where):
    """X's columns in the order of the names a checkpoint recorded (``stored``), when the file's header names the
    same features in another order; X as it is without a header, without recorded names, or when their numbers
    differ (the count check that follows says what is wrong); a usage error for the same number of other names.
    Returns (X, ``_features``'s position for the reordered columns)."""
    from .data import _shown

    given = _feature_names(names, label)
    if given is None or stored is None or len(given) != len(stored) or given == stored:
        return X, position
    if sorted(given) != sorted(stored):
        raise UsageError(
            f"{where}: its feature columns ({_shown(given)}) are not those the model was trained on "
            f"({_shown(stored)}); name them as in training, or remove the header line to read the columns by their "
            "place"
        )
    order = [given.index(name) for name in stored]
    return X[:, order], (None if position is None else lambda row, column: position(row, order[column]))


def _classes(y, where, hint):
    """(classes, y as indices into classes), as scikit-learn's classifiers make ``classes_``: every distinct value
    a class, in sorted order. ValueError for labels that are not classes; a warning for a label column that looks
    like a feature (many distinct values, some on fewer than 3 rows)."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{where}: expected one class label per row, got an array of shape {y.shape}{hint}")
    if y.dtype.kind == "S":
        y = y.astype(str)
    if y.dtype.kind not in "biufU":
        raise ValueError(f"{where}: expected class labels (numbers or strings), got an array of dtype {y.dtype}{hint}")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise ValueError(f"{where} holds missing or infinite labels (NaN or inf); fill or drop those rows")
        fractional = y[y != np.round(y)]
        if fractional.size:
            raise ValueError(
                f"{where} holds non-integer numbers (e.g. {fractional[0]:g}), a target for regression, not class "
                f"labels: fastbp train trains classifiers{hint}"
            )
    classes, indices = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise ValueError(
            f"{where} holds a single class ({_short(classes[0].item())}): a classifier needs 2 or more{hint}"
        )
    counts = np.bincount(indices.reshape(-1))
    rare = int((counts < 3).sum())
    if classes.size > 10 and (rare or classes.size > y.size // 2):
        warnings.warn(
            f"{where} has {classes.size} distinct values{f', {rare} of them on fewer than 3 rows' if rare else ''}: "
            f"it looks like a feature or a regression target, not a class label (fastbp train trains classifiers: "
            f"fit a regression from Python, with fastbp.sklearn.MLPRegressor){hint}",
            UserWarning,
            stacklevel=2,
        )
    return classes, indices.astype(np.int64).reshape(-1)


def _describe_classes(classes, limit=6):
    """' (1000, 2000)' when the classes are not simply 0 to k-1, else ''."""
    if classes.dtype.kind in "iu" and np.array_equal(classes, np.arange(classes.size)):
        return ""
    shown = ", ".join(_short(c) for c in classes[:limit].tolist())
    return f" ({shown}{', ...' if classes.size > limit else ''})"


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


def _batch_size_error(who, rows, size):
    """The usage error of a --batch-size that leaves batch norm a mini-batch of one row (``rows`` in batches of
    ``size``); ``who``: what has batch norm."""
    leave = "batches" if size == 1 else "a batch"
    return UsageError(
        f"{who} needs mini-batches of at least 2 rows (a batch variance), but {rows} training rows in batches of "
        f"{size} leave {leave} of 1 row: choose another --batch-size"
    )


def _make_optimizer(args):
    from . import optim

    schedule = {"constant": None, "cosine": optim.Cosine(), "invscaling": optim.InverseScaling()}[args.schedule]
    decay = {} if args.weight_decay is None else {"weight_decay": args.weight_decay}  # else each optimizer's default
    if args.optimizer in ("adam", "adamw"):
        cls = optim.Adam if args.optimizer == "adam" else optim.AdamW
        return cls(lr=args.lr or 1e-3, schedule=schedule, clip_norm=args.clip_norm, **decay)
    momentum = 0.0 if args.optimizer == "sgd" else (0.9 if args.momentum is None else args.momentum)
    return optim.SGD(
        lr=args.lr or 0.05,
        momentum=momentum,
        nesterov=args.optimizer == "nesterov",
        schedule=schedule,
        clip_norm=args.clip_norm,
        **decay,
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


def _train_outputs(args):
    """The output options of fastbp train, as ``_check_outputs`` takes them (None for an option args lacks)."""
    return tuple((f"--{name}", getattr(args, name, None)) for name in ("output", "plot", "json"))


def _train_inputs(args):
    return tuple((f"--{name}", getattr(args, name, None)) for name in ("data", "labels"))


def _train(args, trainer_cls=None):
    start = time.perf_counter()
    import fastbp

    from . import _files, data
    from .trainer import DivergenceError, _ValidationSplitError

    if trainer_cls is not None:  # fastbp train --distributed: checked on every rank, told by rank 0 (run_cli)
        _check_usage(args)
    if args.threads:
        fastbp.set_num_threads(args.threads)
    _check_outputs(*_train_outputs(args), inputs=_train_inputs(args))
    X, labels, where, hint, label_column, feature_names = _training_data(args)
    classes, y = _classes(labels, where, hint)
    n = X.shape[0]
    n_test = math.ceil(args.test_size * n)
    if not 1 <= n_test < n:
        raise UsageError(f"--test-size {args.test_size:g} of {n} rows leaves no training or no test rows")
    strata = data.stratification(y)
    if strata is not None and min(n_test, n - n_test) < len(classes):  # as scikit-learn's stratified split refuses
        raise UsageError(
            f"--test-size {args.test_size:g} of {n} rows tests on {n_test} and trains on {n - n_test}: each part needs "
            f"at least {len(classes)} rows, one per class (stratified)"
        )
    if args.norm == "batch" and n - n_test < 2:  # unstratified (a class of one row): any split scikit-learn allows
        raise UsageError(
            f"--test-size {args.test_size:g} of {n} rows trains on {n - n_test}: --norm batch needs at least 2 "
            "training rows (a batch variance)"
        )
    train_rows, test_rows = data.split_indices(n, args.test_size, args.seed, strata)
    scaler = data.Standardizer(X[train_rows])  # as fastbp.data.prepare: the training part's statistics
    X_train, X_test = scaler.transform(X[train_rows]), scaler.transform(X[test_rows])
    y_train, y_test = y[train_rows], y[test_rows]
    n_classes = classes.size
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
        f"data: {_count(n, 'sample')}, {_count(X.shape[1], 'feature')}, {_count(n_classes, 'class', 'classes')}"
        f"{_describe_classes(classes)} "
        f"({'digits' if args.data is None else args.data}); train {len(y_train)}"
        f"{f' (--val-split {args.val_split:g} holds out a validation part of it)' if args.val_split else ''}, test "
        f"{len(y_test)}"
    )
    print(
        f"model: {'-'.join(map(str, sizes))} {args.activation}{_describe_options(net)}, softmax, {args.dtype}"
        f"{', bfloat16 matmul precision' if net.matmul_precision == 'bfloat16' else ''}"
        f"{f', l2 {args.l2:g}' if args.l2 else ''}; "
        f"optimizer {trainer.optimizer!r}; {_count(args.epochs, 'epoch')} of batch {args.batch_size}"
    )
    fit_start = time.perf_counter()
    try:
        history = trainer.fit(
            X_train, y_train, epochs=args.epochs, validation_split=args.val_split if args.val_split else 0.0
        )
    except _ValidationSplitError as err:
        raise UsageError(str(err).replace("validation_split=", "--val-split ", 1)) from None
    except DivergenceError as err:  # the advice in the command line's options; the type kept for run_cli
        clip = trainer.optimizer.clip_norm
        clip = f"a smaller --clip-norm (now {clip:g})" if clip else "give --clip-norm"  # 0: none
        summary = err.summary.replace(" of this call", "")
        err.args = (f"{summary} Nothing was saved. Lower --lr (now {trainer.optimizer.lr:g}) or {clip}.",)
        raise
    except ValueError as err:  # batch norm: the trainer's rows (after --val-split) in batches of --batch-size
        if getattr(err, "batch_split", None) is None:
            raise
        raise _batch_size_error("--norm batch", *err.batch_split) from None
    fit_time = time.perf_counter() - fit_start
    result = trainer.evaluate(X_test, y_test)
    validation = ""
    if "val_loss" in history:  # --val-split: the last epoch's
        validation = f"validation loss {history['val_loss'][-1]:.4f}, accuracy {history['val_accuracy'][-1]:.4f}; "
    print(
        f"train loss {history['loss'][-1]:.4f}; {validation}test loss {result['loss']:.4f}; test accuracy "
        f"{result['accuracy']:.4f}"
    )
    steps = trainer.optimizer.t
    # the median epoch's: the first run's compilation, in the first epoch and before it, is in fit's time only
    per_step = 1e6 * float(np.median(history["epoch_time"])) * len(history["epoch_time"]) / steps
    print(
        f"time: fit {fit_time:.2f} s ({_count(steps, 'step')}, {per_step:.0f} us per step in the median epoch); total "
        f"{time.perf_counter() - start:.2f} s"
    )
    if _wanted(args.output):
        # what fastbp predict needs: the standardisation, the original labels, where the data came from and which
        # rows were held out (predict without --data scores those of the digits)
        extras = {"x_mean": scaler.mean_, "x_scale": scaler.scale_, "classes": classes, "test_rows": test_rows}
        extras["data_source"] = np.array("digits" if args.data is None else os.path.abspath(args.data))
        if label_column is not None:  # by name when the file has a header: another file may order its columns
            name, index = label_column
            extras["label_column"] = np.array(index if name is None else name)
            if name is not None and index is not None:  # its place, for a file without a header
                extras["label_index"] = np.array(index)
        if feature_names is not None:  # predict matches a file's columns to them by name
            extras["feature_names"] = np.array(feature_names, dtype=str)
        trainer.save(args.output, extras=extras)
        print(f"checkpoint: {args.output}")
    if _wanted(args.plot):
        from .plot import training_curves

        print(f"plot: {training_curves(history, args.plot)}")
    if _wanted(args.json):
        options = {"norm": list(net.norms[:-1]), "residual": list(net.residuals[:-1])}
        options["dropout"] = list(net.dropouts[:-1])
        report = {"history": history, "test": result, "layers": sizes, **options, "fit_time": fit_time}
        report["classes"] = classes.tolist()
        _files.save_json(report, args.json)
        print(f"json: {args.json}")
    return 0


def _load_model(path):
    import fastbp

    try:
        return fastbp.load(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no such file; give a checkpoint written by fastbp train (its --output)"
        ) from None
    except RuntimeError:
        reason = _onednn.info()["reason"]
        if reason is None:  # not the bfloat16 precision's absence
            raise
    # a network trained in bfloat16 matmul precision, which this machine lacks: its float32 products are as good
    net = fastbp.load(path, matmul_precision="float32")
    warnings.warn(
        f"{path} was trained in bfloat16 matmul precision, not available here ({reason}): predicting in float32",
        stacklevel=2,
    )
    return net


def _model_classes(net, model):
    """The original labels of a softmax network's output units (the checkpoint's ``classes``), or 0 to n_out - 1
    for a checkpoint without them; None for other outputs."""
    if net.output != "softmax":
        return None
    classes = net.extras.get("classes")
    if classes is None:
        return np.arange(net.n_out)
    if classes.ndim != 1 or classes.size != net.n_out:
        raise ValueError(
            f"{model}: its classes entry has shape {classes.shape}, but the network has {net.n_out} output units"
        )
    return classes


def _predict_rows(args, net):
    """fastbp predict's rows: (X, y or None, a description of the rows, the data's kind, ``_features``'s
    position)."""
    from . import data

    extras = net.extras
    if args.data is not None:
        kind = _data_kind(args.data, args.labels)
        column = args.label_column
        if column is None and kind == "csv" and "label_column" in extras:  # the column fastbp train read
            stored = extras["label_column"]
            column = str(stored) if stored.dtype.kind == "U" else int(stored)
            if isinstance(column, str) and "label_index" in extras and not _has_header(args.data):
                column = int(extras["label_index"])  # a file without a header: the column's place
        if kind == "csv":
            label = None if args.no_labels else -1 if column is None else column
            X, y, names, index, position = _load_csv(args.data, label, args.label_column is not None, net.n_in)
            stored = extras.get("feature_names")
            stored = None if stored is None else [str(name) for name in stored]
            X, position = _by_name(X, names, index, stored, position, f"--data {_path(args.data)}")
        else:
            (X, y), position = _load_data(args.data, args.labels, require_y=False), None
        rows = f"the {_count(len(X), 'row')} of {args.data}"
        source = extras.get("data_source")
        if source is not None and _same_file(str(source), args.data):
            rows += f", the file {args.model} was trained on (training rows included: not a test accuracy)"
        return X, y, rows, kind, position
    X, y = data.load_digits()
    source = extras.get("data_source")
    if source is not None and str(source) != "digits":
        raise UsageError(
            f"{args.model} was trained on {_path(_relative_path(str(source)))}, not on the embedded digits: give the "
            "rows to predict with --data"
        )
    if net.n_in != X.shape[1]:
        raise UsageError(
            f"{args.model} takes {net.n_in} features, the embedded digits (predicted without --data) have "
            f"{X.shape[1]}: give the rows to predict with --data"
        )
    rows = extras.get("test_rows")
    if rows is None:
        every = f"all {len(X)} rows of the embedded digits, training rows included"
        return X, y, f"{every} ({args.model} records no held-out split: not a test accuracy)", "digits", None
    if rows.ndim != 1 or rows.dtype.kind not in "iu" or (rows.size and not 0 <= rows.min() <= rows.max() < len(X)):
        raise ValueError(f"{args.model}: its test_rows entry is not a list of row indices of the embedded digits")
    held_out = f"the {_count(rows.size, 'held-out row')} of the embedded digits (the test split fastbp train recorded)"
    return X[rows], y[rows], held_out, "digits", None


def _has_header(path):
    """Whether a CSV file starts with a header line (True when it cannot be read: the read that follows says why)."""
    from . import data

    try:
        return data._csv_format(os.fsdecode(path), ",", None)[1] is not None
    except (OSError, ValueError):
        return True


def _relative_path(path):
    """A recorded absolute path as a message shows it: relative to the working directory when it lies under it."""
    relative = os.path.relpath(path) if os.path.isabs(path) else path
    return path if relative.startswith(os.pardir) else relative


def _same_file(a, b):
    """Whether paths a and b name one existing file."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def cmd_predict(args):
    from . import _files

    output = args.output if not _wanted(args.output) or args.output.endswith(".npy") else args.output + ".npy"
    if _wanted(args.output) and os.path.isdir(args.output):  # not DIR.npy beside it
        raise IsADirectoryError(f"cannot write --output {args.output}: it is a directory; give a file name")
    _check_outputs(
        ("--output", output), inputs=(("the model", args.model), ("--data", args.data), ("--labels", args.labels))
    )
    net = _load_model(args.model)
    classes = _model_classes(net, args.model)
    X, y, rows, kind, position = _predict_rows(args, net)
    where = f"--data {_path(args.data)}" if args.data else "the digits"
    X = _features(X, where, position)
    if X.shape[1] != net.n_in:
        hint = ""
        if kind == "csv" and not args.no_labels and X.shape[1] + 1 == net.n_in:
            hint = "; if the file has no label column, add --no-labels"
        elif kind == "csv" and args.no_labels and X.shape[1] == net.n_in + 1:
            hint = "; the file has one column more than the model takes: drop --no-labels to read its label column"
        columns = _count(X.shape[1], "feature column")
        besides = " besides its label column" if y is not None else ""
        raise ValueError(f"{where} has {columns}{besides}, but {args.model} takes {net.n_in}{hint}")
    if "x_mean" in net.extras:  # the standardisation fastbp train fitted on its training split
        mean, scale = net.extras["x_mean"], net.extras.get("x_scale")
        if scale is None or mean.shape != (net.n_in,) or scale.shape != (net.n_in,):
            raise ValueError(f"{args.model}: its x_mean and x_scale entries do not fit its {net.n_in} inputs")
        X = (X - mean) / scale
    outputs = net.predict(X)
    predictions = classes[outputs.argmax(axis=1)] if classes is not None else outputs
    if _wanted(args.output):
        path = args.output if args.output.endswith(".npy") else args.output + ".npy"  # as np.save names it
        with _files.atomic_write(path, "wb", what="--output") as f:
            np.save(f, predictions)
        print(f"predictions: {path} ({rows})")
    elif predictions.ndim == 1:
        sys.stdout.write("".join(f"{label}\n" for label in predictions.tolist()))
    else:
        np.savetxt(sys.stdout, predictions, fmt="%.6g")
    if classes is not None and y is not None and np.ndim(y) == 1 and len(y) == len(predictions):
        y = np.asarray(y)
        numeric = predictions.dtype.kind in "biuf" and y.dtype.kind in "biuf"
        same = predictions == y if numeric else predictions.astype(str) == y.astype(str)
        known = np.isin(y, classes) if numeric else np.isin(y.astype(str), classes.astype(str))
        if not known.all():  # e.g. another file's label column, or string labels against numbered classes
            from .data import _shown

            warnings.warn(
                f"{np.count_nonzero(~known)} of the {len(y)} rows have labels that {args.model} has no class for "
                f"({_shown(np.unique(y[~known]).tolist())}; its classes: {_shown(classes.tolist())}): they count as "
                "wrong in the accuracy",
                stacklevel=1,
            )
        print(f"accuracy {np.mean(same):.4f} on {rows}", file=sys.stderr)
    return 0


def cmd_bench(args):
    from . import bench

    _check_outputs(("--json", args.json), ("--plot", args.plot))  # before the run, not after it
    if args.shapes:  # names checked by _check_bench_usage
        # each once, in the order given (a name repeated would time its cell again, and the targets take the last)
        shapes = list(dict.fromkeys(args.shapes.split(",")))
        dtypes = list(dict.fromkeys((args.dtypes or "float32").split(",")))
        if "bfloat16" in dtypes:
            reason = _onednn.info()["reason"]
            if reason is not None:
                raise UsageError(f"--dtypes bfloat16 is not available here: {reason}; drop it from --dtypes")
        cells = [(s, d) for s in shapes for d in dtypes]
    elif args.profile:  # the shapes of 2 or 3 layers; --quick: those of its matrix
        shapes = {s for s, _ in bench.QUICK} if args.quick else bench.SHAPES
        cells = [(s, "float32") for s in bench.SHAPES if s in shapes]
    else:
        cells = bench.matrix(quick=args.quick)
        reason = _onednn.info()["reason"]
        if reason is not None:  # said, not silent: the bfloat16 targets then read "not measured"
            print(f"note: the bfloat16 cells are skipped: bfloat16 matmul precision is not available here ({reason})")
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
    if _wanted(args.json):
        bench.save_json(results, args.json)
        print(f"json: {args.json}")
    if _wanted(args.plot):
        print(f"plot: {bench.plot(results, args.plot)}")
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
    from fastbp import _config
    from fastbp.threads import usable_cores

    print(
        f"fastbp {fastbp.__version__}  python {sys.version.split()[0]}  numpy {np.__version__}  "
        f"numba {numba.__version__}  scipy {scipy.__version__}  scikit-learn {sklearn.__version__}"
    )
    usable = len(usable_cores())
    cores = f"{usable} of {os.cpu_count()}" if usable != os.cpu_count() else f"{usable}"
    print(
        f"cpu cores: {cores} usable by this process  numba threads: {numba.get_num_threads()} "
        f"(NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS})"
    )
    print(f"numba threading layer: {_threading_layer()}")
    from .kernels.gemm import BLAS_LIBRARY
    from .threads import _is_gemm_library

    for info in fastbp.blas_info():
        path = info.get("filepath") or ""
        ours = _is_gemm_library(path, BLAS_LIBRARY)
        print(
            f"blas: {info.get('internal_api')} {info.get('version')} ({info.get('architecture')}), "
            f"{info.get('num_threads')} threads, {info.get('threading_layer')}: {path}"
            + (" (fastbp's GEMMs)" if ours else "")
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

    threshold_float32 = 1e-4 if args.threshold_float32 is None else args.threshold_float32
    sizes = [args.inputs, *args.layers, args.outputs]
    net = fastbp.MLP(sizes, args.activation, args.output, l2=args.l2, dtype=args.dtype, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    X = rng.standard_normal((args.samples, args.inputs))
    if args.output == "softmax":
        Y = rng.integers(0, args.outputs, args.samples)
    elif args.output == "sigmoid":
        Y = rng.random((args.samples, args.outputs))
    elif args.output == "exp":
        Y = rng.poisson(1.0, (args.samples, args.outputs)).astype(np.float64)
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
        threshold_float32=threshold_float32,
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
            f"the float32 gradient's worst relative error {result.worst_float32:.3g} exceeds {threshold_float32:g}"
        )
    if problems:
        print(f"fastbp gradcheck: {'; '.join(problems)}", file=sys.stderr)
        return 1
    return 0


def cmd_diagnose(args):
    from . import diagnose

    _check_outputs(("--plot", args.plot), ("--json", args.json))
    try:
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
    except ValueError as err:  # the batch-norm remedy's training rows in batches of --batch-size
        if getattr(err, "batch_split", None) is None:
            raise
        raise _batch_size_error("the batch-norm network", *err.batch_split) from None
    print(diagnose.report(result))
    if _wanted(args.plot):
        print(f"plot: {diagnose.plot(result, args.plot)}")
    if _wanted(args.json):
        from . import _files

        _files.save_json(result, args.json)
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


def _show_warning(command, message, category, filename, lineno, file=None, line=None):
    """warnings.showwarning of the command line: one line, ``fastbp COMMAND: warning: ...``."""
    print(f"fastbp {command}: warning: {_one_line(message)}", file=sys.stderr)


def _error_text(err, command=None):
    """One line for an exception that ends ``fastbp command`` (exit code 1)."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        hints = {FileNotFoundError: "; check the path", IsADirectoryError: "; give a file"}
        hint = hints.get(type(err), "")
        return _one_line(f"{err.filename}: {err.strerror[:1].lower()}{err.strerror[1:]}{hint}")
    if isinstance(err, MemoryError):
        rows = "--samples" if command == "gradcheck" else "--batch-size"  # the option that sets the rows at once
        return _one_line(f"out of memory ({err or 'MemoryError'}); try smaller --layers or {rows}")
    if isinstance(err, (ValueError, TypeError, OSError, RuntimeError, EOFError)):
        return _one_line(str(err) or type(err).__name__)
    return _one_line(f"unexpected {type(err).__name__}: {err} (a bug of fastbp: please report it)")


def _launcher_rank():
    """This process's rank as the MPI launcher gives it in the environment (MPICH and Intel MPI, Open MPI, PMIx), or
    None outside a launcher: known before MPI starts, without starting it."""
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def _parse(parser, argv):
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # told by the command's parser (argparse's own check tells them as the top level's)
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


class _Output:
    """Standard output that, once its reader has left (``| head``), discards the rest instead of raising, so that the
    command goes on and writes its files (a checkpoint, a plot, a JSON report); ``main`` then exits 1 quietly."""

    def __init__(self, stream):
        self.stream = stream
        self.reader_left = False

    def _try(self, method, *args):
        if not self.reader_left:
            try:
                return getattr(self.stream, method)(*args)
            except BrokenPipeError:
                self.reader_left = True
                with contextlib.suppress(OSError, ValueError):  # no second error when Python flushes it at exit
                    os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        return len(args[0]) if args else None

    def write(self, text):
        return self._try("write", text)

    def flush(self):
        self._try("flush")

    def __getattr__(self, name):  # fileno, isatty, encoding ...: the stream's
        return getattr(self.stream, name)


def main(argv=None):
    """Run the command line on ``argv`` (default: sys.argv[1:]); returns the exit code: 0 success, 1 failure,
    2 usage error, each failure one line on stderr; 1 without a message when the reader of standard output left
    before the end (the command's files are still written)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    # every rank of an mpiexec run parses the same options: rank 0 alone tells a usage error (and --help)
    distributed = any(len(a) > 3 and "--distributed".startswith(a) for a in argv)  # argparse takes "--distrib"
    quiet = distributed and _launcher_rank() not in (None, 0)
    try:
        if quiet:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                args = _parse(parser, argv)
        else:
            args = _parse(parser, argv)
    except SystemExit as done:  # --help, --version, or a usage error argparse printed (one line: _Parser.error)
        return done.code if isinstance(done.code, int) else 0 if done.code is None else 1
    handlers = {
        "train": cmd_train,
        "predict": cmd_predict,
        "bench": cmd_bench,
        "info": cmd_info,
        "gradcheck": cmd_gradcheck,
        "diagnose": cmd_diagnose,
    }
    command = args.command
    output = sys.stdout = _Output(sys.stdout)
    with warnings.catch_warnings():
        warnings.showwarning = functools.partial(_show_warning, command)
        try:
            if not (command == "train" and args.distributed):  # under MPI: in the ranks' run, told once (run_cli)
                _check_usage(args)
            code = handlers[command](args)
            output.flush()
            return 1 if output.reader_left and code == 0 else code
        except KeyboardInterrupt:
            print(f"fastbp {command}: interrupted", file=sys.stderr)
            return 1
        except UsageError as err:
            print(f"fastbp {command}: error: {_one_line(err)} (see fastbp {command} --help)", file=sys.stderr)
            return 2
        except Exception as err:
            print(f"fastbp {command}: error: {_error_text(err, command)}", file=sys.stderr)
            return 1
        finally:
            sys.stdout = output.stream


if __name__ == "__main__":
    sys.exit(main())
