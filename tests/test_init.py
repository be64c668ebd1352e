"""Initialisation: seeded, bit-reproducible, Xavier/He scaled, and the flat layout of the parameters."""

import subprocess
import sys

import numpy as np
import pytest

import fastbp

SIZES = [30, 200, 100, 10]


def test_same_seed_gives_bit_identical_parameters_across_processes():
    code = "import fastbp, sys; sys.stdout.write(fastbp.MLP([30, 200, 100, 10], seed=42).params.tobytes().hex())"
    runs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    assert len(runs) == 1
    assert bytes.fromhex(runs.pop()) == fastbp.MLP(SIZES, seed=42).params.tobytes()


def test_different_seeds_differ_and_none_is_random():
    assert not np.array_equal(fastbp.MLP(SIZES, seed=1).params, fastbp.MLP(SIZES, seed=2).params)
    assert not np.array_equal(fastbp.MLP(SIZES, seed=None).params, fastbp.MLP(SIZES, seed=None).params)


def test_float32_parameters_are_the_rounded_float64_ones():
    p64 = fastbp.MLP(SIZES, dtype="float64", seed=5).params
    np.testing.assert_array_equal(fastbp.MLP(SIZES, dtype="float32", seed=5).params, p64.astype(np.float32))


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh", "sigmoid", "identity"])
def test_weight_scale_follows_he_or_glorot(activation):
    net = fastbp.MLP([400, 300, 200], activation, dtype="float64", seed=0)
    W = net.coefs[0]
    if activation in ("relu", "leaky_relu"):  # He normal: std sqrt(2 / fan_in)
        expected = np.sqrt(2 / 400)
    else:  # Glorot uniform on [-a, a], a = sqrt(6 / (fan_in + fan_out)): std a / sqrt(3)
        expected = np.sqrt(6 / 700) / np.sqrt(3)
        assert np.abs(W).max() <= np.sqrt(6 / 700)
    # 120000 samples: the sample std is within 1% of the true one with overwhelming probability
    assert W.std() == pytest.approx(expected, rel=0.01)
    assert not net.intercepts[0].any()


def test_coefs_and_intercepts_are_views_into_params():
    net = fastbp.MLP([3, 4, 2])
    assert [W.shape for W in net.coefs] == [(3, 4), (4, 2)]
    assert [b.shape for b in net.intercepts] == [(4,), (2,)]
    assert net.n_params == 3 * 4 + 4 + 4 * 2 + 2 == net.params.size
    net.coefs[1][2, 1] = 9.0
    assert net.params[3 * 4 + 4 + 2 * 2 + 1] == 9.0
    for W in net.coefs + net.intercepts:
        assert np.shares_memory(W, net.params)
