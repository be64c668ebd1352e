"""Each compiled kernel on the layer shapes of the matrix, called from a compiled loop (so that the Python call
overhead of a microsecond-scale kernel is not measured) on views that own nothing, like the training loop's arrays
(``layout._unowned``: an array passed from Python would add atomic reference counting to every inlined helper
call): the reported time is for CALLS calls."""

import numpy as np
import pytest
from conftest import batch_data, cells
from numba import njit

import fastbp
from fastbp.kernels.activations import RELU
from fastbp.kernels.backward import _activation_derivative, _weight_grad
from fastbp.kernels.forward import _dense_forward
from fastbp.kernels.gemm import BLAS_GEMM, _matmul
from fastbp.kernels.layout import _unowned
from fastbp.kernels.loss import CROSS_ENTROPY, _output_delta
from fastbp.kernels.optimizers import ADAM, SGD, _update

CALLS = 50


@njit
def _no_twin(a):
    """A (0, columns) uint16 array: the empty bfloat16 twin of the dtype's own precision."""
    return np.empty((0, a.shape[1]), np.uint16)


@njit
def _forward_loop(k, gemm, A_prev, W, b, A):
    A_prev, W, b, A = _unowned(A_prev), _unowned(W), _unowned(b), _unowned(A)
    A_prev16, W16, A16 = _no_twin(A_prev), _no_twin(W), _no_twin(A)
    for _ in range(k):
        _dense_forward(gemm, A_prev, A_prev16, W, W16, b, RELU, A, A16)


@njit
def _output_loop(k, Z, b, Y, labels, delta, db):
    Z, b, Y, labels, delta, db = _unowned(Z), _unowned(b), _unowned(Y), _unowned(labels), _unowned(delta), _unowned(db)
    for _ in range(k):
        _output_delta(Z, b, Y, labels, Y[0, :0], 5, CROSS_ENTROPY, 0.01, delta, db, np.int64(1), np.int64(0))


@njit
def _hidden_loop(k, gemm, delta, W, A_prev, delta_prev, db_prev):
    delta, W, A_prev = _unowned(delta), _unowned(W), _unowned(A_prev)
    delta_prev, db_prev = _unowned(delta_prev), _unowned(db_prev)
    delta16, W16, delta_prev16 = _no_twin(delta), _no_twin(W), _no_twin(delta_prev)
    for _ in range(k):  # BP2 and BP3: the GEMM, then its epilogue
        _matmul(gemm, 0, 1, delta, delta16, W, W16, 0.0, delta_prev)
        _activation_derivative(delta_prev, A_prev, RELU, db_prev, np.int64(1), np.int64(0), delta_prev16)


@njit
def _weight_loop(k, gemm, A_prev, delta, dW):
    A_prev, delta, dW = _unowned(A_prev), _unowned(delta), _unowned(dW)
    A_prev16, delta16 = _no_twin(A_prev), _no_twin(delta)
    for _ in range(k):
        _weight_grad(gemm, A_prev, A_prev16, delta, delta16, 0.0, dW)


@njit
def _update_loop(k, kind, hyper, layout, p, g, state, q, sq_norms):
    hyper, layout, p, g = _unowned(hyper), _unowned(layout), _unowned(p), _unowned(g)
    state, q, sq_norms = _unowned(state), _unowned(q), _unowned(sq_norms)
    q16 = np.empty(0, np.uint16)  # no bfloat16 twin
    for _ in range(k):
        _update(kind, hyper, 0.01, 1, 1.0, layout, p, g, state, q, q16, sq_norms, np.int64(1))


def _arrays(shape, dtype):
    sizes, _, X, y = batch_data(shape, dtype)
    net = fastbp.MLP(sizes, dtype=dtype, seed=0)
    rng = np.random.default_rng(1)
    W0, b0 = net.coefs[0], net.intercepts[0]
    A1 = np.maximum(X @ W0 + b0, 0).astype(dtype)
    delta1 = rng.standard_normal(A1.shape).astype(dtype)
    return net, X, y, A1, delta1


@pytest.mark.parametrize(("shape", "dtype"), cells(plain_only=True))
def test_dense_forward(benchmark, shape, dtype):
    net, X, _, A1, _ = _arrays(shape, dtype)
    out = np.empty_like(A1)
    args = ((BLAS_GEMM[net.dtype], 0), X, net.coefs[0], net.intercepts[0], out)
    _forward_loop(1, *args)
    benchmark.group = f"forward|{shape}-{dtype}"
    benchmark(_forward_loop, CALLS, *args)


@pytest.mark.parametrize(("shape", "dtype"), cells(plain_only=True))
def test_output_delta(benchmark, shape, dtype):
    net, X, y, _, _ = _arrays(shape, dtype)
    Z = np.asarray(fastbp.reference.forward(net, X)[-2] @ net.coefs[-1], dtype=dtype)
    args = (
        Z.copy(),
        net.intercepts[-1],
        np.zeros((0, net.n_out), dtype),
        y.astype(np.int64),
        np.empty_like(Z),
        np.zeros(net.n_out, dtype),
    )
    _output_loop(1, *args)
    benchmark.group = f"output_delta|{shape}-{dtype}"
    benchmark(_output_loop, CALLS, *args)


@pytest.mark.parametrize(("shape", "dtype"), cells(plain_only=True))
def test_hidden_delta(benchmark, shape, dtype):
    net, X, _, A1, _ = _arrays(shape, dtype)
    W1 = net.coefs[1]
    delta2 = np.random.default_rng(2).standard_normal((X.shape[0], W1.shape[1])).astype(dtype)
    args = ((BLAS_GEMM[net.dtype], 0), delta2, W1, A1, np.empty_like(A1), np.zeros(A1.shape[1], dtype))
    _hidden_loop(1, *args)
    benchmark.group = f"hidden_delta|{shape}-{dtype}"
    benchmark(_hidden_loop, CALLS, *args)


@pytest.mark.parametrize(("shape", "dtype"), cells(plain_only=True))
def test_weight_grad(benchmark, shape, dtype):
    net, X, _, _, delta1 = _arrays(shape, dtype)
    args = ((BLAS_GEMM[net.dtype], 0), X, delta1, np.empty_like(net.coefs[0]))
    _weight_loop(1, *args)
    benchmark.group = f"weight_grad|{shape}-{dtype}"
    benchmark(_weight_loop, CALLS, *args)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize(("shape", "dtype"), cells(plain_only=True))
def test_optimizer_update(benchmark, shape, dtype, optimizer):
    net, *_ = _arrays(shape, dtype)
    opt = fastbp.SGD(0.01) if optimizer == "sgd" else fastbp.Adam()
    opt.init_state(net.n_params, dtype)
    g = np.random.default_rng(3).standard_normal(net.n_params).astype(dtype)
    args = (
        SGD if optimizer == "sgd" else ADAM,
        opt.hyper(),
        net._layout,
        net.params,
        g,
        opt.state,
        np.empty_like(net.params),
        np.zeros(net.n_layers),
    )
    _update_loop(1, *args)
    benchmark.group = f"update_{optimizer}|{shape}-{dtype}"
    benchmark(_update_loop, CALLS, *args)
