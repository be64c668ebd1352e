"""Data loaders on small files written by the tests, and the preparation helpers."""

import gzip
import struct
import warnings

import numpy as np
import pytest

from fastbp import data


def test_load_digits_ships_with_scikit_learn():
    from sklearn.datasets import load_digits

    X, y = data.load_digits()
    assert X.shape == (1797, 64) and y.shape == (1797,)
    assert X.dtype == np.float64 and y.dtype == np.int64
    expected = load_digits()  # read from scikit-learn's file directly: the same data as its own loader
    np.testing.assert_array_equal(X, expected.data)
    np.testing.assert_array_equal(y, expected.target)


def test_standardizer_is_scikit_learns_standard_scaler(rng):
    from sklearn.preprocessing import StandardScaler

    X = rng.standard_normal((50, 4)) * [1, 10, 0, 3] + [0, 5, 7, -2]  # one constant column
    ours, theirs = data.Standardizer(X), StandardScaler().fit(X)
    np.testing.assert_allclose(ours.mean_, theirs.mean_, rtol=1e-14)
    np.testing.assert_allclose(ours.scale_, theirs.scale_, rtol=1e-14)
    np.testing.assert_allclose(ours.transform(X), theirs.transform(X), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("n", [30, 31, 1797])
@pytest.mark.parametrize("test_size", [0.1, 0.25, 0.5])
def test_split_sizes_match_scikit_learn_and_stratify(n, test_size, rng):
    from sklearn.model_selection import train_test_split

    y = rng.integers(0, 3, n)
    y[:6] = [0, 0, 1, 1, 2, 2]
    train, test = data.split_indices(n, test_size, seed=3, labels=y)
    _, expected = train_test_split(np.arange(n), test_size=test_size, random_state=0, stratify=y)
    assert len(test) == len(expected) and len(train) == n - len(expected)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(n))  # a partition
    share = np.bincount(y[test], minlength=3) - test_size * np.bincount(y, minlength=3)
    assert np.all(np.abs(share) < 1)  # each class within one row of its exact share
    with pytest.raises(ValueError, match="test_size"):
        data.split_indices(n, 1.0)


def test_load_npz(tmp_path, rng):
    X, y = rng.standard_normal((7, 3)), rng.integers(0, 2, 7)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    X2, y2 = data.load_file(tmp_path / "d.npz")
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    with pytest.raises(ValueError, match="no array 'features'"):
        data.load_npz(tmp_path / "d.npz", x_key="features")


@pytest.mark.parametrize("header", [True, False])
def test_load_csv(tmp_path, header, rng):
    X = np.round(rng.standard_normal((6, 3)), 4)
    y = np.array([0, 1, 2, 1, 0, 2])
    path = tmp_path / "d.csv"
    with open(path, "w") as f:
        if header:
            f.write("a,b,c,label\n")
        for row, label in zip(X, y, strict=True):
            f.write(",".join(map(str, row)) + f",{label}\n")
    X2, y2 = data.load_file(str(path))
    np.testing.assert_allclose(X2, X)
    np.testing.assert_array_equal(y2, y)
    assert y2.dtype == np.int64
    X3, y3 = data.load_csv(path, label_column=0)
    np.testing.assert_allclose(y3, X[:, 0])  # a non-integral label column stays float
    assert y3.dtype == np.float64 and X3.shape == (6, 3)


def _write_idx(path, array, type_code, compress=False):
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    payload = (
        header + array.astype(array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype).tobytes()
    )
    (gzip.open if compress else open)(path, "wb").write(payload)
    return payload


@pytest.mark.parametrize("compress", [False, True])
def test_load_idx_mnist_format(tmp_path, compress, rng):
    images = rng.integers(0, 256, (5, 4, 3)).astype(np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    suffix = ".gz" if compress else ""
    _write_idx(tmp_path / f"img{suffix}", images, 0x08, compress)
    _write_idx(tmp_path / f"lab{suffix}", labels, 0x08, compress)
    X, y = data.load_file(tmp_path / f"img{suffix}", tmp_path / f"lab{suffix}")
    np.testing.assert_array_equal(X, images.reshape(5, 12))
    np.testing.assert_array_equal(y, labels)


def test_load_idx_float_and_errors(tmp_path):
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    payload = _write_idx(tmp_path / "f.idx", values, 0x0D)
    _write_idx(tmp_path / "l.idx", np.array([1, 0], dtype=np.uint8), 0x08)
    X, _ = data.load_idx(tmp_path / "f.idx", tmp_path / "l.idx")
    np.testing.assert_array_equal(X, values)
    (tmp_path / "short.idx").write_bytes(payload[:-1])
    with pytest.raises(ValueError, match="data bytes"):
        data.load_idx(tmp_path / "short.idx", tmp_path / "l.idx")
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        data.load_idx(tmp_path / "bad.idx", tmp_path / "l.idx")
    _write_idx(tmp_path / "l3.idx", np.array([1, 0, 1], dtype=np.uint8), 0x08)
    with pytest.raises(ValueError, match="2 images but"):
        data.load_idx(tmp_path / "f.idx", tmp_path / "l3.idx")
    with pytest.raises(ValueError, match="cannot tell the format"):
        data.load_file(tmp_path / "f.idx")
    X, y = data.load_file(tmp_path / "f.idx", require_y=False)  # images alone: rows to predict
    np.testing.assert_array_equal(X, values)
    assert y is None
    with pytest.raises(ValueError, match="cannot tell the format"):
        data.load_file(tmp_path / "bad.idx", require_y=False)
    with pytest.raises(ValueError, match=r"f\.idx must hold one label per image") as swapped:
        data.load_idx(tmp_path / "l.idx", tmp_path / "f.idx")
    assert swapped.value.filename == tmp_path / "f.idx"  # the labels file's fault (the command line's --labels)
    _write_idx(tmp_path / "lf.idx", np.array([1.0, 2.5], dtype=np.float32), 0x0D)  # not class labels
    with pytest.raises(
        ValueError, match=r"lf\.idx holds labels that are not integers below 2\*\*53 \(label 1 is 2\.5\)"
    ) as floats:
        data.load_idx(tmp_path / "f.idx", tmp_path / "lf.idx")
    assert floats.value.filename == tmp_path / "lf.idx"
    _write_idx(tmp_path / "li.idx", np.array([1.0, 2.0], dtype=np.float32), 0x0D)  # integers stored as floats
    assert data.load_idx(tmp_path / "f.idx", tmp_path / "li.idx")[1].tolist() == [1, 2]
    _write_idx(tmp_path / "lh.idx", np.array([0.0, 1e30]), 0x0E)  # an integer, but beyond int64
    with pytest.raises(
        ValueError, match=r"lh\.idx holds labels that are not integers below 2\*\*53 \(label 1 is 1e\+30"
    ):
        data.load_idx(tmp_path / "f.idx", tmp_path / "lh.idx")
    _write_idx(tmp_path / "empty.idx", np.zeros((0, 3, 4), np.uint8), 0x08)
    with pytest.raises(ValueError, match=r"empty\.idx holds no values: its header announces shape \(0, 3, 4\)"):
        data.load_idx(tmp_path / "empty.idx", tmp_path / "l.idx")
    (tmp_path / "scalar.idx").write_bytes(b"\x00\x00\x08\x00\x07")
    with pytest.raises(ValueError, match=r"scalar\.idx holds no values: its header announces shape \(\)"):
        data.load_idx(tmp_path / "scalar.idx", tmp_path / "l.idx")
    (tmp_path / "huge.idx").write_bytes(b"\x00\x00\x08\x03" + b"\x80\x00\x00\x00" * 3 + b"\x00" * 8)
    with pytest.raises(
        ValueError, match=r"huge\.idx holds 8 data bytes, its header announces 9903520314283042199192993792"
    ):
        data.load_idx(tmp_path / "huge.idx", tmp_path / "l.idx")


def test_standardizer_takes_huge_finite_columns_without_overflow(rng):
    X = rng.standard_normal((50, 3))
    X[:, 1] *= 1e200  # its squares overflow
    X[:, 2] = X[:, 2] * 1e306 + 1.5e307  # its sum overflows
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning, no inf or NaN
        Z = data.Standardizer(X).transform(X)
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(Z.std(axis=0), 1.0, rtol=1e-12)
    plain = data.Standardizer(X[:, :1])  # ordinary columns: exactly NumPy's mean and standard deviation
    assert plain.mean_[0] == X[:, 0].mean() and plain.scale_[0] == X[:, 0].std()


def test_prepare_splits_stratified_and_standardizes():
    X, y = data.load_digits()
    X_train, X_test, y_train, y_test, scaler = data.prepare(X, y, test_size=0.25, seed=1, return_scaler=True)
    assert len(y_test) == 450 and len(y_train) == 1347
    np.testing.assert_allclose(np.bincount(y_test) / 450, np.bincount(y) / 1797, atol=0.01)
    active = X_train.std(axis=0) > 0
    np.testing.assert_allclose(X_train.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(X_train.std(axis=0)[active], 1, rtol=1e-12)
    np.testing.assert_allclose(X_test, (scaler.inverse_transform(X_test) - scaler.mean_) / scaler.scale_)
    # string labels (as load_csv returns them) and booleans are class labels too: the same stratified split
    names = np.array("zero one two three four five six seven eight nine".split())
    y_test_names = data.prepare(X, names[y], test_size=0.25, seed=1)[3]
    share = np.bincount(y) * 450 / 1797  # each class's share of the 450 test rows (a random split: +-6 rows)
    assert np.all(np.abs([np.count_nonzero(y_test_names == name) for name in names] - share) < 1)
    binary = data.prepare(X[:40], np.arange(40) % 4 == 0, test_size=0.2, seed=1)[3]
    assert binary.sum() == 2  # 2 of the 10 True rows in the 8 test rows


def test_one_hot():
    np.testing.assert_array_equal(data.one_hot([2, 0], 3), [[0, 0, 1], [1, 0, 0]])


def test_csv_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf1,2,0\n3,4,1\n5,6,0\n7,8,1\n")
    X, y = data.load_csv(path)
    assert X.shape == (4, 2) and list(y) == [0, 1, 0, 1]
    X_all, none = data.load_csv(path, label_column=None)
    assert X_all.shape == (4, 3) and none is None


def test_one_hot_rejects_bad_labels():
    for bad in ([-1, 0, 1], [0.7, 1.2], []):
        with pytest.raises(ValueError):
            data.one_hot(bad)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        data.one_hot([0, 1, 5], n_classes=3)


def test_idx_labels_must_be_one_dimensional_and_truncated_gzip_is_an_error(tmp_path, rng):
    images = rng.integers(0, 256, (5, 2, 3)).astype(np.uint8)
    _write_idx(tmp_path / "img", images, 0x08)
    with pytest.raises(ValueError, match="one label per image"):
        data.load_idx(tmp_path / "img", tmp_path / "img")
    _write_idx(tmp_path / "lab", np.arange(5, dtype=np.uint8), 0x08)
    with pytest.raises(ValueError, match=r"lab holds 5 values in one dimension, an IDX labels file, not images"):
        data.load_idx(tmp_path / "lab", tmp_path / "lab")  # the labels as images: trained on them as one feature
    payload = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05" + bytes(5))
    (tmp_path / "lab.gz").write_bytes(payload[:-6])
    with pytest.raises(ValueError, match="truncated"):
        data.load_idx(tmp_path / "img", tmp_path / "lab.gz")


def test_load_csv_label_column_by_name_or_index_and_labels_of_any_kind(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("kind,a,b\ncat,1.5,2\ndog,3,4.5\n\ncat,5,6\n")  # a blank line is skipped
    X, y, names, index = data.load_csv(path, label_column="kind", return_names=True)
    assert names == ["kind", "a", "b"] and index == 0
    np.testing.assert_array_equal(X, [[1.5, 2], [3, 4.5], [5, 6]])
    assert y.tolist() == ["cat", "dog", "cat"] and y.dtype.kind == "U"
    X0, y0 = data.load_csv(path, label_column=0)
    np.testing.assert_array_equal(X0, X)
    assert y0.tolist() == y.tolist()
    for column, message in [("size", r"has no column 'size': its header names 'kind', 'a', 'b'"), (3, r"index 3")]:
        with pytest.raises(ValueError, match=message):
            data.load_csv(path, label_column=column)
    with pytest.raises(ValueError, match=r"line 2, column index 0: 'cat' is not a number.*give label_column=0\)"):
        data.load_csv(path)  # column b as the label leaves the strings among the features


def test_load_csv_detects_headers_against_string_labels_and_numpy_comment_headers(tmp_path):
    (tmp_path / "plain.csv").write_text("0.5,1.25,zero\n0.75,2.5,one\n0.1,0.2,two\n")
    X, y, names, _ = data.load_csv(tmp_path / "plain.csv", return_names=True)
    assert names is None and X.shape == (3, 2) and y.tolist() == ["zero", "one", "two"]
    np.savetxt(tmp_path / "saved.csv", np.array([[1.5, 2.0, 1.0], [3.0, 4.5, 0.0]]), delimiter=",", header="a,b,y")
    X, y, names, _ = data.load_csv(tmp_path / "saved.csv", label_column="y", return_names=True)
    assert names == ["a", "b", "y"] and y.tolist() == [1, 0] and y.dtype == np.int64


def test_load_csv_reads_numeric_header_names_quotes_and_hashes_as_pandas_does(tmp_path):
    # pandas' to_csv of an unnamed DataFrame: numeric column names, then the label's
    (tmp_path / "pandas.csv").write_text("0,1,label\n0.5,2,3\n1.5,4,5\n2.5,6,7\n")
    X, y, names, label = data.load_csv(tmp_path / "pandas.csv", return_names=True)
    assert names == ["0", "1", "label"] and label == 2 and X.shape == (3, 2) and y.tolist() == [3, 5, 7]
    # double-quoted fields lose their quotes; '#' inside a field is data, a line that starts with '#' a comment
    (tmp_path / "quoted.csv").write_text('a,b,kind\n# a comment\n1,"2","neg"\n3,4,"C#"\n5,6,"x,y"\n')
    X, y = data.load_csv(tmp_path / "quoted.csv")
    np.testing.assert_array_equal(X, [[1, 2], [3, 4], [5, 6]])
    assert y.tolist() == ["neg", "C#", "x,y"]  # a quoted comma is part of the field
    # no header: the first line's words sit above words (a string label column) and its numbers above numbers
    (tmp_path / "plain.csv").write_text("0.5,cat\n1.5,dog\n")
    assert data.load_csv(tmp_path / "plain.csv", return_names=True)[2] is None


@pytest.mark.parametrize(
    ("text", "warns"),
    [
        (",a,label\n0,1.5,3\n1,2.5,5\n2,3.5,7\n", True),  # df.to_csv(): the index, unnamed, first
        (",a,label\n2,1.5,3\n0,2.5,5\n7,3.5,7\n", True),  # of a shuffled or filtered frame
        ("a,b,label\n0,1.5,3\n1,2.5,5\n2,3.5,7\n", False),  # the same numbers in a named column
        (",a,label\n0.5,1.5,3\n1,2.5,5\n2,3.5,7\n", False),  # an unnamed column of other numbers
        (",a,label\n1,1.5,3\n1,2.5,5\n2,3.5,7\n", False),  # not distinct
    ],
)
def test_load_csv_warns_of_a_pandas_index_read_as_a_feature(tmp_path, text, warns):
    # a DataFrame written with its index (pandas' default) gave the row numbers to the network as a feature unsaid
    path = tmp_path / "d.csv"
    path.write_text(text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        X, _ = data.load_csv(path)
    assert X.shape == (3, 2)  # read as a feature either way, as np.loadtxt and pandas read it
    messages = [str(w.message) for w in caught if "pandas" in str(w.message)]
    assert len(messages) == warns and all(m.startswith(f"{path}: its first column has no name") for m in messages)
    assert all("index=False" in m for m in messages)  # the way out


@pytest.mark.parametrize(
    ("text", "warns"),
    [
        ("0,1,2\n3,4,0\n5,6,1\n", True),  # pd.DataFrame(ints).to_csv(index=False): its header of column numbers
        ("0,1,2\n0.5,4,0\n5,6,1\n", False),  # above a fraction: a header (no warning, no data row)
        ("1,2,3\n3,4,0\n5,6,1\n", False),  # other numbers: data
    ],
)
def test_load_csv_warns_of_column_numbers_read_as_a_data_row(tmp_path, text, warns):
    # such a header became a data row and its last number a label, unsaid
    path = tmp_path / "d.csv"
    path.write_text(text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data.load_csv(path)
    messages = [str(w.message) for w in caught if "is read as a data row" in str(w.message)]
    assert len(messages) == warns and all(m.startswith(f"{path}: its first line, 0,1,2,") for m in messages)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        X, _ = data.load_csv(path, skip_header=0)  # said how many header lines: no guess, no warning
    assert X.shape[0] == 3 and not [w for w in caught if "data row" in str(w.message)]


@pytest.mark.parametrize(
    ("text", "names", "rows"),
    [
        ("# exported by a tool\n1,2,0\n4,5,1\n7,8,0\n", None, 3),  # a comment, not a header of one name
        ("# exported by a tool\na,b,label\n1,2,0\n4,5,1\n", ["a", "b", "label"], 2),  # then the header
        ("# a,b,label\n1,2,0\n4,5,1\n", ["a", "b", "label"], 2),  # np.savetxt's header
        ("0,1,2\n0.5,1.5,0\n2.5,3.5,1\n", ["0", "1", "2"], 2),  # pandas' names of unnamed columns
        ("0,1,2\n3,4,0\n5,6,1\n", None, 3),  # the same above integers: a data row, as it may be
        # pandas' names of unnamed integer columns beside a string label column's name (df.to_csv(index=False))
        ("0,1,2,label\n3,4,5,cat\n6,7,8,dog\n", ["0", "1", "2", "label"], 2),
        ("0,1,cat\n3,4,dog\n", None, 2),  # two numbers only: a data row, as it may be
    ],
)
def test_load_csv_tells_comments_from_headers(tmp_path, text, names, rows):
    path = tmp_path / "d.csv"
    path.write_text(text)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "(?s).*is read as a data row")  # 0,1,2 above integers: its own test
        X, y, found, _ = data.load_csv(path, return_names=True)
    assert found == names and X.shape == (rows, text.splitlines()[-1].count(",")) and y.shape == (rows,)


@pytest.mark.parametrize(
    ("text", "skip", "names"),
    [
        ("# a comment\n1,2,0\n3,4,1\n", 1, None),  # skipped, and not a header: no names
        ("# a comment\nx,y,label\n1,2,0\n3,4,1\n", 2, ["x", "y", "label"]),  # the last line skipped names them
        ("# x,y,label\n1,2,0\n3,4,1\n", 1, ["x", "y", "label"]),
    ],
)
def test_load_csv_with_header_lines_given_names_the_columns_from_the_last_one(tmp_path, text, skip, names):
    path = tmp_path / "d.csv"
    path.write_text(text)
    X, y, found, _ = data.load_csv(path, skip_header=skip, return_names=True)
    assert found == names and X.shape[1] == 2 and y.tolist()[-1] == 1


def test_load_csv_skips_any_number_of_header_lines_and_checks_its_arguments(tmp_path):
    path = tmp_path / "preamble.csv"
    path.write_text("".join(f"preamble {i}\n" for i in range(30)) + "a,b,label\n" + "1,2,0\n3,4,1\n" * 20)
    X, y, names, _ = data.load_csv(path, skip_header=31, return_names=True)
    assert X.shape == (40, 2) and names == ["a", "b", "label"] and y.tolist()[:2] == [0, 1]
    for bad in (-1, 1.5, "1", True):
        with pytest.raises(ValueError, match=r"skip_header must be None or an integer >= 0"):
            data.load_csv(path, skip_header=bad)
    with pytest.raises(ValueError, match=r"has no column True"):  # not column 1
        data.load_csv(path, label_column=True, skip_header=31)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("café,b,label\n1,2,0\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.csv is not UTF-8 text \(byte 0xe9 at byte 3\): save it as UTF-8"):
        data.load_csv(latin)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "has no data rows"),
        ("\n \n", "has no data rows"),
        ("a,b,label\n", "a header line but no data rows"),
        ("a,b,label\n1,2,3,0\n", r"its header line names 3 columns \('a', 'b', 'label'\) but its data rows have 4"),
        ("a,b,c,label\n1,2,0\n", r"its header line names 4 columns .* but its data rows have 3"),
        ("1,2,0\n3,4\n", r"line 2 has 2 columns where the first data line has 3 \(every row must have as many columns"),
        ("1,2,cat\n3,4,\n", r"line 2 has an empty label$"),
        # line numbers as an editor shows them: the header, blank lines and comments count
        ("a,b,label\n1,2,0\n\n# note\n3,x,1\n", r"line 5, column index 1: 'x' is not a number"),
        ("a,b,label\n\n1,2,0\n3,4\n", r"line 4 has 2 columns where the first data line has 3"),
        (
            "a,b,label\n1,2,0\n3,4,5,6\n",
            r"line 3 has 4 columns where the first data line has 3",
        ),  # not its first 3 fields
        ("a,b,label\n1,2,\n\n3,4, \n", r"line 2 has an empty label \(2 empty labels in all\)$"),
        ("1\n2\n", r"needs at least one feature column and a label column, got 1 column \(separated by ','\)$"),
        ("a;b;label\n1;2;0\n3;4;1\n", r"got 1 column \(separated by ','\); its lines hold ';': give delimiter=';'$"),
    ],
)
def test_load_csv_errors_name_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy warning gets through: errors only
        with pytest.raises(ValueError, match=message) as info:
            data.load_csv(path)
    assert str(info.value).startswith(str(path))


def test_load_csv_refuses_a_label_name_that_the_header_gives_to_two_columns(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("a,label,b,label\n1,2,3,0\n4,5,6,1\n")
    with pytest.raises(ValueError, match=r"dup\.csv: the header gives the name 'label' to columns 1, 3: give the"):
        data.load_csv(path, label_column="label")
    _, y = data.load_csv(path, label_column=3)
    np.testing.assert_array_equal(y, [0, 1])


def test_load_npz_refuses_object_arrays_and_files_that_are_not_npz(tmp_path):
    obj = np.empty(2, dtype=object)
    np.savez(tmp_path / "obj.npz", X=obj, y=np.zeros(2))
    with pytest.raises(ValueError, match=r"entry 'X' is an object array, which only pickle could read"):
        data.load_npz(tmp_path / "obj.npz")
    np.save(tmp_path / "x.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"x\.npy is a NumPy \.npy file"):
        data.load_npz(tmp_path / "x.npy")
    with pytest.raises(ValueError, match=r"x\.npy is a single \.npy array"):
        data.load_file(tmp_path / "x.npy")


def test_a_label_column_named_in_a_file_without_a_header_asks_for_an_index(tmp_path):
    path = tmp_path / "bare.csv"
    path.write_text("1,2,0\n3,4,1\n")
    with pytest.raises(ValueError, match=r"has no column 'species': it has no header line; give an index from 0 to 2$"):
        data.load_csv(path, label_column="species")
