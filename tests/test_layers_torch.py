"""The hidden-layer options (batch norm, layer norm, residual connections) against the same network built from
torch.nn modules (Linear, BatchNorm1d, LayerNorm, activations, the skip connection), in float64: the loss, every
gradient (W, b, gamma, beta), the parameters and running statistics after steps of SGD, and the evaluation outputs.

Dropout: torch draws its masks from its own generator, so the torch network multiplies by the masks of
``fastbp.reference.dropout_mask`` (the kernels' hash, written in NumPy) instead."""

import copy
import itertools

import numpy as np
import pytest
from conftest import TORCH_LAYERS_RTOL, rel_err

torch = pytest.importorskip("torch", reason="the comparison with PyTorch needs torch (python -m pip install torch)")
import fastbp  # noqa: E402
from fastbp.reference import dropout_mask  # noqa: E402

F = torch.nn.functional
F64 = torch.float64

# The torch module of each hidden activation, written out here rather than taken from the code under test.
ACTIVATION = {
    "identity": torch.nn.Identity,
    "sigmoid": torch.nn.Sigmoid,
    "tanh": torch.nn.Tanh,
    "relu": torch.nn.ReLU,
    "leaky_relu": lambda: torch.nn.LeakyReLU(0.01),
}


class Layered(torch.nn.Module):
    """A dense network with fastbp's hidden layers written in torch: ``A = A_prev + D`` with a residual connection,
    else ``A = D``, where ``D = f(norm(Linear(A_prev)))`` times the layer's dropout factors (``masks[l]``: 0 or 1 /
    (1 - p) per unit, None for none); the output layer is a bare Linear (the logits)."""

    def __init__(self, sizes, activations, norms, residuals):
        super().__init__()
        self.linears = torch.nn.ModuleList(torch.nn.Linear(a, b, dtype=F64) for a, b in itertools.pairwise(sizes))
        self.norms = torch.nn.ModuleList()
        for norm, width in zip(norms, sizes[1:-1], strict=True):
            if norm == "batch":
                self.norms.append(torch.nn.BatchNorm1d(width, eps=1e-5, momentum=0.1, dtype=F64))
            elif norm == "layer":
                self.norms.append(torch.nn.LayerNorm(width, eps=1e-5, dtype=F64))
            else:
                self.norms.append(torch.nn.Identity())
        self.activations = torch.nn.ModuleList(ACTIVATION[name]() for name in activations)
        self.residuals = list(residuals)
        self.masks = [None] * len(self.norms)

    def forward(self, x):
        a = x
        hidden = zip(self.linears[:-1], self.norms, self.activations, self.residuals, self.masks, strict=True)
        for linear, norm, f, residual, mask in hidden:
            h = f(norm(linear(a)))
            if mask is not None:
                h = h * mask
            a = a + h if residual else h
        return self.linears[-1](a)


def layered(net):
    """The torch network of a fastbp network, with a copy of its parameters and running statistics (torch's Linear
    weight is fastbp's W transposed)."""
    model = Layered(net.layer_sizes, net.activations, net.norms[:-1], net.residuals[:-1])
    with torch.no_grad():
        for linear, W, b in zip(model.linears, net.coefs, net.intercepts, strict=True):
            linear.weight.copy_(torch.from_numpy(W.T))
            linear.bias.copy_(torch.from_numpy(b))
        for l, norm in enumerate(model.norms):
            if net.norm_scales[l] is not None:
                norm.weight.copy_(torch.from_numpy(net.norm_scales[l]))
                norm.bias.copy_(torch.from_numpy(net.norm_shifts[l]))
            if net.running_means[l] is not None:
                norm.running_mean.copy_(torch.from_numpy(net.running_means[l]))
                norm.running_var.copy_(torch.from_numpy(net.running_vars[l]))
    return model


def set_masks(model, net, step=None, rows=None):
    """The torch network's dropout factors for fastbp's training step ``step`` (the optimizer's step count before it)
    on the rows with ids ``rows`` (their indices in the data set): 1 / (1 - p) on the units fastbp keeps, 0 on the
    others; None for a layer without dropout, and for every layer with ``step`` None (no dropout)."""
    for l, p in enumerate(net.dropouts[: len(model.masks)]):
        keep = dropout_mask(net, l, step, rows) if p and step is not None else None
        model.masks[l] = None if keep is None else torch.from_numpy(keep / (1.0 - p))


def flat(model, grad=False):
    """The torch network's parameters (or their gradients) as one vector in fastbp's documented layout of
    ``params``: layer by layer, W (fan_in, fan_out) row-major, b, then gamma and beta of a normalized layer."""
    pieces = []
    for l, linear in enumerate(model.linears):
        tensors = [linear.weight, linear.bias]
        if l < len(model.norms) and not isinstance(model.norms[l], torch.nn.Identity):
            tensors += [model.norms[l].weight, model.norms[l].bias]
        for k, t in enumerate(tensors):
            t = t.grad if grad else t
            pieces.append((t.T if k == 0 else t).detach().reshape(-1).numpy())
    return np.concatenate(pieces)


def pieces(net):
    """(name, slice of ``params``, whether it is a bias followed by batch norm) of every parameter array, from the
    documented layout."""
    out, offset = [], 0
    norms = [*net.norms[:-1], None]
    for l, (fan_in, fan_out) in enumerate(itertools.pairwise(net.layer_sizes)):
        sizes = [("W", fan_in * fan_out), ("b", fan_out)] + ([("gamma", fan_out), ("beta", fan_out)] * bool(norms[l]))
        for name, size in sizes:
            out.append((f"{name}[{l}]", slice(offset, offset + size), name == "b" and norms[l] == "batch"))
            offset += size
    assert offset == net.n_params
    return out


def assert_flat_equal(net, actual, expected, what):
    """Each parameter array of ``actual`` within TORCH_LAYERS_RTOL of ``expected``, relative to its norm. The bias
    before a batch norm has a gradient of zero (the batch mean removes it): both are rounding noise, so that one is
    measured against the norm of its layer's weight gradient instead."""
    errors = {}
    for name, s, before_batch_norm in pieces(net):
        if before_batch_norm and what == "gradient":
            W = next(p for n, p, _ in pieces(net) if n == "W" + name[1:])
            errors[name] = np.linalg.norm(actual[s] - expected[s]) / np.linalg.norm(expected[W])
        else:
            errors[name] = rel_err(actual[s], expected[s])
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TORCH_LAYERS_RTOL, f"{what} of {worst}: relative error {errors[worst]:.3g} ({errors})"


def randomize(net, rng):
    """Biases, gamma, beta and the running statistics set away from their initial values (a zero bias or a unit
    gamma would hide a term that multiplies them); the weights keep their initialisation."""
    for b in net.intercepts:
        b[...] = 0.1 * rng.standard_normal(b.shape)
    for gamma, beta in zip(net.norm_scales, net.norm_shifts, strict=True):
        if gamma is not None:
            gamma[...] = 1.0 + 0.3 * rng.standard_normal(gamma.shape)
            beta[...] = 0.2 * rng.standard_normal(beta.shape)
    for mean, var in zip(net.running_means, net.running_vars, strict=True):
        if mean is not None:
            mean[...] = 0.2 * rng.standard_normal(mean.shape)
            var[...] = 0.5 + rng.random(var.shape)


def torch_loss(net, logits, y):
    """fastbp's loss of the network in torch: the mean softmax cross-entropy of class labels, or the mean over the
    batch of ``1/2 ||a - y||^2`` (squared error of an identity output)."""
    if net.output == "softmax":
        return F.cross_entropy(logits, y)
    return 0.5 * ((logits - y) ** 2).sum(dim=1).mean()


def torch_output(net, logits):
    return torch.softmax(logits, dim=1) if net.output == "softmax" else logits


def data(net, n, rng):
    X = rng.standard_normal((n, net.n_in))
    y = rng.integers(0, net.n_out, n) if net.output == "softmax" else rng.standard_normal((n, net.n_out))
    return X, y


#: (sizes, batch size) cycled over the cases: 1 to 4 hidden layers; batches of 2 rows (the fewest batch norm takes),
#: of a few rows and of more rows than the widths.
SHAPES = [([5, 8, 8, 3], 7), ([6, 6, 6, 6, 4], 5), ([4, 9, 9, 9, 9, 3], 33), ([7, 7, 5], 2)]
#: fastbp's optimizer and torch's with the same sequence of parameters (fastbp's momentum ``v <- mu v - lr g; p <- p
#: + v`` is torch's ``b <- mu b + g; p <- p - lr b`` with v = -lr b, at a constant rate; Nesterov alike).
OPTIMIZERS = [
    (lambda: fastbp.SGD(0.1), {"lr": 0.1}),
    (lambda: fastbp.SGD(0.05, momentum=0.9), {"lr": 0.05, "momentum": 0.9}),
    (lambda: fastbp.SGD(0.05, momentum=0.8, nesterov=True), {"lr": 0.05, "momentum": 0.8, "nesterov": True}),
]


def _cases():
    cases = []
    grid = itertools.product([None, "batch", "layer"], [False, True], ["tanh", "relu"])
    for i, (norm, residual, activation) in enumerate(grid):
        sizes, n = SHAPES[i % len(SHAPES)]
        # a residual connection on every hidden layer that keeps its width
        residuals = [residual and a == b for a, b in itertools.pairwise(sizes[:-1])]
        options = {"activation": activation, "norm": norm, "residual": residuals}
        cases.append(pytest.param(sizes, options, "softmax", n, i % 3, id=f"{norm}-{residual}-{activation}"))
    mixed = {
        "activation": ["sigmoid", "leaky_relu", "tanh"],
        "norm": ["batch", "layer", None],
        "residual": [False, True, True],
    }
    cases.append(pytest.param([6, 10, 10, 10, 3], mixed, "softmax", 9, 1, id="mixed"))
    regression = {"activation": "leaky_relu", "norm": ["layer", "batch"], "residual": [False, True]}
    cases.append(pytest.param([4, 8, 8, 2], regression, "identity", 10, 2, id="regression"))
    # dropout (rates whose 1 / (1 - p) the kernels' 2^-32 steps represent exactly), with each normalization
    for i, norm in enumerate([None, "batch", "layer"]):
        options = {"activation": "relu", "norm": norm, "residual": [False, True], "dropout": [0.5, 0.25]}
        cases.append(pytest.param([6, 10, 10, 3], options, "softmax", 9, i, id=f"dropout-{norm}"))
    return cases


@pytest.mark.parametrize(("sizes", "options", "output", "n", "optimizer"), _cases())
def test_layer_options_train_like_torch(sizes, options, output, n, optimizer):
    """Loss and gradient (value_and_grad: batch statistics, no dropout, running statistics untouched), then 5
    train_steps (running statistics updated, dropout) against torch in training mode, then predict against torch in
    evaluation mode."""
    rng = np.random.default_rng(len(sizes) * 100 + n)
    net = fastbp.MLP(sizes, output=output, dtype="float64", seed=n, **options)
    randomize(net, rng)
    model = layered(net)
    buffers = net.buffers.copy()

    # value_and_grad, against torch's training mode (on a copy: its forward pass moves the running statistics)
    X, y = data(net, n, rng)
    loss, grads = net.value_and_grad(X, y)
    twin = copy.deepcopy(model).train()
    expected = torch_loss(net, twin(torch.from_numpy(X)), torch.from_numpy(y))
    expected.backward()
    assert rel_err(loss, expected.item()) <= TORCH_LAYERS_RTOL
    assert_flat_equal(net, grads, flat(twin, grad=True), "gradient")
    np.testing.assert_array_equal(net.buffers, buffers)  # value_and_grad leaves the running statistics alone
    assert_flat_equal(net, net.params, flat(model), "parameters")  # the copy is the same network

    # 5 steps of SGD (plain, momentum or Nesterov), each on its own batch
    make_optimizer, torch_options = OPTIMIZERS[optimizer]
    trainer = fastbp.Trainer(net, make_optimizer(), progress=False)
    torch_optimizer = torch.optim.SGD(model.parameters(), **torch_options)
    model.train()
    dropped = 0
    for step in range(5):
        X, y = data(net, n, rng)
        set_masks(model, net, trainer.optimizer.t, np.arange(n))  # train_step's row ids: 0..n-1
        dropped += sum(int((mask == 0).sum()) for mask in model.masks if mask is not None)
        loss = trainer.train_step(X, y)
        torch_optimizer.zero_grad()
        expected = torch_loss(net, model(torch.from_numpy(X)), torch.from_numpy(y))
        expected.backward()
        torch_optimizer.step()
        assert rel_err(loss, expected.item()) <= TORCH_LAYERS_RTOL, f"loss of step {step}"
    assert_flat_equal(net, net.params, flat(model), "parameters after 5 steps")
    for l, norm in enumerate(model.norms):
        if isinstance(norm, torch.nn.BatchNorm1d):
            assert rel_err(net.running_means[l], norm.running_mean) <= TORCH_LAYERS_RTOL, f"running_mean[{l}]"
            assert rel_err(net.running_vars[l], norm.running_var) <= TORCH_LAYERS_RTOL, f"running_var[{l}]"
    if "batch" not in net.norms:
        assert net.buffers.size == 0
    assert (dropped > 0) == any(net.dropouts)

    # evaluation: the running statistics in place of the batch's (a single row works too), no dropout
    set_masks(model, net)
    model.eval()
    X, _ = data(net, 11, rng)
    with torch.no_grad():
        expected = torch_output(net, model(torch.from_numpy(X))).numpy()
    assert rel_err(net.predict(X), expected) <= TORCH_LAYERS_RTOL
    assert rel_err(net.predict(X[:1]), expected[:1]) <= TORCH_LAYERS_RTOL


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_a_trained_normalized_network_classifies_like_torch_in_evaluation(norm):
    """fit over several epochs (shuffled mini-batches, the last one smaller, dropout keyed by the rows' indices in X),
    then evaluate: the running statistics fit made are those torch makes over the same batches in the same order."""
    rng = np.random.default_rng(7)
    options = {"norm": norm, "residual": [False, True], "dropout": [0.25, 0.5]}
    net = fastbp.MLP([6, 12, 12, 3], "tanh", dtype="float64", seed=3, **options)
    randomize(net, rng)
    model = layered(net)
    X, y = data(net, 45, rng)  # batches of 16, 16 and 13
    trainer = fastbp.Trainer(net, fastbp.SGD(0.1, momentum=0.9), batch_size=16, seed=5, progress=False)
    history = trainer.fit(X, y, epochs=3)
    torch_optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    shuffles = np.random.default_rng(5)  # the trainer's documented shuffling: rng(seed).permutation per epoch
    model.train()
    for epoch in range(3):
        perm, total = shuffles.permutation(45), 0.0
        for start in range(0, 45, 16):
            rows = perm[start : start + 16]
            set_masks(model, net, 3 * epoch + start // 16, rows)
            torch_optimizer.zero_grad()
            loss = torch_loss(net, model(torch.from_numpy(X[rows])), torch.from_numpy(y[rows]))
            loss.backward()
            torch_optimizer.step()
            total += loss.item() * rows.size
        assert rel_err(history["loss"][epoch], total / 45) <= TORCH_LAYERS_RTOL, f"loss of epoch {epoch}"
    assert_flat_equal(net, net.params, flat(model), "parameters after fit")
    for l, norm in enumerate(model.norms):
        if isinstance(norm, torch.nn.BatchNorm1d):
            assert rel_err(net.running_means[l], norm.running_mean) <= TORCH_LAYERS_RTOL, f"running_mean[{l}]"
            assert rel_err(net.running_vars[l], norm.running_var) <= TORCH_LAYERS_RTOL, f"running_var[{l}]"
    set_masks(model, net)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(X))
        expected_loss = F.cross_entropy(logits, torch.from_numpy(y)).item()
        expected_accuracy = (logits.argmax(dim=1).numpy() == y).mean()
    result = trainer.evaluate(X, y)
    assert rel_err(result["loss"], expected_loss) <= TORCH_LAYERS_RTOL
    assert result["accuracy"] == expected_accuracy
