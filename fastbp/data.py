"""Data: the embedded default data set, loaders for NPZ, CSV and MNIST IDX files, and preparation helpers.

Nothing here downloads anything. The default data set is scikit-learn's digits (1797 8x8 images, 10 classes),
which ships inside scikit-learn.

Start-up: ``import sklearn`` takes about 0.9 s on the reference machine, more than half of the 1.5 s budget of
``fastbp train`` from start to its first step (docs/benchmarks.md). So the digits are read from the file scikit-learn
ships, without importing scikit-learn, and the split and standardisation of ``prepare`` are done here in a few
lines of NumPy (the same rules as scikit-learn's ``train_test_split`` sizes and ``StandardScaler``).
"""

import csv
import gzip
import importlib.util
import itertools
import math
import numbers
import operator
import os
import re
import warnings
from functools import partial

import numpy as np

from . import _files

__all__ = [
    "Standardizer",
    "load_csv",
    "load_digits",
    "load_file",
    "load_idx",
    "load_npz",
    "one_hot",
    "prepare",
    "split_indices",
]


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
    """Arrays ``x_key`` and ``y_key`` of an ``.npz`` file (read with ``allow_pickle=False``: an object array is
    refused, never unpickled), as stored (shapes and dtypes unconverted, one row of X per entry of y); y is None
    when the file has none and ``require_y`` is False."""
    arrays = _files.read_npz(path, f"a data file with arrays {x_key!r} and {y_key!r}")
    missing = [k for k in (x_key, y_key) if k not in arrays and (require_y or k == x_key)]
    if missing:
        raise ValueError(f"{path} has no array {missing[0]!r}; it has {sorted(arrays)}")
    X, y = arrays[x_key], arrays.get(y_key)
    check_rows(path, x_key, X, y_key, y)
    return X, y


def check_rows(path, x_key, X, y_key, y):
    """Raise ValueError unless the arrays (or memory maps) X and y of the file ``path`` have one row each: as many
    rows, neither a scalar. y None (a file without labels) passes."""
    if y is not None and (X.ndim == 0 or y.ndim == 0 or X.shape[0] != y.shape[0]):
        raise ValueError(f"{path}: {x_key} has shape {X.shape} and {y_key} {y.shape}: one row each")


class _Sniffer(csv.Sniffer):
    """csv.Sniffer's header test with the delimiter given, not guessed."""

    def __init__(self, delimiter):
        super().__init__()
        self._dialect = type("Dialect", (csv.excel,), {"delimiter": delimiter})

    def sniff(self, sample, delimiters=None):
        return self._dialect


def _is_number(field):
    try:
        float(field)
    except ValueError:
        return False
    return True


def _head(path, count):
    """The first lines of a text file that hold something, a byte-order mark dropped: the leading ``#`` lines (comments,
    or a header as ``np.savetxt`` writes it), then up to ``count`` lines that are not blank and not comments; two
    lists of pairs (line number from 0, text)."""
    comments, found = [], []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f):
            if not line.strip():
                continue
            if line.lstrip().startswith("#"):
                if not found:
                    comments.append((number, line))
                continue
            found.append((number, line))
            if len(found) == count:
                break
    return comments, found


def names_column(column, names):
    """Whether ``column`` is given by its name in the header ``names`` (None without a header), not by its index."""
    return names is not None and isinstance(column, str) and column.strip() in names


def resolve_column(column, names, n_columns, path):
    """The index in [0, n_columns) of ``column``: a header name (``names``, None without a header), or an integer
    (or a string of one) counted from 0, negative from the end. ValueError naming the choices otherwise."""
    if names_column(column, names):
        found = [i for i, name in enumerate(names) if name == column.strip()]
        if len(found) > 1:
            raise _ColumnError(
                f"{path}: the header gives the name {_short(column)} to columns {', '.join(map(str, found))}: give "
                "the label column by its index"
            )
        return found[0]
    try:
        if isinstance(column, bool):  # operator.index would take True as column 1
            raise TypeError(column)
        index = int(column) if isinstance(column, str) else operator.index(column)
    except (TypeError, ValueError):
        where = f"its header names {_shown(names)}" if names is not None else "it has no header line"
        which = "a column name or an index" if names is not None else "an index"
        raise _ColumnError(
            f"{path} has no column {_short(column)}: {where}; give {which} from 0 to {n_columns - 1}"
        ) from None
    if not -n_columns <= index < n_columns:
        raise _ColumnError(
            f"{path} has {n_columns} columns: column index {index} is not in [{-n_columns}, {n_columns})"
        )
    return index % n_columns


class _ColumnError(ValueError):
    """A label column that the file does not have (the command line names its --label-column)."""


def _shown(names, limit=6):
    names = [_short(n) for n in names]
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _clip(text, limit):
    """``text`` cut in the middle to at most about ``limit`` characters."""
    return text if len(text) <= limit else f"{text[: limit - 30]}...[{len(text)} characters]...{text[-10:]}"


def _short(value, limit=40):
    return _clip(repr(value), limit)


def load_csv(path, label_column=-1, delimiter=",", skip_header=None, return_names=False):
    """A CSV file of numeric features and a label column.

    label_column: an index (default -1, the last column; negative counts from the end), a column name when the file
    has a header line, or None (every column is a feature, y is None). delimiter: the field separator (one
    character, default ","). skip_header: number of header lines; None
    detects one: a first line with a word above a column of numbers (numeric names such as pandas writes count;
    ``0,1,...,k-1``, pandas' names of unnamed columns, above a number with a fraction or an exponent, or at least
    three of them beside a string label column's name), else judged by ``csv.Sniffer.has_header`` against the lines
    below it. Lines that start with ``#`` are comments, except a last
    leading one with as many fields as the data that is such a header (``np.savetxt`` writes its header so); a ``#``
    inside a field is data. Fields may be double-quoted. Returns X (n, d) float64 and y (n,): int64 when every label
    is an integer, float64 for other numbers, and strings (a NumPy unicode array) when a label is not a number; with
    ``return_names``, also the header's column names (None without a header) and the label column's index. Raises
    ValueError naming the file and the problem (no data rows, a non-numeric feature, a row longer or shorter than the
    first, a header of another width, an empty label, text that is not UTF-8). Warns when the first column is
    unnamed in the header and holds distinct row numbers: a pandas index (``df.to_csv()`` without ``index=False``),
    which is read as a feature; and when a detected first line ``0,1,...,k-1`` above integers is read as data (it may
    be pandas' header of unnamed columns).
    """
    path = os.fsdecode(path)
    if skip_header is not None and (
        isinstance(skip_header, bool) or not isinstance(skip_header, numbers.Integral) or skip_header < 0
    ):
        raise ValueError(f"skip_header must be None or an integer >= 0, got {skip_header!r}")
    try:
        return _load_csv(path, label_column, delimiter, skip_header, return_names)
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at byte {err.start}): save it as UTF-8"
        ) from None


def _load_csv(path, label_column, delimiter, skip_header, return_names):
    detected = skip_header is None
    skip_header, names, n_columns = _csv_format(path, delimiter, skip_header)
    label = None if label_column is None else resolve_column(label_column, names, n_columns, path)
    if label is not None and n_columns < 2:
        _, head = _head(path, 1)
        other = [sep for sep in (";", "\t", "|") if head and sep in head[0][1]]
        hint = f"; its lines hold {other[0]!r}: give delimiter={other[0]!r}" if other else ""
        raise ValueError(
            f"{path} needs at least one feature column and a label column, got {n_columns} column (separated by "
            f"{delimiter!r}){hint}"
        )
    options = {"delimiter": delimiter, "ndmin": 2, "comments": None, "quotechar": '"'}
    features = [c for c in range(n_columns) if c != label]
    lines = partial(_csv_lines, path, skip_header, delimiter)
    text = partial(_data_lines, path, skip_header)
    # every row as long as the first: np.loadtxt with usecols would ignore a longer row's extra fields
    for number, line in text():
        if line.count(delimiter) != n_columns - 1 and ('"' not in line or len(_fields(line, delimiter)) != n_columns):
            raise ValueError(f"{path}: {_csv_problem([(number, _fields(line, delimiter))], n_columns, [])}")
    X = _loadtxt(path, text, lines, n_columns, features, usecols=features, dtype=np.float64, **options)
    if detected and names is None:
        _, first = next(lines())
        if _column_numbers(first):
            warnings.warn(
                f"{path}: its first line, {_clip(','.join(first), 40)}, is read as a data row, as a line of integers "
                "above integers is; if it is pandas' header of unnamed columns (df.to_csv() of a DataFrame without "
                "column names), name the columns, remove the line, or give skip_header=1",
                stacklevel=3,
            )
    if names is not None and names[0] == "" and label != 0 and _is_row_index(X[:, 0]):
        warnings.warn(
            f"{path}: its first column has no name and holds distinct row numbers, as pandas writes a DataFrame's "
            "index (df.to_csv() does unless index=False); it is read as a feature. Save the file with index=False, "
            "or drop that column",
            stacklevel=3,
        )
    if label is not None:
        fields = _loadtxt(path, text, lines, n_columns, [], usecols=[label], dtype=str, **options)[:, 0]
        y = _labels(fields, path, lines)
    else:
        y = None
    if return_names:
        return X, y, names, label
    return X, y


def _is_row_index(column):
    """Whether a column of at least 2 values holds distinct integers >= 0, as a DataFrame's index (in any order)."""
    return (
        column.size >= 2
        and bool(np.all((column >= 0) & (column == np.round(column))))
        and (np.unique(column).size == column.size)
    )


def _csv_format(path, delimiter, skip_header):
    """(header lines to skip, the header's column names or None, columns) of a CSV file, as ``load_csv`` takes
    them (``skip_header`` None: detected)."""
    comments, head = _head(path, 21 if skip_header is None else int(skip_header) + 21)

    def fields(text):
        return next(csv.reader([text.strip().lstrip("#").strip()], delimiter=delimiter))

    header_given = skip_header is not None
    if skip_header is None:
        if not head:
            _no_rows(path, comments)
        header = None  # (line number, names)
        texts = [line for _, line in head]
        if _is_header(fields(texts[0]), texts[1:], fields, delimiter):
            header = (head[0][0], fields(texts[0]))
        elif comments and len(fields(comments[-1][1])) == len(fields(texts[0])):  # a header np.savetxt wrote
            candidate = fields(comments[-1][1])
            if _is_header(candidate, texts, fields, delimiter):
                header = (comments[-1][0], candidate)
        skip_header = 0 if header is None else header[0] + 1
        names = None if header is None else [name.strip() for name in header[1]]
    else:  # the names: the last line skipped, when it names as many columns as the data has
        before = [line for number, line in comments + head if number < skip_header]
        names = [name.strip() for name in fields(before[-1])] if before else None
    data_lines = [line for number, line in head if number >= skip_header]
    if not data_lines:
        _no_rows(path, comments + head)
    n_columns = len(fields(data_lines[0]))
    if names is not None and len(names) != n_columns and header_given:
        names = None  # a title or a comment, not a header
    elif names is not None and len(names) != n_columns:
        raise ValueError(
            f"{path}: its header line names {len(names)} columns ({_shown(names)}) but its data rows have {n_columns}"
        )
    return skip_header, names, n_columns


def _no_rows(path, lines):
    if not lines:
        raise ValueError(
            f"{path} has no data rows (it is empty or blank); expected rows of numbers separated by commas"
        )
    raise ValueError(f"{path} has a header line but no data rows")


def _is_header(first, texts, fields, delimiter):
    """Whether the line of fields ``first`` is a header above the lines ``texts``: ``_names_columns``, and when
    that cannot tell, ``csv.Sniffer.has_header``."""
    rows = [fields(text) for text in texts]
    header = _names_columns(first, rows)
    if header is None:
        sample = "\n".join([delimiter.join(first)] + [text.strip() for text in texts])
        header = _Sniffer(delimiter).has_header(sample)
    return header


def _column_numbers(fields):
    """Whether the fields of a line are ``0,1,...,k-1`` (k >= 2): pandas' names of unnamed columns."""
    return len(fields) >= 2 and [field.strip() for field in fields] == [str(j) for j in range(len(fields))]


def _names_columns(first, rows):
    """Whether the first line ``first`` (its fields) is a header, judged against the next lines ``rows``: True when
    a field that is not a number sits above a column of numbers (a feature's name, even among numeric names such as
    pandas writes, ``0,1,...,label``), when the names are pandas' for unnamed columns, ``0,1,...,k-1``, above a
    row with a number written with a fraction or an exponent, or when at least three of them are, beside a word
    (``0,1,2,label`` above a string label column); False when every field is a number otherwise, None when
    undecided (its words sit above words only: a string label column)."""
    words = [j for j, field in enumerate(first) if not _is_number(field)]
    if not words:
        return _column_numbers(first) and any(
            not re.fullmatch(r"\s*[+-]?\d+\s*", value) for row in rows for value in row
        )
    for j in words:
        column = [row[j] for row in rows if j < len(row)]
        if not column or all(_is_number(value) for value in column):
            return True
    numbered = [j for j in range(len(first)) if j not in words]
    if len(numbered) >= 3 and all(first[j].strip() == str(j) for j in numbered):
        return True  # pandas' names of unnamed columns, 0,1,...,k-1, beside a string label column's name
    return None


def _data_lines(path, skip_header):
    """The data rows of a CSV file: pairs (line number from 1, its text), after ``skip_header`` lines, with blank
    lines and lines that start with ``#`` (comments, as np.savetxt writes a header) left out; a ``#`` inside a field
    is data, as for Python's csv module and pandas."""
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if number > skip_header and line.strip() and not line.lstrip().startswith("#"):
                yield number, line


def _fields(line, delimiter):
    """The fields of a CSV line, double quotes removed as np.loadtxt's ``quotechar`` does."""
    return next(csv.reader([line], delimiter=delimiter))


def _csv_lines(path, skip_header, delimiter):
    """The data rows of a CSV file (``_data_lines``) as pairs (line number from 1, the list of its fields)."""
    for number, line in _data_lines(path, skip_header):
        yield number, _fields(line, delimiter)


def _csv_line(path, row, delimiter=","):
    """The line number (from 1, as an editor counts) of data row ``row`` (from 0) of a CSV file read by
    ``load_csv``, for messages."""
    skip_header = _csv_format(os.fsdecode(path), delimiter, None)[0]
    return next(itertools.islice(_csv_lines(path, skip_header, delimiter), row, None))[0]


def _loadtxt(path, text, lines, n_columns, numbers, **options):
    """np.loadtxt of the data rows ``text()`` (``_data_lines``) with its errors told as ValueErrors naming the
    file and the line (``lines()``: the rows' fields, ``n_columns`` of them, the columns ``numbers`` numbers); its
    warnings are not passed on, and no data rows is an error."""
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            table = np.loadtxt((line for _, line in text()), **options)
    except ValueError as err:
        raise ValueError(f"{path}: {_csv_problem(lines(), n_columns, numbers) or _clip(str(err), 300)}") from None
    if table.shape[0] == 0:
        raise ValueError(f"{path} has no data rows")
    return table


def _csv_problem(lines, n_columns, numbers):
    """What np.loadtxt could not read: the first data line that does not have ``n_columns`` fields or a number in
    each column of ``numbers``, told with its line number (from 1) and the column's index (from 0, as
    ``label_column``); None when every line reads."""
    for number, fields in lines:
        if len(fields) != n_columns:
            return (
                f"line {number} has {len(fields)} column{'s' if len(fields) != 1 else ''} where the first data line "
                f"has {n_columns} (every row must have as many columns as the first)"
            )
        for column in numbers:
            if not _is_number(fields[column]):
                return (
                    f"line {number}, column index {column}: {_short(fields[column].strip())} is not a number (every "
                    f"column but the label must be a number; if this column is the label, give label_column={column})"
                )
    return None


def _labels(fields, path, lines):
    """A label column read as strings: int64 when every label is an integer, float64 for other numbers, else the
    stripped strings. An empty label is an error (``lines()``: the data rows, to tell its line)."""
    fields = np.char.strip(fields)
    empty = np.flatnonzero(fields == "")
    if empty.size:
        number = next(itertools.islice(lines(), int(empty[0]), None))[0]
        more = f" ({empty.size} empty labels in all)" if empty.size > 1 else ""
        raise ValueError(f"{path}: line {number} has an empty label{more}")
    try:
        y = fields.astype(np.float64)
    except ValueError:
        return fields
    if np.isfinite(y).all() and np.array_equal(y, np.round(y)) and np.abs(y).max(initial=0) < 2**53:
        return y.astype(np.int64)
    return y


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _idx_open(path):
    """The file at ``path`` for reading bytes, through gzip when its name ends in .gz."""
    return (gzip.open if path.endswith(".gz") else open)(path, "rb")


def _idx_magic(raw):
    """Whether the bytes ``raw`` start as an IDX file does: two zero bytes, then a type code."""
    return len(raw) >= 3 and raw[0] == 0 and raw[1] == 0 and raw[2] in _IDX_TYPES


def _is_idx(path):
    """Whether the file starts as an IDX file does (optionally gzipped)."""
    return _idx_ndim(path) is not None


def _idx_ndim(path):
    """The number of dimensions an IDX file's header announces (1: labels), or None for another file."""
    try:
        with _idx_open(path) as f:
            head = f.read(4)
    except (OSError, EOFError):
        return None
    return head[3] if len(head) == 4 and _idx_magic(head) else None


def _read_idx(path):
    path = os.fsdecode(path)
    try:
        with _idx_open(path) as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile) as err:
        raise ValueError(f"{path} is truncated or not gzip data ({err})") from err
    if len(raw) < 4 or not _idx_magic(raw):
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: its header is incomplete")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if ndim == 0 or 0 in shape:
        raise ValueError(f"{path} holds no values: its header announces shape {shape}")
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize  # Python integers: a header's sizes may overflow int64
    if len(raw) - header != expected:
        raise ValueError(f"{path} holds {len(raw) - header} data bytes, its header announces {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def load_idx(images_path, labels_path):
    """MNIST-style IDX files (optionally gzipped): images flattened to (n, rows*cols) float64, labels int64."""
    images = _read_idx(images_path)
    labels = _read_idx(labels_path)
    if labels.ndim != 1:
        err = ValueError(f"{labels_path} must hold one label per image (1-D), got shape {labels.shape}")
        err.filename = labels_path  # the labels file's fault, for the messages that name the file's option
        raise err
    if images.ndim < 2:
        raise ValueError(
            f"{images_path} holds {images.shape[0]} values in one dimension, an IDX labels file, not images (2-D or "
            "more: one row per image)"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_path} has {images.shape[0]} images but {labels_path} {labels.shape[0]} labels")
    if labels.dtype.kind == "f":  # IDX allows float labels: class indices only, as for the other formats
        bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)) | (np.abs(labels) >= 2**53))
        if bad.size:
            err = ValueError(
                f"{labels_path} holds labels that are not integers below 2**53 (label {bad[0]} is "
                f"{float(labels[bad[0]])!r}): class labels are integers (a regression target is not supported)"
            )
            err.filename = labels_path
            raise err
    return images.reshape(images.shape[0], -1).astype(np.float64), labels.astype(np.int64).reshape(-1)


def load_file(path, labels_path=None, require_y=True, label_column=-1):
    """Load by extension: ``.npz`` (arrays X, y; y may be missing unless ``require_y``), ``.csv`` or ``.txt`` (the
    label in ``label_column``, see ``load_csv``), IDX images (with ``labels_path``, or alone, y None, unless
    ``require_y``). Returns (X, y): as each loader returns them (float64 (n, d) X from CSV and IDX, the stored
    arrays from ``.npz``), y None when there is none."""
    path = os.fsdecode(path)
    lower = path.lower()
    if lower.endswith(".npz"):
        return load_npz(path, require_y=require_y)
    if lower.endswith((".csv", ".txt")):
        return load_csv(path, label_column=label_column)
    if labels_path is not None:
        return load_idx(path, labels_path)
    if not require_y and _is_idx(path):  # IDX images alone: rows to predict
        images = _read_idx(path)
        return images.reshape(images.shape[0], -1).astype(np.float64), None
    if lower.endswith(".npy"):
        raise ValueError(
            f"{path} is a single .npy array: fastbp reads X and y from one .npz (np.savez(path, X=X, y=y)), a .csv "
            "or IDX images with a labels file"
        )
    raise ValueError(f"cannot tell the format of {path}: use .npz, .csv, or IDX images with a labels file")


def one_hot(y, n_classes=None):
    """Integer labels (n,) -> (n, n_classes) float64 one-hot rows; ``n_classes`` defaults to ``max(y) + 1``."""
    y = np.asarray(y)
    if y.ndim != 1 or y.size == 0 or y.dtype.kind not in "biuf" or not np.array_equal(y, np.round(y)):
        raise ValueError("one_hot needs a non-empty 1-D array of integer class labels")
    y = y.astype(np.int64)
    n_classes = int(y.max()) + 1 if n_classes is None else n_classes
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must be in [0, {n_classes - 1}], got [{y.min()}, {y.max()}]")
    return np.eye(n_classes)[y]


#: Columns whose largest magnitude exceeds this are standardised from ``X / max|X|`` (their squares would overflow).
_HUGE = 1e150


class Standardizer:
    """Per-column standardisation with a training set's statistics, as scikit-learn's ``StandardScaler``:
    ``mean_`` and ``scale_`` (the standard deviation; 1 for a constant column), ``transform``,
    ``inverse_transform``. X: (n, d) arrays; the statistics are float64 (d,)."""

    def __init__(self, X):
        X = np.asarray(X, dtype=np.float64)
        m = np.abs(X).max(axis=0, initial=0.0)
        if (m > _HUGE).any():  # huge finite values: the statistics of X / m, times m (sums or squares would overflow)
            m = np.where(m > _HUGE, m, 1.0)
            self.mean_, std = (X / m).mean(axis=0) * m, (X / m).std(axis=0) * m
        else:
            self.mean_, std = X.mean(axis=0), X.std(axis=0)
        self.scale_ = np.where(std < 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(self.mean_)), 1.0, std)

    def transform(self, X):
        """``(X - mean_) / scale_``: X (n, d) as float64 (n, d)."""
        with np.errstate(over="ignore"):  # a value beyond the range of the standardised data is inf, then refused
            return (np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_

    def inverse_transform(self, X):
        """``X * scale_ + mean_``: X (n, d) as float64 (n, d)."""
        return np.asarray(X, dtype=np.float64) * self.scale_ + self.mean_


def split_indices(n, test_size=0.2, seed=0, labels=None):
    """Row indices (train, test) of n rows, two sorted int64 arrays, with ``ceil(test_size * n)`` test rows
    (scikit-learn's count).

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


def stratification(y):
    """The labels ``prepare`` stratifies its split by: ``y`` when it holds class labels (1-D integers, strings,
    as ``load_csv`` returns them, or booleans), each class on at least 2 rows; else None (a random split)."""
    y = np.asarray(y)
    if y.ndim == 1 and y.size and y.dtype.kind in "iuUSb" and np.unique(y, return_counts=True)[1].min() >= 2:
        return y
    return None


def prepare(X, y, test_size=0.2, seed=0, standardize=True, return_scaler=False):
    """Split (stratified when y holds class labels, each with at least 2 rows) and standardise with the training
    set's statistics (see ``split_indices`` and ``Standardizer``).

    X: (n, d); y: (n,) or (n, k). Returns X_train, X_test, y_train, y_test (float64 X; y keeps its dtype), and the
    fitted ``Standardizer`` (None when not standardising) when ``return_scaler``.
    """
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
        raise ValueError(f"y must have one row per row of X ({X.shape[0]}), got shape {y.shape}")
    train, test = split_indices(X.shape[0], test_size, seed, stratification(y))
    X_train, X_test, y_train, y_test = X[train], X[test], y[train], y[test]
    scaler = None
    if standardize:
        scaler = Standardizer(X_train)
        X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    if return_scaler:
        return X_train, X_test, y_train, y_test, scaler
    return X_train, X_test, y_train, y_test
