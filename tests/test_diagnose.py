"""Gradient-flow diagnostics: reference.deltas, the trainer's delta_norm history, and ``fastbp diagnose``."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import (
    DIAGNOSE_PLAIN_MAX_ACCURACY,
    DIAGNOSE_REMEDY_MIN_ACCURACY,
    DIAGNOSE_RTOL,
    GRAPH_RTOL,
    REASSEMBLY_RTOL,
    make_batch,
    rel_err,
)

import fastbp
from fastbp import graph as g
from fastbp import reference


def graph_deltas(net, X, Y):
    """dC/dZ[l] for every layer by the graph engine: the network written with graph operations, differentiated with
    respect to its pre-activation nodes."""
    n = X.shape[0]
    f = {"relu": g.relu, "tanh": g.tanh, "sigmoid": g.sigmoid, "identity": lambda Z: Z}
    A, Zs = X, []
    for l, (W, b) in enumerate(zip(net.coefs, net.intercepts, strict=True)):
        Zs.append(A @ g.Variable(W) + g.Variable(b))
        A = f[net.activations[l]](Zs[-1]) if l < net.n_layers - 1 else None
    Z = Zs[-1]
    if net.loss == "cross_entropy":
        loss = g.softmax_cross_entropy(Z, Y)
    elif net.loss == "binary_cross_entropy":
        P = g.sigmoid(Z)
        loss = g.sum(-(Y * g.log(P) + (1.0 - Y) * g.log(1.0 - P))) / n
    else:
        loss = 0.5 * g.sum((f[net.output](Z) - Y) ** 2) / n
    return g.grad(loss, Zs)


@pytest.mark.parametrize(
    ("activation", "output", "loss"),
    [
        ("relu", "softmax", "cross_entropy"),
        ("sigmoid", "sigmoid", "binary_cross_entropy"),
        ("tanh", "identity", "squared_error"),
        ("sigmoid", "tanh", "squared_error"),  # the general BP1 form
    ],
)
def test_reference_deltas_equal_the_graph_engine(activation, output, loss, rng):
    net = fastbp.MLP([4, 6, 5, 3], activation, output, loss, l2=0.1, dtype="float64", seed=4)
    for b in net.intercepts:
        b[...] = rng.standard_normal(b.shape)
    X, Y = make_batch(net, 7, rng)
    deltas = reference.deltas(net, X, Y)
    assert [d.shape for d in deltas] == [(7, 6), (7, 5), (7, 3)]
    for d, expected in zip(deltas, graph_deltas(net, X, Y), strict=True):
        assert rel_err(d, expected) <= GRAPH_RTOL
    # BP3/BP4 from these deltas give the reference gradient.
    A = reference.forward(net, X)
    dW, db = net.unflatten(reference.value_and_grad(net, X, Y)[1])
    for l, d in enumerate(deltas):
        assert rel_err(A[l].T @ d + net.l2 * net.coefs[l], dW[l]) <= REASSEMBLY_RTOL
        assert rel_err(d.sum(axis=0), db[l]) <= REASSEMBLY_RTOL


@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_trainer_records_delta_norms_on_request(output, rng):
    net = fastbp.MLP([5, 8, 8, 3], "tanh", output, dtype="float64", seed=1)
    X, y = make_batch(net, 60, rng)
    history = fastbp.Trainer(net, fastbp.SGD(0.1), batch_size=16, progress=False).fit(X, y, epochs=2)
    assert "delta_norm" not in history  # off by default
    trainer = fastbp.Trainer(net, fastbp.SGD(0.1), batch_size=16, progress=False, record_deltas=True)
    history = trainer.fit(X, y, epochs=3)
    assert len(history["delta_norm"]) == 3 and all(len(norms) == 3 for norms in history["delta_norm"])
    # 60 rows < 256: the probe batch is the whole training set; the last entry is the end-of-training state.
    expected = [np.linalg.norm(d) for d in reference.deltas(net, X, y)]
    np.testing.assert_allclose(history["delta_norm"][-1], expected, rtol=REASSEMBLY_RTOL)
    assert history["delta_norm"][0] != history["delta_norm"][-1]  # recorded per epoch, as training moves
    with pytest.raises(TypeError, match="record_deltas"):
        fastbp.Trainer(net, record_deltas="yes")


def test_layer_norms_documents_its_arguments_and_returns_one_norm_per_layer(rng):
    from fastbp import diagnose

    doc = diagnose.layer_norms.__doc__
    assert "(n, n_in)" in doc and "(n, n_out)" in doc and "(n,)" in doc, doc
    net = fastbp.MLP([5, 8, 3], "tanh", dtype="float64", seed=0)
    X, y = make_batch(net, 6, rng)
    norms = diagnose.layer_norms(net, X, y)
    assert len(norms["grad"]) == len(norms["delta"]) == 2 and norms["loss"] > 0 and norms["total"] > 0


def plain_init_grad_norms(activation, X, y, depth=10, width=64):
    """Per-layer ||dW|| at the documented plain initialisation (W ~ N(0, 1/fan_in) drawn layer by layer from
    default_rng(0), b = 0), by the NumPy reference."""
    net = fastbp.MLP([64] + [width] * depth + [10], activation, dtype="float64")
    draws = np.random.default_rng(0)
    for W, b in zip(net.coefs, net.intercepts, strict=True):
        W[...] = draws.standard_normal(W.shape) / np.sqrt(W.shape[0])
        b[...] = 0.0
    dW, _ = net.unflatten(reference.value_and_grad(net, X, y)[1])
    return [np.linalg.norm(d) for d in dW]


def test_cli_diagnose_shows_vanishing_sigmoid_level_relu_clipping_and_the_remedies(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fastbp.cli", "diagnose", "--plot", "d.png", "--json", "d.json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    ratios = dict(re.findall(r"^(\w+)\s+\|\|dW\[last\]\|\| / \|\|dW\[first\]\|\| = (\S+)", proc.stdout, re.M))
    assert float(ratios["sigmoid"]) >= 100  # vanishing: the first layer's gradient is >= 100x smaller
    assert 0.1 <= float(ratios["relu"]) <= 10  # level
    assert re.search(r"no clipping\s+DIVERGED", proc.stdout)
    assert re.search(r"clip_norm=1\s+finite", proc.stdout)
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    result = json.loads((tmp_path / "d.json").read_text())
    X, _, y, _ = fastbp.data.prepare(*fastbp.data.load_digits(), test_size=0.2, seed=0)
    for activation in ("sigmoid", "tanh", "relu"):
        reported = result["vanishing"][activation]
        expected = plain_init_grad_norms(activation, X[:256], y[:256])
        assert rel_err(reported["grad"], expected) <= DIAGNOSE_RTOL
        assert reported["ratio"] == pytest.approx(expected[-1] / expected[0], rel=DIAGNOSE_RTOL)
        assert len(reported["delta"]) == len(reported["delta_norm"]) == 11
    runs = result["exploding"]["runs"]
    assert [r["clip_norm"] for r in runs] == [None, 1.0]
    assert runs[0]["diverged"] and "diverged" in runs[0]["message"]
    assert not runs[1]["diverged"] and len(runs[1]["loss_per_epoch"]) == 10
    assert np.isfinite(runs[1]["loss_per_epoch"]).all()
    assert runs[1]["loss_per_epoch"][-1] < result["exploding"]["loss"]  # clipped training made progress

    # The remedies: the plain sigmoid network does not learn, with batch norm or residual connections it does, in the
    # same epochs of the same SGD on the same data and seed.
    row = re.search(r"^test accuracy\s+(\S+)\s+(\S+)\s+(\S+)\s*$", proc.stdout, re.M)
    assert row, proc.stdout
    plain, batch_norm, residual = map(float, row.groups())
    assert plain <= DIAGNOSE_PLAIN_MAX_ACCURACY
    assert batch_norm >= DIAGNOSE_REMEDY_MIN_ACCURACY and residual >= DIAGNOSE_REMEDY_MIN_ACCURACY
    assert "residual connections on hidden layers 1-10" in proc.stdout  # width 64 = the 64 inputs: every layer
    rem = result["remedies"]
    assert list(rem) == ["plain", "batch_norm", "residual"]
    assert [round(rem[r]["test_accuracy"], 3) for r in rem] == [plain, batch_norm, residual]
    assert rem["plain"]["norm"] == [None] * 10 and rem["plain"]["residual"] == [False] * 10
    assert rem["batch_norm"]["norm"] == ["batch"] * 10 and rem["batch_norm"]["residual"] == [False] * 10
    assert rem["residual"]["norm"] == [None] * 10 and rem["residual"]["residual"] == [True] * 10
    sigmoid = result["vanishing"]["sigmoid"]
    # the same initial weights: the plain network is the vanishing experiment's sigmoid network, trained the same way
    assert rel_err(rem["plain"]["grad"], sigmoid["grad"]) <= DIAGNOSE_RTOL
    assert rem["plain"]["test_accuracy"] == sigmoid["val_accuracy"]
    for r in rem.values():
        assert len(r["grad"]) == len(r["grad_norm"]) == 11 and len(r["loss_per_epoch"]) == 10
        # predict (evaluation mode) agrees with the trainer's evaluation after the last epoch
        assert r["accuracy_per_epoch"][-1] == r["test_accuracy"]
        if r is not rem["plain"]:  # the first layer's gradient at initialisation is no longer vanishing
            assert r["grad"][0] >= 1e4 * rem["plain"]["grad"][0]


def test_diagnose_remedies_on_a_narrower_network_and_their_checks():
    from fastbp import diagnose

    result = diagnose.run(depth=3, width=16, samples=32, epochs=1, batch_size=64)
    assert result["config"]["residual_layers"] == [2, 3]  # the first hidden layer maps 64 inputs to 16 units
    rem = result["remedies"]
    assert rem["residual"]["residual"] == [False, True, True] and rem["batch_norm"]["norm"] == ["batch"] * 3
    assert all("delta" not in r for r in rem.values())  # only the compiled gradient for the layer options
    report = diagnose.report(result)
    assert "residual connections on hidden layers 2-3 (those that keep their width)" in report
    # the plain network's own accuracy, not a claim that it does not learn
    plain = rem["plain"]["test_accuracy"]
    assert f"remedies for the sigmoid network above (plain: test accuracy {plain:.3f}, chance 1/10)" in report
    assert re.search(r"^test accuracy(\s+\d\.\d{3}){3}$", report, re.M)
    net = diagnose.plain_network("sigmoid", depth=2, width=8, n_in=8, norm="batch")
    assert diagnose.layer_norms(net, *make_batch(net, 6, np.random.default_rng(0)))["delta"] is None
    with pytest.raises(ValueError, match="samples must be at least 2"):
        diagnose.run(samples=1)
    one = diagnose.run(depth=1, width=8, samples=8, epochs=1)  # 64 inputs to 8 units: no layer keeps its width
    assert one["config"]["residual_layers"] == [] and "(none here: the residual network is the plain one)" in (
        diagnose.report(one)
    )


def test_diagnose_goes_on_past_a_diverging_network_and_reports_it(tmp_path):
    from fastbp import diagnose

    # lr=100 makes the relu network of part 1 diverge in its first epoch (the sigmoid and tanh ones stay finite)
    result = diagnose.run(depth=3, samples=32, epochs=2, lr=100.0)
    relu = result["vanishing"]["relu"]
    assert relu["diverged"] and relu["message"].startswith("training diverged in epoch 1")
    assert relu["loss_per_epoch"] == [] and all(np.isnan(relu["grad_norm"]))
    assert 0.0 <= relu["val_accuracy"] <= 1.0  # of the parameters of the last finite step
    assert not result["vanishing"]["sigmoid"]["diverged"] and len(result["vanishing"]["sigmoid"]["loss_per_epoch"]) == 2
    assert result["exploding"]["runs"][0]["diverged"]
    report = diagnose.report(result)
    assert re.search(
        r"^relu .*: DIVERGED \(training diverged in epoch 1: .*last finite step\), test accuracy", report, re.M
    )
    # the remedies that all diverge in their first epoch have no measured ratio: nan, not inf
    remedies = diagnose.report(diagnose.run(depth=3, width=8, samples=32, epochs=2, lr=1e300))
    (last_over_first,) = re.findall(r"^last / first .*$", remedies, re.M)
    assert last_over_first.split()[-3:] == ["nan"] * 3 and "inf" not in last_over_first
    # --json writes strict JSON: the NaN of the diverged run as null (json.loads would take NaN; other readers not)
    from fastbp import _files

    written = json.loads(open(_files.save_json(result, tmp_path / "d.json")).read(), parse_constant=pytest.fail)
    assert written["vanishing"]["relu"]["grad_norm"] == [None] * len(relu["grad_norm"])
    pytest.importorskip("matplotlib")
    assert diagnose.plot(result, tmp_path / "d.png") == str(tmp_path / "d.png") and (tmp_path / "d.png").stat().st_size


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
        (dict(batch_size=2.0), TypeError, "batch_size must be an integer"),
        (dict(seed=-1), ValueError, "seed must be >= 0"),
        (dict(samples=1), ValueError, "samples must be at least 2"),
        (dict(depth=0), ValueError, "depth must be >= 1"),
        (dict(gain=0.0), ValueError, "gain must be > 0"),
        (dict(clip_norm=-1.0), ValueError, "clip_norm must be > 0"),
        (dict(batch_size=2), ValueError, r"a mini-batch of the training set has 1 row.*\(1437 rows in batches of 2\)"),
    ],
)
def test_diagnose_arguments_are_checked_before_the_work(arguments, error, message):
    from fastbp import diagnose

    with pytest.raises(error, match=message):
        diagnose.run(**arguments)
