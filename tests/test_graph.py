"""fastbp.graph: the worked example of docs/background.md, every operation against central differences,
broadcasting, reuse of a value, and random MLPs written with graph operations against the fused kernels and the NumPy
reference."""

import gc
import math
import warnings

import numpy as np
import pytest
from conftest import (
    CLOSED_FORM_GRAD_ATOL,
    CLOSED_FORM_GRAD_RTOL,
    CLOSED_FORM_LOSS_RTOL,
    FD_RTOL,
    FD_STEP,
    GRAPH_RTOL,
    HAND_RTOL,
    NORM_MIN_WIDTH,
    rel_err,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import xlogy

import fastbp
from fastbp import graph as g
from fastbp import reference
from fastbp.kernels.layout import GAMMA_OFFSET


def sigma(z):
    return 1.0 / (1.0 + math.exp(-z))


# ------------------------------------------------------------------------------------------ the notes' example
def test_notes_worked_example_u1_to_u9():
    # f(w, b) = 1/2 (sigma(w x + b) - y)^2 + 1/2 w^2, decomposed into the notes' nodes u1..u9, built in their order.
    x0, y0, w0, b0 = 1.5, 0.2, 0.8, -0.3
    w, x, b, y = g.Variable(w0, "w"), g.Variable(x0, "x"), g.Variable(b0, "b"), g.Variable(y0, "y")
    u1 = w * x
    u2 = u1 + b
    u3 = g.sigmoid(u2)
    u4 = u3 - y
    u5 = u4**2
    u6 = 0.5 * u5
    u7 = w**2
    u8 = 0.5 * u7
    u9 = u6 + u8
    table = g.gradient_table(u9)
    print()
    print(table)  # shown with pytest -s: the notes' gradient table

    # The notes' formulas, computed here independently of the graph: s = sigma(wx + b), s' = s (1 - s).
    s = sigma(w0 * x0 + b0)
    ds = s * (1.0 - s)
    df_dw = x0 * ds * (s - y0) + w0
    df_db = ds * (s - y0)
    dw, db = g.grad(u9, [w, b])
    assert isinstance(dw, float) and isinstance(db, float)
    assert dw == pytest.approx(df_dw, rel=HAND_RTOL)
    assert db == pytest.approx(df_db, rel=HAND_RTOL)
    assert float(u9) == pytest.approx(0.5 * (s - y0) ** 2 + 0.5 * w0**2, rel=HAND_RTOL)

    # The table: creation order w, x, b, y, u1..u9; the children sets S(u) listed in the notes; and df/du per node.
    rows = {row.name: row for row in table}
    assert [row.name for row in table] == ["w", "x", "b", "y"] + [f"u{k}" for k in range(1, 10)]
    children = {"w": ["u1", "u7"], "x": ["u1"], "b": ["u2"], "y": ["u4"], "u1": ["u2"], "u2": ["u3"]}
    children.update({"u3": ["u4"], "u4": ["u5"], "u5": ["u6"], "u6": ["u9"], "u7": ["u8"], "u8": ["u9"], "u9": []})
    assert {name: row.children for name, row in rows.items()} == children
    expected = {
        "u9": 1.0,
        "u8": 1.0,
        "u7": 0.5,
        "u6": 1.0,
        "u5": 0.5,
        "u4": s - y0,
        "u3": s - y0,
        "u2": ds * (s - y0),
        "u1": ds * (s - y0),
        "b": ds * (s - y0),
        "w": df_dw,
        "x": w0 * ds * (s - y0),
        "y": -(s - y0),
    }
    for name, value in expected.items():
        assert float(rows[name].grad) == pytest.approx(value, rel=HAND_RTOL), name
    assert rows["u1"].definition == "multiply(w, x)" and rows["u5"].definition == "power(u4, 2)"
    assert rows["u6"].definition == "multiply(0.5, u5)"  # constants are shown by value, not as nodes
    text = str(table)
    assert text.splitlines()[0].split() == ["node", "definition", "children", "S(u)", "value", "df/du"]
    assert "{u1, u7}" in text


def test_reused_values_add_up():
    # x * x: one child, two input slots -> dz/dx = 2x. a = 2x has two children (a * a and + a):
    # f = a^2 + a, df/dx = (2a + 1) * 2. All numbers are exact in binary.
    x = g.Variable(np.array([1.5, -2.0, 0.25]))
    np.testing.assert_array_equal(g.grad(g.sum(x * x), x), [3.0, -4.0, 0.5])
    a = x * 2.0
    f = g.sum(a * a + a)
    np.testing.assert_array_equal(g.grad(f, x), (2 * np.array([3.0, -4.0, 0.5]) + 1) * 2)
    assert len(a.children) == 2
    # A variable used in two separate products: z = x y + x -> dz/dx = y + 1, dz/dy = x.
    u, v = g.Variable(3.0), g.Variable(-0.5)
    assert g.grad(u * v + u, [u, v]) == [0.5, 3.0]


# ------------------------------------------------------------------------------------------ finite differences
def central_differences(f, variables):
    """df/dv by central differences, re-running the graph's forward pass (topological order) for each step."""
    grads = []
    for v in variables:
        base = v.value.copy()
        grad = np.empty_like(base)
        for i in np.ndindex(base.shape):
            values = []
            for step in (FD_STEP, -FD_STEP):
                shifted = base.copy()
                shifted[i] += step
                v.value = shifted
                values.append(float(g.forward(f)))
            grad[i] = (values[0] - values[1]) / (2 * FD_STEP)
        v.value = base
        grads.append(grad)
    g.forward(f)
    return grads


def numpy_central_differences(f, arrays):
    """df/da for each array by central differences of ``f(*arrays)``, a plain NumPy function: independent of the
    graph engine (its gates' forward passes are not used)."""
    grads = []
    for k, base in enumerate(arrays):
        grad = np.empty_like(base)
        for i in np.ndindex(base.shape):
            values = []
            for step in (FD_STEP, -FD_STEP):
                shifted = list(arrays)
                shifted[k] = base.copy()
                shifted[k][i] += step
                values.append(float(f(*shifted)))
            grad[i] = (values[0] - values[1]) / (2 * FD_STEP)
        grads.append(grad)
    return grads


def check_against_fd(build, *arrays, rng, numpy=None):
    """Variables from ``arrays``, f = sum(build(*variables) * R) for a random constant R (so every output element
    weighs differently), and the graph's gradient against central differences: of ``numpy(*arrays)``, the same
    function written in plain NumPy, when given (and then the graph's value must equal it too), else of the graph's
    own forward pass."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    variables = [g.Variable(a) for a in arrays]
    out = build(*variables)
    R = rng.standard_normal(out.shape)
    f = g.sum(out * R)
    grads = g.grad(f, variables)
    if numpy is None:
        numeric = central_differences(f, variables)
    else:
        assert rel_err(out.value, numpy(*arrays)) <= GRAPH_RTOL
        numeric = numpy_central_differences(lambda *a: np.sum(numpy(*a) * R), arrays)
    for v, analytic, expected in zip(variables, grads, numeric, strict=True):
        assert np.shape(analytic) == v.shape
        assert rel_err(analytic, expected) <= FD_RTOL


def positive(rng, shape):
    return rng.uniform(0.5, 2.0, shape)


def away_from_zero(rng, shape):
    return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.2, 2.0, shape)


def np_sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


#: name: (graph operation, the same function in plain NumPy, input values)
UNARY = {
    "exp": (g.exp, np.exp, away_from_zero),
    "log": (g.log, np.log, positive),
    "sigmoid": (g.sigmoid, np_sigmoid, away_from_zero),
    "tanh": (g.tanh, np.tanh, away_from_zero),
    "relu": (g.relu, lambda a: np.maximum(a, 0.0), away_from_zero),  # away from the kink at 0
    "leaky_relu": (g.leaky_relu, lambda a: np.where(a > 0, a, 0.01 * a), away_from_zero),
    "leaky_relu_slope": (lambda a: g.leaky_relu(a, 0.3), lambda a: np.where(a > 0, a, 0.3 * a), away_from_zero),
    "sqrt": (g.sqrt, np.sqrt, positive),
    "negate": (lambda a: -a, np.negative, away_from_zero),
    "sum": (g.sum, np.sum, away_from_zero),
    "sum_axis0": (lambda a: g.sum(a, axis=0), lambda a: np.sum(a, axis=0), away_from_zero),
    "sum_axis1_keepdims": (
        lambda a: g.sum(a, axis=1, keepdims=True),
        lambda a: np.sum(a, axis=1, keepdims=True),
        away_from_zero,
    ),
    "mean": (g.mean, np.mean, away_from_zero),
    "mean_axis1": (lambda a: g.mean(a, axis=1), lambda a: np.mean(a, axis=1), away_from_zero),
    "mean_axis0_keepdims": (
        lambda a: g.mean(a, axis=0, keepdims=True),
        lambda a: np.mean(a, axis=0, keepdims=True),
        away_from_zero,
    ),
}


@pytest.mark.parametrize("name", UNARY)
@pytest.mark.parametrize("shape", [(), (5,), (3, 4)])
def test_unary_operations_match_finite_differences(name, shape, rng):
    op, numpy_op, values = UNARY[name]
    if "axis" in name and len(shape) < 2:
        shape = (3, 4)
    check_against_fd(op, values(rng, shape), rng=rng, numpy=numpy_op)


@pytest.mark.parametrize(("shape", "axis"), [((0,), None), ((0, 3), 0), ((3, 0), 1), ((3, 0), 0), ((0, 3), 1)])
def test_the_mean_of_nothing_is_numpy_s(shape, axis):
    # it was 0.0 where np.mean (and torch.mean) give NaN
    a = np.zeros(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice", on both sides
        expected = np.mean(a, axis=axis)
        got = g.mean(g.Node(a), axis=axis).value
    np.testing.assert_array_equal(got, expected)  # NaN where NumPy gives NaN, the same shape


BINARY = {
    "add": (lambda a, b: a + b, np.add, away_from_zero),
    "subtract": (lambda a, b: a - b, np.subtract, away_from_zero),
    "multiply": (lambda a, b: a * b, np.multiply, away_from_zero),
    "divide": (lambda a, b: a / b, np.divide, away_from_zero),
    "power": (lambda a, b: a**b, np.power, positive),  # positive bases: a^b and its derivative in b are defined
}

#: Pairs of shapes that broadcast: equal, matrix and row vector, column and row, scalar and matrix, 3-D and column.
SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 1), (1, 4)), ((), (3, 4)), ((2, 3, 4), (3, 1)), ((4,), ())]


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize(("shape_a", "shape_b"), SHAPES)
def test_binary_operations_with_broadcasting_match_finite_differences(name, shape_a, shape_b, rng):
    op, numpy_op, values = BINARY[name]
    check_against_fd(op, values(rng, shape_a), away_from_zero(rng, shape_b), rng=rng, numpy=numpy_op)
    # and the other way round
    check_against_fd(op, values(rng, shape_b), away_from_zero(rng, shape_a), rng=rng, numpy=numpy_op)


@pytest.mark.parametrize(("shape_a", "shape_b"), [((3, 4), (4, 2)), ((4,), (4, 2)), ((3, 4), (4,)), ((4,), (4,))])
def test_matmul_matches_finite_differences(shape_a, shape_b, rng):
    a, b = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
    check_against_fd(lambda a, b: a @ b, a, b, rng=rng, numpy=np.matmul)
    check_against_fd(g.matmul, a, b, rng=rng, numpy=np.matmul)


def test_operators_with_constants_on_either_side(rng):
    # Reflected operators: constants (numbers, arrays) on the left; NumPy arrays defer to the Node.
    M = rng.standard_normal((2, 3))
    c = rng.uniform(0.5, 2.0, 3)
    builds = [
        lambda a: 2.0 - a,
        lambda a: 3.0 / a,
        lambda a: 1.5**a,
        lambda a: M @ a,
        lambda a: c + a,
        lambda a: c * a - a / c,
        lambda a: a**2.5,
    ]
    for build in builds:  # each also runs on a plain NumPy array: the independent forward
        check_against_fd(build, positive(rng, (3,)), rng=rng, numpy=build)
    x = g.Variable(np.ones(3))
    assert isinstance(c + x, g.Node) and isinstance(M @ x, g.Node) and (M @ x).shape == (2,)


def np_softmax_cross_entropy(Z, Y):
    """Mean over rows of -sum_j Y_j log softmax(Z)_j, in plain NumPy (Y one-hot or probability rows)."""
    Z, Y = np.atleast_2d(Z), np.atleast_2d(Y)
    log_P = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
    return -(Y * log_P).sum() / Z.shape[0]


@pytest.mark.parametrize("targets", ["labels", "one_hot", "soft_variable", "one_sample"])
def test_softmax_cross_entropy_matches_finite_differences(targets, rng):
    logits = rng.standard_normal((5, 4))
    labels = rng.integers(0, 4, 5)
    one_hot = np.eye(4)[labels]
    if targets == "labels":
        check_against_fd(
            lambda z: g.softmax_cross_entropy(z, labels),
            logits,
            rng=rng,
            numpy=lambda z: np_softmax_cross_entropy(z, one_hot),
        )
    elif targets == "one_hot":
        check_against_fd(
            lambda z: g.softmax_cross_entropy(z, one_hot),
            logits,
            rng=rng,
            numpy=lambda z: np_softmax_cross_entropy(z, one_hot),
        )
    elif targets == "soft_variable":  # probability targets as a variable: gradient -log softmax / n for them too
        soft = rng.dirichlet(np.ones(4), 5)
        check_against_fd(g.softmax_cross_entropy, logits, soft, rng=rng, numpy=np_softmax_cross_entropy)
    else:
        check_against_fd(
            lambda z: g.softmax_cross_entropy(z, 2),
            logits[0],
            rng=rng,
            numpy=lambda z: np_softmax_cross_entropy(z, np.eye(4)[2]),
        )


def test_numpy_differences_catch_a_wrong_forward_that_graph_differences_miss(rng, monkeypatch):
    # A gate whose forward and backward are wrong in the same way (2 exp(a), with derivative 2 exp(a)): differences
    # of the graph's own forward pass agree with its backward; differences of NumPy's exp do not.
    def doubled(self, a):
        self.z = 2.0 * np.exp(a)
        return self.z

    monkeypatch.setattr(g.ExpGate, "forward", doubled)
    a = away_from_zero(rng, (4,))
    check_against_fd(g.exp, a, rng=rng)  # passes: self-consistent
    with pytest.raises(AssertionError):
        check_against_fd(g.exp, a, rng=rng, numpy=np.exp)


def test_composite_expression_with_the_graph_forward_pass_and_numpy(rng):
    # g.forward re-runs the graph: its differences and NumPy's agree with the gradient of a composite expression.
    X, W, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 2)), rng.standard_normal(2)

    def build(X, W, b):
        return g.tanh(X @ W + b) ** 2 / (1.0 + g.exp(-(X @ W)))

    def numpy_build(X, W, b):
        return np.tanh(X @ W + b) ** 2 / (1.0 + np.exp(-(X @ W)))

    check_against_fd(build, X, W, b, rng=rng)
    check_against_fd(build, X, W, b, rng=rng, numpy=numpy_build)


def test_softmax_cross_entropy_value_and_gradient_by_formula(rng):
    # Mean over samples of -log p[label]; gradient (softmax - one_hot) / n, both computed here in plain NumPy.
    Z = rng.standard_normal((6, 3)) * 3
    labels = rng.integers(0, 3, 6)
    P = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
    z = g.Variable(Z)
    loss = g.softmax_cross_entropy(z, labels)
    assert float(loss) == pytest.approx(-np.log(P[np.arange(6), labels]).mean(), rel=CLOSED_FORM_LOSS_RTOL)
    np.testing.assert_allclose(
        g.grad(loss, z), (P - np.eye(3)[labels]) / 6, rtol=CLOSED_FORM_GRAD_RTOL, atol=CLOSED_FORM_GRAD_ATOL
    )
    # One-hot float rows: the same operations (each row of Y sums to exactly 1), so the same bits.
    one_hot = g.grad(g.softmax_cross_entropy(z, np.eye(3)[labels]), z)
    np.testing.assert_array_equal(one_hot, g.grad(loss, z))
    with pytest.raises(ValueError, match="labels must be in"):
        g.softmax_cross_entropy(z, np.array([0, 1, 2, 3, 0, 1]))
    with pytest.raises(ValueError, match="labels must hold 6"):
        g.softmax_cross_entropy(z, np.array([0, 1]))


def test_broadcast_gradients_are_summed_back_to_the_input_shape():
    # f = sum(X + b) with X (3, 4), b (4,): each b_j is added to 3 elements, so df/db_j = 3; for c (3, 1), 4.
    X = g.Variable(np.zeros((3, 4)))
    b, c, s = g.Variable(np.zeros(4)), g.Variable(np.zeros((3, 1))), g.Variable(0.0)
    dX, db, dc, ds = g.grad(g.sum(X + b + c + s), [X, b, c, s])
    np.testing.assert_array_equal(dX, np.ones((3, 4)))
    np.testing.assert_array_equal(db, [3.0, 3.0, 3.0, 3.0])
    np.testing.assert_array_equal(dc, [[4.0], [4.0], [4.0]])
    assert ds == 12.0


def test_grad_api_details(rng):
    x, unused = g.Variable(rng.standard_normal(3)), g.Variable(2.0)
    f = g.sum(g.exp(x))
    assert g.grad(f, [unused]) == [0.0]  # f does not depend on it
    np.testing.assert_array_equal(g.grad(f, [x])[0], np.exp(x.value))  # d sum(exp x) / dx = exp(x), the same bits
    with pytest.raises(ValueError, match="scalar"):
        g.grad(g.exp(x), [x])
    with pytest.raises(TypeError, match="wrt"):
        g.grad(f, [np.ones(3)])
    with pytest.raises(TypeError):
        g.Variable("text")
    # The forward pass recomputes f from the variables' current values.
    x.value = np.zeros(3)
    assert g.forward(f) == 3.0 and float(f) == 3.0
    # Gradients returned are fresh arrays, not views into the graph.
    grad = g.grad(f, x)
    grad[...] = 7.0
    np.testing.assert_array_equal(g.grad(f, x), np.ones(3))


def test_children_sets_are_weak_so_unused_graphs_are_freed():
    w = g.Variable(1.0)
    f = w * 3.0 + w
    assert len(w.children) == 2
    del f
    gc.collect()
    assert len(w.children) == 0


def test_grad_of_nodes_built_from_constants_only():
    # c = exp(1) is computed from a constant only, but f depends on it: df/dc is the real derivative, not 0.
    w = g.Variable(2.0)
    c = g.exp(np.array(1.0))
    assert c.constant
    assert g.grad(c * w, c) == 2.0  # d(c w)/dc = w
    # Through other constant nodes: c2 = 3 c, f = c2 w + c: df/dc = 3 w + 1, df/dc2 = w, df/dw = c2.
    c2 = 3.0 * c
    f = c2 * w + c
    dc, dc2, dw = g.grad(f, [c, c2, w])
    assert (dc, dc2) == (7.0, 2.0) and dw == pytest.approx(3 * math.e, rel=HAND_RTOL)
    # Arrays, and a matrix product with a constant matrix on the left.
    M = g.exp(np.zeros((2, 3)))  # a constant node of ones
    x = g.Variable(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(g.grad(g.sum(M @ x), M), [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    # A constant f does not depend on: zeros. The table of f (no wrt) still leaves constants out.
    assert g.grad(c * w, g.exp(np.array(0.0))) == 0.0
    table = g.backward(f)
    assert len(table) == 3 and not any(node.constant for node in table)  # w, c2 * w, f
    assert [row.name for row in g.gradient_table(f)] == ["v1", "u1", "u2"]


def test_power_gradients_at_zero_and_for_constant_operands():
    z = g.Variable(0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no spurious divide-by-zero or invalid-value warnings
        assert g.grad(z**0, z) == 0.0  # z^0 = 1 everywhere: derivative 0, also at z = 0 (was nan)
        assert g.grad(z**1, z) == 1.0 and g.grad(z**2, z) == 0.0
        x = g.Variable(np.array([0.0, 1.5, -2.0]))
        np.testing.assert_array_equal(g.grad(g.sum(x**0), x), [0.0, 0.0, 0.0])
        # A constant base: its gradient (p 0^(p - 1), infinite here) is not computed; dz/dp = 0^p log 0 = 0.
        p = g.Variable(0.5)
        assert g.grad(0.0**p, p) == 0.0
        q = g.Variable(0.0)  # 0^0 = 1, and its derivative in p taken as 0, as PyTorch and JAX do (was -inf)
        assert g.grad(0.0**q, q) == 0.0
        base = g.Variable(0.0)
        assert g.grad(base**q, [base, q]) == [0.0, 0.0]
        assert g.grad(2.0**p, p) == pytest.approx(2.0**0.5 * math.log(2.0), rel=HAND_RTOL)
        # Exponent p = 0 next to non-zero exponents, broadcast.
        e = g.Variable(np.array([0.0, 1.0, 2.0]))
        np.testing.assert_array_equal(g.grad(g.sum(e ** np.array([0.0, 2.0, 3.0])), e), [0.0, 2.0, 12.0])


def test_softmax_cross_entropy_with_minus_infinity_logits():
    # A logit of -inf is a class of probability 0: it contributes 0 log 0 = 0, not nan (0 * -inf).
    z = g.Variable([[0.0, -np.inf, 1.0]])
    P = np.array([1.0, 0.0, math.e]) / (1.0 + math.e)
    for targets in ([0], np.array([[1.0, 0.0, 0.0]])):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loss = g.softmax_cross_entropy(z, targets)
            grad = g.grad(loss, z)
        assert float(loss) == pytest.approx(math.log(1.0 + math.e), rel=HAND_RTOL)  # 1.3133
        np.testing.assert_allclose(grad, [P - [1.0, 0.0, 0.0]], rtol=HAND_RTOL)


def test_sigmoid_gradient_is_accurate_for_large_inputs():
    # sigma'(a) = sigma(a) sigma(-a); z (1 - z) from z = sigma(a) rounds 1 - z to 0 for a > 37 (gave 0.0).
    a = np.array([-700.0, -40.0, -5.0, 0.0, 5.0, 40.0, 700.0])
    x = g.Variable(a)
    e = np.exp(-np.abs(a))
    np.testing.assert_allclose(g.grad(g.sum(g.sigmoid(x)), x), e / (1.0 + e) ** 2, rtol=HAND_RTOL)
    v = g.Variable(40.0)
    assert g.grad(g.sigmoid(v), v) == pytest.approx(math.exp(-40.0), rel=HAND_RTOL)  # 4.25e-18, was 0.0


def test_relu_keeps_nan_and_blocks_an_infinite_gradient_as_torch_does():
    # NaN became 0 (a diverged parameter hidden, a finite loss); an inactive unit under an infinite gradient gave NaN
    torch = pytest.importorskip("torch")
    x = np.array([-1.0, 0.0, np.nan, 2.0])
    v = g.Variable(x)
    out = g.relu(v)
    np.testing.assert_array_equal(out.value, np.maximum(x, 0.0))  # [0, 0, nan, 2]
    t = torch.tensor(x, requires_grad=True)
    torch.relu(t).sum().backward()
    np.testing.assert_array_equal(g.grad(g.sum(out), v), t.grad.numpy())  # [0, 0, 1, 1]
    finite = np.array([-1.0, 0.0, 2.0])
    w = g.Variable(finite)
    t = torch.tensor(finite, requires_grad=True)
    torch.sqrt(torch.relu(t)).sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # sqrt's derivative at 0: inf, as torch's
        np.testing.assert_allclose(g.grad(g.sum(g.sqrt(g.relu(w))), w), t.grad.numpy(), rtol=HAND_RTOL)  # 0, 0, 0.35


def test_softmax_cross_entropy_label_dtype_errors_state_the_rule(rng):
    z = g.Variable(rng.standard_normal((4, 3)))
    one_hot_ints = np.eye(3, dtype=np.int64)[[0, 1, 2, 0]]
    with pytest.raises(ValueError, match=r"integer dtype means class labels.*astype\(float\)"):
        g.softmax_cross_entropy(z, one_hot_ints)
    with pytest.raises(ValueError, match=r"floating dtype means target rows.*astype\(int\)"):
        g.softmax_cross_entropy(z, np.array([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match=r"floating dtype means target rows.*astype\(int\)"):
        g.softmax_cross_entropy(g.Variable(np.zeros(3)), 1.0)
    with pytest.raises(ValueError, match=r"target rows of the logits' shape \(4, 3\)"):
        g.softmax_cross_entropy(z, g.Variable(np.zeros((4, 2))))
    with pytest.raises(TypeError, match="not booleans"):
        g.softmax_cross_entropy(z, np.array([True, False, True, True]))
    for shape in ((4, 1), (1, 4), (2, 2)):  # flattened before: any shape of 4 labels was taken
        with pytest.raises(ValueError, match=rf"got shape \({shape[0]}, {shape[1]}\)"):
            g.softmax_cross_entropy(z, np.zeros(shape, dtype=np.int64))
    with pytest.raises(ValueError, match=r"got a label of 9223372036854775813"):  # was wrapped to a negative
        g.softmax_cross_entropy(z, np.array([0, 1, 2, 2**63 + 5], dtype=np.uint64))
    with pytest.raises(TypeError, match="wrt must be a graph Node or a list of Nodes, got float"):
        g.grad(g.sum(z), 3.0)
    # One sample's label as a one-element int array, whatever the class count (one class was refused as a one-hot
    # row, two were taken as a label); torch's cross-entropy of a single class is 0 with a zero gradient.
    for k in (1, 2, 3):
        v = g.Variable(np.linspace(0.1, 0.5, k))
        expected = g.softmax_cross_entropy(v, k - 1)
        loss = g.softmax_cross_entropy(v, np.array([k - 1]))
        assert float(loss) == float(expected)
        np.testing.assert_array_equal(g.grad(loss, v), g.grad(expected, v))
    # The right dtypes work.
    assert float(g.softmax_cross_entropy(z, one_hot_ints.astype(float))) == pytest.approx(
        float(g.softmax_cross_entropy(z, np.array([0, 1, 2, 0]))), rel=HAND_RTOL
    )


@pytest.mark.parametrize("fn", [g.exp, g.log, g.sigmoid, g.tanh, g.relu, g.leaky_relu, g.sqrt, g.sum, g.mean, g.matmul])
def test_functions_document_shapes_and_dtypes(fn):
    doc = fn.__doc__
    assert "float64" in doc and "shape" in doc and "Node" in doc, doc


# ------------------------------------------------------------------------------------------ MLPs as graphs
#: The normalizations' epsilon, PyTorch's default for BatchNorm1d and LayerNorm (written here, not taken from fastbp).
NORM_EPS = 1e-5


def normalize(Z, axis):
    """(Z - mean) / sqrt(var + eps) over ``axis`` (0: each column over the batch, batch norm in training; 1: each
    row over the features, layer norm), with the biased variance, from elementary graph operations."""
    centred = Z - g.mean(Z, axis=axis, keepdims=True)
    var = g.mean(centred * centred, axis=axis, keepdims=True)
    return centred / g.sqrt(var + NORM_EPS)


def graph_value_and_grad(net, X, Y, masks=None):
    """fastbp's loss (mean per-sample loss + l2/2 sum W^2) written with graph operations; returns (loss, flat grad).

    The hidden layers' options are written with graph operations too: ``N = gamma * normalize(Z) + beta`` (batch
    norm with the batch's statistics, as in training, or layer norm), ``H = f(N)``, dropout as the constant factors
    ``masks[l]`` ((n, fan_out): 0, or 1 / (1 - p) for a kept unit; None or a None entry: no dropout), and ``A = A_prev
    + H`` with a residual connection. The flat gradient is laid out like ``params`` (gamma and beta included)."""
    n = X.shape[0]
    L = net.n_layers
    Ws = [g.Variable(W) for W in net.coefs]
    bs = [g.Variable(b) for b in net.intercepts]
    normed = [l for l in range(L - 1) if net.norms[l] is not None]
    gammas = {l: g.Variable(net.norm_scales[l]) for l in normed}
    betas = {l: g.Variable(net.norm_shifts[l]) for l in normed}
    activation = {
        "relu": g.relu,
        "leaky_relu": g.leaky_relu,
        "tanh": g.tanh,
        "sigmoid": g.sigmoid,
        "identity": lambda Z: Z,
    }
    A = X
    for l, (W, b) in enumerate(zip(Ws, bs, strict=True)):
        Z = A @ W + b
        if l == L - 1:
            break
        if net.norms[l] is not None:
            Z = gammas[l] * normalize(Z, 0 if net.norms[l] == "batch" else 1) + betas[l]
        H = activation[net.activations[l]](Z)
        if masks is not None and masks[l] is not None:
            H = H * masks[l]
        A = A + H if net.residuals[l] else H
    if net.loss == "cross_entropy":  # softmax output: labels (ints) or one-hot rows (floats)
        loss = g.softmax_cross_entropy(Z, Y)
    elif net.loss == "binary_cross_entropy":  # sigmoid output, sum over outputs, mean over samples
        # -y log p - (1 - y) log(1 - p) = max(z, 0) - y z + log(1 + exp(-|z|)), |z| = relu(z) + relu(-z): without
        # the log(0) of a saturated sigmoid (deep residual networks reach large logits)
        magnitude = g.relu(Z) + g.relu(-Z)
        loss = g.sum(g.relu(Z) - Y * Z + g.log(1.0 + g.exp(-magnitude))) / n
    elif net.loss == "poisson":  # exp output, half Poisson deviance y log(y / a) - y + a with a = exp(z)
        loss = g.sum(g.exp(Z) - Y * Z + (xlogy(Y, Y) - Y)) / n
    else:  # identity output, squared error 1/2 ||a - y||^2 per sample
        loss = 0.5 * g.sum((Z - Y) ** 2) / n
    for W in Ws:
        loss = loss + 0.5 * net.l2 * g.sum(W * W)
    grads = np.empty(net.n_params)
    dWs, dbs = net.unflatten(grads)
    dgammas = [grads[net.layout[l, GAMMA_OFFSET] :][: net.layer_sizes[l + 1]] for l in normed]
    dbetas = [grads[net.layout[l, GAMMA_OFFSET] + net.layer_sizes[l + 1] :][: net.layer_sizes[l + 1]] for l in normed]
    wrt = Ws + bs + [gammas[l] for l in normed] + [betas[l] for l in normed]
    for dst, value in zip(dWs + dbs + dgammas + dbetas, g.grad(loss, wrt), strict=True):
        dst[...] = value
    return float(loss), grads


OUTPUTS = (
    ("softmax", "cross_entropy"),
    ("sigmoid", "binary_cross_entropy"),
    ("identity", "squared_error"),
    ("exp", "poisson"),
)


@settings(max_examples=40, deadline=None)
@given(
    widths=st.lists(st.integers(1, 6), min_size=0, max_size=3),
    n_in=st.integers(1, 5),
    n_out=st.integers(1, 4),
    n=st.integers(1, 6),
    data=st.data(),
    pair=st.sampled_from(OUTPUTS),
    l2=st.sampled_from([0.0, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_graph_mlp_equals_fused_kernels_and_reference(widths, n_in, n_out, n, data, pair, l2, seed):
    output, loss_name = pair
    n_out = max(n_out, 2) if output == "softmax" else n_out
    activations = [data.draw(st.sampled_from(["relu", "tanh", "sigmoid", "identity"])) for _ in widths]
    net = fastbp.MLP([n_in, *widths, n_out], activations, output, loss_name, l2=l2, dtype="float64", seed=seed)
    rng = np.random.default_rng(seed)
    for b in net.intercepts:  # non-zero biases, so that no bias gradient is trivially symmetric
        b[...] = 0.5 * rng.standard_normal(b.shape)
    X = rng.standard_normal((n, n_in))
    if output == "softmax":
        Y = rng.integers(0, n_out, n)
        if data.draw(st.booleans()):
            Y = np.eye(n_out)[Y]
    elif output == "sigmoid":
        Y = rng.random((n, n_out))
    elif output == "exp":
        Y = rng.poisson(1.5, (n, n_out)).astype(np.float64)  # counts, zeros included
    else:
        Y = rng.standard_normal((n, n_out))
    value, grads = graph_value_and_grad(net, X, Y)
    fused_value, fused = net.value_and_grad(X, Y)
    ref_value, ref = reference.value_and_grad(net, X, Y)
    assert rel_err(grads, fused) <= GRAPH_RTOL
    assert rel_err(grads, ref) <= GRAPH_RTOL
    assert value == pytest.approx(fused_value, rel=GRAPH_RTOL)
    assert value == pytest.approx(ref_value, rel=GRAPH_RTOL)


def np_normalize(Z, axis):
    return (Z - Z.mean(axis=axis, keepdims=True)) / np.sqrt(Z.var(axis=axis, keepdims=True) + NORM_EPS)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape", [(2, 3), (5, 4), (7, 1)])
def test_normalization_from_graph_operations_matches_finite_differences(axis, shape, rng):
    # batch norm (axis 0) and layer norm (axis 1) with an affine map, composed of mean, subtract, multiply, sqrt and
    # divide; one feature (layer norm of width 1: x_hat = 0) and two rows (batch norm: x_hat = +-1) included
    def build(Z, gamma, beta):
        return gamma * normalize(Z, axis) + beta

    def numpy_build(Z, gamma, beta):
        return gamma * np_normalize(Z, axis) + beta

    Z, gamma, beta = rng.standard_normal(shape), away_from_zero(rng, shape[1]), rng.standard_normal(shape[1])
    check_against_fd(build, Z, gamma, beta, rng=rng, numpy=numpy_build)


@settings(max_examples=30, deadline=None)
@given(
    width=st.integers(NORM_MIN_WIDTH, 6),
    depth=st.integers(1, 3),
    n=st.integers(2, 7),
    data=st.data(),
    pair=st.sampled_from(OUTPUTS),
    seed=st.integers(0, 2**16),
)
def test_graph_mlp_with_layer_options_equals_fused_kernels_and_reference(width, depth, n, data, pair, seed):
    # batch norm, layer norm and residual connections written with graph operations (training mode, no dropout; tests/
    # test_layers.py has many more, and dropout)
    output, loss_name = pair
    n_out = 3 if output == "softmax" else 2
    norm = [data.draw(st.sampled_from([None, "batch", "layer"])) for _ in range(depth)]
    residual = [data.draw(st.booleans()) for _ in range(depth)]
    activations = [data.draw(st.sampled_from(["relu", "leaky_relu", "tanh", "sigmoid", "identity"])) for _ in norm]
    net = fastbp.MLP(
        [width] * (depth + 1) + [n_out],
        activations,
        output,
        loss_name,
        l2=0.1,
        dtype="float64",
        seed=seed,
        norm=norm,
        residual=residual,
    )
    rng = np.random.default_rng(seed)
    for v in [*net.intercepts, *(s for s in net.norm_shifts if s is not None)]:
        v[...] = 0.5 * rng.standard_normal(v.shape)
    for gamma in net.norm_scales:
        if gamma is not None:
            gamma[...] = 1.0 + 0.5 * rng.standard_normal(gamma.shape)
    X = rng.standard_normal((n, width))
    Y = rng.integers(0, n_out, n) if output == "softmax" else rng.random((n, n_out))
    value, grads = graph_value_and_grad(net, X, Y)
    fused_value, fused = net.value_and_grad(X, Y)
    ref_value, ref = reference.value_and_grad(net, X, Y)
    assert rel_err(grads, fused) <= GRAPH_RTOL
    assert rel_err(grads, ref) <= GRAPH_RTOL
    assert value == pytest.approx(fused_value, rel=GRAPH_RTOL)
    assert value == pytest.approx(ref_value, rel=GRAPH_RTOL)


def test_a_gradient_table_keeps_each_node_on_one_line():
    # small arrays are printed whole: a 2 x 2 value spans lines in NumPy's format, which broke the table's rows
    W, x = g.Variable(np.array([[1.0, -2.0], [0.5, 3.0]]), "W"), g.Variable(np.array([[0.25, -1.0]]), "x")
    f = g.sum(g.matmul(x, W) ** 2)
    lines = str(g.gradient_table(f)).splitlines()
    assert len(lines) == len(g.gradient_table(f)) + 2  # header, rule, one line per node
    assert any("[[ 1. , -2. ], [ 0.5, 3. ]]" in line for line in lines)
