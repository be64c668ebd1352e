"""Data: the embedded default data set, loaders for NPZ, CSV and MNIST IDX files, and preparation helpers.

Nothing here downloads anything. The default data set is scikit-learn's digits (1797 8x8 images, 10 classes),
which ships inside scikit-learn.

Start-up: ``import sklearn`` takes about 0.9 s on the reference machine, more than half of the 1.5 s budget of
``fastbp train`` from start to its first step (docs/benchmarks.md). So the digits are read from the file scikit-learn
ships, without importing scikit-learn, and the split and standardisation of :func:`prepare` are done here in a few
lines of NumPy (the same rules as scikit-learn's ``train_test_split`` sizes and ``StandardScaler``).
"""

import gzip
import importlib.util
import math
import os

import numpy as np

__all__ = ["load_csv", "load_digits", "load_file", "load_idx", "load_npz", "one_hot", "prepare"]


def load_digits():
    """scikit-learn's digits: X (1797, 64) float64 pixel values 0..16, y (1797,) int64 labels 0..9.

    Read from ``sklearn/datasets/data/digits.csv.gz`` without importing scikit-learn (see the module docstring);
    through ``sklearn.datasets.load_digits`` if that file is not where it is expected."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without running its __init__
    roots = spec.submodule_search_locations if spec is not None else None
    path = os.path.join(roots[0], "datasets", "data", "digits.csv.gz") if roots else ""
    if os.path.isfile(path):
        table = np.loadtxt(path, delimiter=",")
        return np.ascontiguousarray(table[:, :-1]), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as _load

    data = _load()
    return data.data.astype(np.float64), data.target.astype(np.int64)


def load_npz(path, x_key="X", y_key="y", require_y=True):
    """Arrays ``x_key`` and ``y_key`` of an ``.npz`` file (read with ``allow_pickle=False``); y is None when the
    file has none and ``require_y`` is False."""
    with np.load(os.fspath(path), allow_pickle=False) as data:
        missing = [k for k in (x_key, y_key) if k not in data.files and (require_y or k == x_key)]
        if missing:
            raise ValueError(f"{path} has no array {missing[0]!r}; it has {sorted(data.files)}")
        return data[x_key], (data[y_key] if y_key in data.files else None)


def load_csv(path, label_column=-1, delimiter=",", skip_header=None):
    """A numeric CSV file: features and the label column (default: the last).

    skip_header: number of header lines; None detects one non-numeric first line. Returns X (n, d) float64 and
    y (n,), int64 when every label is integral, else float64; with ``label_column=None`` every column is a
    feature and y is None.
    """
    path = os.fspath(path)
    if skip_header is None:
        with open(path, encoding="utf-8-sig") as f:  # utf-8-sig: a byte-order mark is not part of the header
            first = f.readline()
        try:
            [float(field) for field in first.strip().split(delimiter)]
            skip_header = 0
        except ValueError:
            skip_header = 1
    table = np.loadtxt(path, delimiter=delimiter, skiprows=skip_header, ndmin=2, dtype=np.float64, encoding="utf-8-sig")
    if label_column is None:
        return table, None
    if table.shape[1] < 2:
        raise ValueError(f"{path} needs at least one feature column and a label column, got {table.shape[1]}")
    y = table[:, label_column]
    X = np.delete(table, label_column % table.shape[1], axis=1)
    if np.array_equal(y, np.round(y)):
        y = y.astype(np.int64)
    return X, y


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path):
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile) as err:
        raise ValueError(f"{path} is truncated or not gzip data ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: its header is incomplete")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path} holds {len(raw) - header} data bytes, its header announces {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def load_idx(images_path, labels_path):
    """MNIST-style IDX files (optionally gzipped): images flattened to (n, rows*cols) float64, labels int64."""
    images = _read_idx(images_path)
    labels = _read_idx(labels_path)
    if labels.ndim != 1:
        raise ValueError(f"{labels_path} must hold one label per image (1-D), got shape {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_path} has {images.shape[0]} images but {labels_path} {labels.shape[0]} labels")
    return images.reshape(images.shape[0], -1).astype(np.float64), labels.astype(np.int64).reshape(-1)


def load_file(path, labels_path=None, require_y=True):
    """Load by extension: ``.npz`` (arrays X, y; y may be missing unless ``require_y``), ``.csv`` (label last),
    IDX (``labels_path`` needed)."""
    path = os.fspath(path)
    if path.lower().endswith(".npz"):
        return load_npz(path, require_y=require_y)
    if path.lower().endswith((".csv", ".txt")):
        return load_csv(path)
    if labels_path is not None:
        return load_idx(path, labels_path)
    raise ValueError(f"cannot tell the format of {path}: use .npz, .csv, or IDX images with a labels file")


def one_hot(y, n_classes=None):
    """Integer labels (n,) -> (n, n_classes) float64 one-hot rows."""
    y = np.asarray(y)
    if y.ndim != 1 or y.size == 0 or y.dtype.kind not in "biuf" or not np.array_equal(y, np.round(y)):
        raise ValueError("one_hot needs a non-empty 1-D array of integer class labels")
    y = y.astype(np.int64)
    n_classes = int(y.max()) + 1 if n_classes is None else n_classes
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must be in [0, {n_classes - 1}], got [{y.min()}, {y.max()}]")
    return np.eye(n_classes)[y]


class Standardizer:
    """Per-column standardisation with a training set's statistics, as scikit-learn's ``StandardScaler``:
    ``mean_`` and ``scale_`` (the standard deviation; 1 for a constant column), ``transform``,
    ``inverse_transform``. X: (n, d) arrays; the statistics are float64 (d,)."""

    def __init__(self, X):
        X = np.asarray(X, dtype=np.float64)
        self.mean_ = X.mean(axis=0)
        std = X.std(axis=0)
        self.scale_ = np.where(std < 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(self.mean_)), 1.0, std)

    def transform(self, X):
        return (np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_

    def inverse_transform(self, X):
        return np.asarray(X, dtype=np.float64) * self.scale_ + self.mean_


def split_indices(n, test_size=0.2, seed=0, labels=None):
    """Row indices (train, test), each sorted, with ``ceil(test_size * n)`` test rows (scikit-learn's count).

    With ``labels`` (n,), stratified: each class gives its share of the test rows (largest remainders round the
    shares), drawn with ``np.random.default_rng(seed)``; without, a random subset.
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    n_test = math.ceil(test_size * n)
    if not 1 <= n_test < n:
        raise ValueError(f"test_size={test_size} leaves no training or no test rows of {n}")
    rng = np.random.default_rng(seed)
    if labels is None:
        test = rng.permutation(n)[:n_test]
    else:
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        share = n_test * counts / n
        take = np.floor(share).astype(np.int64)
        take[np.argsort(take - share, kind="stable")[: n_test - take.sum()]] += 1
        test = np.concatenate([rng.permutation(np.flatnonzero(inverse == c))[:k] for c, k in enumerate(take)])
    test = np.sort(test)
    return np.setdiff1d(np.arange(n), test, assume_unique=True), test


def prepare(X, y, test_size=0.2, seed=0, standardize=True, return_scaler=False):
    """Split (stratified when y holds class labels, each with at least 2 rows) and standardise with the training
    set's statistics (see :func:`split_indices` and :class:`Standardizer`).

    X: (n, d); y: (n,) or (n, k). Returns X_train, X_test, y_train, y_test (float64 X), and the fitted
    :class:`Standardizer` (None when not standardising) when ``return_scaler``.
    """
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    stratify = None
    if y.ndim == 1 and y.dtype.kind in "iu" and np.unique(y, return_counts=True)[1].min() >= 2:
        stratify = y
    train, test = split_indices(X.shape[0], test_size, seed, stratify)
    X_train, X_test, y_train, y_test = X[train], X[test], y[train], y[test]
    scaler = None
    if standardize:
        scaler = Standardizer(X_train)
        X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    if return_scaler:
        return X_train, X_test, y_train, y_test, scaler
    return X_train, X_test, y_train, y_test
