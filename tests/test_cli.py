"""The fastbp command line, run as a user would (a subprocess)."""

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest


def run(*args, cwd=None, timeout=600, env=None):
    return subprocess.run(
        [sys.executable, "-m", "fastbp.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env
    )


def is_usage_error(proc):
    """Exit code 2 and one line on stderr that points to the command's --help."""
    lines = proc.stderr.splitlines()
    return proc.returncode == 2 and len(lines) == 1 and re.search(r"error: .* \(see fastbp( \w+)? --help\)$", lines[0])


def test_train_with_defaults_reaches_96_percent_and_writes_a_checkpoint(tmp_path):
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("fastbp ")
    proc = run("train", "--plot", "curves.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", proc.stdout).group(1))
    assert accuracy >= 0.96
    assert (tmp_path / "fastbp-model.npz").exists()
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # predict with the checkpoint and no --data: the held-out rows train recorded, with the same standardisation,
    # so the same accuracy as train's test accuracy
    proc = run("predict", "fastbp-model.npz", "--output", "pred.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    predictions = np.load(tmp_path / "pred.npy")
    assert predictions.shape == (360,)
    held_out = re.fullmatch(r"accuracy (\d\.\d+) on the 360 held-out rows of the embedded digits \(.*\)\n", proc.stderr)
    assert float(held_out.group(1)) == accuracy


def test_train_on_a_csv_file_with_options(tmp_path, rng):
    X = rng.standard_normal((300, 5))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + 2 * (X[:, 2] > 0)
    np.savetxt(tmp_path / "d.csv", np.column_stack([X, y]), delimiter=",", fmt="%.6f")
    proc = run(
        "train",
        "--data",
        "d.csv",
        "--layers",
        "16,8",
        "--activation",
        "tanh",
        "--optimizer",
        "nesterov",
        "--lr",
        "0.05",
        "--epochs",
        "30",
        "--batch-size",
        "16",
        "--dtype",
        "float64",
        "--threads",
        "1",
        "--schedule",
        "cosine",
        "--clip-norm",
        "5",
        "--output",
        "m.npz",
        "--json",
        "h.json",
        "--no-progress",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "5-16-8-4 tanh" in proc.stdout
    assert float(re.search(r"test accuracy (\d\.\d+)", proc.stdout).group(1)) >= 0.8
    proc = run("predict", "m.npz", "--data", "d.csv", cwd=tmp_path)
    assert proc.returncode == 0
    assert len(proc.stdout.split()) == 300


#: The end of predict's accuracy line on the file the model was trained on (a regular expression; {}: the model).
_TRAINED_ON = r", the file {} was trained on \(training rows included: not a test accuracy\)"


@pytest.mark.parametrize("command", [[], ["train"], ["predict"], ["info"]])
def test_help(command):
    proc = run(*command, "--help")
    assert proc.returncode == 0 and "usage: fastbp" in proc.stdout


def test_help_gives_each_option_its_default(capsys):
    from fastbp import cli

    parser = cli.build_parser()
    for command, sub in parser.commands.items():
        for action in sub._actions:  # every option with a default says it (its own words or "(default X)")
            if action.option_strings and not any(action.default is v for v in (None, False, argparse.SUPPRESS)):
                assert "default" in (action.help or ""), (command, action.option_strings)
    assert cli.main(["train", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--epochs EPOCHS (default 40)" in help_text and "--seed SEED (default 0)" in help_text


def test_info_reports_blas_and_threads():
    proc = run("info")
    assert proc.returncode == 0, proc.stderr
    for needle in ("fastbp", "numba", "blas: openblas", "threading layer", "numba cache"):
        assert needle in proc.stdout
    from fastbp.kernels.gemm import BLAS_LIBRARY

    ours = [line for line in proc.stdout.splitlines() if line.endswith("(fastbp's GEMMs)")]
    if BLAS_LIBRARY is not None:  # the library the GEMMs call is named once (an OpenBLAS of NumPy's or SciPy's wheel)
        assert len(ours) == 1 and os.path.basename(BLAS_LIBRARY) in ours[0], proc.stdout


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs CPU affinity, 2 cores"
)
def test_info_counts_the_cores_this_process_may_use():
    # bound to one core it said "cpu cores: 2" (os.cpu_count() ignores the affinity)
    first = min(os.sched_getaffinity(0))
    proc = subprocess.run(
        [sys.executable, "-m", "fastbp.cli", "info"],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=lambda: os.sched_setaffinity(0, {first}),
    )
    assert f"cpu cores: 1 of {os.cpu_count()} usable" in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    "args",
    [["train", "--layers", "12,x"], ["train", "--epochs", "0"], ["train", "--optimizer", "lbfgs"], ["fly"], []],
)
def test_usage_errors_exit_2(args):
    proc = run(*args)
    assert is_usage_error(proc), proc.stderr


@pytest.mark.parametrize("variable", ["PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"])
@pytest.mark.parametrize("args", [["--epochs", "0"], ["--fly"], ["--help"]])
def test_under_mpiexec_only_rank_0_tells_a_usage_error_or_the_help(monkeypatch, capsys, variable, args):
    from fastbp import cli

    for rank, told in ((1, False), (0, True)):
        monkeypatch.setenv(variable, str(rank))
        code = cli.main(["train", "--distributed", *args])
        out, err = capsys.readouterr()
        assert code == (0 if args == ["--help"] else 2)
        assert bool(out + err) == told, (rank, out, err)
    monkeypatch.setenv(variable, "1")
    assert cli.main(["train", "--distrib", "--epochs", "0"]) == 2 and capsys.readouterr() == ("", "")  # abbreviated
    monkeypatch.delenv(variable)
    assert cli.main(["train", "--epochs", "0"]) == 2 and "--epochs" in capsys.readouterr().err  # no launcher


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "d.npz", "-o", "d.npz"], "--output d.npz would overwrite the input --data"),
        (["train", "--data", "d.npz", "--json", "./d.npz"], "--json ./d.npz would overwrite the input --data"),
        (["train", "-o", "same.npz", "--json", "same.npz"], "--json same.npz names the same file as --output"),
        (["train", "--json", "c.png", "--plot", "c.png"], "--json c.png names the same file as --plot"),
        (["train", "-o", "run.png", "--plot", "run"], "--plot run names the same file as --output"),  # adds .png
        (["train", "-o", ""], "--output is an empty file name: give a name, or none to write no file"),
        (["predict", "m.npy", "-o", "m"], "--output m.npy would overwrite the model"),  # np.save adds .npy
    ],
)
def test_an_output_that_would_overwrite_an_input_or_another_output_is_a_usage_error(
    args, message, tmp_path, monkeypatch, capsys
):
    from fastbp import cli

    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "d.npz", X=np.zeros((4, 64)), y=np.arange(4))
    (tmp_path / "m.npy").write_bytes(b"model")
    (tmp_path / "m.npz").write_bytes(b"model")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written, nothing trained


def test_failures_exit_1_with_a_message(tmp_path):
    proc = run("train", "--data", str(tmp_path / "missing.npz"))
    assert proc.returncode == 1
    assert "fastbp train: error:" in proc.stderr and "missing.npz" in proc.stderr
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    proc = run("predict", str(tmp_path / "bad.npz"))
    assert proc.returncode == 1 and "expected a fastbp checkpoint" in proc.stderr
    proc = run("train", "--lr", "1e6", "--optimizer", "sgd", "--epochs", "3", "--output", "none")
    assert proc.returncode == 1 and "diverged" in proc.stderr
    assert "Lower --lr (now 1e+06) or give --clip-norm." in proc.stderr  # the options, not Python's parameters
    proc = run("train", "--lr", "1e6", "--clip-norm", "5", "--optimizer", "sgd", "--epochs", "3", "-o", "none")
    assert proc.returncode == 1 and "or a smaller --clip-norm (now 5)." in proc.stderr, proc.stderr


@pytest.mark.parametrize("command", ["train", "diagnose"])
def test_a_reader_that_leaves_early_still_gets_the_files_written(tmp_path, command):
    """``fastbp train ... | head -1``: once the reader of standard output has left, the command goes on and writes
    its files, then exits 1 without a message (it trained, then lost the checkpoint, silently). Unbuffered, so that the
    first line already meets the closed pipe."""
    args = ["--epochs", "1", "--json", "out.json"]
    args += ["--output", "model.npz"] if command == "train" else ["--depth", "2", "--samples", "200", "--plot", "none"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastbp.cli", command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=env,
        text=True,
    )
    proc.stdout.close()  # the reader leaves before the first line
    stderr = proc.communicate(timeout=600)[1]
    assert proc.returncode == 1 and stderr == "", stderr
    assert json.loads((tmp_path / "out.json").read_text())
    if command == "train":
        assert (tmp_path / "model.npz").stat().st_size > 0


def test_plot_without_matplotlib_is_a_clear_failure(monkeypatch, capsys, tmp_path):
    # A user without the plot extra gets exit code 1 and the package to install, not a traceback, before training.
    import builtins

    from fastbp import cli

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--epochs", "1", "--no-progress", "--output", "m.npz", "--plot", "c.png"]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "fastbp train: error: plots need matplotlib: pip install 'fastbp[plot]' (or pip install matplotlib)"
    ]
    assert out == "" and not list(tmp_path.iterdir())  # nothing trained, nothing written


@pytest.mark.parametrize("ext", ["txt", "pgf"])  # pgf: matplotlib lists it, but it needs a TeX install
@pytest.mark.parametrize("command", [["train", "--epochs", "1", "--no-progress"], ["diagnose", "--epochs", "1"]])
def test_a_plot_format_matplotlib_cannot_write_is_refused_before_the_work(command, ext, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    from fastbp import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main([*command, "--plot", f"curves.{ext}", "--json", "r.json"]) == 2
    out, err = capsys.readouterr()
    assert f"--plot curves.{ext}: matplotlib cannot write .{ext} files; give a name ending in one of" in err
    assert ".png" in err and out == "" and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--val-split", "1.5"],
        ["train", "--momentum", "1.5"],
        ["train", "--optimizer", "nesterov", "--momentum", "0"],
        ["bench", "--profile", "--shapes", "S", "--dtypes", "bfloat16"],
        ["train", "--l2", "-1"],
        ["train", "--l2", "nan"],
        ["train", "--lr", "inf"],
        ["train", "--seed", "-1"],
        ["train", "--labels", "lab.idx"],
    ],
)
def test_invalid_option_values_are_usage_errors(args):
    proc = run(*args)
    assert is_usage_error(proc), proc.stderr


def test_predict_on_unlabelled_data_and_a_missing_output_directory(tmp_path, rng):
    X = rng.standard_normal((40, 3))
    y = (X[:, 0] > 0).astype(int)
    np.savetxt(tmp_path / "train.csv", np.column_stack([X, y]), delimiter=",")
    np.savetxt(tmp_path / "unlabelled.csv", X, delimiter=",")
    np.savez(tmp_path / "unlabelled.npz", X=X)
    assert (
        run("train", "--data", "train.csv", "--epochs", "2", "--no-progress", "-o", "m.npz", cwd=tmp_path).returncode
        == 0
    )
    proc = run("predict", "m.npz", "--data", "unlabelled.csv", "--no-labels", cwd=tmp_path)
    assert proc.returncode == 0 and len(proc.stdout.split()) == 40
    proc = run("predict", "m.npz", "--data", str(tmp_path / "train.csv"), cwd=tmp_path)  # the file it trained on
    assert proc.returncode == 0 and re.fullmatch(
        r"accuracy \d\.\d+ on the 40 rows of .*train\.csv, the file m\.npz was trained on \(training rows included: "
        r"not a test accuracy\)\n",
        proc.stderr,
    )
    proc = run("predict", "m.npz", "--data", "unlabelled.npz", cwd=tmp_path)
    assert proc.returncode == 0 and len(proc.stdout.split()) == 40
    proc = run(
        "predict", "m.npz", "--data", "unlabelled.csv", cwd=tmp_path
    )  # last feature taken as labels: too few columns
    assert proc.returncode == 1 and "--no-labels" in proc.stderr
    proc = run("train", "--epochs", "1", "-o", "missing/m.npz", cwd=tmp_path)
    assert proc.returncode == 1 and re.search(
        r"--output missing/m\.npz: directory .*missing does not exist", proc.stderr
    )


@pytest.mark.parametrize("coretype", ["Haswell", None])
def test_bench_prints_the_table_the_targets_and_the_blas_kernel_note(tmp_path, coretype):
    # One short S cell (no timing is checked): the table, every target with a verdict, the JSON, and a note when
    # OPENBLAS_CORETYPE overrides the CPU's own OpenBLAS kernels.
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    args = ("bench", "--shapes", "S", "--no-sklearn", "--rounds", "1", "--min-time", "0.01", "--json", "out.json")
    proc = run(*args, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\| S \| float32 \| [0-9.]+ ", proc.stdout, re.M)
    verdicts = re.findall(
        r"^\| (S: >= 8x torch|M: >= 1\.05x the fastest peer) \| .* \| (yes|NO|not measured) \|$", proc.stdout, re.M
    )
    assert dict(verdicts)["M: >= 1.05x the fastest peer"] == "not measured"  # no M cell in this run
    assert "S: >= 8x torch" in dict(verdicts)
    assert (f"note: OPENBLAS_CORETYPE={coretype} is set" in proc.stdout) == (coretype is not None)
    cells = json.loads((tmp_path / "out.json").read_text())["cells"]
    assert [(c["shape"], c["dtype"]) for c in cells] == [("S", "float32")]


def test_bench_profile_breaks_the_step_into_every_gemm_and_the_work_around_them(tmp_path):
    # One short S profile (no timing is checked): the step, all its GEMMs (forward, weight gradients, the delta of
    # the hidden layer), in sequence and alone, and each other kernel, every figure a positive time.
    proc = run("bench", "--profile", "--shapes", "S", "--rounds", "1", "--min-time", "0.01", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^S 64-128-10 batch 32 float32: whole step [0-9.]+ us$", proc.stdout, re.M)
    rows = dict(re.findall(r"^\| ([^|]+?) \| (-?[0-9.]+) \|", proc.stdout, re.M))
    gemms = [
        "forward 0: (32 x 64) @ (64 x 128)",
        "dW 0: (64 x 32) @ (32 x 128)",
        "forward 1: (32 x 128) @ (128 x 10)",
        "dW 1: (128 x 32) @ (32 x 10)",
        "delta 0: (32 x 10) @ (10 x 128)",
    ]
    others = ["hidden bias + ReLU", "output softmax, loss, delta, bias grad", "hidden ReLU' + bias grad", "SGD update"]
    for name in ["GEMMs in sequence on distinct buffers", "GEMMs each alone, summed", *others, *gemms]:
        assert float(rows[name]) > 0, name
    assert float(rows["GEMMs each alone, summed"]) == pytest.approx(sum(float(rows[g]) for g in gemms), rel=0.05)


@pytest.mark.parametrize(("quick", "shapes"), [([], ["S", "M", "L", "XL"]), (["--quick"], ["S", "M"])])
def test_bench_profile_covers_the_shapes_of_quick_or_of_the_full_run(monkeypatch, quick, shapes):
    from fastbp import cli

    profiled = []
    monkeypatch.setattr(cli, "_bench_profile", lambda cells, rounds, min_time: profiled.extend(cells) or 0)
    assert cli.main(["bench", "--profile", *quick]) == 0
    assert profiled == [(s, "float32") for s in shapes]


def test_bench_times_each_shape_and_dtype_once(monkeypatch, capsys):
    # a name given twice timed its cells twice, and the targets took the last of them
    from fastbp import bench, cli

    ran = []
    monkeypatch.setattr(bench, "run", lambda cells, **kwargs: ran.extend(cells) or [])
    cli.main(["bench", "--shapes", "S,M,S", "--dtypes", "float32,float64,float32", "--no-sklearn"])
    assert ran == [("S", "float32"), ("S", "float64"), ("M", "float32"), ("M", "float64")]


def test_train_a_deep_residual_batch_norm_network_with_dropout(tmp_path):
    # 64-32-32-32-10: hidden layer 1 changes the width, so --residual puts a connection on hidden layers 2 and 3
    # (seeds 0 to 2: test accuracy 0.96 to 0.975, 0.988 on the whole digits set)
    args = ["--layers", "32,32,32", "--norm", "batch", "--residual", "--dropout", "0.1"]
    args += ["--epochs", "8", "--lr", "3e-3"]
    proc = run("train", *args, "--no-progress", "-o", "deep.npz", "--json", "h.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "64-32-32-32-10 relu, batch norm, residual on hidden layers 2,3, dropout 0.1, softmax" in proc.stdout
    assert float(re.search(r"test accuracy (\d\.\d+)", proc.stdout).group(1)) >= 0.93
    report = json.loads((tmp_path / "h.json").read_text())
    assert (report["norm"], report["residual"], report["dropout"]) == (
        ["batch"] * 3,
        [False, True, True],
        [0.1] * 3,
    )

    import fastbp

    net = fastbp.load(tmp_path / "deep.npz")
    assert net.norms == ("batch", "batch", "batch", None) and net.residuals == (False, True, True, False)
    assert net.dropouts == (0.1, 0.1, 0.1, 0.0)
    assert all(not np.array_equal(m, np.zeros(32)) for m in net.running_means)  # trained running statistics
    # fastbp predict: evaluation mode (the running statistics), the training standardisation, the held-out rows
    proc = run("predict", "deep.npz", "--output", "pred.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert float(re.search(r"accuracy (\d\.\d+) on the 360 held-out rows", proc.stderr).group(1)) >= 0.93
    X, _ = fastbp.data.load_digits()
    X = X[net.extras["test_rows"]]
    expected = net.predict((X - net.extras["x_mean"]) / net.extras["x_scale"]).argmax(axis=1)
    np.testing.assert_array_equal(np.load(tmp_path / "pred.npy"), expected)


def test_residual_goes_on_the_hidden_layers_that_keep_their_width():
    from fastbp.cli import UsageError, _residuals

    assert _residuals([64, 128, 128, 128, 10]) == [False, True, True]
    assert _residuals([64, 64, 10]) == [True]  # the first hidden layer too, when it keeps the input's width
    with pytest.raises(UsageError, match=r"64-128-10 changes it: layer 1 maps 64 to 128 units; "):
        _residuals([64, 128, 10])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--residual"], r"layer 1 maps 64 to 128 units; repeat a width, e\.g\. --layers 128,128 \(see fastbp train"),
        (["--residual", "--layers", "128,64"], r"layer 1 maps 64 to 128 units, layer 2 maps 128 to 64 units;"),
    ],
)
def test_residual_without_a_layer_that_keeps_its_width_is_a_one_line_usage_error(tmp_path, args, message):
    proc = run("train", *args, "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastbp train: error: --residual needs a hidden layer that keeps")
    assert re.search(message, lines[0])
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written


@pytest.mark.parametrize(
    "args", [["--dropout", "1"], ["--dropout", "-0.1"], ["--dropout", "nan"], ["--norm", "group"], ["--norm"]]
)
def test_invalid_layer_options_are_usage_errors(args):
    proc = run("train", *args)
    assert is_usage_error(proc), proc.stderr
    assert "--dropout" in proc.stderr or "--norm" in proc.stderr


# ------------------------------------------------------------------------------------------ labels and classes
def _cli(monkeypatch, capfd, tmp_path, *argv):
    """fastbp.cli.main in ``tmp_path``: (exit code, stdout, stderr lines)."""
    from fastbp import cli

    monkeypatch.chdir(tmp_path)
    code = cli.main(list(argv))
    out, err = capfd.readouterr()
    return code, out, err.splitlines()


def test_a_csv_warning_gives_the_command_lines_advice_not_a_python_argument(tmp_path, monkeypatch, capfd):
    """A first line 0,1,... above integers is read as data, with load_csv's warning; the command line has no
    skip_header, so its warning leaves that advice out."""
    import fastbp

    X, y = fastbp.data.load_digits()
    header = ",".join(str(i) for i in range(65))
    np.savetxt(tmp_path / "d.csv", np.column_stack([X, y])[:200], delimiter=",", fmt="%d", header=header, comments="")
    code, _, err = _cli(monkeypatch, capfd, tmp_path, "train", "--data", "d.csv", "--epochs", "1", "-o", "none")
    assert code == 0 and not any("skip_header" in line for line in err)
    lines = [line for line in err if "is read as a data row" in line]  # (its label 64 is a class of one row: warned)
    assert len(lines) == 1 and lines[0].endswith("name the columns or remove the line"), err


def test_a_csv_with_the_label_first_trains_on_the_right_target_with_label_column(tmp_path, monkeypatch, capfd):
    import fastbp

    X, y = fastbp.data.load_digits()
    header = ",".join(["digit", *(f"pixel{i}" for i in range(64))])
    np.savetxt(tmp_path / "first.csv", np.column_stack([y, X]), delimiter=",", fmt="%d", header=header, comments="")
    fit = ["--epochs", "4", "--no-progress"]
    # without --label-column the last pixel is taken as the label: trained, but said loudly
    code, out, err = _cli(monkeypatch, capfd, tmp_path, "train", "--data", "first.csv", *fit, "-o", "none")
    assert code == 0 and "17 classes" in out
    assert err == [
        "fastbp train: warning: the label column of --data first.csv (column 64, 'pixel63') has 17 distinct values, "
        "2 of them on fewer than 3 rows: it looks like a feature or a regression target, not a class label (fastbp "
        "train trains classifiers: fit a regression from Python, with fastbp.sklearn.MLPRegressor); if the label is "
        "another column, name it with --label-column"
    ]
    # by index and by name: the digit, 10 classes, the same network
    for column in ("0", "digit"):
        code, out, err = _cli(monkeypatch, capfd, tmp_path, "train", "--data", "first.csv", "--label-column", column,
                              *fit, "-o", f"m{column}.npz")  # fmt: skip
        assert code == 0 and err == [] and "64 features, 10 classes (first.csv)" in out
        assert float(re.search(r"test accuracy (\d\.\d+)", out).group(1)) >= 0.9
    np.testing.assert_array_equal(fastbp.load(tmp_path / "m0.npz").params, fastbp.load(tmp_path / "mdigit.npz").params)
    # predict reads the label column the checkpoint records
    code, out, err = _cli(monkeypatch, capfd, tmp_path, "predict", "mdigit.npz", "--data", "first.csv")
    assert code == 0 and len(out.split()) == 1797
    assert (
        float(
            re.fullmatch(
                r"accuracy (\d\.\d+) on the 1797 rows of first\.csv" + _TRAINED_ON.format("mdigit\\.npz"),
                err[0],
            ).group(1)
        )
        >= 0.9
    )


def test_predict_finds_the_label_column_by_its_header_name_in_a_file_ordered_otherwise(tmp_path, monkeypatch, capfd):
    # the checkpoint recorded the column's index only: a file with the label first was read with a pixel as its label
    import fastbp

    X, y = fastbp.data.load_digits()
    pixels = [f"p{i}" for i in range(64)]
    for name, rows, names in (("last", [X, y], [*pixels, "label"]), ("first", [y, X], ["label", *pixels])):
        np.savetxt(tmp_path / f"{name}.csv", np.column_stack(rows), delimiter=",", fmt="%d", header=",".join(names),
                   comments="")  # fmt: skip
    np.savetxt(tmp_path / "bare.csv", np.column_stack([X, y]), delimiter=",", fmt="%d")
    code, out, err = _cli(monkeypatch, capfd, tmp_path, "train", "--data", "last.csv", "--epochs", "4", "--no-progress")
    assert code == 0 and err == []
    accuracies = []
    for name in ("last.csv", "first.csv", "bare.csv"):  # bare: no header, the column's place
        code, out, err = _cli(monkeypatch, capfd, tmp_path, "predict", "fastbp-model.npz", "--data", name)
        assert code == 0 and len(out.split()) == 1797, err
        accuracies.append(float(re.match(r"accuracy (\d\.\d+) on the 1797 rows", err[0]).group(1)))
    assert accuracies[0] >= 0.9 and accuracies[0] == accuracies[1] == accuracies[2]


def test_predict_matches_the_feature_columns_by_their_header_names(tmp_path, monkeypatch, capfd):
    # the features were read by their place: a file with the same columns in another order predicted garbage
    import fastbp

    X, y = fastbp.data.load_digits()
    names = np.array([f"p{i}" for i in range(64)])
    order = np.random.default_rng(0).permutation(64)

    def write(name, features, feature_names, label_first=False):
        columns, header = [features, y], [*feature_names, "label"]
        if label_first:
            columns, header = columns[::-1], header[-1:] + header[:-1]
        np.savetxt(tmp_path / name, np.column_stack(columns), delimiter=",", fmt="%d", header=",".join(header),
                   comments="")  # fmt: skip

    write("train.csv", X, names)
    write("shuffled.csv", X[:, order], names[order], label_first=True)
    write("renamed.csv", X, [f"x{i}" for i in range(64)])
    fit = ["--epochs", "4", "--no-progress"]
    code, out, err = _cli(monkeypatch, capfd, tmp_path, "train", "--data", "train.csv", *fit)
    assert code == 0 and err == []
    predictions = []
    for name in ("train.csv", "shuffled.csv"):
        code, out, err = _cli(monkeypatch, capfd, tmp_path, "predict", "fastbp-model.npz", "--data", name)
        assert code == 0, err
        predictions.append(out.split())
    assert len(predictions[0]) == 1797 and predictions[0] == predictions[1]
    code, out, err = _cli(monkeypatch, capfd, tmp_path, "predict", "fastbp-model.npz", "--data", "renamed.csv")
    assert code == 2 and out == ""
    assert "its feature columns ('x0', 'x1', 'x2', 'x3', 'x4', 'x5', ... (64 in all)) are not those" in err[0]


def test_labels_1000_and_2000_are_two_classes_and_predict_prints_them(tmp_path, monkeypatch, capfd):
    import fastbp

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 4))
    y = np.where(X[:, 0] + X[:, 1] > 0, 2000, 1000)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    fit = ["--epochs", "20", "--l2", "0.001"]
    code, out, _ = _cli(monkeypatch, capfd, tmp_path, "train", "--data", "d.npz", *fit, "-o", "m.npz")
    assert code == 0 and "2 classes (1000, 2000)" in out and "model: 4-128-2 relu, softmax, float32, l2 0.001;" in out
    net = fastbp.load(tmp_path / "m.npz")
    assert net.n_out == 2 and net.extras["classes"].tolist() == [1000, 2000]
    code, out, err = _cli(monkeypatch, capfd, tmp_path, "predict", "m.npz", "--data", "d.npz")
    printed = np.array(out.split(), dtype=np.int64)
    assert code == 0 and set(printed) == {1000, 2000} and np.mean(printed == y) >= 0.9
    assert (
        float(
            re.fullmatch(
                r"accuracy (\d\.\d+) on the 200 rows of d\.npz" + _TRAINED_ON.format("m\\.npz"),
                err[0],
            ).group(1)
        )
        >= 0.9
    )
    # labels the model has no class for count as wrong, and predict says so
    y_other = np.where(np.arange(200) < 30, 3000, y)
    np.savez(tmp_path / "other.npz", X=X, y=y_other)
    code, out, err = _cli(monkeypatch, capfd, tmp_path, "predict", "m.npz", "--data", "other.npz")
    assert code == 0 and len(err) == 2, err
    assert err[0] == (
        "fastbp predict: warning: 30 of the 200 rows have labels that m.npz has no class for (3000; its classes: "
        "1000, 2000): they count as wrong in the accuracy"
    )
    printed = np.array(out.split(), dtype=np.int64)
    assert err[1].startswith(f"accuracy {np.mean(printed == y_other):.4f} on the 200 rows of other.npz")


def test_batch_norm_on_a_single_training_row_is_a_usage_error(tmp_path, monkeypatch, capfd):
    # 12 rows of 10 classes split without strata: --test-size 0.9 trains on 1 row, which batch norm cannot normalize
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", X=rng.standard_normal((12, 3)), y=np.r_[np.arange(10), 0, 1])
    argv = ("train", "--data", "tiny.npz", "--epochs", "1", "--no-progress", "-o", "none")
    code, out, err = _cli(monkeypatch, capfd, tmp_path, *argv, "--test-size", "0.9", "--norm", "batch")
    assert code == 2 and out == ""
    assert err == [
        "fastbp train: error: --test-size 0.9 of 12 rows trains on 1: --norm batch needs at least 2 training rows (a "
        "batch variance) (see fastbp train --help)"
    ]
    code, out, err = _cli(monkeypatch, capfd, tmp_path, *argv, "--test-size", "0.8", "--norm", "batch")
    assert code == 0 and "train 2, test 10" in out


def test_counts_of_one_are_singular_in_the_summary_and_the_prediction(tmp_path, monkeypatch, capfd):
    # one feature, one epoch, one step (the 8 training rows in one batch), one row predicted
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "one.npz", X=rng.standard_normal((10, 1)), y=np.tile([0, 1], 5))
    argv = ("train", "--data", "one.npz", "--epochs", "1", "--batch-size", "64", "--test-size", "0.2", "--no-progress")
    code, out, err = _cli(monkeypatch, capfd, tmp_path, *argv, "-o", "m.npz")
    assert code == 0, err
    assert "data: 10 samples, 1 feature, 2 classes" in out
    assert "; 1 epoch of batch 64" in out and "(1 step, " in out
    np.savez(tmp_path / "row.npz", X=rng.standard_normal((1, 1)), y=np.array([1]))
    code, out, err = _cli(monkeypatch, capfd, tmp_path, "predict", "m.npz", "--data", "row.npz")
    assert code == 0 and re.fullmatch(r"accuracy \d\.\d+ on the 1 row of row\.npz", err[-1]), err


def test_string_labels_train_and_predict_prints_them_back(tmp_path, monkeypatch, capfd):
    import fastbp

    X, y = fastbp.data.load_digits()
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    with open(tmp_path / "named.csv", "w") as f:  # no header: the string labels must not be taken for one
        for row, label in zip(X.astype(int), names[y], strict=True):
            f.write(",".join(map(str, row)) + f",{label}\n")
    code, out, err = _cli(monkeypatch, capfd, tmp_path, "train", "--data", "named.csv", "--epochs", "4", "-o", "m.npz")
    assert code == 0 and err == [] and "1797 samples, 64 features, 10 classes ('eight', 'five'," in out
    code, out, err = _cli(monkeypatch, capfd, tmp_path, "predict", "m.npz", "--data", "named.csv", "-o", "p.npy")
    predicted = np.load(tmp_path / "p.npy")  # the original labels, as strings (no pickle needed)
    assert code == 0 and predicted.dtype.kind == "U" and set(predicted) == set(names)
    assert np.mean(predicted == names[y]) >= 0.9
    assert (
        float(
            re.fullmatch(
                r"accuracy (\d\.\d+) on the 1797 rows of named\.csv" + _TRAINED_ON.format("m\\.npz"),
                err[0],
            ).group(1)
        )
        >= 0.9
    )


def test_the_summary_of_a_run_with_a_validation_split_gives_its_last_validation_scores(tmp_path, monkeypatch, capfd):
    argv = ["train", "--val-split", "0.1", "--epochs", "2", "--layers", "8", "--no-progress", "-o", "none"]
    code, out, _ = _cli(monkeypatch, capfd, tmp_path, *argv, "--json", "h.json")
    history = json.loads((tmp_path / "h.json").read_text())["history"]
    assert code == 0 and "train 1437 (--val-split 0.1 holds out a validation part of it), test 360" in out
    shown = re.search(r"validation loss (\d\.\d+), accuracy (\d\.\d+); test loss", out).groups()
    assert shown == (f"{history['val_loss'][-1]:.4f}", f"{history['val_accuracy'][-1]:.4f}")


@pytest.mark.parametrize(
    ("optimizer", "given", "shown"),
    [("adamw", [], 0.01), ("adamw", ["0.05"], 0.05), ("nesterov", ["0.001"], 0.001), ("sgd", [], 0.0)],
)
def test_weight_decay_sets_the_optimizers(tmp_path, monkeypatch, capfd, optimizer, given, shown):
    decay = ["--weight-decay", *given] if given else []
    argv = ["train", "--optimizer", optimizer, *decay, "--epochs", "1", "--layers", "8", "--no-progress", "-o", "none"]
    code, out, _ = _cli(monkeypatch, capfd, tmp_path, *argv)
    assert code == 0 and f"weight_decay={shown}," in out


def test_none_writes_no_file_for_any_output_option(tmp_path, monkeypatch, capfd):
    model = ["train", "--epochs", "1", "--no-progress", "--layers", "8", "-o", "model.npz"]
    assert _cli(monkeypatch, capfd, tmp_path, *model)[0] == 0
    commands = [
        ["train", "--epochs", "1", "--no-progress", "--layers", "8", "-o", "none", "--json", "none", "--plot", "none"],
        ["predict", "model.npz", "-o", "none"],
        [
            "diagnose",
            "--epochs",
            "1",
            "--depth",
            "1",
            "--width",
            "8",
            "--samples",
            "8",
            "--plot",
            "none",
            "--json",
            "None",
        ],
    ]
    for argv in commands:
        code, out, _ = _cli(monkeypatch, capfd, tmp_path, *argv)
        assert code == 0 and "json:" not in out and "plot:" not in out, argv
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"], argv  # no none, none.npy or None


def test_predict_without_data_says_which_rows_it_scores(tmp_path, monkeypatch, capfd):
    import fastbp

    # a checkpoint saved from Python records no split: every digit is scored, and the line says so
    X, y = fastbp.data.load_digits()
    net = fastbp.MLP([64, 16, 10], seed=0)
    fastbp.Trainer(net, progress=False).fit(X / 16, y, epochs=2)
    net.save(tmp_path / "python.npz")
    code, out, err = _cli(monkeypatch, capfd, tmp_path, "predict", "python.npz")
    assert code == 0 and len(out.split()) == 1797
    assert re.fullmatch(
        r"accuracy \d\.\d+ on all 1797 rows of the embedded digits, training rows included \(python\.npz records no "
        r"held-out split: not a test accuracy\)",
        err[0],
    )


def test_predict_on_files_that_are_not_checkpoints_says_what_they_are(tmp_path, monkeypatch, capfd):
    np.save(tmp_path / "weights.npy", np.zeros(3))
    np.savez(tmp_path / "data.npz", X=np.zeros((2, 3)), y=np.zeros(2))
    (tmp_path / "model.npz").write_bytes(b"\x80\x04\x95" + bytes(20))  # a pickle
    expected = {
        "weights.npy": "weights.npy is a NumPy .npy file (a single array); expected a fastbp checkpoint",
        "data.npz": "data.npz is an .npz archive of arrays [X, y]; expected a fastbp checkpoint",
        "model.npz": "model.npz is a Python pickle (fastbp never loads pickles: loading one can run any code)",
    }
    for name, message in expected.items():
        code, _, err = _cli(monkeypatch, capfd, tmp_path, "predict", name)
        assert code == 1 and len(err) == 1 and message in err[0], err
        assert "allow_pickle" not in err[0] and "context manager" not in err[0]


def test_batch_norm_with_a_batch_of_one_row_is_a_usage_error(capsys):
    from fastbp import cli

    # the digits' 1437 training rows in batches of 4 leave a last batch of 1 row, where batch norm has no variance
    args = ["train", "--norm", "batch", "--batch-size", "4", "--epochs", "1", "--no-progress", "--output", "none"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "1437 training rows in batches of 4 leave a batch of 1 row: choose another --batch-size" in err
    assert err.rstrip().endswith("(see fastbp train --help)")
    args[args.index("4")] = "1"  # every batch has one row
    assert cli.main(args) == 2
    assert "1437 training rows in batches of 1 leave batches of 1 row" in capsys.readouterr().err


def test_batch_norm_rows_are_counted_after_the_validation_split(capsys):
    from fastbp import cli

    # 1437 training rows in batches of 359 would leave 1 row; --val-split 0.1 leaves 1293 = 3 x 359 + 216 to train on
    args = ["train", "--norm", "batch", "--batch-size", "359", "--val-split", "0.1", "--epochs", "1"]
    assert cli.main([*args, "--no-progress", "--output", "none"]) == 0
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(("command", "option"), [("train", "--batch-size"), ("gradcheck", "--samples")])
def test_out_of_memory_names_the_commands_own_option_for_the_rows(command, option, monkeypatch, capsys):
    from fastbp import cli

    def no_memory(args, *rest, **kwargs):
        raise MemoryError("Unable to allocate 74.5 GiB")

    monkeypatch.setattr(cli, f"cmd_{command}", no_memory)
    assert cli.main([command]) == 1
    assert capsys.readouterr().err == (
        f"fastbp {command}: error: out of memory (Unable to allocate 74.5 GiB); try smaller --layers or {option}\n"
    )
