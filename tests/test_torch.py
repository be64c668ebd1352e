"""fastbp.torch.MLP against the equivalent torch.nn.Sequential (Linear + activation, same weights) and fastbp."""

import copy
import io
import pickle
import time

import numpy as np
import pytest
from conftest import DTYPES, HIDDEN, RTOL, TORCH_RTOL, rel_err

torch = pytest.importorskip("torch")
import fastbp  # noqa: E402
import fastbp.torch as fbt  # noqa: E402

OUTPUTS = ("identity", "softmax", "sigmoid", "tanh", "relu", "leaky_relu", "exp")
SIZES = [6, 9, 7, 5]
TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}

# The torch module of each activation, written out here rather than taken from the code under test.
TORCH_ACTIVATION = {
    "identity": None,
    "sigmoid": torch.nn.Sigmoid,
    "tanh": torch.nn.Tanh,
    "relu": torch.nn.ReLU,
    "leaky_relu": lambda: torch.nn.LeakyReLU(0.01),
    "softmax": lambda: torch.nn.Softmax(dim=1),
    "exp": lambda: type("Exp", (torch.nn.Module,), {"forward": lambda self, x: torch.exp(x)})(),
}


def sequential(model, hidden, output):
    """torch.nn.Sequential with model's weights: Linear.weight = W.T (fastbp's W is (fan_in, fan_out))."""
    layers = []
    names = [hidden] * (len(model.coefs) - 1) + [output]
    for W, b, name in zip(model.coefs, model.intercepts, names, strict=True):
        linear = torch.nn.Linear(*W.shape, dtype=W.dtype)
        with torch.no_grad():
            linear.weight.copy_(W.T)
            linear.bias.copy_(b)
        layers.append(linear)
        if TORCH_ACTIVATION[name] is not None:
            layers.append(TORCH_ACTIVATION[name]())
    return torch.nn.Sequential(*layers)


def linears(seq):
    return [m for m in seq if isinstance(m, torch.nn.Linear)]


def assert_grads_match(model, seq, rtol):
    """Each W.grad / b.grad of the fastbp module equals the Sequential's (weight grads transposed)."""
    for l, (W, b, linear) in enumerate(zip(model.coefs, model.intercepts, linears(seq), strict=True)):
        assert rel_err(W.grad.T, linear.weight.grad) < rtol, f"dW[{l}]"
        assert rel_err(b.grad, linear.bias.grad) < rtol, f"db[{l}]"


def assert_params_match(model, seq, rtol):
    for l, (W, b, linear) in enumerate(zip(model.coefs, model.intercepts, linears(seq), strict=True)):
        assert rel_err(W.detach().T, linear.weight.detach()) < rtol, f"W[{l}]"
        assert rel_err(b.detach(), linear.bias.detach()) < rtol, f"b[{l}]"


def batch(n, n_in, dtype, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, n_in, generator=g, dtype=dtype)
    return X.requires_grad_(requires_grad)


def _count_passes(monkeypatch):
    """Count the module's compiled passes by the GEMM they call (``torch``: the BLAS torch links, ``fastbp``:
    SciPy's, fastbp's own) and by where they read the parameters (``gathered``: a copy gathered by the forward
    pass; ``flat``: the module's own flat buffer)."""
    calls = {"torch": 0, "fastbp": 0, "gathered": 0, "flat": 0}
    torch_gemms = set(fbt._torch_gemm().values())

    def counted(name):
        function = getattr(fbt, name)

        def wrapper(marker, network, *args):
            gemm = network[4]
            assert gemm in torch_gemms or gemm == fbt.BLAS_GEMM[np.dtype(type(marker))]
            calls["torch" if gemm in torch_gemms else "fastbp"] += 1
            return function(marker, network, *args)

        monkeypatch.setattr(fbt, name, wrapper)

    for name in ("_bridge_forward_entry", "_bridge_backward_entry"):
        counted(name)
    parameters = fbt._Engine.parameters

    def where(self, params):
        network, gathered = parameters(self, params)
        calls["flat" if gathered is None else "gathered"] += 1
        return network, gathered

    monkeypatch.setattr(fbt._Engine, "parameters", where)
    return calls


@pytest.fixture
def torch_threads():
    """Restore torch's thread count after the test."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=["fastbp", "gathered", "torch"])
def gemms(request, monkeypatch, torch_threads):
    """Which path runs the module's passes: fastbp's BLAS on the parameters' own flat buffer, fastbp's BLAS on
    parameters gathered by the forward pass (the path of parameters that are not one flat buffer, forced here), or
    the BLAS that torch links, on torch's threads (torch on 2 threads); the calibration is made to choose the GEMM of
    the path. Checks afterwards that every pass of the test took that path."""
    if request.param == "torch" and not fbt._torch_gemm():
        pytest.skip("this torch build exports no Fortran GEMM")
    calls = _count_passes(monkeypatch)
    monkeypatch.setattr(fbt._Engine, "calibrate", lambda *args: request.param == "torch")
    if request.param == "torch":
        torch.set_num_threads(2)
    elif request.param == "gathered":
        use = fbt._Engine.use

        def not_flat(self, params):
            use(self, params)
            self.flat_entry = None

        monkeypatch.setattr(fbt._Engine, "use", not_flat)
    yield request.param
    gemm = "torch" if request.param == "torch" else "fastbp"
    where = "gathered" if request.param == "gathered" else "flat"
    other = {"torch": "fastbp", "fastbp": "torch"}[gemm]
    assert calls[gemm] > 0 and calls[other] == 0, calls
    assert calls[where] > 0 and calls[{"flat": "gathered", "gathered": "flat"}[where]] == 0, calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_matches_sequential(hidden, output, dtype, gemms):
    """Output, parameter gradients and input gradient equal torch's for an arbitrary upstream gradient, with the
    GEMMs run by fastbp's BLAS or by torch (large layers while torch uses several threads)."""
    tdtype = TORCH_DTYPES[dtype]
    model = fbt.MLP(SIZES, activation=hidden, output=output, dtype=tdtype, seed=3)
    seq = sequential(model, hidden, output)
    X = batch(11, SIZES[0], tdtype)
    X_ref = X.detach().clone().requires_grad_(True)
    G = torch.randn(11, SIZES[-1], generator=torch.Generator().manual_seed(1), dtype=tdtype)

    Y, Y_ref = model(X), seq(X_ref)
    assert Y.dtype == tdtype and Y.shape == (11, SIZES[-1])
    assert rel_err(Y.detach(), Y_ref.detach()) < TORCH_RTOL[dtype]
    Y.backward(G)
    Y_ref.backward(G)
    assert_grads_match(model, seq, TORCH_RTOL[dtype])
    assert rel_err(X.grad, X_ref.grad) < TORCH_RTOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_gradient_equals_fastbp(dtype):
    """CrossEntropyLoss on the logits gives fastbp's own softmax + cross-entropy gradient (a second oracle)."""
    tdtype = TORCH_DTYPES[dtype]
    net = fastbp.MLP([8, 16, 16, 4], activation="tanh", output="softmax", dtype=dtype, seed=5)
    model = fbt.MLP.from_fastbp(net, output="identity")
    assert model.dtype == tdtype and model.output == "identity"
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 8)).astype(dtype)
    y = rng.integers(0, 4, 20)
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(X)), torch.from_numpy(y))
    loss.backward()
    expected_loss, expected = net.value_and_grad(X, y)
    assert abs(loss.item() - expected_loss) <= RTOL[dtype] * abs(expected_loss)
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert rel_err(got, expected) < RTOL[dtype]


@pytest.mark.parametrize(
    ("optimizer", "kwargs"),
    [
        (torch.optim.SGD, {"lr": 0.1}),
        (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
        (torch.optim.Adam, {"lr": 1e-2}),
    ],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_optimizer_trains_like_sequential(optimizer, kwargs, dtype):
    """Several steps of a torch optimizer on CrossEntropyLoss leave the same parameters as on the Sequential."""
    tdtype = TORCH_DTYPES[dtype]
    model = fbt.MLP([10, 32, 16, 3], activation="relu", dtype=tdtype, seed=1)
    seq = sequential(model, "relu", "identity")
    opt, opt_ref = optimizer(model.parameters(), **kwargs), optimizer(seq.parameters(), **kwargs)
    loss_fn = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(8):
        X = torch.randn(16, 10, generator=g, dtype=tdtype)
        y = torch.randint(0, 3, (16,), generator=g)
        for m, o in ((model, opt), (seq, opt_ref)):
            o.zero_grad()
            loss = loss_fn(m(X), y)
            loss.backward()
            o.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # it trains
    assert_params_match(model, seq, TORCH_RTOL[dtype])


def test_gradients_accumulate_without_zero_grad():
    """Two backward passes without zero_grad add up, as in torch (the second is added into p.grad)."""
    model = fbt.MLP([4, 6, 3], activation="sigmoid", seed=0)
    seq = sequential(model, "sigmoid", "identity")
    for X in (batch(5, 4, torch.float32, seed=1), batch(7, 4, torch.float32, seed=2)):
        model(X).pow(2).sum().backward()
        seq(X).pow(2).sum().backward()
    assert_grads_match(model, seq, TORCH_RTOL["float32"])


def test_two_graphs_alive_at_once():
    """Two forward passes before one backward (each graph keeps its own activations in its own workspace)."""
    model = fbt.MLP([4, 8, 8, 3], activation="tanh", seed=0)
    seq = sequential(model, "tanh", "identity")
    X1, X2 = batch(7, 4, torch.float32, seed=1), batch(7, 4, torch.float32, seed=2)
    (model(X1).sum() + model(X2).pow(2).sum()).backward()
    (seq(X1).sum() + seq(X2).pow(2).sum()).backward()
    assert_grads_match(model, seq, TORCH_RTOL["float32"])


def test_frozen_parameters_and_input_without_grad(gemms):
    """Parameters with requires_grad=False get no gradient; the others are unchanged; X gets none when not asked."""
    model = fbt.MLP([5, 8, 6, 2], activation="relu", seed=0)
    seq = sequential(model, "relu", "identity")
    for m in (model, seq):
        for p in list(m.parameters())[:3]:  # W0, b0, W1 (for seq: weight0, bias0, weight1)
            p.requires_grad_(False)
    X = batch(6, 5, torch.float32, requires_grad=False)
    model(X).sum().backward()
    seq(X).sum().backward()
    assert model.W0.grad is None and model.b0.grad is None and model.W1.grad is None
    assert X.grad is None
    assert rel_err(model.b1.grad, linears(seq)[1].bias.grad) < TORCH_RTOL["float32"]
    assert rel_err(model.W2.grad.T, linears(seq)[2].weight.grad) < TORCH_RTOL["float32"]


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4), (0, 4)])
def test_input_shapes(shape, gemms):
    """(*, n_in) inputs like torch Linear: unbatched, extra leading dimensions, empty batches."""
    model = fbt.MLP([4, 5, 3], activation="relu", seed=0)
    seq = sequential(model, "relu", "identity")
    X = torch.randn(*shape).requires_grad_(True)
    X_ref = X.detach().clone().requires_grad_(True)
    Y, Y_ref = model(X), seq(X_ref)
    assert Y.shape == (*shape[:-1], 3)
    assert rel_err(Y.detach(), Y_ref.detach()) < TORCH_RTOL["float32"]
    Y.sum().backward()
    Y_ref.sum().backward()
    assert rel_err(X.grad, X_ref.grad) < TORCH_RTOL["float32"]
    assert_grads_match(model, seq, TORCH_RTOL["float32"])


def test_a_nan_input_row_passes_gradients_through_relu_as_torch_does():
    # relu'(NaN) was 0 (a > 0 is False), where torch's relu passes the gradient on (its test is input <= 0)
    model = fbt.MLP([4, 6, 3], activation="relu", dtype=torch.float64, seed=0)
    seq = sequential(model, "relu", "identity")
    X = batch(5, 4, torch.float64)
    with torch.no_grad():
        X[2, 1] = float("nan")
    X_ref = X.detach().clone().requires_grad_(True)
    G = torch.ones(5, 3, dtype=torch.float64)
    model(X).backward(G)
    seq(X_ref).backward(G)
    torch.testing.assert_close(X.grad, X_ref.grad, equal_nan=True, rtol=TORCH_RTOL["float64"], atol=0.0)
    assert X.grad[2].abs().min() > 0  # the NaN row's units are all active: its gradient is not cut (0 before)


@pytest.mark.parametrize("shape", [(3, 5), (5,), ()])
def test_a_wrong_input_width_is_caught_as_torch_linear_s_error_is(shape):
    # torch's Linear raises RuntimeError ("mat1 and mat2 shapes cannot be multiplied"); fastbp raised ValueError only
    model = fbt.MLP([4, 5, 3], seed=0)
    X = torch.zeros(shape)
    with pytest.raises(RuntimeError):
        sequential(model, "relu", "identity")(X)
    with pytest.raises(RuntimeError, match=r"X must have shape \(\*, 4\)") as caught:
        model(X)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("frozen", [(), ("W0", "b0"), ("W1",)])
@pytest.mark.parametrize("x_grad", [True, False])
def test_frozen_parameters_with_and_without_input_grad(frozen, x_grad, gemms):
    """Any mix of frozen parameters, with an input with or without grad, on every path of the passes."""
    model = fbt.MLP(SIZES, activation="tanh", output="softmax", dtype=torch.float64, seed=5)
    seq = sequential(model, "tanh", "softmax")
    for name in frozen:
        getattr(model, name).requires_grad_(False)
        layer, kind = int(name[1]), name[0]
        getattr(linears(seq)[layer], "weight" if kind == "W" else "bias").requires_grad_(False)
    X = batch(11, SIZES[0], torch.float64, requires_grad=x_grad)
    X_ref = X.detach().clone().requires_grad_(x_grad)
    G = torch.randn(11, SIZES[-1], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    Y, Y_ref = model(X), seq(X_ref)
    assert rel_err(Y.detach(), Y_ref.detach()) < TORCH_RTOL["float64"]
    Y.backward(G)
    Y_ref.backward(G)
    for l, (W, b, linear) in enumerate(zip(model.coefs, model.intercepts, linears(seq), strict=True)):
        for mine, theirs, transpose in ((W, linear.weight, True), (b, linear.bias, False)):
            if theirs.grad is None:
                assert mine.grad is None, l
            else:
                assert rel_err(mine.grad.T if transpose else mine.grad, theirs.grad) < TORCH_RTOL["float64"], l
    assert (X.grad is None) == (not x_grad)
    if x_grad:
        assert rel_err(X.grad, X_ref.grad) < TORCH_RTOL["float64"]


@pytest.mark.parametrize("slower", ["torch", "fastbp"])
def test_the_gemms_go_the_way_measured_faster(monkeypatch, torch_threads, slower):
    """With torch on several threads, the GEMMs go to torch's BLAS or to fastbp's, whichever forward pass was timed
    faster (here one of the two is slowed down), measured once per batch size (within a factor of 2)."""
    if not fbt._torch_gemm():
        pytest.skip("this torch build exports no Fortran GEMM")
    torch.set_num_threads(2)
    torch_gemms = set(fbt._torch_gemm().values())
    run, calibrate = fbt._Engine._run, fbt._Engine.calibrate
    calibrations, timed = [], []  # batch sizes calibrated; whether each timed pass went to torch's BLAS

    def slowed(self, network, X, workspace, out):
        timed.append(network[4] in torch_gemms)
        if timed[-1] == (slower == "torch"):
            time.sleep(0.01)
        return run(self, network, X, workspace, out)

    def calibrating(self, *args):
        calibrations.append(args[1].shape[0])
        monkeypatch.setattr(fbt._Engine, "_run", slowed)
        try:
            return calibrate(self, *args)
        finally:
            monkeypatch.setattr(fbt._Engine, "_run", run)

    monkeypatch.setattr(fbt._Engine, "calibrate", calibrating)
    calls = _count_passes(monkeypatch)
    model = fbt.MLP(SIZES, activation="tanh", dtype=torch.float64, seed=5)
    seq = sequential(model, "tanh", "identity")
    X = batch(11, SIZES[0], torch.float64)
    model(X).sum().backward()  # calibrates
    calls.update(dict.fromkeys(calls, 0))
    model(X).sum().backward()
    assert calibrations == [11]  # once
    assert sorted(timed) == [False] * fbt._tuning.CALIBRATION_ROUNDS + [True] * fbt._tuning.CALIBRATION_ROUNDS
    assert calls["torch" if slower == "fastbp" else "fastbp"] == 2  # the forward and the backward pass
    assert calls[slower] == 0
    for _ in range(2):
        seq(X).sum().backward()
    assert_grads_match(model, seq, TORCH_RTOL["float64"])  # accumulated over two backward passes each
    model(batch(14, SIZES[0], torch.float64))  # batch sizes 8-15 share the choice
    assert calibrations == [11]
    model(batch(20, SIZES[0], torch.float64))  # another size: measured again
    assert calibrations == [11, 20]


@pytest.mark.parametrize("n", [0, 1, 7])
def test_a_single_layer_through_torch_gemms(n, gemms):
    model = fbt.MLP([4, 3], output="sigmoid", dtype=torch.float64, seed=1)
    seq = sequential(model, "relu", "sigmoid")
    X = batch(n, 4, torch.float64)
    X_ref = X.detach().clone().requires_grad_(True)
    Y, Y_ref = model(X), seq(X_ref)
    (Y * 2).sum().backward()
    (Y_ref * 2).sum().backward()
    assert rel_err(Y.detach(), Y_ref.detach()) < TORCH_RTOL["float64"]
    if n:
        assert rel_err(X.grad, X_ref.grad) < TORCH_RTOL["float64"]
        assert_grads_match(model, seq, TORCH_RTOL["float64"])


def test_non_contiguous_and_other_dtype_input():
    """A transposed view is made contiguous and float64 input converted; the gradient still reaches X."""
    model = fbt.MLP([4, 5, 3], activation="tanh", seed=0)
    seq = sequential(model, "tanh", "identity")
    base = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    Y = model(base.T)
    assert Y.dtype == torch.float32
    Y.sum().backward()
    base_ref = base.detach().clone().requires_grad_(True)
    seq(base_ref.T.float()).sum().backward()
    assert base.grad.dtype == torch.float64
    assert rel_err(base.grad, base_ref.grad) < TORCH_RTOL["float32"]


def test_double_backward_is_refused():
    model = fbt.MLP([3, 4, 2], activation="tanh", seed=0)
    X = batch(5, 3, torch.float32)
    loss = model(X).pow(2).sum()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, X, create_graph=True)


@pytest.mark.parametrize(
    "transform",
    [
        lambda m, X: torch.func.vmap(m)(X.unsqueeze(0).expand(2, -1, -1)),
        lambda m, X: torch.func.grad(lambda x: m(x).sum())(X),
        lambda m, X: torch.func.jacrev(m)(X[0]),
        lambda m, X: torch.autograd.functional.jacobian(m, X.requires_grad_(), vectorize=True),
        lambda m, X: torch.autograd.grad(m(X.requires_grad_()), X, torch.ones(2, 5, 2), is_grads_batched=True),
    ],
    ids=["vmap", "grad", "jacrev", "vectorized-jacobian", "batched-grads"],
)
def test_torch_func_transforms_are_refused_clearly(transform):
    # not PyTorch's internal assert (the bridge calls the autograd Function's C++ apply, which skips torch's check),
    # nor "Cannot access data pointer" from a batched backward
    model = fbt.MLP([3, 4, 2], activation="tanh", seed=0)
    with pytest.raises(RuntimeError, match=r"does not support torch\.func transforms .*to_sequential"):
        transform(model, batch(5, 3, torch.float32, requires_grad=False))


def test_torch_compile_of_a_model_around_the_module_runs_its_passes_eagerly():
    # compiled before any eager call (tracing into the Numba call failed) and as part of a larger model
    module = fbt.MLP([5, 6, 3], activation="tanh", seed=0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 5), module, torch.nn.Tanh())
    X = batch(4, 5, torch.float32)
    compiled = torch.compile(model, backend="eager")
    Y = compiled(X)
    Y.sum().backward()
    dX, dW = X.grad.clone(), module.W0.grad.clone()
    X.grad = None
    module.zero_grad()
    expected = model(X)
    expected.sum().backward()
    assert torch.equal(Y, expected) and torch.equal(dX, X.grad) and torch.equal(dW, module.W0.grad)


def test_sparse_input_is_made_dense_and_parametrizations_are_refused_clearly():
    model = fbt.MLP([4, 5, 3], seed=0)
    X = torch.randn(6, 4)
    assert torch.equal(model(X.to_sparse()), model(X))
    torch.nn.utils.parametrizations.weight_norm(model, "W0")
    with pytest.raises(RuntimeError, match=r"no parametrization, pruning or added parameter.*to_sequential"):
        model(X)


def test_parameters_modified_before_backward_are_detected():
    """An in-place change of a parameter between forward and backward raises, as in torch."""
    model = fbt.MLP([3, 4, 2], activation="relu", seed=0)
    loss = model(batch(5, 3, torch.float32)).sum()
    with torch.no_grad():
        model.W1.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_parameters_are_views_of_one_flat_buffer():
    """W0, b0, W1, b1 are views into flat_params in fastbp's layout; writing into it sets the parameters."""
    net = fastbp.MLP([4, 6, 3], activation="relu", dtype="float32", seed=7)
    model = fbt.MLP([4, 6, 3], activation="relu", seed=7)
    assert [name for name, _ in model.named_parameters()] == ["W0", "b0", "W1", "b1"]
    assert model.W0.shape == (4, 6) and model.b1.shape == (3,)
    flat = model.flat_params
    assert flat.shape == (net.n_params,) and model.n_params == net.n_params
    np.testing.assert_array_equal(flat.numpy(), net.params)  # same initialisation as fastbp.MLP
    with torch.no_grad():
        flat.mul_(2.0)
    np.testing.assert_array_equal(model.W1.detach().numpy(), 2.0 * net.coefs[1])
    X = torch.randn(3, 4)
    np.testing.assert_allclose(model(X).detach().numpy(), reference_forward(2.0 * net.params, net, X), rtol=1e-5)


def reference_forward(params, net, X):
    """Plain NumPy forward of a relu network with identity output, from fastbp's flat layout."""
    Ws, bs = net.unflatten(params)
    A = X.numpy()
    for l, (W, b) in enumerate(zip(Ws, bs, strict=True)):
        A = A @ W + b
        if l < len(Ws) - 1:
            A = np.maximum(A, 0.0)
    return A


def test_state_dict_round_trip():
    # blas_threads=None: bit for bit, as in test_copies_are_independent (with "auto" each module times the two BLAS)
    model = fbt.MLP([5, 7, 3], activation="sigmoid", seed=1, blas_threads=None)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    other = fbt.MLP([5, 7, 3], activation="sigmoid", seed=2, blas_threads=None)
    X = torch.randn(4, 5)
    assert not torch.equal(other(X), model(X))
    other.load_state_dict(torch.load(buffer))
    assert torch.equal(other(X), model(X))
    assert torch.equal(other.flat_params, model.flat_params)
    assert other.W1.data_ptr() == other.flat_params.data_ptr() + 4 * (5 * 7 + 7)  # still a view, in place


def test_load_state_dict_assign_and_dtype_conversion():
    """Replaced parameter storage (assign=True, .double()) is gathered back into one flat buffer."""
    model = fbt.MLP([5, 7, 3], activation="tanh", seed=1, blas_threads=None)  # bit for bit: see above
    other = fbt.MLP([5, 7, 3], activation="tanh", seed=2, blas_threads=None)
    other.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    X = torch.randn(4, 5)
    assert torch.equal(other(X), model(X))
    assert other.b0.data_ptr() == other.flat_params.data_ptr() + 4 * 5 * 7
    double = copy.deepcopy(model).double()
    Y = double(X.double())
    assert Y.dtype == torch.float64 and double.flat_params.dtype == torch.float64
    assert rel_err(Y.detach(), model(X).detach()) < TORCH_RTOL["float32"]
    Y.sum().backward()
    assert double.W0.grad.dtype == torch.float64


def test_copies_are_independent():
    # blas_threads=None: every GEMM on fastbp's BLAS, so the outputs compare bit for bit ("auto" times torch's BLAS
    # against fastbp's per module, and a copy may pick the other one under load: equal only to the last bits)
    model = fbt.MLP([5, 7, 3], activation="relu", seed=1, blas_threads=None)
    X = torch.randn(4, 5)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(clone(X), model(X))
        with torch.no_grad():
            clone.flat_params.zero_()
        assert not torch.equal(clone(X), model(X))
        assert torch.count_nonzero(model.flat_params) > 0


@pytest.mark.parametrize("output", ["softmax", "exp"])
def test_fastbp_conversions(output):
    """from_fastbp / to_fastbp / to_sequential keep the function computed."""
    net = fastbp.MLP([6, 10, 4], activation="leaky_relu", output=output, dtype="float64", seed=2)
    X = np.random.default_rng(0).standard_normal((5, 6))
    model = fbt.MLP.from_fastbp(net)
    assert model.dtype == torch.float64 and model.output == output
    with torch.no_grad():
        P = model(torch.from_numpy(X)).numpy()
    assert rel_err(P, net.predict(X)) < RTOL["float64"]
    back = model.to_fastbp()
    assert (back.output, back.loss) == (net.output, net.loss)
    np.testing.assert_array_equal(back.params, net.params)
    with torch.no_grad():
        assert rel_err(model.to_sequential()(torch.from_numpy(X)), P) < TORCH_RTOL["float64"]


def test_conversions_keep_frozen_layers():
    """A frozen layer of the network is a layer without requires_grad in the module, and back; fastbp freezes
    whole layers, so a layer with a trainable bias stays trainable."""
    net = fastbp.MLP([6, 10, 8, 4], dtype="float64", seed=2)
    net.set_trainable(1, False)
    model = fbt.MLP.from_fastbp(net)
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, False, True, True]
    model(torch.ones(3, 6, dtype=torch.float64)).sum().backward()
    assert model.W1.grad is None and model.b1.grad is None and model.W0.grad is not None
    assert model.to_fastbp().trainable == (True, False, True)
    seq = model.to_sequential()  # the torch equivalent freezes the same parameters
    assert [p.requires_grad for p in seq.parameters()] == [p.requires_grad for p in model.parameters()]
    model.b1.requires_grad_(True)
    assert model.to_fastbp().trainable == (True, True, True)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"norm": "batch"}, "norm=['batch', 'batch']"),
        ({"norm": [None, "layer"]}, "norm=[None, 'layer']"),
        ({"residual": [False, True]}, "residual=[False, True]"),
        ({"dropout": [0.0, 0.3], "residual": True}, "residual=[True, True], dropout=[0.0, 0.3]"),
    ],
)
def test_from_fastbp_refuses_layer_options_and_names_them(options, named):
    # the bridge computes plain dense layers: a network with normalization, residual connections or dropout is
    # refused, with the options it has and what to do instead (the same network from torch.nn modules)
    net = fastbp.MLP([6, 6, 6, 3], dtype="float64", **options)
    with pytest.raises(ValueError) as info:
        fbt.MLP.from_fastbp(net)
    message = str(info.value)
    assert message.startswith("fastbp.torch.MLP computes plain dense layers, but this network has layer options")
    assert f"({named})" in message and "torch.nn modules" in message and "Linear.weight is W.T" in message
    fbt.MLP.from_fastbp(fastbp.MLP([6, 6, 6, 3], dtype="float64", dropout=0.0, residual=False, norm=None))


def test_inference_without_graph():
    model = fbt.MLP([4, 5, 3], seed=0)
    X = torch.randn(2, 4)
    with torch.no_grad():
        Y = model(X)
    assert Y.grad_fn is None and not Y.requires_grad
    assert torch.equal(Y, model(X).detach())


def test_bad_input():
    model = fbt.MLP([4, 5, 3], seed=0)
    with pytest.raises(ValueError, match=r"\(\*, 4\)"):
        model(torch.randn(2, 5))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        model(np.ones((2, 4)))
    with pytest.raises(TypeError, match="real"):
        model(torch.ones(2, 4, dtype=torch.complex64))
    with pytest.raises(TypeError, match=r"float32 or torch\.float64"):
        fbt.MLP([4, 3], dtype=torch.float16)
    with pytest.raises(ValueError, match="activation"):
        fbt.MLP([4, 5, 3], activation="gelu")


def test_training_loop_reuses_workspaces():
    """A training loop keeps at most two workspaces (the graph of the previous step is alive during the next
    forward), instead of allocating activations at every step."""
    model = fbt.MLP([4, 8, 3], seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    X, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    seen = set()
    for _ in range(10):
        opt.zero_grad()
        logits = model(X)
        torch.nn.functional.cross_entropy(logits, y).backward()
        opt.step()
        seen.update(id(w) for w in model._engine.pool)
    assert 1 <= len(seen) <= 2


def test_a_workspace_larger_than_the_pool_bound_is_freed_with_its_pass(monkeypatch):
    model = fbt.MLP([4, 8, 3], seed=0)
    monkeypatch.setattr(fbt._tuning, "BRIDGE_POOL_BYTES", 4 * (8 + 2 * 8) * 100)  # float32 workspaces of 100 rows
    with torch.no_grad():
        model(torch.randn(100, 4))
        assert [w.capacity for w in model._engine.pool] == [100]
        model(torch.randn(101, 4))  # takes the pooled one of 100 rows (too small: dropped), its own is too large
        assert model._engine.pool == []
    loss = model(torch.randn(5000, 4)).sum()
    del loss  # the graph and its workspace of 5000 rows go
    assert model._engine.pool == []
    model(torch.randn(7, 4)).sum().backward()
    assert [w.capacity for w in model._engine.pool] == [7]


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning")
def test_export_trace_and_none_parameters_are_refused_clearly():
    model = fbt.MLP([5, 8, 3], seed=0)
    X = torch.randn(4, 5)
    with pytest.raises(RuntimeError, match=r"cannot be exported, traced or scripted .*from model\.to_sequential\(\)"):
        torch.export.export(model, (X,))  # not an endless recursion
    with pytest.raises(RuntimeError, match=r"cannot be exported, traced or scripted"):
        torch.jit.trace(model, X)
    with pytest.raises(RuntimeError, match=r"cannot be exported, traced or scripted"):
        torch.jit.script(model)  # TorchScript's own error named a try block of forward
    torch.export.export(model.to_sequential(), (X,))  # what the message points to works
    torch.jit.script(model.to_sequential())
    model.W0 = None
    with pytest.raises(TypeError, match=r"parameter W0 of fastbp.torch.MLP is None: .* set its requires_grad"):
        model(X)


def test_overlapping_passes_restore_the_blas_threads_of_before_the_first():
    # two passes of other Python threads, with other settings, overlapping: the last to end restores the setting
    def counts():
        return [get() for get, _ in fbt._blas_controls()]

    before = counts()
    first = fbt._limit_blas(3)
    second = fbt._limit_blas(1)  # the second pass reads 3, a setting of the first
    fbt._restore_blas(first)
    assert counts() == [1] * len(before)  # the second pass still runs
    fbt._restore_blas(second)
    assert counts() == before


def test_input_gradient_with_frozen_parameters():
    """Only X requires grad (e.g. adversarial examples or input attribution): dX still matches torch's."""
    model = fbt.MLP([5, 8, 3], activation="tanh", output="softmax", dtype=torch.float64, seed=0)
    seq = sequential(model, "tanh", "softmax")
    model.requires_grad_(False)
    seq.requires_grad_(False)
    X = batch(4, 5, torch.float64)
    X_ref = X.detach().clone().requires_grad_(True)
    model(X)[:, 0].sum().backward()
    seq(X_ref)[:, 0].sum().backward()
    assert all(p.grad is None for p in model.parameters())
    assert rel_err(X.grad, X_ref.grad) < TORCH_RTOL["float64"]


def test_functional_call_uses_the_given_tensors():
    """torch.func.functional_call swaps in other tensors: they are used (not copied into the module) and get the
    gradients; the module's own parameters are untouched and still views of flat_params afterwards."""
    model = fbt.MLP([4, 6, 3], activation="relu", dtype=torch.float64, seed=0)
    before = model.flat_params.clone()
    other = fbt.MLP([4, 6, 3], activation="relu", dtype=torch.float64, seed=9)
    given = {name: p.detach().clone().requires_grad_(True) for name, p in other.named_parameters()}
    X = batch(5, 4, torch.float64, requires_grad=False)
    Y = torch.func.functional_call(model, given, (X,))
    assert rel_err(Y.detach(), other(X).detach()) < TORCH_RTOL["float64"]
    Y.sum().backward()
    other(X).sum().backward()
    for name, p in other.named_parameters():
        assert rel_err(given[name].grad, p.grad) < TORCH_RTOL["float64"], name
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model.flat_params, before)
    assert rel_err(model(X).detach(), sequential(model, "relu", "identity")(X).detach()) < TORCH_RTOL["float64"]


def test_a_reshaped_or_transposed_parameter_at_the_same_address_is_seen():
    """A transpose or a reshape of a parameter's own memory keeps its address: the passes must still use its values
    as laid out (functional_call with W.T), or refuse its shape (p.data = p.data.reshape(...))."""
    model = fbt.MLP([4, 6, 6, 2], activation="tanh", dtype=torch.float64, seed=1)
    X = batch(3, 4, torch.float64, requires_grad=False)
    params = {name: p.detach() for name, p in model.named_parameters()}
    for W in (model.W1.detach().T, model.W1.detach().T.clone()):  # the same values: a view, then a copy
        given = {**params, "W1": W.requires_grad_(True)}
        Y = torch.func.functional_call(model, given, (X,))
        expected = sequential(model, "tanh", "identity")
        with torch.no_grad():
            linears(expected)[1].weight.copy_(W.T)
        assert rel_err(Y.detach(), expected(X).detach()) < TORCH_RTOL["float64"]
        Y.sum().backward()
        expected(X).sum().backward()
        assert rel_err(W.grad, linears(expected)[1].weight.grad.T) < TORCH_RTOL["float64"]
    model(X)
    with torch.no_grad():
        model.W0.data = model.W0.data.reshape(6, 4)
    with pytest.raises(ValueError, match=r"has shape \(6, 4\), expected \(4, 6\)") as caught:
        model(X)
    assert isinstance(caught.value, RuntimeError)  # as torch's own shape errors


@pytest.mark.parametrize(
    ("blas_threads", "torch_threads", "limited"), [(1, 2, True), ("auto", 2, True), ("auto", 1, False)]
)
def test_blas_threads_limit_during_passes(monkeypatch, blas_threads, torch_threads, limited):
    """fastbp's BLAS runs on one thread inside the module's passes ("auto": while torch uses several threads), and
    the user's setting is restored after."""
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads_now():
        return [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]

    seen = []
    for name in ("_bridge_forward_entry", "_bridge_backward_entry"):
        kernel = getattr(fbt, name)
        monkeypatch.setattr(fbt, name, lambda *args, kernel=kernel: (seen.append(blas_threads_now()), kernel(*args)))
    model = fbt.MLP([4, 6, 3], seed=0, blas_threads=blas_threads)
    torch_before = torch.get_num_threads()
    try:
        torch.set_num_threads(torch_threads)
        with threadpoolctl.threadpool_limits(2, user_api="blas"):
            before = blas_threads_now()
            if max(before) < 2:
                pytest.skip("the BLAS libraries cannot use 2 threads on this machine")
            model(batch(3, 4, torch.float32)).sum().backward()
            after = blas_threads_now()
    finally:
        torch.set_num_threads(torch_before)
    assert after == before
    # the compiled forward and backward passes, after the calibration's timed forward passes (with "auto" while
    # torch uses several threads, when torch's library has a GEMM to compare)
    calibrated = blas_threads == "auto" and torch_threads > 1 and bool(fbt._torch_gemm())
    assert len(seen) == 2 + 2 * fbt._tuning.CALIBRATION_ROUNDS * calibrated
    assert all((1 in counts) == limited for counts in seen)  # fastbp's (SciPy's) BLAS on one thread, or untouched


def test_blas_threads_argument():
    with pytest.raises(ValueError, match="blas_threads"):
        fbt.MLP([4, 3], blas_threads=0)
    with pytest.raises(TypeError, match="blas_threads"):
        fbt.MLP([4, 3], blas_threads="many")


@pytest.mark.parametrize(("hidden", "output"), [("tanh", "softmax"), ("sigmoid", "identity"), ("leaky_relu", "tanh")])
def test_torch_gradcheck(hidden, output):
    """torch.autograd.gradcheck (central differences, float64) on the input and every parameter, through
    torch.func.functional_call so that gradcheck's own tensors are the ones differentiated."""
    model = fbt.MLP([3, 5, 4, 3], activation=hidden, output=output, dtype=torch.float64, seed=2)
    names = [name for name, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
    X = batch(4, 3, torch.float64)

    def f(X, *params):
        return torch.func.functional_call(model, dict(zip(names, params, strict=True)), (X,))

    assert torch.autograd.gradcheck(f, (X, *params), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_backward_twice_with_retain_graph():
    """retain_graph=True: a second backward through the same graph (same saved activations) adds the same grads."""
    model = fbt.MLP([4, 6, 5, 3], activation="tanh", dtype=torch.float64, seed=0)
    loss = model(batch(5, 4, torch.float64, requires_grad=False)).pow(2).sum()
    loss.backward(retain_graph=True)
    once = [p.grad.clone() for p in model.parameters()]
    loss.backward()
    for p, g in zip(model.parameters(), once, strict=True):
        assert rel_err(p.grad, 2 * g) < TORCH_RTOL["float64"]


def test_a_float32_graph_differentiates_after_a_float64_pass_of_the_same_module():
    """functional_call with float64 parameters switches the module's engine to float64 while a float32 graph is
    alive: that graph's backward pass still computes in float32, on its own buffers."""
    model = fbt.MLP(SIZES, activation="tanh", output="sigmoid", seed=5)
    seq = sequential(model, "tanh", "sigmoid")
    X = batch(11, SIZES[0], torch.float32)
    X_ref = X.detach().clone().requires_grad_(True)
    Y = model(X)
    given = {name: p.detach().double() for name, p in model.named_parameters()}
    torch.func.functional_call(model, given, (X.detach().double(),))
    Y.sum().backward()
    seq(X_ref).sum().backward()
    assert model.W0.grad.dtype == torch.float32
    assert_grads_match(model, seq, TORCH_RTOL["float32"])
    assert rel_err(X.grad, X_ref.grad) < TORCH_RTOL["float32"]


@pytest.mark.parametrize("change", ["double", "share_memory", "data"])
def test_parameters_given_new_storage_between_forward_and_backward_are_refused(change):
    """.double(), share_memory() or p.data = ... between forward and backward would leave the backward pass reading
    freed memory: a clear error instead (in-place changes are caught by autograd's version counters)."""
    model = fbt.MLP([4, 6, 3], activation="tanh", dtype=torch.float64, seed=0)
    loss = model(batch(5, 4, torch.float64)).sum()
    if change == "double":
        model.float()
    elif change == "share_memory":
        model.share_memory()
    else:
        model.W0.data = model.W0.data.clone()
    with pytest.raises(RuntimeError, match="new storage"):
        loss.backward()


@pytest.mark.parametrize("change", ["flat_params", "to_fastbp", "float"])
@pytest.mark.parametrize("storage", ["vector_to_parameters", "one copied"])
def test_making_the_parameters_one_buffer_again_between_forward_and_backward_keeps_the_backward_pass(storage, change):
    """After p.data = ...: reading flat_params, to_fastbp() or a no-op .float() between forward and backward make the
    parameters views of the module's flat buffer again, and backward() still differentiates as the torch equivalent
    does (it raised "new storage"). vector_to_parameters leaves them views of one buffer of its own, which is adopted
    as it is; a single parameter copied makes each forward pass gather them into a copy that its backward pass
    keeps."""
    model = fbt.MLP([4, 6, 3], activation="tanh", seed=2)
    seq = sequential(model, "tanh", "identity")
    if storage == "vector_to_parameters":
        vector = torch.nn.utils.parameters_to_vector(model.parameters())
        torch.nn.utils.vector_to_parameters(vector, model.parameters())
    else:
        model.W1.data = model.W1.data.clone()
    X = batch(5, 4, torch.float32)
    loss = model(X).pow(2).sum()
    if change == "flat_params":
        model.flat_params.norm()
    elif change == "to_fastbp":
        model.to_fastbp()
    else:
        model.float()
    loss.backward()
    seq(X).pow(2).sum().backward()
    assert_grads_match(model, seq, TORCH_RTOL["float32"])


def test_an_input_given_new_storage_before_backward_is_differentiated_as_it_was():
    """X.data = ... between forward and backward (not an in-place change, so autograd does not object): the backward
    pass differentiates the input the forward pass used, and writes no more rows than dX has (it wrote 4096 rows
    into a 1-row buffer: heap corruption)."""
    model = fbt.MLP([64, 32, 3], activation="tanh", dtype=torch.float64, seed=0)
    seq = sequential(model, "tanh", "identity")
    X = batch(4096, 64, torch.float64)
    X_ref = X.detach().clone().requires_grad_(True)
    Y = model(X)
    X.data = torch.zeros(1, 64, dtype=torch.float64)
    Y.sum().backward()
    seq(X_ref).sum().backward()
    assert X.grad.shape == (4096, 64)
    assert rel_err(X.grad, X_ref.grad) < TORCH_RTOL["float64"]
    assert_grads_match(model, seq, TORCH_RTOL["float64"])


def test_saved_tensor_hooks_that_copy_are_allowed():
    """Saved-tensor hooks may pack copies (offloading, compression): backward still runs, with the right gradients."""
    model = fbt.MLP([5, 8, 3], activation="relu", dtype=torch.float64, seed=0)
    seq = sequential(model, "relu", "identity")
    X = batch(6, 5, torch.float64)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
        Y = model(X)
    Y.sum().backward()
    seq(X.detach()).sum().backward()
    assert_grads_match(model, seq, TORCH_RTOL["float64"])


@pytest.mark.parametrize("convert", ["meta", "half"])
def test_a_module_on_another_device_or_dtype_can_be_copied(convert):
    """Copies of a module moved where the kernels do not run (as .to() allows): the copy raises at its forward
    pass, naming the device or dtype, and converts back."""
    model = fbt.MLP([4, 6, 3], seed=0)
    moved = model.to("meta") if convert == "meta" else model.half()
    twin = copy.deepcopy(moved)
    with pytest.raises(RuntimeError if convert == "meta" else TypeError, match=r"CPU|float16"):
        twin(torch.zeros(2, 4))
    if convert == "meta":  # an input on another device: torch's exception type for a device, as the guide says
        with pytest.raises(RuntimeError, match="X must be on the CPU, got device meta"):
            fbt.MLP([4, 6, 3], seed=0)(torch.zeros(2, 4, device="meta"))
    if convert == "half":
        back = twin.float()
        assert back._engine.flat_entry is not None
        assert back(torch.zeros(2, 4)).shape == (2, 3)


@pytest.mark.parametrize("copy_of", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))])
def test_a_copied_module_runs_the_compiled_passes(copy_of):
    model = fbt.MLP([4, 6, 3], activation="relu", seed=0)
    twin = copy_of(model)
    X = batch(5, 4, torch.float32)
    twin(X).sum().backward()
    assert twin._engine.flat_entry is not None
    assert [p.data_ptr() for p in twin.parameters()] != [p.data_ptr() for p in model.parameters()]
    assert torch.equal(twin.flat_params, model.flat_params)


def test_dtype_change_while_a_graph_is_alive():
    """A workspace leased by a float32 graph is not reused by the float64 passes after .double()."""
    model = fbt.MLP([4, 6, 3], activation="tanh", seed=0)
    X = batch(5, 4, torch.float32, requires_grad=False)
    loss32 = model(X).sum()
    model.double()
    loss64 = model(X.double()).sum()
    del loss32  # frees the float32 graph: its workspace goes back to the float32 pool
    assert rel_err(model(X.double()).detach().sum(), loss64.detach()) < TORCH_RTOL["float64"]
    loss64.backward()
    assert model.W0.grad.dtype == torch.float64
